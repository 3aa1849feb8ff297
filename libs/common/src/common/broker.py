"""The Celery app configuration shared by the API (which sends) and the worker (which runs).

Tuned for "never lose an accepted job" with Redis as the broker: late acks,
reject on worker loss, prefetch 1, JSON only, and a visibility timeout longer
than the longest job's hard time limit (so a live job is never delivered
twice). A dead worker's job does not wait for that timeout: the worker's
lease in Postgres expires and the sweep requeues it.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson
from celery import Celery
from celery.utils.nodenames import anon_nodename

from common.contracts.job_kinds import JOB_KINDS, MAX_TIME_LIMIT
from common.contracts.tasks import (
    JOBS_QUEUE,
    KIND_HEADER,
    REQUEST_ID_HEADER,
    RUN_JOB_TASK,
    TRACEPARENT_HEADER,
)
from common.kombu_redis import TRANSPORT
from common.settings import CommonSettings
from common.tracing import sending

VISIBILITY_TIMEOUT = MAX_TIME_LIMIT + 3600


def celery_config(settings: CommonSettings) -> dict[str, Any]:
    """Celery settings (lower-case names) for `settings`."""
    transport_options: dict[str, Any] = {
        "visibility_timeout": VISIBILITY_TIMEOUT,
        "socket_connect_timeout": settings.redis_socket_timeout,
        "socket_timeout": settings.redis_socket_timeout,
        "retry_on_timeout": True,
        # A send to a broker that is down fails on the first connect attempt
        # instead of kombu's retry loop, which sleeps 2 s and more whatever the
        # timeouts: the job row is the outbox and the relay resends. The
        # worker's consumer passes its own retry policy, so it still reconnects.
        "max_retries": 0,
    }
    if settings.redis_key_prefix:
        transport_options["global_keyprefix"] = settings.redis_key_prefix
    broker_url = settings.broker_url or settings.redis_url
    return {
        "broker_url": broker_url,
        # kombu's Redis transport with one client per channel (`common.kombu_redis`);
        # any other scheme, rediss:// (TLS) included, keeps the transport kombu picks.
        "broker_transport": TRANSPORT if urlsplit(broker_url).scheme == "redis" else None,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": settings.redis_socket_timeout,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        # Job state lives in Postgres; Celery keeps no results.
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_default_queue": JOBS_QUEUE,
        "task_create_missing_queues": True,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "enable_utc": True,
        "timezone": "UTC",
    }


def create_celery(settings: CommonSettings, *, main: str, sender: bool = False) -> Celery:
    """A Celery app for `settings`; connects lazily, on first send or on worker start.

    A `sender` (the API) does not retry a send that timed out: the job row is
    the outbox and the relay resends, and without the retry kombu can send
    many messages in one pipeline (`send_queued_jobs`).
    """
    app = Celery(main, set_as_current=False)
    config = celery_config(settings)
    if sender:
        config["broker_transport_options"]["retry_on_timeout"] = False
    app.conf.update(config)
    return app


class QueuedJob(Protocol):
    """What sending a job's message needs of it: a Job, or a row of the jobs table."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def kind(self) -> str: ...
    @property
    def params(self) -> dict[str, Any]: ...
    @property
    def request_id(self) -> str | None: ...
    @property
    def traceparent(self) -> str | None: ...


@dataclass(frozen=True)
class JobToSend:
    """A `QueuedJob` held by value, for a job whose row is not at hand."""

    id: uuid.UUID
    kind: str
    params: dict[str, Any]
    request_id: str | None
    traceparent: str | None


def send_queued_job(celery: Celery, job: QueuedJob, *, producer: Any = None) -> None:
    """`send_job` for a job as stored, with the request id and traceparent it was created with."""
    send_job(
        celery,
        job_id=str(job.id),
        kind=job.kind,
        params=job.params,
        request_id=job.request_id,
        traceparent=job.traceparent,
        producer=producer,
    )


def send_queued_jobs(celery: Celery, jobs: Sequence[QueuedJob]) -> None:
    """`send_queued_job` for each of `jobs`, in one round trip to the broker when it can.

    kombu buffers the messages of a producer's batch in a Redis pipeline (for a
    `create_celery(..., sender=True)` app); raises if the broker is unreachable.
    """
    with celery.producer_or_acquire() as producer, producer.batch():
        for job in jobs:
            send_queued_job(celery, job, producer=producer)


def send_job(
    celery: Celery,
    *,
    job_id: str,
    kind: str,
    params: dict[str, Any],
    request_id: str | None = None,
    traceparent: str | None = None,
    producer: Any = None,
) -> None:
    """Send the message that runs job `job_id`; raises if the broker is unreachable.

    The job id is the task id, so every copy of the message (relay resend,
    sweep requeue) names the same job and the guarded claim runs it once.
    `request_id` and `traceparent` (of the request that created the job) go in
    the message headers, so the worker's logs and events name that request.
    """
    soft, hard = JOB_KINDS[kind].limits(params)
    with sending(RUN_JOB_TASK, job_id, traceparent) as carried:
        headers = {REQUEST_ID_HEADER: request_id, TRACEPARENT_HEADER: carried, KIND_HEADER: kind}
        celery.send_task(
            RUN_JOB_TASK,
            args=[job_id],
            task_id=job_id,
            queue=JOBS_QUEUE,
            soft_time_limit=soft,
            time_limit=hard,
            headers={name: value for name, value in headers.items() if value is not None},
            # Fail fast: the job row is the outbox, and the relay retries for us.
            retry=False,
            producer=producer,
        )


# The parts of a Celery protocol-2 message that are the same for every job.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_FIXED_HEADERS: dict[str, Any] = {
    "lang": "py",
    "task": RUN_JOB_TASK,
    "shadow": None,
    "eta": None,
    "expires": None,
    "group": None,
    "group_index": None,
    "retries": 0,
    "parent_id": None,
    "kwargsrepr": "{}",
    "ignore_result": None,
    "replaced_task_nesting": 0,
    "stamped_headers": None,
    "stamps": {},
}


def queue_key(prefix: str) -> str:
    """The Redis list kombu keeps the jobs queue in (priority 0, `global_keyprefix` first)."""
    return f"{prefix}{JOBS_QUEUE}"


def job_message(job: QueuedJob) -> bytes:
    """The message `send_queued_job` would push for `job`: the JSON kombu's Redis transport stores.

    For a sender on an asyncio Redis client (the API's intake): it pushes this
    with LPUSH to `queue_key(prefix)` in the pipeline that carries the job's
    event, one round trip for both, where kombu's producer is blocking I/O
    that needs a thread. `tests/integration/test_broker_message.py` checks it
    against what kombu sends; no result backend, so no `reply_to`.
    """
    job_id = str(job.id)
    soft, hard = JOB_KINDS[job.kind].limits(job.params)
    with sending(RUN_JOB_TASK, job_id, job.traceparent) as carried:
        headers = {
            **_FIXED_HEADERS,
            "id": job_id,
            "timelimit": [hard, soft],
            "root_id": job_id,
            "argsrepr": repr([job_id]),
            "origin": anon_nodename(),
        }
    extra = {REQUEST_ID_HEADER: job.request_id, TRACEPARENT_HEADER: carried, KIND_HEADER: job.kind}
    headers.update((name, value) for name, value in extra.items() if value is not None)
    # orjson, compact, where kombu's own serializer spaces the same JSON: 244k ->
    # 130k instructions per message (docs/performance.md, the fourteenth pass).
    body = orjson.dumps([[job_id], {}, _EMBED])
    envelope = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": job_id,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": JOBS_QUEUE},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return orjson.dumps(envelope)
