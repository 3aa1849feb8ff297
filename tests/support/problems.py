"""The problem+json contract every error answer must meet (DESIGN §4)."""

from __future__ import annotations

from typing import Any

import httpx


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """Assert `response` is a problem+json `status` naming its request id; return the body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail", "request_id"} <= set(body)
    assert body["status"] == status
    assert body["request_id"] == response.headers["x-request-id"]
    return body
