"""Sizing what grows with load: hashes in the API, sockets in realtime, processes in the worker."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from api import capacity as api_capacity
from api.auth.passwords import (
    HASH_CHILD_BYTES,
    HASH_SERVER_BYTES,
    OWASP_ARGON2ID,
    Argon2Params,
    _Slots,
    hash_cost,
    plan_hashing,
)
from api.settings import ApiSettings
from common.memory import MIB, MemoryBudget, MemoryLimit
from realtime import capacity as realtime_capacity
from realtime.settings import RealtimeSettings
from worker import capacity as worker_capacity
from worker.settings import WorkerSettings

OWASP = Argon2Params(19456, 2, 1)


class TestArgon2Parameters:
    """New hashes are at OWASP's recommendation or stronger; old hashes keep verifying."""

    @pytest.mark.parametrize(("memory", "iterations"), OWASP_ARGON2ID)
    def test_every_owasp_setting_is_accepted(self, memory: int, iterations: int) -> None:
        assert Argon2Params(memory, iterations).meets_owasp()

    @pytest.mark.parametrize(("memory", "iterations"), [(19456, 1), (7168, 4), (4096, 10)])
    def test_weaker_settings_are_not(self, memory: int, iterations: int) -> None:
        assert not Argon2Params(memory, iterations).meets_owasp()

    def test_settings_refuse_a_weak_cost(self) -> None:
        with pytest.raises(ValidationError, match="weaker than OWASP"):
            ApiSettings(_env_file=None, password_hash_memory_kib=8192, password_hash_time_cost=2)

    def test_the_default_is_owasps_recommendation(self) -> None:
        assert ApiSettings(_env_file=None).argon2_params == OWASP

    def test_parameters_are_read_from_a_hash(self) -> None:
        stored = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"
        assert Argon2Params.of_hash(stored) == Argon2Params(65536, 3, 4)
        assert Argon2Params.of_hash("$2b$12$notargon") is None


class TestHashingPlan:
    """As many hashes as the worker's share holds, at most its CPUs; the memory cost steps down."""

    def test_cpus_bound_a_roomy_budget(self) -> None:
        plan = plan_hashing(OWASP, memory=500 * MIB, most=2)
        assert (plan.params, plan.slots, plan.capacity) == (OWASP, 2, 500 * MIB)

    def test_memory_bounds_a_tight_one(self) -> None:
        plan = plan_hashing(OWASP, memory=2 * hash_cost(OWASP) + MIB, most=8)
        assert plan.slots == 2

    def test_the_memory_cost_steps_down_owasps_list_to_fit_one(self) -> None:
        plan = plan_hashing(OWASP, memory=13 * MIB, most=4)
        assert plan.params == Argon2Params(9216, 4)
        assert plan.slots == 1
        assert "lowered" in plan.note

    def test_an_explicit_cost_is_kept_and_runs_alone(self) -> None:
        plan = plan_hashing(OWASP, memory=5 * MIB, most=4, adjustable=False)
        assert (plan.params, plan.slots) == (OWASP, 1)
        assert "over budget" in plan.note

    def test_the_starter_plan(self) -> None:
        # Render's starter plan (512 MB, 0.5 CPU) as render.yaml ships the API: 2 workers.
        settings = ApiSettings(
            _env_file=None, memory_limit=512_000_000, web_concurrency=2, password_hash_concurrency=1
        )
        budget = api_capacity.memory_budget(settings)
        fixed = api_capacity.MASTER_BYTES + 2 * (api_capacity.WORKER_BYTES + HASH_SERVER_BYTES)
        assert budget.fixed == fixed
        plan = api_capacity.hashing_plan(settings, budget)
        assert plan.params == OWASP
        assert plan.slots == 1
        assert plan.capacity == budget.available // 2
        # Everything at once still fits the budget.
        assert fixed + 2 * plan.slots * (OWASP.memory_bytes + HASH_CHILD_BYTES) < budget.usable


