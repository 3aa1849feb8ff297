"""Schemathesis against the running API's OpenAPI schema: no 5xx, every answer as documented.

`make test` runs a bounded pass (FUZZ_MAX_EXAMPLES per operation, 25 by default);
`make fuzz` runs a longer one. The server has generous rate limits, so 429s do
not crowd out the cases.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import httpx
import pytest

from devharness.services import ROOT
from tests.system.conftest import RegisterUser, ServerFactory

pytestmark = [pytest.mark.system, pytest.mark.fuzz]
SCHEMATHESIS = ROOT / ".venv" / "bin" / "schemathesis"
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)


def _max_examples() -> int:
    return int(os.environ.get("FUZZ_MAX_EXAMPLES", "25"))


@pytest.mark.timeout(900)
async def test_fuzzed_requests_get_no_server_error_and_documented_answers(
    server_factory: ServerFactory, register_user: RegisterUser, tmp_path: Path
) -> None:
    server = await server_factory()
    credentials = await register_user(server)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10.0) as client:
        login = await client.post("/v1/auth/token", data=credentials.form)
    assert login.status_code == 200, login.text
    command = [
        str(SCHEMATHESIS),
        "--no-color",
        "run",
        f"{server.base_url}/openapi.json",
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        str(_max_examples()),
        "--seed",
        os.environ.get("FUZZ_SEED", "20261126"),
        "--generation-database",
        "none",
        "--request-timeout",
        "10",
        "--header",
        f"Authorization: Bearer {login.json()['access_token']}",
    ]
    process = await asyncio.create_subprocess_exec(
        *command,
        # Its working directory gets a `.schemathesis/` folder; keep it out of the tree.
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    report = output.decode(errors="replace")
    print(report[-4000:])
    assert process.returncode == 0, report
