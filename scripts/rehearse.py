"""`make rehearse`: do here, for every service in render.yaml, what Render does on a deploy.

For each service: a fresh virtualenv on PATH (as Render's Python runtime has),
its `buildCommand` verbatim, then its `preDeployCommand`, then its
`startCommand` with `PORT` and the Blueprint's env vars resolved:
`fromDatabase` to a fresh database on the local Postgres, `fromService` to the
local Redis (or another rehearsed service), `generateValue` to a random
secret, `sync: false` to a safe test value. A web service must answer 200 on
`healthCheckPath` (sent with its onrender.com Host); a worker must log that
Celery is ready; both must then exit 0 on SIGTERM within
`maxShutdownDelaySeconds`. A cron job runs once and must exit 0.

Postgres and Redis come from TEST_DATABASE_URL / TEST_REDIS_URL, else embedded
servers (as the tests find them). Catches a Blueprint whose commands do not
work, which the schema check cannot.

    python -m scripts.rehearse [--only api,worker] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg

from devharness.processes import popen_in_session
from devharness.services import provide_services
from devservices import free_port
from scripts.blueprint import ROOT, Backing, BlueprintError, base_env, load, render_env, resolve_env

BUILD_TIMEOUT = 600.0
PRE_DEPLOY_TIMEOUT = 300.0
HEALTH_TIMEOUT = 120.0
READY_TIMEOUT = 90.0
CRON_TIMEOUT = 300.0
DEFAULT_SHUTDOWN_DELAY = 30.0  # Render's default maxShutdownDelaySeconds
WORKER_READY = re.compile(r"celery@\S+ ready\.")


class RehearsalFailed(BlueprintError):
    """A step did not do what Render needs; the message says which and shows the log."""


@dataclass
class Service:
    """One `services:` entry of the Blueprint, and where its rehearsal keeps its files."""

    spec: dict[str, Any]
    work_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    python: str = ""  # the interpreter the venv was made with (a version or a path)

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def type(self) -> str:
        return str(self.spec["type"])

    @property
    def venv(self) -> Path:
        return self.work_dir / "venv"

    def log_path(self, step: str) -> Path:
        return self.work_dir / f"{step}.log"


def _log(message: str) -> None:
    print(f"rehearse: {message}", flush=True)


def _tail(path: Path, lines: int = 60) -> str:
    text = path.read_text(errors="replace") if path.exists() else "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _python_version(blueprint_env: dict[str, str]) -> str:
    """The interpreter for the venv: PYTHON_VERSION's major.minor (this machine's patch)."""
    pinned = blueprint_env.get("PYTHON_VERSION")
    if not pinned:
        raise RehearsalFailed("PYTHON_VERSION is not pinned; Render would pick its default")
    return ".".join(pinned.split(".")[:2])


def _uv() -> str:
    """The uv that `make install` uses (REHEARSE_UV: a command, e.g. `python3 -m uv`)."""
    return os.environ.get("REHEARSE_UV") or shutil.which("uv") or f"{sys.executable} -m uv"


def _interpreter(version: str) -> str:
    """`version` when this machine has it, else this Python, saying so.

    Render builds on PYTHON_VERSION; a machine without that minor (ours reach no
    download site for interpreters) still rehearses every command, on the Python
    that runs this script. The GitHub workflow installs the pinned minor, so there
    the rehearsal uses it.
    """
    found = subprocess.run(  # noqa: S603 (uv, from the Makefile or PATH)
        [*shlex.split(_uv()), "python", "find", version],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if found.returncode == 0:
        return version
    ours = ".".join(map(str, sys.version_info[:3]))
    _log(
        f"render.yaml pins Python {version}, which this machine lacks (uv python find "
        f"{version}); rehearsing on this Python {ours} ({sys.executable}) instead"
    )
    return sys.executable


# --- steps -------------------------------------------------------------------


def _command_env(service: Service) -> dict[str, str]:
    """Ours (tooling only) + the Blueprint's + what Render sets, the venv first on PATH."""
    env = base_env(service.venv / "bin")
    env.update(service.env)
    env.update(render_env(service.spec, port=service.port))
    env["VIRTUAL_ENV"] = str(service.venv)
    return env


