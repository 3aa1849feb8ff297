"""The gunicorn worker class: uvicorn's, with the WebSocket limits from the settings."""

from __future__ import annotations

from typing import Any

from uvicorn_worker import UvicornWorker as _UvicornWorker  # type: ignore[import-untyped]

from realtime.settings import RealtimeSettings, get_settings


def websocket_options(settings: RealtimeSettings) -> dict[str, Any]:
    """uvicorn `Config` arguments for our sockets: size limit, heartbeats, no compression."""
    return {
        # Named rather than "auto": its shutdown closes open sockets with 1012.
        "ws": "websockets-sansio",
        "ws_max_size": settings.ws_max_message_bytes,
        "ws_ping_interval": settings.ws_heartbeat_seconds,
        "ws_ping_timeout": settings.ws_heartbeat_timeout_seconds,
        # Compression keeps a zlib context per socket (tens of KB each) to
        # shrink small JSON frames: memory we would rather spend on sockets.
        "ws_per_message_deflate": False,
    }


class UvicornWorker(_UvicornWorker):  # type: ignore[misc]
    """`uvicorn_worker.UvicornWorker` configured by `websocket_options`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.CONFIG_KWARGS = {**_UvicornWorker.CONFIG_KWARGS, **websocket_options(get_settings())}
        super().__init__(*args, **kwargs)
