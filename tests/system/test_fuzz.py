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
from tests.fixtures.servers import RegisterUser, ServerFactory

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


# Operations that end the caller's session (every access token of the user is
# revoked): fuzzed with a login of their own, so the rest keep a valid token.
SESSION_ENDING = ("/v1/auth/logout", "/v1/users/me/password")


async def _schemathesis(
    base_url: str, token: str, filters: list[str], cwd: Path, *, keeps_session: bool
) -> str:
    """Run schemathesis on the operations `filters` select; its report (asserts exit 0).

    With `keeps_session`, the token must work throughout (no operation run ends it).
    """
    command = [
        str(SCHEMATHESIS),
        "--no-color",
        "run",
        f"{base_url}/openapi.json",
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
        f"Authorization: Bearer {token}",
        *filters,
    ]
    process = await asyncio.create_subprocess_exec(
        *command,
        # Its working directory gets a `.schemathesis/` folder; keep it out of the tree.
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    report = output.decode(errors="replace")
    print(report[-4000:])
    assert process.returncode == 0, report
    if keeps_session:
        assert "Authentication failed" not in report, "the bearer token stopped working"
    return report


@pytest.mark.timeout(1800)
async def test_fuzzed_requests_get_no_server_error_and_documented_answers(
    server_factory: ServerFactory, register_user: RegisterUser, tmp_path: Path
) -> None:
    server = await server_factory()
    tokens = []
    for _ in range(2):
        credentials = await register_user(server)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10.0) as client:
            login = await client.post("/v1/auth/token", data=credentials.form)
        assert login.status_code == 200, login.text
        tokens.append(login.json()["access_token"])
    excluded = [arg for path in SESSION_ENDING for arg in ("--exclude-path", path)]
    included = [arg for path in SESSION_ENDING for arg in ("--include-path", path)]
    await _schemathesis(server.base_url, tokens[0], excluded, tmp_path, keeps_session=True)
    # These end the session they are called with: after the first, 401s are expected.
    await _schemathesis(server.base_url, tokens[1], included, tmp_path, keeps_session=False)
