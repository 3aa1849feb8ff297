"""`common.routing.add_routes`: routes on the app itself behave as included ones."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI
from pydantic import SecretStr

from api.main import routers
from api.settings import ApiSettings
from common.errors import install_error_handlers
from common.routing import add_routes


def _routers() -> list[APIRouter]:
    return routers(ApiSettings(_env_file=None, environment="test", metrics_token=SecretStr("t")))


def _both(routers: list[APIRouter]) -> tuple[FastAPI, FastAPI]:
    added, included = FastAPI(title="t"), FastAPI(title="t")
    for app in (added, included):
        install_error_handlers(app)
    for router in routers:
        add_routes(added, router)
        included.include_router(router)
    return added, included


def test_the_api_schema_is_the_one_include_router_gives() -> None:
    added, included = _both(_routers())
    assert added.openapi() == included.openapi()
    # In the routers' order, after FastAPI's own (the schema and docs pages).
    own = [getattr(route, "path", None) for router in _routers() for route in router.routes]
    assert [getattr(route, "path", None) for route in added.routes][-len(own) :] == own


def _real() -> str:
    return "real"


_items = APIRouter(prefix="/items", tags=["items"], dependencies=[Depends(_real)])


@_items.get("/{item_id}", status_code=203)
async def _read(item_id: int, source: Annotated[str, Depends(_real)]) -> dict[str, Any]:
    return {"id": item_id, "source": source}


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/items/3", 203),
        ("GET", "/items/x", 422),
        ("POST", "/items/3", 405),
        ("GET", "/no", 404),
    ],
)
async def test_answers_and_overrides_are_those_of_an_included_router(
    method: str, path: str, status: int
) -> None:
    answers = []
    for app in _both([_items]):
        app.dependency_overrides[_real] = lambda: "override"
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.request(method, path)
        answers.append((response.status_code, response.json(), response.headers.get("allow")))
    assert answers[0] == answers[1]
    assert answers[0][0] == status
    if status == 203:
        assert answers[0][1] == {"id": 3, "source": "override"}
