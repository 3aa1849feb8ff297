"""What the jobs endpoints accept and answer."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from common.contracts.jobs import JobState


class JobCreate(BaseModel):
    """A job to run: a registered kind and its parameters."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"kind": "demo.countdown", "params": {"steps": 10, "interval": 0.5}},
                {"kind": "report.jobs_summary", "params": {}},
            ]
        },
    )

    kind: str = Field(min_length=1, max_length=100, description="A registered job kind")
    params: dict[str, Any] = Field(default_factory=dict, description="The kind's parameters")


class JobRead(BaseModel):
    """A job as the API shows it."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    kind: str
    state: JobState
    progress: int = Field(ge=0, le=100)
    params: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobPage(BaseModel):
    """One page of jobs, newest first; pass `next_cursor` as `cursor` for the next."""

    items: list[JobRead]
    next_cursor: str | None


class JobKindRead(BaseModel):
    """A kind a job can have, with the JSON schema of its parameters."""

    name: str
    description: str
    params_schema: dict[str, Any]
