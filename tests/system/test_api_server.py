"""The API as production runs it: gunicorn, two uvicorn workers, real HTTP on 127.0.0.1."""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx
import psutil
import pytest

from devharness.processes import ManagedProcess
from devharness.services import ROOT
from devservices import free_port
from tests.fixtures.servers import GUNICORN, GUNICORN_CONFIG, PYTHON, RegisterUser, Server

pytestmark = pytest.mark.system


def _established_owners(server: Server) -> set[int]:
    """The worker pids holding an established connection to the server's port."""
    owners = set()
    for pid in server.worker_pids():
        with contextlib.suppress(psutil.NoSuchProcess):
            for connection in psutil.Process(pid).net_connections(kind="tcp"):
                is_ours = connection.laddr and connection.laddr.port == server.port
                if is_ours and connection.status == psutil.CONN_ESTABLISHED:
                    owners.add(pid)
    return owners


def _mapped_files(pid: int) -> set[str]:
    """The file paths mapped into a process's memory (shared libraries and extensions)."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {parts[5] for parts in (line.split(maxsplit=5) for line in lines) if len(parts) == 6}


class TestAuthOverHttp:
    """Register, log in, read the user and rotate tokens through the real server."""

    async def test_register_token_me_refresh_me(
        self, api_server: Server, register_user: RegisterUser
    ) -> None:
        server = api_server
        credentials = await register_user(server)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10.0) as client:
            token = await client.post("/v1/auth/token", data=credentials.form)
            assert token.status_code == 200, token.text
            first = token.json()
            assert first["token_type"] == "bearer"
            me = await client.get(
                "/v1/users/me", headers={"Authorization": f"Bearer {first['access_token']}"}
            )
            assert me.status_code == 200, me.text
            assert me.json()["email"] == credentials.email

            refreshed = await client.post(
                "/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}
            )
            assert refreshed.status_code == 200, refreshed.text
            second = refreshed.json()
            assert second["refresh_token"] != first["refresh_token"]
            me_again = await client.get(
                "/v1/users/me", headers={"Authorization": f"Bearer {second['access_token']}"}
            )
            assert me_again.status_code == 200, me_again.text
            assert me_again.json() == me.json()

        for response in (token, me, refreshed, me_again):
            assert response.headers.get("X-Request-ID"), response.request.url

    async def test_error_responses_carry_a_request_id(self, api_server: Server) -> None:
        async with httpx.AsyncClient(base_url=api_server.base_url, timeout=10.0) as client:
            response = await client.get("/v1/users/me")
        assert response.status_code == 401
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["request_id"] == response.headers["X-Request-ID"]


class TestWorkers:
    """WEB_CONCURRENCY=2 gives two worker processes, each on uvloop and httptools."""

    async def test_two_workers_accept_and_serve(self, api_server: Server) -> None:
        server = api_server
        workers = server.worker_pids()
        assert len(workers) == 2, workers
        # Each client holds its keep-alive connection open, so the worker that
        # accepted it shows it as established; open them until both workers own one.
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(64):
                client = await stack.enter_async_context(
                    httpx.AsyncClient(base_url=server.base_url, timeout=5.0)
                )
                assert (await client.get("/health/live")).status_code == 200
                if _established_owners(server) == workers:
                    break
            assert _established_owners(server) == workers
        assert server.worker_pids() == workers

    async def test_workers_run_uvloop_and_httptools(self, api_server: Server) -> None:
        server = api_server
        workers = server.worker_pids()
        assert len(workers) == 2, workers
        for pid in workers:
            mapped = _mapped_files(pid)
            assert any("/uvloop/loop." in path and path.endswith(".so") for path in mapped), pid
            assert any(
                "/httptools/parser/parser." in path and path.endswith(".so") for path in mapped
            ), pid


async def _run_to_exit(command: list[str], env: dict[str, str], log_path: Path) -> tuple[int, str]:
    """Run a command in its own process group; kill the group if it outlives 60 s."""
    process = ManagedProcess.start("command", command, env=env, cwd=ROOT, log_path=log_path)
    exited = await process.wait_exit(60)
    if exited is None:
        process.kill()
    code = await process.stop()  # reaps it and closes the log
    assert exited is not None, f"still running after 60 s:\n{process.log()}"
    return code, process.log()


class TestUnsafeProductionConfig:
    """A production process with a placeholder JWT_SECRET refuses to start and says why."""

    @pytest.fixture
    def production_env(self, server_env: dict[str, str]) -> dict[str, str]:
        return {**server_env, "ENVIRONMENT": "production", "JWT_SECRET": "changeme"}

    async def test_import_of_the_app_fails(
        self, production_env: dict[str, str], tmp_path: Path
    ) -> None:
        code, output = await _run_to_exit(
            [str(PYTHON), "-c", "import api.main"], production_env, tmp_path / "import.log"
        )
        assert code != 0, output
        assert "JWT_SECRET" in output

    async def test_gunicorn_exits_non_zero(
        self, production_env: dict[str, str], tmp_path: Path
    ) -> None:
        port = free_port()
        command = [str(GUNICORN), "-c", str(GUNICORN_CONFIG), "--bind", f"127.0.0.1:{port}"]
        env = {**production_env, "PORT": str(port), "WEB_CONCURRENCY": "1"}
        code, output = await _run_to_exit(
            [*command, "api.main:app"], env, tmp_path / "gunicorn.log"
        )
        assert code != 0, output
        assert "JWT_SECRET" in output
