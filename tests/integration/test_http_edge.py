"""The HTTP edge: request ids, security headers, timing, CORS, proxy headers and the docs."""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi import FastAPI
from starlette.requests import Request

from api.main import create_app
from api.settings import ApiSettings
from tests.fixtures.api import ClientFactory, SettingsFactory
from tests.fixtures.problems import assert_problem

TEST_CLIENT_ADDRESS = "203.0.113.7"  # what the ASGI transport of the client fixtures reports
ALLOWED_ORIGIN = "https://app.example.com"


async def _client_host(request: Request) -> dict[str, str | None]:
    return {"host": request.client.host if request.client else None, "scheme": request.url.scheme}


def _app_reporting_client(settings: ApiSettings) -> FastAPI:
    app = create_app(settings)
    app.add_api_route("/test/client", _client_host)
    return app


class TestRequestId:
    """Every answer carries X-Request-ID: the caller's if well formed, a fresh one otherwise."""

    async def test_well_formed_incoming_id_is_echoed(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/health/live", headers={"X-Request-ID": "edge-test-0001"})
        assert response.headers["x-request-id"] == "edge-test-0001"

    async def test_incoming_id_is_the_error_request_id(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/nowhere", headers={"X-Request-ID": "edge-test-0002"})
        assert assert_problem(response, 404)["request_id"] == "edge-test-0002"

    @pytest.mark.parametrize(
        "incoming",
        ["x" * 129, "with spaces in it", "line\nbreak-0001", "tab\tseparated-01"],
        ids=["too_long", "spaces", "newline", "tab"],
    )
    async def test_malformed_incoming_id_is_replaced(
        self, client: httpx.AsyncClient, incoming: str
    ) -> None:
        # The in-process transport passes the raw bytes on, newline included.
        response = await client.get("/health/live", headers={b"X-Request-ID": incoming.encode()})
        assert response.headers["x-request-id"] != incoming
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])

    async def test_missing_id_is_generated_per_request(self, client: httpx.AsyncClient) -> None:
        first = await client.get("/health/live")
        second = await client.get("/health/live")
        assert first.headers["x-request-id"] != second.headers["x-request-id"]