def _run(service: Service, step: str, command: str, *, timeout: float) -> None:
    """Run one Blueprint command under bash from the repo root; raise with its log."""
    log_path = service.log_path(step)
    started = time.monotonic()
    with log_path.open("wb") as log:
        try:
            code = subprocess.run(  # noqa: S603 (the Blueprint's own commands)
                ["/bin/bash", "-c", command],
                cwd=ROOT,
                env=_command_env(service),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
                start_new_session=True,
            ).returncode
        except subprocess.TimeoutExpired:
            raise RehearsalFailed(
                f"{service.name} {step} took over {timeout:g}s:\n{_tail(log_path)}"
            ) from None
    service.timings[step] = time.monotonic() - started
    if code != 0:
        raise RehearsalFailed(f"{service.name} {step} exited {code}:\n{_tail(log_path)}")


def build(service: Service) -> None:
    """A fresh virtualenv (Render's runtime has one on PATH), then `buildCommand`."""
    shutil.rmtree(service.work_dir, ignore_errors=True)
    service.work_dir.mkdir(parents=True)
    python = shlex.quote(service.python)
    venv_cmd = f"{_uv()} venv --quiet --seed --python {python} {shlex.quote(str(service.venv))}"
    _run(service, "venv", venv_cmd, timeout=120)
    _run(service, "build", service.spec["buildCommand"], timeout=BUILD_TIMEOUT)


def _start(service: Service) -> subprocess.Popen[bytes]:
    log = service.log_path("start").open("wb")
    command = ["/bin/bash", "-c", service.spec["startCommand"]]  # the Blueprint's own
    return popen_in_session(command, cwd=ROOT, env=_command_env(service), log=log)


def _await_health(service: Service, process: subprocess.Popen[bytes]) -> None:
    path = service.spec["healthCheckPath"]
    url = f"http://127.0.0.1:{service.port}{path}"
    # Render's health checker sends the service's onrender.com name as Host.
    headers = {"Host": f"{service.name}.onrender.com"}
    deadline = time.monotonic() + HEALTH_TIMEOUT
    last = "no answer"
    with httpx.Client(timeout=5.0) as client:  # Render: no reply in 5 s = failed
        while True:
            if process.poll() is not None:
                raise RehearsalFailed(
                    f"{service.name} exited {process.returncode} before it was healthy:\n"
                    f"{_tail(service.log_path('start'))}"
                )
            try:
                response = client.get(url, headers=headers)
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text[:300]}"
            except httpx.TransportError as exc:
                last = repr(exc)
            if time.monotonic() > deadline:
                raise RehearsalFailed(
                    f"{service.name}: GET {path} not 200 within {HEALTH_TIMEOUT:g}s "
                    f"(last: {last}):\n{_tail(service.log_path('start'))}"
                )
            time.sleep(0.2)  # poll interval


def _await_log(
    service: Service, process: subprocess.Popen[bytes], pattern: re.Pattern[str]
) -> None:
    log_path = service.log_path("start")
    deadline = time.monotonic() + READY_TIMEOUT
    while not pattern.search(log_path.read_text(errors="replace")):
        if process.poll() is not None:
            raise RehearsalFailed(
                f"{service.name} exited {process.returncode} before logging "
                f"{pattern.pattern!r}:\n{_tail(log_path)}"
            )
        if time.monotonic() > deadline:
            raise RehearsalFailed(
                f"{service.name} did not log {pattern.pattern!r} within {READY_TIMEOUT:g}s:\n"
                f"{_tail(log_path)}"
            )
        time.sleep(0.1)  # poll interval


def _stop(service: Service, process: subprocess.Popen[bytes]) -> None:
    """SIGTERM as Render does; the process must exit 0 within maxShutdownDelaySeconds."""
    grace = float(service.spec.get("maxShutdownDelaySeconds", DEFAULT_SHUTDOWN_DELAY))
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        # Render's SIGKILL after the delay; the group is the one we created.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise RehearsalFailed(
            f"{service.name} still running {grace:g}s after SIGTERM:\n"
            f"{_tail(service.log_path('start'))}"
        ) from None
    finally:
        # Anything the leader left behind in its group goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    service.timings["stop"] = time.monotonic() - started
    if code != 0:
        raise RehearsalFailed(
            f"{service.name} exited {code} on SIGTERM:\n{_tail(service.log_path('start'))}"
        )


def deploy(service: Service) -> None:
    """`preDeployCommand`, then `startCommand` until healthy or ready, then SIGTERM."""
    if service.spec.get("preDeployCommand"):
        _run(service, "preDeploy", service.spec["preDeployCommand"], timeout=PRE_DEPLOY_TIMEOUT)
    if service.type == "cron":
        _run(service, "run", service.spec["startCommand"], timeout=CRON_TIMEOUT)
        return
    started = time.monotonic()
    process = _start(service)
    try:
        if service.type == "web":
            _await_health(service, process)
        elif "celery" in service.spec["startCommand"]:
            _await_log(service, process, WORKER_READY)
        else:
            # A worker of another kind: it must at least stay up a while.
            time.sleep(5)
            if process.poll() is not None:
                raise RehearsalFailed(
                    f"{service.name} exited {process.returncode}:\n"
                    f"{_tail(service.log_path('start'))}"
                )
        service.timings["ready"] = time.monotonic() - started
    finally:
        if process.poll() is None:
            _stop(service, process)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


