"""`RealtimeState`: what the realtime service's lifespan yields, declared once."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from common.state import CommonState
from realtime.settings import RealtimeSettings

if TYPE_CHECKING:
    from starlette.types import Scope

    from realtime.hub import Hub
    from realtime.presence import UserSockets


class RealtimeState(CommonState[RealtimeSettings]):
    """The realtime process's clients and services, built in its lifespan."""

    hub: Hub
    user_sockets: UserSockets


def realtime_state(scope: Scope) -> RealtimeState:
    """The copy of the lifespan state in `scope` (a plain ASGI endpoint has no request)."""
    return cast("RealtimeState", scope["state"])