class TestSecurityHeaders:
    """Security headers on every answer, the document ones on pages; HSTS only in production."""

    @pytest.mark.parametrize("path", ["/health/live", "/nowhere", "/docs"])
    async def test_security_headers_are_present(self, client: httpx.AsyncClient, path: str) -> None:
        response = await client.get(path)
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        csp = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp
        assert "script-src 'self'" in csp

    @pytest.mark.parametrize(
        ("path", "page"),
        [("/docs", True), ("/redoc", True), ("/health/live", False), ("/nowhere", False)],
    )
    async def test_document_headers_only_on_pages(
        self, client: httpx.AsyncClient, path: str, page: bool
    ) -> None:
        response = await client.get(path)
        assert response.headers["content-type"].startswith("text/html") is page
        document = {
            "referrer-policy": "strict-origin-when-cross-origin",
            "cross-origin-opener-policy": "same-origin",
            "permissions-policy": "camera=(), microphone=(), geolocation=()",
        }
        seen = {name: response.headers.get(name) for name in document}
        assert seen == (document if page else dict.fromkeys(document))

    async def test_no_hsts_outside_production(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/health/live")
        assert "strict-transport-security" not in response.headers

    async def test_hsts_in_production(
        self, client_factory: ClientFactory, settings_factory: SettingsFactory, jwt_secret: str
    ) -> None:
        assert len(jwt_secret) >= 32
        app = create_app(settings_factory(environment="production", jwt_secret=jwt_secret))
        client = await client_factory(app)
        response = await client.get("/health/live")
        assert response.status_code == 200
        assert response.headers["strict-transport-security"].startswith("max-age=")

    async def test_server_timing_is_present(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/health/live")
        assert re.fullmatch(r"app;dur=\d+(\.\d+)?", response.headers["server-timing"])


class TestCors:
    """Preflights from allowed origins get the CORS headers; others get none."""

    @pytest.fixture
    async def cors_client(
        self, client_factory: ClientFactory, settings_factory: SettingsFactory
    ) -> httpx.AsyncClient:
        settings = settings_factory(cors_origins=[ALLOWED_ORIGIN], cors_max_age=600)
        return await client_factory(create_app(settings))

    async def test_preflight_from_allowed_origin_is_allowed(
        self, cors_client: httpx.AsyncClient
    ) -> None:
        response = await cors_client.options(
            "/v1/users/me",
            headers={
                "Origin": ALLOWED_ORIGIN,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "Authorization",
            },
        )
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        # No cookies are used: bearer tokens need no credentialed CORS (#15 §7).
        assert "access-control-allow-credentials" not in response.headers
        assert "GET" in response.headers["access-control-allow-methods"]
        assert "authorization" in response.headers["access-control-allow-headers"].lower()
        assert response.headers["access-control-max-age"] == "600"

    @pytest.mark.parametrize("origin", [None, ALLOWED_ORIGIN], ids=["same-origin", "cross-origin"])
    async def test_every_answer_varies_by_origin(
        self, cors_client: httpx.AsyncClient, origin: str | None
    ) -> None:
        # A cache must not serve an answer without Access-Control-Allow-Origin to a
        # cross-origin caller, nor one with it to another origin.
        headers = {"Origin": origin} if origin else {}
        for path, status in (("/health/live", 200), ("/nowhere", 404)):
            response = await cors_client.get(path, headers=headers)
            assert response.status_code == status
            varies = {
                token.strip().lower()
                for value in response.headers.get_list("vary")
                for token in value.split(",")
            }
            assert "origin" in varies, response.headers
            allowed = response.headers.get("access-control-allow-origin")
            assert allowed == origin

    async def test_preflight_from_other_origin_is_not_allowed(
        self, cors_client: httpx.AsyncClient
    ) -> None:
        response = await cors_client.options(
            "/v1/users/me",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        )
        assert response.status_code == 400
        assert "access-control-allow-origin" not in response.headers
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["request_id"] == response.headers["x-request-id"]

    async def test_simple_request_from_allowed_origin_exposes_request_id(
        self, cors_client: httpx.AsyncClient
    ) -> None:
        response = await cors_client.get("/health/live", headers={"Origin": ALLOWED_ORIGIN})
        assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        assert "x-request-id" in response.headers["access-control-expose-headers"].lower()

    async def test_simple_request_from_other_origin_gets_no_cors_headers(
        self, cors_client: httpx.AsyncClient
    ) -> None:
        response = await cors_client.get("/health/live", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in response.headers


# What a proxy that terminated TLS for 198.51.100.20 adds.
_VIA_PROXY = {"X-Forwarded-For": "198.51.100.20", "X-Forwarded-Proto": "https"}


class TestProxyHeaders:
    """X-Forwarded-For is believed only from FORWARDED_ALLOW_IPS, and read from the right."""

    @pytest.fixture
    async def trusting_client(
        self, client_factory: ClientFactory, settings_factory: SettingsFactory
    ) -> httpx.AsyncClient:
        settings = settings_factory(forwarded_allow_ips=[TEST_CLIENT_ADDRESS, "10.0.0.0/8"])
        return await client_factory(
            _app_reporting_client(settings), forwarded_allow_ips=settings.forwarded_allow_ips
        )

    @pytest.mark.parametrize(
        "forwarded_for",
        [
            "198.51.100.20, 10.1.2.3",
            # The client wrote 6.6.6.6 itself; our proxy appended the address it saw.
            "6.6.6.6, 198.51.100.20",
        ],
        ids=["trusted-proxy-on-the-right", "spoofed-left-most-entry-ignored"],
    )
    async def test_right_most_untrusted_entry_is_the_client(
        self, trusting_client: httpx.AsyncClient, forwarded_for: str
    ) -> None:
        response = await trusting_client.get(
            "/test/client", headers={"X-Forwarded-For": forwarded_for}
        )
        assert response.json()["host"] == "198.51.100.20"

    async def test_forwarded_proto_is_believed_from_a_trusted_proxy(
        self, trusting_client: httpx.AsyncClient
    ) -> None:
        response = await trusting_client.get("/test/client", headers=_VIA_PROXY)
        assert response.json()["scheme"] == "https"

    async def test_header_from_an_untrusted_peer_is_ignored(
        self, client_factory: ClientFactory, settings_factory: SettingsFactory
    ) -> None:
        settings = settings_factory(forwarded_allow_ips=["127.0.0.1"])
        client = await client_factory(
            _app_reporting_client(settings), forwarded_allow_ips=settings.forwarded_allow_ips
        )
        response = await client.get("/test/client", headers=_VIA_PROXY)
        assert response.json() == {"host": TEST_CLIENT_ADDRESS, "scheme": "http"}


_ASSET_URL = re.compile(r'(?:src|href)="([^"]+)"')


class TestDocs:
    """Swagger UI and ReDoc are served from the app alone, and can be turned off."""

    @pytest.mark.parametrize("path", ["/docs", "/redoc"])
    async def test_docs_page_references_only_own_static_assets(
        self, client: httpx.AsyncClient, path: str
    ) -> None:
        response = await client.get(path)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert "http://" not in response.text
        assert "https://" not in response.text
        assets = _ASSET_URL.findall(response.text)
        assert assets
        assert all(url.startswith("/static/") for url in assets), assets
        assert "<script>" not in response.text  # no inline script under the CSP

    @pytest.mark.parametrize("path", ["/docs", "/redoc"])
    async def test_docs_assets_are_served(self, client: httpx.AsyncClient, path: str) -> None:
        page = await client.get(path)
        for url in _ASSET_URL.findall(page.text):
            asset = await client.get(url)
            assert asset.status_code == 200, url
            content_type = asset.headers["content-type"]
            if url.endswith(".js"):
                assert "javascript" in content_type, url
            elif url.endswith(".css"):
                assert content_type.startswith("text/css"), url
            assert asset.content

    async def test_docs_can_be_turned_off(
        self,
        client_factory: ClientFactory,
        settings_factory: SettingsFactory,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setenv("DOCS_ENABLED", "false")
        settings = settings_factory()
        assert settings.docs_enabled is False
        client = await client_factory(create_app(settings))
        for path in ("/docs", "/redoc", "/openapi.json", "/static/docs/swagger-ui.css"):
            assert_problem(await client.get(path), 404)


class TestOpenApi:
    """The schema documents problem+json errors and the OAuth2 password flow."""

    async def test_errors_are_documented_as_problem_json(self, client: httpx.AsyncClient) -> None:
        schema = (await client.get("/openapi.json")).json()
        assert "Problem" in schema["components"]["schemas"]
        unauthorized = schema["paths"]["/v1/users/me"]["get"]["responses"]["401"]
        assert unauthorized["content"]["application/problem+json"]["schema"] == {
            "$ref": "#/components/schemas/Problem"
        }
        register = schema["paths"]["/v1/auth/register"]["post"]["responses"]
        assert {"201", "409", "422"} <= set(register)

    async def test_oauth2_password_flow_is_the_security_scheme(
        self, client: httpx.AsyncClient
    ) -> None:
        schema = (await client.get("/openapi.json")).json()
        schemes = schema["components"]["securitySchemes"]
        [scheme] = [s for s in schemes.values() if s["type"] == "oauth2"]
        assert scheme["flows"]["password"]["tokenUrl"] == "/v1/auth/token"
        me = schema["paths"]["/v1/users/me"]["get"]
        assert any(set(requirement) & set(schemes) for requirement in me["security"])
