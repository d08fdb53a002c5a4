"""The worker's claim loop driving real parts, its connections answered from memory."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from tasklib.worker.claim import ClaimPlanner, ClaimQuery
from tasklib.worker.executors import ExecutorContext, ProcessExecutor
from tasklib.worker.sources import Claimer, Source
from tasklib.worker.worker import Lane, Lanes, TaskWorker
from tests.unit.worker.fakes import CONFIG, T0, FakePool, Tasks, answer_all, job


class Statements:
    """The worker's connections in front of its claims: a ``Tasks`` table answers each claim;
    records how many tasks the executor's pool had been sent when each statement began."""

    def __init__(self, tasks: Tasks, pool: FakePool) -> None:
        self.tasks, self.pool = tasks, pool
        self.sent_before: list[int] = []

    async def execute(self, statement: str, params: Any, **_: Any) -> list[Any]:
        if "floor" not in params:  # the writer's statements
            return await answer_all(statement, params)
        self.sent_before.append(sum(len(m.tasks) for _, m in self.pool.sent))
        return self.tasks.answer(ClaimQuery(statement, params), T0 + timedelta(seconds=5))


def worker_with_lane(tasks: Tasks, size: int = 2) -> tuple[TaskWorker, Lane, FakePool, Statements]:
    worker = TaskWorker(CONFIG, concurrency=size, handle_signals=False)
    context = ExecutorContext(None, worker._writer, worker._wake, CONFIG)  # type: ignore[arg-type]
    executor = ProcessExecutor(["n"], size, context)
    pool = FakePool(size)
    executor.pool = pool  # type: ignore[assignment]
    lane = Lane(executor, [Source("default", ClaimPlanner(["n"], worker.worker_id, 60, sweep_every_seconds=1e12))])
    worker._lanes = Lanes([lane])
    statements = Statements(tasks, pool)
    worker._connections = statements  # type: ignore[assignment]
    worker._claimer = Claimer(statements, 1.0)
    return worker, lane, pool, statements


def test_a_claims_first_rows_start_before_its_later_statements_return() -> None:
    """A claim short at its one known priority asks once more across the other priorities; the rows
    the first statement took are already running by then, not waiting for that round trip."""
    tasks = Tasks()
    tasks.add("first", T0, priority=0)
    worker, lane, pool, statements = worker_with_lane(tasks)
    assert asyncio.run(worker._claim(lane, 2)) == 1  # the first claim: one statement, knows priority 0 now
    tasks.add("second", T0 + timedelta(seconds=4.95), priority=0)  # above the floor the first claim left
    lane.sources[0].hinted = True  # (its submit's notification)
    statements.sent_before.clear()
    assert asyncio.run(worker._claim(lane, 2)) == 1  # at priority 0 (took it), then across the others
    assert statements.sent_before == [1, 2]  # the second statement found the first's task sent to a child
    assert len(pool.sent) == 2 and all(len(m.tasks) == 1 for _, m in pool.sent)  # each sent once


def test_a_full_writer_stops_the_claim_loop_until_it_has_room() -> None:
    from tasklib.outcome import Outcome, OutcomeKind
    from tasklib.worker.writer import MAX_UNWRITTEN

    async def scenario() -> tuple[int, int]:
        tasks = Tasks()
        for i in range(8):
            tasks.add(f"t{i}", T0, priority=0)
        worker, _, _, statements = worker_with_lane(tasks)
        for _ in range(MAX_UNWRITTEN):
            worker._writer.complete(job(), Outcome(OutcomeKind.OK, result_json="1"), 0.0)
        loop = asyncio.create_task(worker._claim_loop())
        await asyncio.sleep(0.05)
        held_back = len(statements.sent_before)
        await worker._writer.write_pending()  # the writer catches up
        for _ in range(100):
            if statements.sent_before:
                break
            await asyncio.sleep(0.01)
        worker._stop()
        await asyncio.wait_for(loop, 2)
        return held_back, len(statements.sent_before)

    held_back, claimed = asyncio.run(scenario())
    assert held_back == 0 and claimed >= 1
