"""Every error, from routing to a crash, is problem+json carrying the request id."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from api.main import create_app
from api.settings import ApiSettings
from common.logging import JsonFormatter
from tests.fixtures.api import PASSWORD, AppClient, ClientFactory, RegisteredUser
from tests.fixtures.problems import assert_plain_500, assert_problem


class TestRoutingErrors:
    """Unknown paths and wrong methods answer problem+json."""

    async def test_unknown_path_is_404(self, client: httpx.AsyncClient) -> None:
        body = assert_problem(await client.get("/v1/nothing-here"), 404)
        assert body["title"] == "Not Found"

    async def test_wrong_method_is_405(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/v1/auth/token")
        assert_problem(response, 405)
        assert response.headers["allow"] == "POST"


class TestDomainErrors:
    """401, 409 and 422 raised by endpoints answer problem+json."""

    async def test_missing_token_is_401(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/v1/users/me")
        assert_problem(response, 401)
        assert response.headers["www-authenticate"] == "Bearer"

    async def test_duplicate_registration_is_409(
        self, client: httpx.AsyncClient, make_user: Callable[[], Awaitable[RegisteredUser]]
    ) -> None:
        user = await make_user()
        response = await client.post(
            "/v1/auth/register", json={"email": user.email, "password": PASSWORD}
        )
        assert_problem(response, 409)

    async def test_invalid_body_is_422_with_field_errors(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/v1/auth/register", json={"email": "x@example.com"})
        body = assert_problem(response, 422)
        assert {"loc": ["body", "password"], "msg": "Field required", "type": "missing"} in body[
            "errors"
        ]

    async def test_malformed_json_is_422(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/v1/auth/register",
            content=b'{"email": ',
            headers={"Content-Type": "application/json"},
        )
        body = assert_problem(response, 422)
        assert body["errors"][0]["type"] == "json_invalid"

    async def test_json_body_that_is_not_utf8_is_422(self, client: httpx.AsyncClient) -> None:
        # Found by schemathesis: FastAPI answered an undocumented 400 here.
        response = await client.post(
            "/v1/auth/refresh", content=b"\xff\xfe(", headers={"Content-Type": "application/json"}
        )
        body = assert_problem(response, 422)
        assert body["errors"] == [
            {"loc": ["body"], "msg": "Body is not valid UTF-8 JSON", "type": "json_invalid"}
        ]


class TestBodyTooLarge:
    """A body over max_body_bytes is 413 problem+json, declared or streamed."""

    async def test_declared_content_length_over_the_limit_is_413(
        self, client: httpx.AsyncClient, settings: ApiSettings
    ) -> None:
        response = await client.post(
            "/v1/auth/register",
            content=b"x" * (settings.max_body_bytes + 1),
            headers={"Content-Type": "application/json"},
        )
        body = assert_problem(response, 413)
        assert str(settings.max_body_bytes) in body["detail"]
        assert response.headers["connection"] == "close"

    async def test_streamed_body_over_the_limit_is_413(
        self, client: httpx.AsyncClient, settings: ApiSettings
    ) -> None:
        chunk = b" " * 65536

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(settings.max_body_bytes // len(chunk) + 2):
                yield chunk

        response = await client.post(
            "/v1/auth/register", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert "content-length" not in response.request.headers
        body = assert_problem(response, 413)
        assert str(settings.max_body_bytes) in body["detail"]
        assert response.headers["connection"] == "close"


class TestBadHost:
    """A Host outside ALLOWED_HOSTS is 400 problem+json."""

    async def test_unlisted_host_is_400(self, app_client: AppClient) -> None:
        client = await app_client(allowed_hosts=["api.example.com"])
        rejected = await client.get("/health/live")
        body = assert_problem(rejected, 400)
        assert body["title"] == "Invalid host header"
        assert rejected.headers["x-content-type-options"] == "nosniff"
        allowed = await client.get("/health/live", headers={"Host": "api.example.com"})
        assert allowed.status_code == 200


async def _crash() -> None:
    raise RuntimeError("secret internals")


async def _crash_mid_body() -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        yield b"partial"
        raise RuntimeError("secret internals")

    return StreamingResponse(body(), media_type="text/plain")


@pytest.fixture
def crashing_app(settings_factory: Callable[..., ApiSettings]) -> FastAPI:
    # Built in a fixture: create_app() installs the logging config, which would
    # otherwise detach caplog's handler from the root logger mid-test.
    app = create_app(settings_factory())
    app.add_api_route("/test/crash", _crash)
    app.add_api_route("/test/crash-mid-body", _crash_mid_body)
    return app


@pytest.fixture
def json_caplog(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog formatting with our JsonFormatter, while the request id is still current."""
    previous = caplog.handler.formatter
    caplog.handler.setFormatter(JsonFormatter())
    yield caplog
    caplog.handler.setFormatter(previous)


class TestUnhandledError:
    """A crash is a 500 problem without internals; the log has the traceback and request id."""

    async def test_crash_is_500_without_internals(
        self, client_factory: ClientFactory, crashing_app: FastAPI
    ) -> None:
        client = await client_factory(crashing_app)
        response = await client.get("/test/crash")
        assert_plain_500(response, "secret internals", "Traceback", "RuntimeError")
        assert response.headers["x-content-type-options"] == "nosniff"

    async def test_a_crash_after_the_answer_started_is_not_answered_twice(
        self,
        client_factory: ClientFactory,
        crashing_app: FastAPI,
        json_caplog: pytest.LogCaptureFixture,
    ) -> None:
        # The status line is out: no 500 can follow it, the error goes to the server.
        client = await client_factory(crashing_app)
        with pytest.raises(RuntimeError, match="secret internals"):
            await client.get("/test/crash-mid-body")
        [record] = [r for r in json_caplog.records if r.name == "common.errors"]
        assert isinstance(record.exc_info and record.exc_info[1], RuntimeError)

    async def test_crash_is_logged_with_traceback_and_request_id(
        self,
        client_factory: ClientFactory,
        crashing_app: FastAPI,
        json_caplog: pytest.LogCaptureFixture,
    ) -> None:
        client = await client_factory(crashing_app)
        response = await client.get("/test/crash", headers={"X-Request-ID": "crash-req-0001"})
        assert response.status_code == 500
        [record] = [r for r in json_caplog.records if r.name == "common.errors"]
        assert record.levelno == logging.ERROR
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], RuntimeError)
        [line] = [
            record
            for record in map(json.loads, json_caplog.text.splitlines())
            if record["logger"] == "common.errors"
        ]
        assert line["request_id"] == "crash-req-0001"
        assert "Traceback" in line["exc_info"]
        assert "RuntimeError: secret internals" in line["exc_info"]
