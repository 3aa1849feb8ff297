"""Routers' routes added to the app itself, as FastAPI's `include_router` used to.

In the FastAPI we pin (0.165), `include_router` keeps each router behind an `_IncludedRouter`
that matches a request twice (the router's `matches`, then its `handle`) and
resolves the route's effective context per request: 5.5 us more per request
than the same route added to the app (`/health/live` in process, 39.6 -> 34.1
us), and every route of ours was in an included router. `add_routes` adds
each route of a router to the app's own router with `add_api_route`, with
the attributes the route was built with (its router's prefix, dependencies,
tags and responses are already in them), so the app's dependency overrides,
its OpenAPI schema and its error handling are those `include_router` gives
(tests/unit/test_routing.py compares both).
"""

from __future__ import annotations

import inspect
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

# add_api_route's keyword parameters that an APIRoute keeps as attributes of the same name.
_COPIED = tuple(
    name
    for name in inspect.signature(APIRouter.add_api_route).parameters
    if name not in {"self", "path", "endpoint", "route_class_override"}
)


def add_routes(app: FastAPI, router: APIRouter) -> None:
    """Add every route of `router` to `app`'s own router, in order (no prefix of its own)."""
    for route in router.routes:
        if isinstance(route, APIRoute):
            fields: dict[str, Any] = {
                name: getattr(route, name) for name in _COPIED if hasattr(route, name)
            }
            app.router.add_api_route(
                route.path, route.endpoint, route_class_override=type(route), **fields
            )
        else:
            app.router.routes.append(route)
