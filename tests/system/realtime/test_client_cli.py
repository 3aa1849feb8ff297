"""`jobsclient` and `python -m jobsclient` against the real API, worker and realtime processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest

from common.contracts.events import JOB_QUEUED, JOB_SUCCEEDED
from jobsclient import ApiClient, ApiError, EventStream
from tests.fixtures.realtime import RealtimeFactory
from tests.fixtures.servers import PYTHON, Credentials, RegisterUser, ServerFactory
from tests.fixtures.terminal import Terminal
from tests.fixtures.workers import StackFactory

pytestmark = pytest.mark.system


class _ClientStack(NamedTuple):
    """API, realtime and a worker on one prefix: the API URL, the WebSocket URL and a user."""

    api_url: str
    ws_url: str
    user: Credentials


@pytest.fixture
async def client_stack(
    stack_factory: StackFactory, realtime_factory: RealtimeFactory,
    server_factory: ServerFactory, register_user: RegisterUser,
) -> _ClientStack:  # fmt: skip
    stack = await stack_factory()
    api, realtime, _ = await asyncio.gather(
        server_factory(REDIS_KEY_PREFIX=stack.prefix),
        realtime_factory(prefix=stack.prefix),
        stack.start_worker(),
    )
    return _ClientStack(api.base_url, realtime.ws_url, await register_user(api))


@pytest.fixture
async def countdown(client_stack: _ClientStack) -> tuple[list[str], str]:
    """A user with a 5-step countdown job; the client's connection arguments and the job id."""
    api_url, ws_url, credentials = client_stack
    async with httpx.AsyncClient(base_url=api_url, timeout=10) as client:
        token = (await client.post("/v1/auth/token", data=credentials.form)).json()
        response = await client.post(
            "/v1/jobs",
            json={"kind": "demo.countdown", "params": {"steps": 5, "interval": 0.1}},
            headers={"Authorization": f"Bearer {token['access_token']}"},
        )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    arguments = [
        "--api", api_url, "--ws", ws_url,
        "--email", credentials.email, "--password", credentials.password,
        "--last-event-id", "0-0", "--until-done", job_id,
    ]  # fmt: skip
    return arguments, job_id


async def _run(*arguments: str) -> tuple[int, str, str]:
    """Run the client to its end: exit status, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        str(PYTHON), "-m", "jobsclient", *arguments,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(60):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


class TestClientCli:
    """The CLI logs in, gets a ticket, replays and follows a job until it finishes."""

    async def test_json_prints_each_event_as_a_line_and_nothing_else(
        self, countdown: tuple[list[str], str]
    ) -> None:
        arguments, job_id = countdown
        code, stdout, stderr = await _run(*arguments, "--json")
        assert code == 0, stdout + stderr
        printed = [json.loads(line) for line in stdout.splitlines()]  # every line is JSON
        types = [event["type"] for event in printed if event["job_id"] == job_id]
        assert types[0] == "job.queued"
        assert types[-1] == "job.succeeded"
        assert types.count("job.progress") == 5
        assert printed[-1]["data"]["result"] == {"steps": 5}
        assert "━" not in stdout + stderr  # no bars

    async def test_default_draws_bars_and_one_line_per_finished_job(
        self, countdown: tuple[list[str], str], tmp_path: Path
    ) -> None:
        arguments, job_id = countdown
        # In a terminal, as a person runs it: bars redrawn in place, no JSON.
        terminal = Terminal(
            [str(PYTHON), "-m", "jobsclient", *arguments],
            env={**os.environ, "COLUMNS": "100", "TERM": "xterm"},
            cwd=tmp_path,
        )
        try:
            assert await terminal.wait_exit(60) == 0, terminal.text()
        finally:
            terminal.close()
        screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal.text())  # colours, cursor
        assert f"job {job_id[:8]} succeeded: steps=5" in screen
        assert re.search(rf"job {job_id[:8]} ━+ 100%", screen), screen
        assert "{" not in screen, "no JSON in the default output"
        assert screen.count("succeeded") == 1


class TestLibrary:
    """`ApiClient` and `EventStream`: submit a job, follow it, resume without gap or repeat."""

    async def test_stream_resumes_after_the_last_event_it_yielded(
        self, client_stack: _ClientStack
    ) -> None:
        api_url, ws_url, user = client_stack
        async with ApiClient(api_url, email=user.email, password=user.password) as api:
            job = await api.create_job("demo.countdown", {"steps": 5, "interval": 0.1})
            first = EventStream(api, ws_url, last_event_id="0-0")
            async with contextlib.aclosing(first.events()) as events:
                queued = await anext(events)  # then leave, as a dropped client does
            assert queued["type"] == JOB_QUEUED
            assert first.last_event_id == queued["id"]

            resumed = EventStream(api, ws_url, last_event_id=first.last_event_id)
            seen: list[dict[str, Any]] = []
            async with contextlib.aclosing(resumed.events()) as events:
                async for event in events:
                    seen.append(event)
                    if event["type"] == JOB_SUCCEEDED:
                        break
            assert queued["id"] not in [event["id"] for event in seen]  # no repeat
            assert [event["type"] for event in seen].count("job.progress") == 5  # no gap
            assert (await api.get_job(job["id"]))["state"] == "succeeded"
            with pytest.raises(ApiError) as refused:
                await api.cancel_job(job["id"])
            assert refused.value.status == 409
