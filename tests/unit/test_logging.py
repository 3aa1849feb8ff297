"""JSON log lines: the fixed fields, the request id, extras, and no uvicorn colour copy."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from common.logging import JsonFormatter, logging_config
from common.request_context import reset_request_id, set_request_id


def _record(
    message: str = "hello %s", *args: object, exc_info: Any = None, **extra: object
) -> logging.LogRecord:
    record = logging.LogRecord(
        name="app.thing",
        level=logging.WARNING,
        pathname=__file__,
        lineno=1,
        msg=message,
        args=args or ("world",),
        exc_info=exc_info,
    )
    record.__dict__.update(extra)
    return record


def _format(record: logging.LogRecord) -> dict[str, Any]:
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed: dict[str, Any] = json.loads(line)
    return parsed


@pytest.fixture
def request_id() -> Iterator[str]:
    token = set_request_id("req-12345678")
    yield "req-12345678"
    reset_request_id(token)


class TestJsonFormatter:
    """Each record becomes one JSON object with timestamp, level, logger, message, request_id."""

    def test_fixed_fields_are_emitted(self, request_id: str) -> None:
        line = _format(_record())
        assert line["level"] == "WARNING"
        assert line["logger"] == "app.thing"
        assert line["message"] == "hello world"
        assert line["request_id"] == request_id

    def test_timestamp_is_rfc3339_utc_with_milliseconds(self) -> None:
        record = _record()
        line = _format(record)
        assert line["timestamp"].endswith("Z")
        parsed = datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
        assert abs(parsed.timestamp() - record.created) < 0.001

    def test_request_id_is_absent_outside_a_request(self) -> None:
        assert "request_id" not in _format(_record())

    def test_request_id_on_the_record_wins(self, request_id: str) -> None:
        assert _format(_record(request_id="from-record"))["request_id"] == "from-record"

    def test_uvicorn_color_message_is_dropped(self) -> None:
        line = _format(_record(color_message="\x1b[32mhello world\x1b[0m"))
        assert "color_message" not in line
        assert "\x1b" not in json.dumps(line)

    def test_extras_are_fields(self) -> None:
        line = _format(_record(status=503, path="/health/ready"))
        assert line["status"] == 503
        assert line["path"] == "/health/ready"

    @pytest.mark.parametrize(
        "refused",
        [2**70, "/jobs/\udc80"],  # beyond 64 bits; a lone surrogate (not UTF-8)
        ids=["big-integer", "lone-surrogate"],
    )
    def test_what_orjson_refuses_is_still_written(self, refused: object) -> None:
        line = _format(_record(value=refused, when=datetime(2026, 1, 2)))
        assert line["value"] == refused
        assert line["when"] == "2026-01-02T00:00:00"
        assert line["message"] == "hello world"

    def test_traceback_is_included(self) -> None:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            line = _format(_record(exc_info=sys.exc_info()))
        assert "RuntimeError: boom" in line["exc_info"]
        assert "Traceback" in line["exc_info"]


class TestLoggingConfig:
    """The dictConfig sends every logger through the JSON formatter; duplicate access logs muted."""

    def test_root_logs_json_at_the_given_level(self) -> None:
        config = logging_config("debug")
        assert config["root"] == {"level": "DEBUG", "handlers": ["stdout"]}
        assert config["formatters"]["json"]["()"] is JsonFormatter

    def test_server_access_logs_are_muted(self) -> None:
        loggers = logging_config()["loggers"]
        for name in ("uvicorn.access", "gunicorn.access"):
            assert loggers[name]["level"] == "WARNING"
            assert loggers[name]["handlers"] == []
            assert loggers[name]["propagate"] is False


class TestWorkerPerTaskLines:
    """Celery's own line per task is off at INFO and on at DEBUG, however LOG_LEVEL is spelled."""

    @pytest.mark.parametrize(("level", "quiet"), [("INFO", True), ("info", True), ("debug", False)])
    def test_celery_per_task_loggers_follow_the_configured_level(
        self, monkeypatch: pytest.MonkeyPatch, level: str, quiet: bool
    ) -> None:
        from worker import app as worker_app

        names = worker_app._PER_TASK_LOGGERS
        saved = [logging.getLogger(name).level for name in (*names, "")]
        monkeypatch.setattr(worker_app, "get_settings", lambda: _Settings(level))
        try:
            worker_app._json_logging()
            levels = {logging.getLogger(name).getEffectiveLevel() for name in names}
            assert levels == ({logging.WARNING} if quiet else {logging.DEBUG})
        finally:
            for name, value in zip((*names, ""), saved, strict=True):
                logging.getLogger(name).setLevel(value)


class _Settings:
    def __init__(self, log_level: str) -> None:
        self.log_level = log_level
