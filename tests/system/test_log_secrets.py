"""Secrets never reach the logs: a full flow at DEBUG across the API (gunicorn), a Celery
worker and the realtime service (gunicorn), every line of the three logs searched."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from devharness.processes import ManagedProcess, json_records, start_process
from devharness.realtime import listen, refusal, ws_url
from tests.fixtures.realtime import ORIGIN, RealtimeFactory, wait_for_type
from tests.fixtures.servers import Credentials, RegisterUser, Server, ServerFactory
from tests.fixtures.services import new_prefix
from tests.fixtures.workers import CELERY, STARTUP_TIMEOUT

pytestmark = pytest.mark.system
WRONG_PASSWORD = "not the password, but still a secret"
NEW_PASSWORD = "another secret passphrase 9"


async def _start_worker(env: dict[str, str], tmp_path: Path) -> ManagedProcess:
    command = [
        str(CELERY), "-A", "worker.app", "worker", "--pool", "prefork", "--concurrency", "1",
        "--without-gossip", "--without-mingle", "--loglevel", "DEBUG",
        "--hostname", f"secrets-{uuid.uuid4().hex[:8]}@127.0.0.1",
    ]  # fmt: skip
    worker = start_process(
        "worker", command, env=env, cwd=tmp_path, log_path=tmp_path / "worker.log"
    )
    await worker.wait_for_log(" ready.", within=STARTUP_TIMEOUT)
    return worker


async def _flow(
    client: httpx.AsyncClient, realtime: Server, credentials: Credentials, metrics_token: str
) -> dict[str, str]:
    """Every auth path, a job run by the worker and seen on a socket; the secrets it used."""
    wrong = await client.post(
        "/v1/auth/token", data={"username": credentials.email, "password": WRONG_PASSWORD}
    )
    assert wrong.status_code == 401
    login = (await client.post("/v1/auth/token", data=credentials.form)).json()
    bearer = {"Authorization": f"Bearer {login['access_token']}"}
    rotated = (
        await client.post("/v1/auth/refresh", json={"refresh_token": login["refresh_token"]})
    ).json()
    # A spent refresh token presented again, and a token that fails verification.
    reused = await client.post("/v1/auth/refresh", json={"refresh_token": login["refresh_token"]})
    assert reused.status_code == 401
    tampered = login["access_token"][:-4] + "AAAA"
    forged = await client.get("/v1/users/me", headers={"Authorization": f"Bearer {tampered}"})
    assert forged.status_code == 401
    assert (await client.get("/v1/users/me", headers=bearer)).status_code == 200
    scraped = await client.get("/metrics", headers={"Authorization": f"Bearer {metrics_token}"})
    assert scraped.status_code == 200
    base = f"ws://127.0.0.1:{realtime.port}/ws"
    ticket = (await client.post("/v1/realtime/ticket", headers=bearer)).json()["ticket"]
    unused = (await client.post("/v1/realtime/ticket", headers=bearer)).json()["ticket"]
    # Refused before the ticket is consumed: it stays valid, and must not be logged.
    refused = await refusal(ws_url(base, ticket=unused), origin="https://elsewhere.example")
    assert refused[0] == 1008
    # The worker runs a job whose events reach a socket (opened with a ticket) through Redis.
    listener = await listen(ws_url(base, ticket=ticket), origin=ORIGIN)
    job = await client.post(
        "/v1/jobs",
        json={"kind": "demo.countdown", "params": {"steps": 2, "interval": 0}},
        headers=bearer,
    )
    assert job.status_code == 202, job.text
    await wait_for_type(listener, "job.succeeded", within=30)
    await listener.close()
    changed = await client.post(
        "/v1/users/me/password",
        json={"current_password": credentials.password, "new_password": NEW_PASSWORD},
        headers={"Authorization": f"Bearer {rotated['access_token']}"},
    )
    assert changed.status_code == 204, changed.text
    relogin = (
        await client.post(
            "/v1/auth/token", data={"username": credentials.email, "password": NEW_PASSWORD}
        )
    ).json()
    logout = await client.post(
        "/v1/auth/logout",
        json={"refresh_token": relogin["refresh_token"]},
        headers={"Authorization": f"Bearer {relogin['access_token']}"},
    )
    assert logout.status_code == 204
    return {
        "password": credentials.password,
        "wrong password": WRONG_PASSWORD,
        "new password": NEW_PASSWORD,
        "access token": login["access_token"],
        "access token signature": login["access_token"].rsplit(".", 1)[1],
        "refresh token": login["refresh_token"],
        "rotated access token": rotated["access_token"],
        "rotated refresh token": rotated["refresh_token"],
        "new access token": relogin["access_token"],
        "new refresh token": relogin["refresh_token"],
        "realtime ticket": ticket,
        "unused realtime ticket": unused,
    }


async def test_no_secret_password_token_or_ticket_is_logged_anywhere(
    server_factory: ServerFactory,
    realtime_factory: RealtimeFactory,
    register_user: RegisterUser,
    server_env: dict[str, str],
    redis_key_prefix: str,
    jwt_secret: str,
    tmp_path: Path,
) -> None:
    prefix = new_prefix(redis_key_prefix)
    metrics_token = uuid.uuid4().hex
    debug = {"LOG_LEVEL": "DEBUG", "REDIS_KEY_PREFIX": prefix, "METRICS_TOKEN": metrics_token}
    server = await server_factory(**debug)
    realtime = await realtime_factory(prefix=prefix, **debug)
    # As deployed: the worker gets no token secret.
    worker_env = {**server_env, **debug, "WORKER_METRICS_PORT": "0"}
    del worker_env["JWT_SECRET"]
    worker = await _start_worker(worker_env, tmp_path)
    try:
        credentials = await register_user(server)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10.0) as client:
            secrets = await _flow(client, realtime, credentials, metrics_token)
    finally:
        await worker.stop()
    await server.stop()
    await realtime.stop()
    logs = {"api": server.log(), "realtime": realtime.log(), "worker": worker.log()}
    for name, log in logs.items():
        assert any(record.get("level") == "DEBUG" for record in json_records(log)), (
            f"{name} logged nothing at DEBUG: the capture is not real"
        )
    secrets.update({"JWT secret": jwt_secret, "metrics token": metrics_token})
    leaked = [
        f"{secret} in the {name} log"
        for name, log in logs.items()
        for secret, value in secrets.items()
        if value in log
    ]
    assert leaked == []
