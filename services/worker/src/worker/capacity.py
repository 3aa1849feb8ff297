"""How many job processes the worker runs: as many as its memory budget holds, at most one per CPU.

The fixed part is the Celery main process, counted with the pages the first
pool process stops sharing with it as the main process goes on working
(measured: `make bench`, Memory row for the worker). What grows is pool
processes, each at its measured size while running a job. WORKER_CONCURRENCY
asks for a number; the budget may lower it (and the log says so). Jobs beyond
the pool wait in the queue, which is where a job should wait.
"""

from __future__ import annotations

from common.memory import MIB, MemoryBudget, available_cpus, plan_budget
from worker.settings import WorkerSettings

# Measured PSS with the shipped settings (`make bench`, Memory rows), rounded up.
MAIN_BYTES = 120 * MIB
PROCESS_BYTES = 30 * MIB


def memory_budget(settings: WorkerSettings) -> MemoryBudget:
    """The instance's budget with the main process as its fixed part."""
    return plan_budget(settings.memory_limit, settings.memory_headroom, MAIN_BYTES)


def concurrency(settings: WorkerSettings, budget: MemoryBudget) -> tuple[int, str]:
    """Pool processes: WORKER_CONCURRENCY (else one per CPU), at most what the budget holds."""
    wanted = settings.worker_concurrency or available_cpus()
    fits = max(1, budget.units(PROCESS_BYTES))
    if wanted > fits:
        return fits, f"{fits} pool processes (WORKER_CONCURRENCY {wanted} lowered to fit)"
    return wanted, f"{wanted} pool processes (the budget holds {fits})"
