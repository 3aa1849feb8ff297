"""Swagger UI and ReDoc served entirely by the app: no CDN, no inline script.

The JavaScript and CSS come from the `fastapi-offline` package's static
files, so the docs work with no internet and under a strict CSP.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

_VENDOR_DIR = Path(fastapi_offline.__file__).parent / "static"
_OWN_DIR = Path(__file__).parent / "static"
# ReDoc's sidebar shows Redocly's logo from their CDN, which the CSP blocks (a
# console error on every view, and a request that must not leave): serve the
# bundle with that logo replaced by an empty inline image.
_REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
_EMPTY_SVG = "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg'/%3E"

# Scripts only from this origin; Swagger UI and ReDoc set inline styles and
# ReDoc runs a worker from a blob: URL.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "worker-src 'self' blob:",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    )
)


def _page(title: str, head: str, body: str) -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{escape(title)}</title><link rel="icon" href="/static/docs/favicon.png">'
        f"{head}</head><body>{body}</body></html>"
    )


def install_docs(app: FastAPI) -> None:
    """Serve `/docs`, `/redoc` and their assets; the app must have `docs_url=None`."""
    openapi_url = escape(app.openapi_url or "/openapi.json")
    app.mount("/static/docs", StaticFiles(directory=_VENDOR_DIR), name="docs-vendor")
    app.mount("/static/app", StaticFiles(directory=_OWN_DIR), name="docs-own")
    swagger = _page(
        f"{app.title} - Swagger UI",
        '<link rel="stylesheet" href="/static/docs/swagger-ui.css">',
        f'<div id="swagger-ui" data-openapi-url="{openapi_url}"></div>'
        '<script src="/static/docs/swagger-ui-bundle.js"></script>'
        '<script src="/static/app/swagger-init.js"></script>',
    )
    redoc = _page(
        f"{app.title} - ReDoc",
        "",
        f'<redoc spec-url="{openapi_url}"></redoc>'
        '<script src="/static/redoc/redoc.standalone.js"></script>',
    )
    redoc_bundle = (
        (_VENDOR_DIR / "redoc.standalone.js")
        .read_text(encoding="utf-8")
        .replace(_REDOC_LOGO, _EMPTY_SVG)
    )

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return HTMLResponse(swagger)

    @app.get("/redoc", include_in_schema=False)
    async def redoc_ui() -> HTMLResponse:
        return HTMLResponse(redoc)

    @app.get("/static/redoc/redoc.standalone.js", include_in_schema=False)
    async def redoc_script() -> Response:
        return Response(
            redoc_bundle,
            media_type="text/javascript; charset=utf-8",
            headers={"Cache-Control": "public, max-age=3600"},
        )
