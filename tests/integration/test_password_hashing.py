"""Password hashing in the worker's hashing server: old hashes upgraded, a full budget a 503."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import argon2
import httpx
import psutil
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.auth._hash_server import NICE
from api.auth.passwords import Argon2Params
from devharness.polling import eventually
from tests.fixtures.api import AppClient
from tests.fixtures.problems import assert_problem

PASSWORD = "correct horse battery staple"
# A hash takes 0.3-0.9 s beside a process spinning on its core (25-30 ms alone); one that
# called sched_yield instead of sleeping took 10-15 s there.
STARVED_AFTER = 5.0
ClientFactory = Callable[[FastAPI], Awaitable[httpx.AsyncClient]]


async def _post_register(client: httpx.AsyncClient, email: str) -> httpx.Response:
    return await client.post("/v1/auth/register", json={"email": email, "password": PASSWORD})


async def _register(client: httpx.AsyncClient) -> str:
    email = f"hash-{uuid.uuid4().hex[:10]}@example.com"
    answer = await _post_register(client, email)
    assert answer.status_code == 201, answer.text
    return email


async def _stored_hash(engine: AsyncEngine, email: str) -> str:
    async with engine.connect() as connection:
        return str(
            await connection.scalar(
                text("SELECT password_hash FROM users WHERE email = :email"), {"email": email}
            )
        )


def _login(client: httpx.AsyncClient, email: str) -> Awaitable[httpx.Response]:
    return client.post("/v1/auth/token", data={"username": email, "password": PASSWORD})


def _hash_servers() -> set[int]:
    """The pids of this test process's hashing servers (one per app whose lifespan runs)."""
    return {
        child.pid
        for child in psutil.Process().children()
        if "api.auth._hash_server" in " ".join(child.cmdline())
    }


def _hashing_children(known: set[int]) -> Callable[[], Awaitable[list[psutil.Process] | None]]:
    """A probe: the children (hashes in flight) of a hashing server not in `known`."""

    async def probe() -> list[psutil.Process] | None:
        for pid in _hash_servers() - known:
            with contextlib.suppress(psutil.NoSuchProcess):
                children = psutil.Process(pid).children()
                if children:
                    return children
        return None

    return probe


async def _registering(
    client: httpx.AsyncClient, known: set[int], email: str
) -> tuple[asyncio.Task[httpx.Response], list[psutil.Process]]:
    """Start registering `email`; once its hash runs, the request and the hashing children."""
    pending = asyncio.create_task(_post_register(client, email))
    children = await eventually(_hashing_children(known), within=10)
    return pending, children


SlowHashing = Callable[..., Awaitable[tuple[httpx.AsyncClient, set[int]]]]


@pytest.fixture
def slow_hashing(app_client: AppClient) -> SlowHashing:
    """`await slow_hashing(**settings)`: a client of one worker whose hashes take about a second
    (100 iterations), and the hashing servers that ran before it (so its own can be told apart)."""

    async def make(**overrides: Any) -> tuple[httpx.AsyncClient, set[int]]:
        known = _hash_servers()
        client = await app_client(web_concurrency=1, password_hash_time_cost=100, **overrides)
        return client, known

    return make


class TestParameters:
    """New hashes use the configured cost; hashes made with another cost are replaced at login."""

    async def test_a_new_hash_has_owasps_parameters(
        self, client: httpx.AsyncClient, db_engine: AsyncEngine
    ) -> None:
        email = await _register(client)
        stored = await _stored_hash(db_engine, email)
        assert Argon2Params.of_hash(stored) == Argon2Params(19456, 2, 1)

    async def test_an_old_hash_verifies_and_is_replaced_on_login(
        self, client: httpx.AsyncClient, db_engine: AsyncEngine
    ) -> None:
        email = await _register(client)
        # What earlier releases stored: argon2-cffi's defaults (64 MiB, 3 iterations, 4 lanes).
        legacy = argon2.PasswordHasher(memory_cost=65536, time_cost=3, parallelism=4)
        async with db_engine.begin() as connection:
            await connection.execute(
                text("UPDATE users SET password_hash = :hash WHERE email = :email"),
                {"hash": legacy.hash(PASSWORD), "email": email},
            )
        assert (await _login(client, email)).status_code == 200
        upgraded = await _stored_hash(db_engine, email)
        assert Argon2Params.of_hash(upgraded) == Argon2Params(19456, 2, 1)
        # The new hash is the same password's, and the next login keeps it.
        assert (await _login(client, email)).status_code == 200
        assert await _stored_hash(db_engine, email) == upgraded

    async def test_a_wrong_password_changes_nothing(
        self, client: httpx.AsyncClient, db_engine: AsyncEngine
    ) -> None:
        email = await _register(client)
        before = await _stored_hash(db_engine, email)
        answer = await client.post("/v1/auth/token", data={"username": email, "password": "x" * 12})
        assert_problem(answer, 401)
        assert await _stored_hash(db_engine, email) == before


