"""render.yaml as Render reads it: each service's commands and its env vars, resolved here.

`make rehearse` (scripts/rehearse.py) deploys every service from it and `make
bench` (bench/stack.py) measures the services it starts from it, so both run
what a deploy runs. Resolution, as Render would do it with local stand-ins:
`fromDatabase` to a database on the local Postgres, `fromService` to the local
Redis (or another service started here), `generateValue` to a random secret
(one per group variable, shared by the group's services), `sync: false` to a
safe test value.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parent.parent
BLUEPRINT = ROOT / "render.yaml"
# Values for `sync: false` variables (entered in Render's dashboard), safe for a rehearsal.
SYNC_FALSE_VALUES = {
    "ALLOWED_HOSTS": "{name}.onrender.com",
    "CORS_ORIGINS": "https://app.example.com",
}
# Only these reach a started service from our own environment: the package
# tooling's configuration (indexes, certificates, proxies, caches) and the locale.
_PASSED_THROUGH = re.compile(
    r"^(HOME|LANG|LC_ALL|TMPDIR|TERM|USER|SSL_CERT_FILE|SSL_CERT_DIR|REQUESTS_CA_BUNDLE"
    r"|PIP_.*|UV_.*|XDG_CACHE_HOME|(http|https|no|all)_proxy|(HTTP|HTTPS|NO|ALL)_PROXY)$"
)


class BlueprintError(Exception):
    """Raised when the Blueprint names something that cannot be resolved here."""


@dataclass(frozen=True)
class Backing:
    """The local stand-ins for the Blueprint's database and Key Value."""

    database_url: str
    redis_url: str


class Peer(Protocol):
    """Another service started here, as a `fromService` reference sees it."""

    @property
    def env(self) -> dict[str, str]: ...
    @property
    def port(self) -> int | None: ...


def load(path: Path = BLUEPRINT) -> dict[str, Any]:
    """The Blueprint as a dict."""
    blueprint: dict[str, Any] = yaml.safe_load(path.read_text())
    return blueprint


def service(blueprint: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The `services:` entry called `name`."""
    for spec in blueprint.get("services", []):
        if spec["name"] == name:
            return dict(spec)
    raise BlueprintError(f"no service {name!r} in the Blueprint")


def base_env(venv_bin: Path | None = None) -> dict[str, str]:
    """What a started command gets besides the Blueprint's env: tooling, PATH, unbuffered output.

    `venv_bin` goes first on PATH (Render's Python runtime puts its virtualenv
    there); this repository's own `.venv/bin` is dropped from PATH otherwise.
    """
    repo_bin = str(ROOT / ".venv" / "bin")
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != repo_bin]
    if venv_bin is not None:
        path.insert(0, str(venv_bin))
    env = {k: v for k, v in os.environ.items() if _PASSED_THROUGH.match(k)}
    env["PATH"] = os.pathsep.join(path)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _database_property(url: str, prop: str) -> str:
    parts = urlsplit(url)
    values = {
        "connectionString": url,
        "host": parts.hostname or "",
        "port": str(parts.port or 5432),
        "user": parts.username or "",
        "password": parts.password or "",
        "database": parts.path.lstrip("/"),
    }
    if prop not in values:
        raise BlueprintError(f"fromDatabase property {prop!r} is not resolved here")
    return values[prop]


def _from_service(
    name: str, ref: dict[str, Any], backing: Backing, peers: Mapping[str, Peer]
) -> str:
    if ref["type"] in {"keyvalue", "redis"}:
        parts = urlsplit(backing.redis_url)
        values = {
            "connectionString": backing.redis_url,
            "host": parts.hostname or "",
            "port": str(parts.port or 6379),
            "hostport": parts.netloc,
        }
        if ref.get("property") not in values:
            raise BlueprintError(f"{name}: Key Value property {ref} is not resolved here")
        return values[ref["property"]]
    other = peers.get(ref["name"])
    if other is None:
        raise BlueprintError(f"{name}: fromService names unknown service {ref['name']}")
    if "envVarKey" in ref:
        return other.env[ref["envVarKey"]]
    values = {"host": "127.0.0.1", "port": str(other.port), "hostport": f"127.0.0.1:{other.port}"}
    if ref.get("property") not in values:
        raise BlueprintError(f"{name}: fromService property {ref} is not resolved here")
    return values[ref["property"]]


def resolve_env(
    spec: Mapping[str, Any],
    *,
    blueprint: Mapping[str, Any],
    backing: Backing,
    peers: Mapping[str, Peer],
    generated: dict[str, str],
) -> dict[str, str]:
    """The env vars Render would give the service `spec`; `generated` keeps shared secrets."""
    name = str(spec["name"])
    groups = {g["name"]: g["envVars"] for g in blueprint.get("envVarGroups", [])}
    env: dict[str, str] = {}

    def plain(var: dict[str, Any], scope: str) -> str:
        if "value" in var:
            return str(var["value"])
        if var.get("generateValue"):
            # A group's generated value is one value shared by all its services.
            return generated.setdefault(f"{scope}:{var['key']}", secrets.token_urlsafe(32))
        if var.get("sync") is False:
            template = SYNC_FALSE_VALUES.get(var["key"])
            if template is None:
                raise BlueprintError(
                    f"{name}: no rehearsal value for sync:false {var['key']}; "
                    "add one to SYNC_FALSE_VALUES"
                )
            return template.format(name=name)
        raise BlueprintError(f"{name}: env var {var} is not understood")

    for var in spec.get("envVars", []):
        if "fromGroup" in var:
            if var["fromGroup"] not in groups:
                raise BlueprintError(f"{name}: no envVarGroup {var['fromGroup']!r}")
            for group_var in groups[var["fromGroup"]]:
                env[group_var["key"]] = plain(group_var, f"group:{var['fromGroup']}")
        elif "fromDatabase" in var:
            ref = var["fromDatabase"]
            names = {d["name"] for d in blueprint.get("databases", [])}
            if ref["name"] not in names:
                raise BlueprintError(f"{name}: no database {ref['name']!r}")
            env[var["key"]] = _database_property(backing.database_url, ref["property"])
        elif "fromService" in var:
            env[var["key"]] = _from_service(name, var["fromService"], backing, peers)
        else:
            env[var["key"]] = plain(var, f"service:{name}")
    return env


def render_env(spec: Mapping[str, Any], *, port: int | None) -> dict[str, str]:
    """What Render itself sets in a service's environment: RENDER*, and PORT for a web service."""
    env = {
        "RENDER": "true",
        "RENDER_SERVICE_NAME": str(spec["name"]),
        "RENDER_SERVICE_TYPE": str(spec["type"]),
    }
    if port is not None:
        env["PORT"] = str(port)
    return env