# --- backing services ---------------------------------------------------------


def _admin_url(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme.split("+")[0], *parts[1:]))


@contextlib.contextmanager
def backing_services() -> Iterator[Backing]:
    """A fresh database on the local Postgres and the local Redis, both gone after."""
    with provide_services() as urls:
        admin = _admin_url(urls.postgres)
        name = f"rehearse_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(admin)
        database_url = urlunsplit((parts.scheme, parts.netloc, f"/{name}", "", ""))
        _log(f"postgres: {database_url} ({urls.source}); redis: {urls.redis}")
        try:
            yield Backing(database_url=database_url, redis_url=urls.redis)
        finally:
            with psycopg.connect(admin, autocommit=True, connect_timeout=10) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- main ---------------------------------------------------------------------


def _deploy_order(services: list[Service]) -> list[Service]:
    # Migrations first (Render would fail the others' health until they ran),
    # then long-running services, cron jobs last.
    rank = {"web": 1, "pserv": 1, "worker": 2, "cron": 3}
    return sorted(services, key=lambda s: (not s.spec.get("preDeployCommand"), rank[s.type]))


def rehearse(blueprint_path: Path, *, only: set[str] | None, work_root: Path) -> list[Service]:
    """Build every service (in parallel), then deploy each in turn; raise on the first failure."""
    blueprint = load(blueprint_path)
    specs = [
        s for s in blueprint.get("services", []) if s["type"] in {"web", "pserv", "worker", "cron"}
    ]
    unknown = (only or set()) - {s["name"] for s in specs}
    if unknown:
        raise RehearsalFailed(f"not in {blueprint_path.name}: {', '.join(sorted(unknown))}")
    services = [
        Service(spec=s, work_dir=work_root / s["name"])
        for s in specs
        if only is None or s["name"] in only
    ]
    by_name = {s.name: s for s in services}
    generated: dict[str, str] = {}
    with backing_services() as backing:
        for service in services:
            if service.type in {"web", "pserv"}:
                service.port = free_port()
        for service in services:
            service.env = resolve_env(
                service.spec,
                blueprint=blueprint,
                backing=backing,
                peers=by_name,
                generated=generated,
            )
        versions = {_python_version(s.env) for s in services}
        interpreters = {version: _interpreter(version) for version in sorted(versions)}
        for service in services:
            service.python = interpreters[_python_version(service.env)]
        _log(f"building {', '.join(s.name for s in services)} (fresh venvs, in parallel)")
        with ThreadPoolExecutor(max_workers=len(services)) as pool:
            for future in [pool.submit(build, s) for s in services]:
                future.result()
        for service in _deploy_order(services):
            _log(f"{service.name}: build ok in {service.timings['build']:.1f}s; deploying")
            deploy(service)
            _log(f"{service.name}: ok {_timings(service)}")
    return services


def _timings(service: Service) -> str:
    return " ".join(f"{step}={seconds:.1f}s" for step, seconds in service.timings.items())


def main(argv: list[str] | None = None) -> int:
    """Entry point of `make rehearse`."""
    parser = argparse.ArgumentParser(prog="rehearse", description=__doc__.splitlines()[0])
    parser.add_argument("--blueprint", type=Path, default=ROOT / "render.yaml")
    parser.add_argument("--only", help="comma-separated service names (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the venvs and logs")
    parser.add_argument("--work-dir", type=Path, default=ROOT / ".run" / "rehearse")
    args = parser.parse_args(argv)
    only = {n.strip() for n in args.only.split(",") if n.strip()} if args.only else None
    started = time.monotonic()
    try:
        services = rehearse(args.blueprint, only=only, work_root=args.work_dir)
    except BlueprintError as exc:
        print(f"rehearse: FAILED: {exc}", file=sys.stderr, flush=True)
        print(f"rehearse: logs kept in {args.work_dir}", file=sys.stderr)
        return 1
    if not args.keep:
        shutil.rmtree(args.work_dir, ignore_errors=True)
    for service in services:
        _log(f"  {service.type:6} {service.name:10} python {service.python} {_timings(service)}")
    _log(
        f"all {len(services)} services deployed as Render would ({time.monotonic() - started:.0f}s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
