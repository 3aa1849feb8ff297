"""Jobs dependencies: the Idempotency-Key header (the intake is in `api.dependencies`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="Same key and body: the same job, never a second one",
    ),
]
