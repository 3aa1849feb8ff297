"""A user's view of the jobs API, and a tap on their event channel and stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, cast

import httpx
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from common.contracts.events import user_channel, user_stream

FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
JobBody = dict[str, Any]


@dataclass
class JobsUser:
    """A registered user calling the jobs API with their bearer token."""

    client: httpx.AsyncClient
    id: str
    access_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}

    async def post_job(
        self, kind: str, params: dict[str, Any], *, headers: dict[str, str] | None = None
    ) -> JobBody:
        """POST /v1/jobs (with extra `headers`); asserts 202 and the Location, returns the job."""
        response = await self.client.post(
            "/v1/jobs",
            json={"kind": kind, "params": params},
            headers={**self.headers, **(headers or {})},
        )
        assert response.status_code == 202, response.text
        body: JobBody = response.json()
        assert response.headers["location"] == f"/v1/jobs/{body['id']}"
        return body

    async def get_job(self, job_id: str) -> JobBody:
        response = await self.client.get(f"/v1/jobs/{job_id}", headers=self.headers)
        assert response.status_code == 200, response.text
        body: JobBody = response.json()
        return body

    async def cancel_job(self, job_id: str) -> httpx.Response:
        return await self.client.post(f"/v1/jobs/{job_id}/cancel", headers=self.headers)

    async def wait_for_job(
        self, job_id: str, until: Callable[[JobBody], bool], *, within: float
    ) -> JobBody:
        """Poll GET /v1/jobs/{id} until `until(job)`; TimeoutError showing the last job."""
        deadline = time.monotonic() + within
        while True:
            job = await self.get_job(job_id)
            if until(job):
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job not as expected within {within:g}s: {job}")
            await asyncio.sleep(0.05)  # poll interval

    async def wait_until_final(self, job_id: str, *, within: float) -> JobBody:
        return await self.wait_for_job(
            job_id, lambda job: job["state"] in FINAL_STATES, within=within
        )


@dataclass
class EventTap:
    """The events published on one user's channel, collected from before the first job."""

    redis: Redis
    prefix: str
    user_id: str
    received: list[dict[str, Any]] = field(default_factory=list)
    _pubsub: PubSub | None = None
    _reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventTap:
        self._pubsub = self.redis.pubsub()
        await self._pubsub.subscribe(user_channel(self.prefix, self.user_id))
        # The subscribe confirmation: from here on nothing published is missed.
        confirmation = await self._pubsub.get_message(timeout=5.0)
        assert confirmation is not None
        assert confirmation["type"] == "subscribe"
        self._reader = asyncio.create_task(self._read(self._pubsub))
        return self

    async def _read(self, pubsub: PubSub) -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None and message["type"] == "message":
                self.received.append(json.loads(message["data"]))

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped

    def of_job(self, job_id: str) -> list[dict[str, Any]]:
        """The events received about `job_id`, in arrival order."""
        return [event for event in self.received if event.get("job_id") == job_id]

    async def wait_for(self, job_id: str, event_type: str, *, within: float) -> dict[str, Any]:
        """The first `event_type` event about `job_id`, once it has arrived."""
        deadline = time.monotonic() + within
        while True:
            for event in self.of_job(job_id):
                if event["type"] == event_type:
                    return event
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {event_type} for job {job_id} within {within:g}s")
            await asyncio.sleep(0.05)  # poll interval

    async def stream(self, job_id: str | None = None) -> list[dict[str, Any]]:
        """The user's stream entries (optionally of one job), oldest first, with their ids."""
        entries = cast(
            "list[tuple[bytes, dict[bytes, bytes]]]",
            await self.redis.xrange(user_stream(self.prefix, self.user_id)),
        )
        events = []
        for entry_id, fields in entries:
            event = json.loads(fields[b"event"])
            event["id"] = entry_id.decode()
            if job_id is None or event.get("job_id") == job_id:
                events.append(event)
        return events


def new_prefix(run_prefix: str) -> str:
    """A key prefix of one test's own, inside the run's prefix."""
    return f"{run_prefix}{uuid.uuid4().hex[:8]}:"
