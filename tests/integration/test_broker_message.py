"""`common.broker.job_message`: the message the API's intake pushes itself is kombu's."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest
from redis import Redis

from common.broker import JobToSend, create_celery, job_message, queue_key, send_queued_job
from common.contracts.job_kinds import DEMO_COUNTDOWN
from common.settings import CommonSettings

# Differ between any two sends: a fresh tag per message, the sending thread's reply queue.
PER_SEND = {"delivery_tag", "reply_to"}


def _without_per_send(message: dict[str, Any]) -> dict[str, Any]:
    """The message with its body decoded (the same JSON, however spaced) and no per-send field."""
    properties = {k: v for k, v in message["properties"].items() if k not in PER_SEND}
    body = json.loads(base64.b64decode(message["body"]))
    return {**message, "body": body, "properties": properties}


class TestJobMessage:
    """`job_message` gives what kombu's Redis transport stores for the same job (as JSON)."""

    @pytest.mark.parametrize(
        ("request_id", "traceparent"),
        [
            (None, None),
            ("a" * 32, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ],
    )
    def test_same_message_as_kombu_sends(
        self, sync_redis: Redis, redis_url: str, key_prefix: str, request_id: str | None,
        traceparent: str | None,
    ) -> None:  # fmt: skip
        settings = CommonSettings(_env_file=None, redis_url=redis_url, redis_key_prefix=key_prefix)
        celery = create_celery(settings, main="test", sender=True)
        job = JobToSend(uuid.uuid4(), DEMO_COUNTDOWN, {"steps": 2, "interval": 0.5}, request_id,
                        traceparent)  # fmt: skip
        try:
            send_queued_job(celery, job)
        finally:
            celery.close()
        [sent] = sync_redis.lrange(queue_key(key_prefix), 0, -1)

        ours = json.loads(job_message(job))

        assert _without_per_send(ours) == _without_per_send(json.loads(sent))
        assert ours["properties"]["delivery_tag"] != json.loads(sent)["properties"]["delivery_tag"]