async def _all_taken(*, max_waiters: int) -> _Slots:
    """One slot of 10 units, all of it taken; up to `max_waiters` may queue."""
    slots = _Slots(1, 10, max_waiters=max_waiters)
    await slots.acquire(10, within=1)
    return slots


class TestSlots:
    """Hashes reserve memory and a slot first come first served; a full budget times out."""

    async def test_count_and_memory_both_bound(self) -> None:
        slots = _Slots(2, 100, max_waiters=8)
        await slots.acquire(60, within=1)
        # 60 + 60 > 100: the second waits although a slot is free.
        with pytest.raises(TimeoutError):
            await slots.acquire(60, within=0.01)
        await slots.acquire(40, within=1)
        slots.release(60)
        slots.release(40)
        await slots.acquire(100, within=1)

    async def test_waiters_are_served_in_order(self) -> None:
        slots = await _all_taken(max_waiters=8)
        order: list[int] = []

        async def waiter(number: int) -> None:
            await slots.acquire(1, within=5)
            order.append(number)
            slots.release(1)

        tasks = [asyncio.create_task(waiter(number)) for number in range(3)]
        await asyncio.sleep(0)
        slots.release(10)
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2]

    async def test_a_waiter_that_gives_up_leaves_the_queue(self) -> None:
        slots = await _all_taken(max_waiters=8)
        with pytest.raises(TimeoutError):
            await slots.acquire(5, within=0.01)
        slots.release(10)
        await slots.acquire(10, within=0)  # nothing left waiting ahead of it

    async def test_a_waiter_cancelled_while_the_queue_moves_on_leaves_cleanly(self) -> None:
        slots = await _all_taken(max_waiters=8)
        waiter = asyncio.create_task(slots.acquire(1, within=5))
        await asyncio.sleep(0)
        waiter.cancel()
        slots.release(10)  # passes over the cancelled waiter before it runs again
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await slots.acquire(10, within=0)  # all of it is free again

    async def test_a_full_queue_is_refused_at_once(self) -> None:
        slots = await _all_taken(max_waiters=1)
        first = asyncio.create_task(slots.acquire(10, within=5))
        await asyncio.sleep(0)
        with pytest.raises(TimeoutError):
            await slots.acquire(10, within=5)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first


class TestRealtimeSockets:
    """Sockets per worker: WS_MAX_CONNECTIONS, else the worker's share of the budget."""

    def test_the_budget_sizes_the_limit(self) -> None:
        settings = RealtimeSettings(
            _env_file=None, memory_limit=1000 * MIB, web_concurrency=2, ws_connection_bytes=MIB
        )
        budget = realtime_capacity.memory_budget(settings)
        expected = 800 * MIB - realtime_capacity.MASTER_BYTES - 2 * realtime_capacity.WORKER_BYTES
        assert realtime_capacity.connection_limit(settings, budget) == expected // 2 // MIB

    def test_the_setting_wins(self) -> None:
        settings = RealtimeSettings(_env_file=None, ws_max_connections=7)
        assert realtime_capacity.connection_limit(settings) == 7

    def test_at_least_one(self) -> None:
        settings = RealtimeSettings(_env_file=None, memory_limit=10 * MIB)
        assert realtime_capacity.connection_limit(settings) == 1


class TestWorkerProcesses:
    """WORKER_CONCURRENCY, lowered to what the budget holds."""

    def _budget(self, megabytes: int) -> MemoryBudget:
        return MemoryBudget(
            MemoryLimit(megabytes * MIB, "MEMORY_LIMIT"), 0.2, worker_capacity.MAIN_BYTES
        )

    def test_the_requested_number_when_it_fits(self) -> None:
        settings = WorkerSettings(_env_file=None, worker_concurrency=2)
        processes, note = worker_capacity.concurrency(settings, self._budget(512))
        assert processes == 2
        assert "the budget holds" in note

    def test_lowered_when_it_does_not(self) -> None:
        settings = WorkerSettings(_env_file=None, worker_concurrency=64)
        budget = self._budget(512)
        processes, note = worker_capacity.concurrency(settings, budget)
        assert processes == budget.available // worker_capacity.PROCESS_BYTES
        assert "lowered" in note
