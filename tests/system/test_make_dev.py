"""`make dev` on a machine with nothing running: embedded Postgres and Redis, the
API, the worker and the scheduler, then a countdown job from POST to succeeded."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from devservices._ports import is_listening
from tests.support.devstack import dev_environment, get_when_up, wait_ready
from tests.support.processes import start_process
from tests.support.services import ROOT

pytestmark = pytest.mark.system
PASSWORD = "correct horse battery staple"


class TestMakeDev:
    """`make dev` brings up the whole stack on embedded services and serves a job end to end."""

    async def test_countdown_job_succeeds_and_ctrl_c_stops_everything(self, tmp_path: Path) -> None:
        env, ports = dev_environment(tmp_path / "run")
        dev = start_process(
            "make dev", ["make", "--no-print-directory", "dev"],
            env=env, cwd=ROOT, log_path=tmp_path / "dev.log",
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{ports.api}"
            async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                await wait_ready(client, dev, within=120)
                docs = await client.get("/docs")
                assert docs.status_code == 200
                assert "/static/docs/swagger-ui-bundle.js" in docs.text
                assert (await client.get("/static/docs/swagger-ui-bundle.js")).status_code == 200

                # The job console: its own origin, pointed at this API, which allows it.
                console = f"http://127.0.0.1:{ports.console}"
                config = await get_when_up(client, f"{console}/config.js", dev, within=30)
                assert f'"apiUrl": "{base}"' in config.text
                preflight = await client.options(
                    "/v1/jobs",
                    headers={"Origin": console, "Access-Control-Request-Method": "POST"},
                )
                assert preflight.headers.get("access-control-allow-origin") == console

                email = "dev-stack@example.com"
                registered = await client.post(
                    "/v1/auth/register", json={"email": email, "password": PASSWORD}
                )
                assert registered.status_code == 201, registered.text
                token = await client.post(
                    "/v1/auth/token", data={"username": email, "password": PASSWORD}
                )
                headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
                posted = await client.post(
                    "/v1/jobs",
                    headers=headers,
                    json={"kind": "demo.countdown", "params": {"steps": 4, "interval": 0.1}},
                )
                assert posted.status_code == 202, posted.text
                location = posted.headers["location"]

                deadline = time.monotonic() + 60
                while True:
                    job = (await client.get(location, headers=headers)).json()
                    if job["state"] in {"succeeded", "failed", "cancelled"}:
                        break
                    assert time.monotonic() < deadline, f"job stuck: {job}\n{dev.log()}"
                    await dev.wait_exit(0.05)  # poll interval
                assert job["state"] == "succeeded", job
                assert job["result"] == {"steps": 4}
                assert job["progress"] == 100

            # Ctrl-C: the terminal sends SIGINT to the whole foreground group.
            os.killpg(dev.pgid, signal.SIGINT)
            assert await dev.wait_exit(60) is not None, f"make dev did not stop:\n{dev.log()}"
            assert not is_listening(ports.postgres), "embedded Postgres left running"
            assert not is_listening(ports.redis), "embedded Redis left running"
        finally:
            await dev.stop()
