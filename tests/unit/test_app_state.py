"""Routers reach the lifespan state only through dependencies (`api.dependencies`, `common.db`)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import api
import realtime

_CONNECTION_TYPES = {"HTTPConnection", "Request", "WebSocket"}
_STATE_ACCESSORS = {"state_of", "database_state", "api_state", "realtime_state"}
# The realtime socket endpoint is plain ASGI (no dependency machinery per socket): it
# reads the typed state through `realtime_state`, but never `.state` either.
_ROUTERS = sorted(Path(api.__file__).parent.glob("**/router.py"))
_SOCKET_ENDPOINT = Path(realtime.__file__).parent / "endpoint.py"


def _last_name(node: ast.expr) -> str:
    return ast.unparse(node).rsplit(".", 1)[-1]


def _connection_names(tree: ast.AST) -> set[str]:
    """Names bound to a connection: annotated parameters and `WebSocket(...)`-style calls."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and node.annotation is not None:
            if _last_name(node.annotation) in _CONNECTION_TYPES:
                names.add(node.arg)
        elif (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and _last_name(node.value.func) in _CONNECTION_TYPES
        ):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def _reads_state(node: ast.expr, connections: set[str], *, accessors_allowed: bool) -> bool:
    if isinstance(node, ast.Attribute):  # connection.state
        return (
            node.attr == "state"
            and isinstance(node.value, ast.Name)
            and node.value.id in connections
        )
    if isinstance(node, ast.Subscript):  # scope["state"], read (clearing it is allowed)
        return (
            isinstance(node.ctx, ast.Load)
            and isinstance(node.slice, ast.Constant)
            and node.slice.value == "state"
        )
    if isinstance(node, ast.Call):  # api_state(connection)
        return not accessors_allowed and _last_name(node.func) in _STATE_ACCESSORS
    return False


def state_reads(source: str, *, accessors_allowed: bool = False) -> list[str]:
    """Each place `source` reads the lifespan state other than through a dependency."""
    tree = ast.parse(source)
    connections = _connection_names(tree)
    return [
        f"line {node.lineno}: {ast.unparse(node)}"
        for node in ast.walk(tree)
        if isinstance(node, ast.expr)
        and _reads_state(node, connections, accessors_allowed=accessors_allowed)
    ]


class TestRoutersTakeStateThroughDependencies:
    """No router reads `request.state`/`connection.state` or the scope's state itself."""

    def test_the_scan_covers_every_router(self) -> None:
        assert {path.parent.name for path in _ROUTERS} >= {"auth", "jobs", "realtime", "users"}

    @pytest.mark.parametrize("path", _ROUTERS, ids=lambda path: path.parent.name)
    def test_router_reads_no_state(self, path: Path) -> None:
        assert state_reads(path.read_text()) == []

    def test_socket_endpoint_reads_only_the_typed_state(self) -> None:
        assert state_reads(_SOCKET_ENDPOINT.read_text(), accessors_allowed=True) == []


class TestTheScan:
    """The scan finds each way of reading the state that it forbids."""

    @pytest.mark.parametrize(
        "source",
        [
            "async def f(connection: HTTPConnection):\n    return connection.state.redis\n",
            "async def f(request: starlette.requests.Request):\n    return request.state.x\n",
            "async def f(scope):\n    ws = WebSocket(scope)\n    return ws.state.hub\n",
            "async def f(connection):\n    return connection.scope['state']['redis']\n",
            "async def f(connection):\n    return api_state(connection)['redis']\n",
        ],
    )
    def test_finds_a_state_read(self, source: str) -> None:
        assert len(state_reads(source)) == 1

    def test_ignores_a_state_attribute_of_other_objects(self) -> None:
        source = "async def f(job: Job, scope):\n    scope['state'] = {}\n    return job.state\n"
        assert state_reads(source) == []
