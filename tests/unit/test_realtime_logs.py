"""The realtime service's log filter: no ticket in a logged path, no token in a header line."""

from __future__ import annotations

import logging

import pytest

from realtime.logs import CredentialFilter

TICKET = "c2VjcmV0LXRpY2tldC10aGF0LXN0aWxsLXdvcmtz"
TOKEN = "eyJhbGciOiJIUzI1NiJ9.payload.signature"


def _rendered(msg: str, *args: object) -> str:
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, msg, args, None)
    assert CredentialFilter().filter(record)
    return record.getMessage()


class TestCredentialFilter:
    """What uvicorn and websockets would log, as the filter lets it through."""

    def test_a_websocket_handshake_line_loses_its_query_string(self) -> None:
        line = _rendered('%s - "WebSocket %s" [accepted]', "127.0.0.1:5000", f"/ws?ticket={TICKET}")
        assert line == '127.0.0.1:5000 - "WebSocket /ws" [accepted]'

    def test_an_access_line_loses_its_query_string(self) -> None:
        line = _rendered(
            '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", f"/ws?ticket={TICKET}", "1.1", 404
        )
        assert line == '127.0.0.1:5000 - "GET /ws HTTP/1.1" 404'

    def test_websockets_request_line_at_debug_loses_its_query_string(self) -> None:
        line = _rendered("< %s %s %s", "GET", f"/ws?ticket={TICKET}&last_event_id=1-0", "HTTP/1.1")
        assert line == "< GET /ws HTTP/1.1"

    @pytest.mark.parametrize("header", ["Authorization", "authorization", "Cookie"])
    def test_a_credential_header_line_at_debug_is_redacted(self, header: str) -> None:
        line = _rendered("< %s: %s", header, f"Bearer {TOKEN}")
        assert line == f"< {header}: [redacted]"

    def test_other_lines_are_unchanged(self) -> None:
        assert _rendered("< %s: %s", "Host", "realtime.example.com") == (
            "< Host: realtime.example.com"
        )
        assert _rendered("what is this? %s", "a question") == "what is this? a question"
