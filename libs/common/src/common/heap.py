"""Start-up objects kept out of the garbage collector's full passes.

A service process holds about 140,000 objects once its modules are imported
and its app built (the API: FastAPI, SQLAlchemy, Celery, pydantic models), and
more once its lifespan made its pools. CPython's full collection (generation
2) walks every one of them: 58-67 ms for the API's (measured with
`gc.collect()`), a pause in which no request of that process moves. It runs
whenever enough new objects survived the younger generations, so under load
it came back again and again, and set the tail of every latency the bench
measures.

`gc.freeze()` moves every object alive now to a permanent generation that no
collection walks; a full collection then walks only what was made since
(well under a millisecond right after). What start-up made lives as long as
the process anyway. As Python's documentation advises for servers that fork:
the master collects and freezes before it forks its workers (a worker's
collections then also leave the inherited pages unwritten, so they stay
shared), and each process freezes again once its own start-up is done.
"""

from __future__ import annotations

import gc
from typing import Any

# Set in a gunicorn master that froze its preloaded app; its forked workers inherit it.
_froze_before_fork = [False]


def freeze_startup_heap() -> None:
    """Collect what start-up left as garbage, then freeze every object alive now."""
    gc.collect()
    gc.freeze()


def freeze_worker_heap() -> None:
    """In a worker forked from a master that froze (gunicorn with its app preloaded),
    freeze what this worker's own start-up made; elsewhere (tests, `uvicorn` alone) nothing.

    A process that builds and drops apps (a test session) must not freeze: what a
    frozen cycle holds is never freed.
    """
    if _froze_before_fork[0]:
        freeze_startup_heap()


def gunicorn_when_ready(_server: Any) -> None:
    """Gunicorn's `when_ready` hook: the master, its app preloaded, before the first fork."""
    freeze_startup_heap()
    _froze_before_fork[0] = True


def gunicorn_pre_fork(_server: Any, _worker: Any) -> None:
    """Gunicorn's `pre_fork` hook: what the master made since (a reload) frozen before a fork."""
    gc.freeze()
