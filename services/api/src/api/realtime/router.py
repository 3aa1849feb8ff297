"""/v1/realtime: tickets for the WebSocket service's handshake."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from api.dependencies import RedisClient, Settings
from api.realtime import service as realtime_service
from api.realtime.schemas import TicketRead
from api.users.dependencies import CurrentUser
from common.auth import CurrentPrincipal
from common.openapi import problem_responses
from common.ratelimit import rate_limit

router = APIRouter(
    prefix="/v1/realtime",
    tags=["realtime"],
    dependencies=[rate_limit("writes")],
    responses=problem_responses(429),
)


@router.post(
    "/ticket",
    status_code=status.HTTP_201_CREATED,
    summary="A single-use ticket for the WebSocket handshake",
    responses=problem_responses(401),
)
async def create_ticket(
    _: CurrentUser,
    principal: CurrentPrincipal,
    settings: Settings,
    redis: RedisClient,
    response: Response,
) -> TicketRead:
    ttl = settings.realtime_ticket_ttl_seconds
    ticket = await realtime_service.issue_ticket(
        redis, principal=principal, prefix=settings.redis_key_prefix, ttl=ttl
    )
    response.headers["Cache-Control"] = "no-store"
    return TicketRead(ticket=ticket, expires_in=ttl)