def _catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler for `signum` (Linux: SigCgt in its status)."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    caught = next(line for line in status if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) >> (signum - 1) & 1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux scheduling")
class TestPriority:
    """A hash runs `NICE` steps below its worker, gives its CPU away on SIGALRM, and shares
    its worker's session (so its autogroup)."""

    async def test_a_hash_in_flight_is_below_its_worker_yielding_in_its_session(
        self, slow_hashing: SlowHashing
    ) -> None:
        client, known = await slow_hashing()
        email = f"nice-{uuid.uuid4().hex[:10]}@example.com"
        pending, (child,) = await _registering(client, known, email)
        (server,) = _hash_servers() - known
        # Not SCHED_IDLE: a hash keeps a share of a CPU that requests keep busy.
        assert os.sched_getscheduler(child.pid) == os.SCHED_OTHER
        expected = min(19, os.getpriority(os.PRIO_PROCESS, 0) + NICE)
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == expected
        # The interval timer's SIGALRM has a (C) handler, usleep, in the server and
        # the child; without one the first SIGALRM would end the hash.
        assert _catches(server, signal.SIGALRM)
        assert _catches(child.pid, signal.SIGALRM)
        # A session of its own would be an autogroup of its own, which Linux weighs
        # against the worker's (here the test process) as an equal, whatever the nice value.
        assert os.getsid(server) == os.getsid(child.pid) == os.getsid(0)
        assert (await pending).status_code == 201

    def test_a_hash_beside_a_process_that_never_sleeps_on_its_core_still_finishes(self) -> None:
        # On Linux 6.18 a hash calling sched_yield every 0.5 ms got almost no CPU beside such
        # a process: one took 10-15 s. One that sleeps instead keeps its nice share.
        cpu = min(os.sched_getaffinity(0))
        with (
            subprocess.Popen([sys.executable, "-c", "while True: pass"]) as hog,
            subprocess.Popen(
                [sys.executable, "-m", "api.auth._hash_server"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            ) as server,
        ):
            assert server.stdin is not None
            assert server.stdout is not None
            for process in (hog, server):  # a hash's child inherits its server's CPU
                os.sched_setaffinity(process.pid, {cpu})
            try:
                request = {"id": 1, "op": "hash", "password": PASSWORD, "params": [19456, 2, 1]}
                server.stdin.write(json.dumps(request).encode() + b"\n")
                server.stdin.flush()
                readable, _, _ = select.select([server.stdout], [], [], STARVED_AFTER)
                assert readable, f"no answer in {STARVED_AFTER} s"
                assert json.loads(server.stdout.readline())["hash"].startswith("$argon2id$")
            finally:
                hog.kill()
                server.stdin.close()


class TestFullBudget:
    """When no hash can start within the wait, a 503 with Retry-After; the worker goes on."""

    async def test_a_login_beyond_the_budget_waits_then_gets_503(
        self, slow_hashing: SlowHashing
    ) -> None:
        # One hash at a time, slow enough to overlap, and no waiting.
        client, known = await slow_hashing(
            password_hash_concurrency=1, password_hash_wait_seconds=0
        )
        email = f"busy-{uuid.uuid4().hex[:10]}@example.com"
        first, _ = await _registering(client, known, email)
        answer = await _post_register(client, f"x{email}")
        body = assert_problem(answer, 503)
        assert body["title"] == "Service busy"
        assert answer.headers["retry-after"] == "1"
        # The first hash finishes and its request succeeds.
        assert (await first).status_code == 201

    async def test_a_killed_hashing_process_is_a_503_and_the_next_login_works(
        self, slow_hashing: SlowHashing
    ) -> None:
        client, known = await slow_hashing()
        email = f"kill-{uuid.uuid4().hex[:10]}@example.com"
        pending, children = await _registering(client, known, email)
        os.kill(children[0].pid, signal.SIGKILL)  # what the OOM killer would do
        body = assert_problem(await pending, 503)
        assert "ended by signal 9" in body["detail"]
        # The server lives on; so does the worker: the same registration now succeeds.
        answer = await _post_register(client, email)
        assert answer.status_code == 201, answer.text

    async def test_a_killed_hashing_server_is_replaced(self, slow_hashing: SlowHashing) -> None:
        client, known = await slow_hashing()
        email = f"server-{uuid.uuid4().hex[:10]}@example.com"
        pending, _ = await _registering(client, known, email)
        (server,) = _hash_servers() - known
        os.kill(server, signal.SIGKILL)
        # The hash in flight lives in its own process and still answers.
        assert (await pending).status_code == 201
        # The next hash starts a new server and succeeds too.
        answer = await _post_register(client, f"x{email}")
        assert answer.status_code == 201, answer.text
        assert len(_hash_servers() - known - {server}) == 1


class TestConnections:
    """A request that waits for its hash holds no database connection meanwhile."""

    async def test_logins_and_registrations_hashing_leave_the_pool_free(
        self, slow_hashing: SlowHashing
    ) -> None:
        # One pooled connection in all and a short wait for it.
        client, known = await slow_hashing(db_pool_size=1, db_max_overflow=0, db_pool_timeout=0.5)
        email = await _register(client)
        token = (await _login(client, email)).json()["access_token"]
        for hashing in (_login(client, email), _post_register(client, f"y{email}")):
            pending = asyncio.ensure_future(hashing)
            await eventually(_hashing_children(known), within=10)
            # While that hash runs, a request needing the database gets the connection.
            listed = await client.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"})
            assert listed.status_code == 200, listed.text
            assert (await pending).status_code in {200, 201}
