"""The Blueprint's Postgres connection budget: what every instance may open, at most, together.

Each process of each instance keeps a SQLAlchemy pool of `DB_POOL_SIZE`
connections and may open `DB_MAX_OVERFLOW` more under load, so at its most a
service holds instances x processes x (pool + overflow). With autoscaling the
instances are `scaling.maxInstances`. The sum over the services that get
`DATABASE_URL` must stay under Postgres' `max_connections` (100 unless the
server says otherwise: `SHOW max_connections`), less the few it reserves for
superusers, or a burst is refused connections at the worst moment. Each
process checks the same sum against the live server when it starts
(`common.connection_budget`).

    python -m scripts.connection_budget [--max-connections 100]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from common.connection_budget import Share, usable_connections
from scripts import blueprint

POSTGRES_DEFAULT_MAX_CONNECTIONS = 100
# superuser_reserved_connections' default: ordinary roles get the rest.
POSTGRES_RESERVED = 3


@dataclass(frozen=True)
class Row(Share):
    """One service's share of the budget (the arithmetic is `common.connection_budget`'s)."""

    service: str = ""


def _defaults(service_type: str) -> tuple[int, int]:
    """The pool size and overflow a process of this kind uses when the env sets neither."""
    settings: Any
    if service_type == "web":
        from api.settings import ApiSettings as settings
    else:
        from worker.settings import WorkerSettings as settings
    fields = settings.model_fields
    return int(fields["db_pool_size"].default), int(fields["db_max_overflow"].default)


def rows(spec: Mapping[str, Any]) -> list[Row]:
    """Each Postgres-using service's worst case, as the Blueprint configures it."""
    found = []
    for service in spec.get("services", []):
        env = {var["key"]: var.get("value") for var in service.get("envVars", []) if "key" in var}
        uses_postgres = any("fromDatabase" in var for var in service.get("envVars", []))
        if not uses_postgres:
            continue
        pool, overflow = _defaults(service["type"])
        scaling = service.get("scaling") or {}
        instances = int(scaling.get("maxInstances") or service.get("numInstances") or 1)
        if service["type"] == "web":
            processes = int(env.get("WEB_CONCURRENCY") or 1)
        elif service["type"] == "worker":
            processes = int(env.get("WORKER_CONCURRENCY") or 1)
        else:  # a cron run: one process (Render runs one at a time)
            processes = 1
        found.append(
            Row(
                service=service["name"],
                instances=instances,
                processes=processes,
                pool=int(env.get("DB_POOL_SIZE") or pool),
                overflow=int(env.get("DB_MAX_OVERFLOW") or overflow),
            )
        )
    return found


def usable(max_connections: int) -> int:
    """The connections ordinary roles may open."""
    return usable_connections(max_connections, reserved=POSTGRES_RESERVED)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts.connection_budget", description=__doc__)
    parser.add_argument("--max-connections", type=int, default=POSTGRES_DEFAULT_MAX_CONNECTIONS)
    args = parser.parse_args(argv)
    budget = rows(blueprint.load())
    print("| service | instances | processes | pool + overflow | at most |")
    print("|---|---:|---:|---:|---:|")
    for row in budget:
        print(
            f"| {row.service} | {row.instances} | {row.processes} | "
            f"{row.pool} + {row.overflow} | {row.connections} |"
        )
    total = sum(row.connections for row in budget)
    limit = usable(args.max_connections)
    print(f"| total | | | | {total} of {limit} |")
    if total > limit:
        print(f"over budget: {total} > {limit} (max_connections {args.max_connections})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
