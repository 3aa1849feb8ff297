"""SIGTERM closes every socket with 1012 (service restart) and the master exits 0."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

import pytest

from devharness.realtime import listen
from tests.fixtures.realtime import RealtimeFactory, TokenFor

pytestmark = pytest.mark.system

GRACEFUL_TIMEOUT = 10
CLIENTS = 10


class TestShutdown:
    """Clients learn to reconnect elsewhere and resume; none is left hanging."""

    async def test_sigterm_closes_sockets_with_1012_within_the_graceful_timeout(
        self, realtime_factory: RealtimeFactory, token_for: TokenFor
    ) -> None:
        realtime = await realtime_factory(GUNICORN_GRACEFUL_TIMEOUT=str(GRACEFUL_TIMEOUT))
        listeners = await asyncio.gather(
            *(listen(realtime.ws_url, token=token_for(uuid.uuid4())) for _ in range(CLIENTS))
        )
        started = time.monotonic()
        realtime.process.send_signal(signal.SIGTERM)
        codes = [await listener.wait_closed(within=GRACEFUL_TIMEOUT) for listener in listeners]
        assert codes == [1012] * CLIENTS
        assert time.monotonic() - started < GRACEFUL_TIMEOUT
        assert await realtime.wait_exit(GRACEFUL_TIMEOUT + 5) == 0
