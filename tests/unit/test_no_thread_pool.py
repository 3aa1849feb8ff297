"""Every route's endpoint and dependencies run on the event loop, none in FastAPI's thread pool.

FastAPI runs a plain function, a sync generator or a class given as a dependency
in its thread pool. Each hand-off to the thread and back costs the worker's CPU
and a wake-up of the loop: a login's form read as a class cost it about 1 ms.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, APIWebSocketRoute
from pydantic import SecretStr

from api.main import create_app as create_api
from api.settings import ApiSettings
from realtime.main import create_app as create_realtime
from realtime.settings import RealtimeSettings


def _apps() -> dict[str, FastAPI]:
    return {
        "api": create_api(
            ApiSettings(_env_file=None, environment="test", metrics_token=SecretStr("t"))
        ),
        "realtime": create_realtime(RealtimeSettings(_env_file=None, environment="test")),
    }


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    if dependant.call is not None:
        yield dependant.call
    for sub in dependant.dependencies:
        yield from _calls(sub)


def _on_the_loop(call: Callable[..., Any]) -> bool:
    if inspect.isclass(call):
        return False  # a class is called (constructed) in the thread pool
    target = call if inspect.isroutine(call) else type(call).__call__
    target = inspect.unwrap(target)
    return inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target)


@pytest.mark.parametrize("name", ["api", "realtime"])
def test_no_route_hands_work_to_the_thread_pool(name: str) -> None:
    app = _apps()[name]
    routes = [route for route in app.routes if isinstance(route, APIRoute | APIWebSocketRoute)]
    assert routes, f"{name} has no routes to check"
    offenders = {
        f"{route.path}: {getattr(call, '__qualname__', repr(call))}"
        for route in routes
        for call in _calls(route.dependant)
        if not _on_the_loop(call)
    }
    assert not offenders, f"run in FastAPI's thread pool: {sorted(offenders)}"


def test_the_check_tells_a_class_and_a_plain_function_from_a_coroutine() -> None:
    class Form:
        def __init__(self, value: str) -> None:
            self.value = value

    def plain() -> None:
        return None

    async def coroutine() -> None:
        return None

    assert not _on_the_loop(Form)
    assert not _on_the_loop(plain)
    assert _on_the_loop(coroutine)
