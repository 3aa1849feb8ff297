"""The realtime service's settings: everything in `CommonSettings` plus its own fields."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field

from common.ratelimit import LimitSpec
from common.settings import CommonSettings, load_settings


class RealtimeSettings(CommonSettings):
    """Settings of the WebSocket process."""

    service_name: str = "realtime"
    # Frames waiting for one socket; a client that lets it fill is closed with 1013.
    ws_send_queue_size: int = Field(default=256, ge=1, le=100_000)
    # The largest message a client may send (uvicorn's ws_max_size and our own check).
    ws_max_message_bytes: int = Field(default=4096, ge=128, le=1_048_576)
    # Protocol pings: sent every interval, the socket dropped if no pong within the timeout.
    ws_heartbeat_seconds: float = Field(default=20.0, gt=0, le=3600)
    ws_heartbeat_timeout_seconds: float = Field(default=20.0, gt=0, le=3600)
    # A client that sends nothing (not even a `ping`) for this long is closed with 1001.
    ws_idle_timeout_seconds: float = Field(default=300.0, gt=0)
    # How long a close frame may wait behind a client's unread data before we give up.
    ws_close_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    # Stream entries read per XRANGE while replaying missed events.
    ws_replay_batch: int = Field(default=100, ge=1, le=10_000)
    # Reconnect backoff of the Redis subscription: doubles from the first to the cap, jittered.
    pubsub_backoff_seconds: float = Field(default=0.1, gt=0, le=60)
    pubsub_backoff_max_seconds: float = Field(default=5.0, gt=0, le=300)
    # Handshakes per client IP (before authentication) and per user (after), in Redis;
    # messages a client may send on one connection (counted in the process). 1008 beyond.
    rate_limit_ws_connect_ip: LimitSpec = "60/minute"
    rate_limit_ws_connect_user: LimitSpec = "30/minute"
    rate_limit_ws_messages: LimitSpec = "120/minute"

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
