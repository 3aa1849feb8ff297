"""The realtime service's settings: everything in `CommonSettings` plus its own fields."""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache

from pydantic import Field

from common.ratelimit import LimitSpec
from common.settings import CommonSettings, load_settings


class Routing(StrEnum):
    """How a realtime process receives events from Redis (`WS_ROUTING`)."""

    PATTERN = "pattern"
    PER_USER = "per_user"


class RealtimeSettings(CommonSettings):
    """Settings of the WebSocket process."""

    service_name: str = "realtime"
    ws_send_queue_size: int = Field(default=256, ge=1, le=100_000)
    """Frames waiting for one socket; a client that lets it fill is closed with 1013."""
    ws_max_message_bytes: int = Field(default=4096, ge=128, le=1_048_576)
    """Largest message a client may send (uvicorn's `ws_max_size` and our own check); 1009
    beyond."""
    ws_heartbeat_seconds: float = Field(default=20.0, gt=0, le=3600)
    """Interval of the protocol pings, seconds."""
    ws_heartbeat_timeout_seconds: float = Field(default=20.0, gt=0, le=3600)
    """Pong deadline before the socket is dropped, seconds."""
    ws_idle_timeout_seconds: float = Field(default=300.0, gt=0)
    """A client that sends nothing (not even a `ping`) for this long is closed with 1001,
    seconds."""
    ws_close_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    """How long a close frame may wait behind a client's unread data before we give up,
    seconds."""
    ws_connection_bytes: int = Field(default=16 * 1024, ge=1024, le=16 * 1024 * 1024)
    """Memory one idle socket holds, the kernel's share included (measured by `make bench`:
    the Fan-out memory rows give 11-13 KiB of RSS per bearer-authenticated socket, the
    Memory row's PSS agrees, and the kernel keeps about 2 KiB more). The sockets a worker
    accepts are sized from the memory budget with it."""
    ws_max_connections: int | None = Field(default=None, ge=1)
    """Sockets one worker process accepts; unset: as many as its share of the memory budget
    holds. A handshake beyond it is accepted and closed with 1013 (try again later)."""
    ws_max_connections_per_user: int = Field(default=20, ge=1, le=100_000)
    """Sockets one user may have open at once, across every worker and instance (counted in
    Redis); a handshake beyond it is accepted and closed with 1008."""
    ws_replay_batch: int = Field(default=100, ge=1, le=10_000)
    """Stream entries read per `XRANGE` while replaying missed events."""
    ws_routing: Routing = Routing.PER_USER
    """How a process receives events: `per_user` subscribes to the channels of the users
    with a socket in this process, one subscription per user however many sockets it has
    (each event reaches only the processes holding its user); `pattern` subscribes once to
    every user's channel (each event reaches every process). `bench/routing.py` measured
    both with 8 processes: per_user sends one eighth of the bytes (docs/scaling.md)."""
    pubsub_backoff_seconds: float = Field(default=0.1, gt=0, le=60)
    """First reconnect delay of the Redis subscription, seconds; it doubles up to
    `PUBSUB_BACKOFF_MAX_SECONDS`, jittered."""
    pubsub_backoff_max_seconds: float = Field(default=5.0, gt=0, le=300)
    """Longest reconnect delay of the Redis subscription, seconds."""
    # Connect limits in Redis; the message limit in the process (a socket lives in one).
    rate_limit_ws_connect_ip: LimitSpec = "60/minute"
    """Handshakes per client IP, counted before authentication; 1008 beyond."""
    rate_limit_ws_connect_user: LimitSpec = "30/minute"
    """Handshakes per user, counted after authentication; 1008 beyond."""
    rate_limit_ws_messages: LimitSpec = "120/minute"
    """Messages a client may send on one connection; beyond it the socket closes with 1008."""

    def rate_limit_specs(self) -> dict[str, str]:
        """The Redis-backed policies' names and limits."""
        return {
            "ws_connect_ip": self.rate_limit_ws_connect_ip,
            "ws_connect_user": self.rate_limit_ws_connect_user,
        }


@lru_cache
def get_settings() -> RealtimeSettings:
    """The process's settings, read from the environment once."""
    return load_settings(RealtimeSettings)
