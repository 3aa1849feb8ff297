"""`make up` on Docker: the compose stack built from deploy/Dockerfile serves the README
walkthrough (register, token, POST a job, watch it succeed over the WebSocket with the
client CLI), and `make down-v` leaves nothing behind.

The engine and the local stand-ins for the public base images come from the shared
scripts beside the repository (`<repo>/../shared/tools`) when they exist; the images'
base, `python:3.X-slim` of the deployed Python, is pulled or else built by
scripts/standin-python-image. The test skips, saying why, only when no engine
answers and those scripts cannot start one.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from websockets.sync.client import connect
from websockets.typing import Origin

from devharness.services import ROOT
from devservices import free_ports

pytestmark = [pytest.mark.system, pytest.mark.docker]
SHARED_TOOLS = ROOT.parent / "shared" / "tools"
PASSWORD = "correct horse battery staple"
UP_TIMEOUT = 600.0  # a cold machine: engine install, stand-ins, three image builds
DOWN_TIMEOUT = 120.0


def _engine_answers() -> bool:
    try:
        probe = subprocess.run(
            ["docker", "info"], capture_output=True, timeout=30, check=False
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def _run_tool(name: str, timeout: float, *, directory: Path = SHARED_TOOLS) -> str:
    tool = directory / name
    if not tool.exists():
        return f"{tool} not found"
    done = subprocess.run(
        [str(tool)], capture_output=True, text=True, timeout=timeout, check=False
    )  # fmt: skip
    return "" if done.returncode == 0 else f"{name} exited {done.returncode}: {done.stderr[-2000:]}"


@pytest.fixture(scope="module")
def docker_engine() -> None:
    """A Docker engine that answers, and the base images (stand-ins where none can be pulled)."""
    if not _engine_answers():
        problem = _run_tool("start-dockerd", timeout=300)
        if not _engine_answers():
            pytest.skip(f"no Docker engine answers and none could be started ({problem})")
    # Builds only the tags that are missing; never overwrites a pulled image.
    problem = _run_tool("docker-standins", timeout=900)
    if problem and "not found" not in problem:
        pytest.fail(f"base image stand-ins could not be built: {problem}")
    # The images' own base (deploy/Dockerfile's python:3.X-slim): present, pulled, or
    # else a local stand-in from Debian's packages (about 2 minutes, once per machine).
    problem = _run_tool("standin-python-image", timeout=900, directory=ROOT / "scripts")
    if problem:
        pytest.fail(f"the images' base image is missing and no stand-in was built: {problem}")


class ComposeStack:
    """One compose project of our own (name, ports), driven through the make targets."""

    def __init__(self, tmp_path: Path) -> None:
        self.project = f"fmtest{uuid.uuid4().hex[:8]}"
        self.api_port, self.realtime_port, self.console_port = free_ports(3)
        self.log_path = tmp_path / "compose.log"
        self.env = {
            **os.environ,
            "COMPOSE_PROJECT_NAME": self.project,
            "API_PORT": str(self.api_port),
            "REALTIME_PORT": str(self.realtime_port),
            "CONSOLE_PORT": str(self.console_port),
            # A console port other than 8002 needs its origin named (the default names 8002).
            "CORS_ORIGINS": f"{self.console},http://localhost:{self.console_port}",
            "IMAGE_TAG": "systemtest",
            "SCHEDULER_INTERVAL_SECONDS": "1",
        }
        if SHARED_TOOLS.exists():
            # Stand-in base images: the classic builder uses local images for FROM,
            # where BuildKit may look them up in a registry this machine cannot reach.
            self.env.update(DOCKER_BUILDKIT="0", COMPOSE_DOCKER_CLI_BUILD="0")

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.realtime_port}/ws"

    @property
    def console(self) -> str:
        return f"http://127.0.0.1:{self.console_port}"

    def make(self, target: str, *, timeout: float) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["make", "--no-print-directory", target, f"UP_TIMEOUT={int(timeout)}"],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        with self.log_path.open("a") as log:
            log.write(f"$ make {target} (exit {done.returncode})\n{done.stdout}{done.stderr}\n")
        return done

    def leftovers(self) -> list[str]:
        """Containers, volumes and networks of this project that still exist."""
        label = f"label=com.docker.compose.project={self.project}"
        found = []
        for listing in (["ps", "--all"], ["volume", "ls"], ["network", "ls"]):
            done = subprocess.run(
                ["docker", *listing, "--quiet", "--filter", label],
                capture_output=True, text=True, timeout=30, check=True,
            )  # fmt: skip
            found += [f"{listing[0]} {name}" for name in done.stdout.split()]
        return found


@pytest.fixture
def stack(docker_engine: None, tmp_path: Path) -> Iterator[ComposeStack]:
    """`make up` with our own project name and ports; `make down-v` after, whatever happened."""
    compose = ComposeStack(tmp_path)
    try:
        up = compose.make("up", timeout=UP_TIMEOUT)
        assert up.returncode == 0, f"make up failed:\n{compose.log_path.read_text()[-6000:]}"
        yield compose
    finally:
        down = compose.make("down-v", timeout=DOWN_TIMEOUT)
        assert down.returncode == 0, f"make down-v failed:\n{down.stdout}{down.stderr}"
        assert compose.leftovers() == [], "make down-v left things behind"


class TestComposeStack:
    """The README walkthrough against the containers that `make up` started."""

    @pytest.mark.timeout(UP_TIMEOUT + DOWN_TIMEOUT + 180)
    def test_walkthrough_job_succeeds_over_the_websocket(self, stack: ComposeStack) -> None:
        up_log = stack.log_path.read_text()
        assert f"API        {stack.api}" in up_log
        assert f"WebSocket  {stack.ws}" in up_log
        assert f"console    {stack.console}" in up_log
        with httpx.Client(base_url=stack.api, timeout=10) as client:
            assert client.get("/health/ready").status_code == 200
            assert client.get("/docs").status_code == 200
            email = f"compose-{uuid.uuid4().hex[:8]}@example.com"
            registered = client.post(
                "/v1/auth/register", json={"email": email, "password": PASSWORD}
            )
            assert registered.status_code == 201, registered.text
            token = client.post("/v1/auth/token", data={"username": email, "password": PASSWORD})
            assert token.status_code == 200, token.text
            headers = {"Authorization": f"Bearer {token.json()['access_token']}"}

            # The job console is part of the stack: served, pointed at the API, and
            # allowed by the API (CORS) and by realtime (the Origin check).
            assert client.get(f"{stack.console}/").status_code == 200
            config = client.get(f"{stack.console}/config.js").text
            assert f'"apiUrl": "{stack.api}"' in config
            assert f'"realtimeUrl": "{stack.ws}"' in config
            preflight = client.options(
                "/v1/jobs",
                headers={"Origin": stack.console, "Access-Control-Request-Method": "POST"},
            )
            assert preflight.headers.get("access-control-allow-origin") == stack.console
            ticket = client.post("/v1/realtime/ticket", headers=headers).json()["ticket"]
            with connect(f"{stack.ws}?ticket={ticket}", origin=Origin(stack.console)) as socket:
                assert json.loads(socket.recv(timeout=10))["type"] == "hello"
            posted = client.post(
                "/v1/jobs",
                headers=headers,
                json={"kind": "demo.countdown", "params": {"steps": 5, "interval": 0.3}},
            )
            assert posted.status_code == 202, posted.text
            job_id = posted.json()["id"]

            # The client CLI, as in the README: replays the stream from the start,
            # follows live events, exits 0 once the job succeeded.
            started = time.monotonic()
            watched = subprocess.run(
                [sys.executable, "-m", "jobsclient", "--api", stack.api, "--ws", stack.ws,
                 "--email", email, "--password", PASSWORD, "--last-event-id", "0-0",
                 "--until-done", job_id, "--json"],
                cwd=ROOT, capture_output=True, text=True, timeout=90, check=False,
            )  # fmt: skip
            assert watched.returncode == 0, f"{watched.stdout}\n{watched.stderr}"
            events = [json.loads(line) for line in watched.stdout.splitlines()]
            mine = [e["type"] for e in events if e.get("job_id") == job_id]
            assert "job.progress" in mine, watched.stdout
            assert mine[-1] == "job.succeeded", mine
            assert time.monotonic() - started < 90

            job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
            assert job["state"] == "succeeded", job
            assert job["result"] == {"steps": 5}


class TestComposeFile:
    """What docker-compose.yml says by default, as Compose resolves it (no engine needed)."""

    def test_the_api_and_realtime_allow_the_consoles_default_origin(self, tmp_path: Path) -> None:
        found = subprocess.run(
            [str(ROOT / "scripts" / "compose.sh")], capture_output=True, text=True, check=False
        )  # fmt: skip
        if found.returncode != 0:
            pytest.skip(f"no Compose here: {found.stderr.splitlines()[0]}")
        settings = {"CORS_ORIGINS", "CONSOLE_PORT", "API_PORT", "REALTIME_PORT"}
        env = {key: value for key, value in os.environ.items() if key not in settings}
        env["JWT_SECRET"] = secrets.token_hex(32)  # no default: `make up` generates one
        (tmp_path / "empty.env").write_text("")  # and no developer's .env either
        resolved = subprocess.run(
            [*found.stdout.split(), "--env-file", str(tmp_path / "empty.env"), "config"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        services = yaml.safe_load(resolved.stdout)["services"]
        for name in ("api", "realtime"):
            origins = services[name]["environment"]["CORS_ORIGINS"].split(",")
            assert {"http://127.0.0.1:8002", "http://localhost:8002"} <= set(origins), name
        console = services["console"]["environment"]
        assert console["CONSOLE_API_URL"] == "http://127.0.0.1:8000"
        assert console["CONSOLE_REALTIME_URL"] == "ws://127.0.0.1:8001/ws"
