"""The API's memory budget: its fixed part, and the hashing each worker may do in the rest.

An instance runs a gunicorn master and WEB_CONCURRENCY workers, each with its
hashing server; that is the fixed part, at the sizes `make bench` measures
(PSS, idle, after the first login). What grows with load is password hashing:
Argon2 is memory-hard, so each hash in flight holds its memory cost. The rest
of the budget is split evenly among the workers, and each fits as many hashes
as its share holds, but no more than the CPUs the instance has (a hash is CPU
work: more at once than CPUs only holds memory longer).
"""

from __future__ import annotations

import math

from api.auth.passwords import HASH_SERVER_BYTES, HashingPlan, plan_hashing
from api.settings import ApiSettings
from common.memory import MIB, MemoryBudget, available_cpus, plan_budget

# Measured PSS with the shipped settings (`make bench`, memory rows): the master, and
# each worker once it has served requests (its hashing server is counted apart).
MASTER_BYTES = 60 * MIB
WORKER_BYTES = 70 * MIB


def memory_budget(settings: ApiSettings) -> MemoryBudget:
    """The instance's budget, the master and the workers with their hashing servers fixed."""
    fixed = MASTER_BYTES + settings.web_workers * (WORKER_BYTES + HASH_SERVER_BYTES)
    return plan_budget(settings.memory_limit, settings.memory_headroom, fixed)


def hashing_plan(settings: ApiSettings, budget: MemoryBudget | None = None) -> HashingPlan:
    """What one worker may hash at once: its share of the budget, at most its share of CPUs."""
    budget = budget or memory_budget(settings)
    workers = settings.web_workers
    cpus = settings.password_hash_concurrency or available_cpus()
    return plan_hashing(
        settings.argon2_params,
        memory=budget.available // workers,
        most=max(1, math.ceil(cpus / workers)),
        # An explicit PASSWORD_HASH_MEMORY_KIB is kept even if it does not fit.
        adjustable="password_hash_memory_kib" not in settings.model_fields_set,
    )
