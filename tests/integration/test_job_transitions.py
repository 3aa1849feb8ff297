"""Every statement of `common.jobs_repository` from every state: it makes exactly `TRANSITIONS`.

Each state-changing statement runs against a job in each of the five states.
The moves it makes must be the ones it is meant to make, from the states it
is meant to make them from, and all of them together must be the contract's
`TRANSITIONS`, neither more (a forbidden move) nor less (a move no code makes).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, insert, select

from common import jobs_repository as jobs
from common.contracts.jobs import FINAL_STATES, TRANSITIONS, JobState
from common.models import Job
from tests.fixtures.api import RegisteredUser
from tests.fixtures.workers import WorkerResourcesFactory
from worker.resources import Resources

RUN = uuid.UUID(int=1)
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)
GONE = None  # the row was deleted


@dataclass(frozen=True)
class Move:
    """A statement as its caller runs it, and what it may do: {from state: to state}."""

    run: Callable[[Connection, uuid.UUID], Any]
    makes: dict[JobState, JobState | None]
    row: dict[str, Any]  # what the job looks like besides its state


def _finish(state: JobState) -> Callable[[Connection, uuid.UUID], Any]:
    def run(connection: Connection, job_id: uuid.UUID) -> Any:
        values = {"state": state.value, "result": None, "error": None, "final_progress": None}
        return connection.execute(jobs.FINISH, {"id": job_id, "run_id": RUN, **values})

    return run


Q, R = JobState.QUEUED, JobState.RUNNING
S, F, C = JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED
SWEEP = {"max_attempts": 3, "batch": 1000}
LAPSED = {"lease_expires_at": LONG_AGO}
MOVES: dict[str, Move] = {
    "claim": Move(
        lambda c, job: c.execute(jobs.CLAIM, {"id": job, "run_id": RUN, "lease": 30, "cap": 99}),
        {Q: R},
        {},
    ),
    "finish succeeded": Move(_finish(S), {R: S}, {}),
    "finish failed": Move(_finish(F), {R: F}, {}),
    "finish cancelled": Move(_finish(C), {R: C}, {}),
    "release for a retry": Move(
        lambda c, job: c.execute(jobs.RELEASE, {"id": job, "run_id": RUN}), {R: Q}, {}
    ),
    "sweep requeues": Move(lambda c, _: c.execute(jobs.SWEEP, SWEEP), {R: Q}, LAPSED),
    "sweep cancels": Move(
        lambda c, _: c.execute(jobs.SWEEP, SWEEP), {R: C}, {**LAPSED, "cancel_requested": True}
    ),
    "sweep fails": Move(
        lambda c, _: c.execute(jobs.SWEEP, SWEEP), {R: F}, {**LAPSED, "attempt": 3}
    ),
    "cancel": Move(
        lambda c, job: c.execute(jobs.cancel_queued(OWNER[0], job, datetime.now(UTC))), {Q: C}, {}
    ),
    "request cancel": Move(lambda c, job: c.execute(jobs.request_cancel(OWNER[0], job)), {}, {}),
    "purge": Move(
        lambda c, _: c.execute(jobs.PURGE, {"retention": 60, "batch": 1000}),
        dict.fromkeys(FINAL_STATES, GONE),
        {},
    ),
}
OWNER: list[uuid.UUID] = []  # this module's user, set by the fixture below


@pytest.fixture(scope="module")
def resources(worker_resources_factory: WorkerResourcesFactory) -> Resources:
    return worker_resources_factory()


@pytest.fixture(autouse=True)
async def owner(make_user: Callable[[], Any]) -> None:
    user: RegisteredUser = await make_user()
    OWNER[:] = [uuid.UUID(user.id)]


def _job(connection: Connection, state: JobState, row: dict[str, Any]) -> uuid.UUID:
    job_id = uuid.uuid4()
    running = state is R
    values = {
        "id": job_id, "owner_id": OWNER[0], "kind": "demo.countdown", "state": state.value,
        "params": {"steps": 1, "interval": 0}, "attempt": 1, "sent_at": LONG_AGO,
        "run_id": RUN if running else None,
        "lease_expires_at": datetime.now(UTC) + timedelta(minutes=5) if running else None,
        "finished_at": LONG_AGO if state in FINAL_STATES else None,
    }  # fmt: skip
    connection.execute(insert(Job).values({**values, **row}))
    return job_id


def _state(connection: Connection, job_id: uuid.UUID) -> JobState | None:
    state = connection.execute(select(Job.state).where(Job.id == job_id)).scalar_one_or_none()
    return None if state is None else JobState(state)


@pytest.mark.parametrize("name", list(MOVES))
def test_each_statement_moves_only_from_its_sources(resources: Resources, name: str) -> None:
    move = MOVES[name]
    made = {}
    for start in JobState:
        with resources.engine.connect() as connection:
            job_id = _job(connection, start, move.row)
            move.run(connection, job_id)
            after = _state(connection, job_id)
            connection.rollback()  # leaves nothing for another test's sweep or relay
        if after != start:
            made[start] = after
    assert made == move.makes


def test_the_statements_together_make_every_transition_and_no_other() -> None:
    made = {(start, end) for move in MOVES.values() for start, end in move.makes.items()}
    allowed = {(start, end) for start, ends in TRANSITIONS.items() for end in ends}
    assert {(start, end) for start, end in made if end is not GONE} == allowed
    assert {start for start, end in made if end is GONE} == set(FINAL_STATES), "purge"
