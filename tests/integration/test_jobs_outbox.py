"""A job accepted while the broker is down is committed unsent, and the relay sends it.

No worker runs here, so a job stays queued unless a test moves it in SQL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from redis.asyncio import Redis
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import AsyncEngine

from api.main import create_app
from api.settings import ApiSettings
from common.broker import create_celery
from common.contracts.tasks import RUN_JOB_TASK
from devservices import free_port
from tests.fixtures.api import ClientFactory, MakeUser
from tests.fixtures.jobs import (
    message_for,
    post_job,
    read_job,
)
from worker.maintenance import relay


class TestBrokerDown:
    """With the broker unreachable a job is still accepted and left for the relay."""

    async def test_job_is_accepted_unsent_and_the_relay_sends_it(
        self,
        client_factory: ClientFactory,
        settings_factory: Callable[..., ApiSettings],
        settings: ApiSettings,
        make_user: MakeUser,
        db_engine: AsyncEngine,
        redis: Redis,
    ) -> None:
        down = settings_factory(
            broker_url=f"redis://127.0.0.1:{free_port()}/0", redis_socket_timeout=0.5
        )
        api = await client_factory(create_app(down))
        user = await make_user()
        started = time.monotonic()
        response = await post_job(api, user)
        assert response.status_code == 202, response.text
        # kombu's connect retry loop alone used to sleep 2 s here.
        assert time.monotonic() - started < 1.5
        job_id = response.json()["id"]
        assert (await read_job(db_engine, job_id))["sent_at"] is None
        prefix = settings.redis_key_prefix
        assert await message_for(redis, prefix, job_id) is None

        engine = create_engine(settings.sync_database_url)
        celery = create_celery(settings, main="t")
        try:
            sent, failed = await asyncio.to_thread(relay, engine, celery, grace=0, resend_after=300)
        finally:
            celery.close()
            engine.dispose()
        assert sent >= 1
        assert failed == 0
        assert (await read_job(db_engine, job_id))["sent_at"] is not None
        message = await message_for(redis, prefix, job_id)
        assert message is not None
        assert message["headers"]["task"] == RUN_JOB_TASK
