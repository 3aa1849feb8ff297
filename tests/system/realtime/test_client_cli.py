"""`python -m realtime.client` against the real API, worker and realtime processes."""

from __future__ import annotations

import asyncio
import json
import subprocess

import httpx
import pytest

from tests.system.conftest import PYTHON, RegisterUser, ServerFactory
from tests.system.jobs.conftest import StackFactory
from tests.system.realtime.conftest import RealtimeFactory

pytestmark = pytest.mark.system


class TestClientCli:
    """The CLI logs in, gets a ticket, replays and follows a job until it finishes."""

    async def test_until_done_exits_0_after_printing_the_succeeded_event(
        self,
        stack_factory: StackFactory,
        realtime_factory: RealtimeFactory,
        server_factory: ServerFactory,
        register_user: RegisterUser,
    ) -> None:
        stack = await stack_factory()
        api, realtime, _ = await asyncio.gather(
            server_factory(REDIS_KEY_PREFIX=stack.prefix),
            realtime_factory(prefix=stack.prefix),
            stack.start_worker(),
        )
        credentials = await register_user(api)
        async with httpx.AsyncClient(base_url=api.base_url, timeout=10) as client:
            token = (await client.post("/v1/auth/token", data=credentials.form)).json()
            response = await client.post(
                "/v1/jobs",
                json={"kind": "demo.countdown", "params": {"steps": 5, "interval": 0.1}},
                headers={"Authorization": f"Bearer {token['access_token']}"},
            )
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]

        process = await asyncio.create_subprocess_exec(
            str(PYTHON), "-m", "realtime.client", "--api", api.base_url, "--ws", realtime.ws_url,
            "--email", credentials.email, "--password", credentials.password,
            "--last-event-id", "0-0", "--until-done", job_id,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            async with asyncio.timeout(60):
                output, _ = await process.communicate()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        text = output.decode()
        assert process.returncode == 0, text
        printed = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        types = [event["type"] for event in printed if event["job_id"] == job_id]
        assert types[0] == "job.queued"
        assert types[-1] == "job.succeeded"
        assert types.count("job.progress") == 5
