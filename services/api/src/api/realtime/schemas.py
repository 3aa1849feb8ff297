"""What the realtime ticket endpoint answers."""

from __future__ import annotations

from pydantic import BaseModel, Field


class TicketRead(BaseModel):
    """A single-use ticket for one WebSocket handshake with the realtime service."""

    ticket: str = Field(description="Put it in the WebSocket URL: `/ws?ticket=...`")
    expires_in: int = Field(description="Seconds until the ticket lapses unused")
