"""Every table of the database, imported so Alembic sees one complete metadata."""

from __future__ import annotations

from api.auth.models import RefreshToken
from api.users.models import User
from common.db import Base
from common.models import Job

metadata = Base.metadata

__all__ = ["Job", "RefreshToken", "User", "metadata"]
