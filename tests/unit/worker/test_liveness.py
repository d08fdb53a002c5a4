"""Liveness without a database: the rescue policy, who counts as gone, pacing of slow looks, and
what a heartbeat renews."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from tasklib import sql
from tasklib.states import TaskState
from tasklib.worker import liveness
from tasklib.worker.connections import application_name
from tasklib.worker.liveness import Liveness, Pacing, foreign_claims, rescue_decisions
from tasklib.worker.writer import OutcomeWriter
from tests.unit.worker.fakes import CONFIG, T0, answer_all


class Held:
    """The executors as liveness sees them: the ids they hold, and the lost ids they were told of."""

    def __init__(self, ids: set[uuid.UUID] | None = None) -> None:
        self.ids = ids or set()
        self.lost: list[set[uuid.UUID]] = []

    def held_ids(self) -> set[uuid.UUID]:
        return set(self.ids)

    def rescued(self) -> None:
        pass

    def stop_lost(self, lost: set[uuid.UUID]) -> None:
        self.lost.append(lost)


def test_rescue_goes_through_the_retry_policy_with_backoff() -> None:
    rows = [
        {"id": 1, "worker_id": "w", "started_at": T0, "locked_until": T0, "retry_count": 0, "max_retries": 3},
        {"id": 2, "worker_id": "w", "started_at": T0, "locked_until": T0, "retry_count": 3, "max_retries": 3},
    ]
    (_, _, _, retry), (_, worker, started, fail) = rescue_decisions(rows, CONFIG)
    assert retry.state is TaskState.PENDING and retry.retry_count == 1 and retry.delay_seconds == 5.0
    assert fail.state is TaskState.FAILED and fail.retry_count == 3
    assert (worker, started) == ("w", T0)  # applied only to that claim
    assert "WorkerLost: worker w stopped renewing its lock" in (fail.error or "")


def test_a_rescue_never_takes_the_claims_this_worker_knows_it_holds() -> None:
    """After an outage longer than the lock timeout, the worker's own expired claims are running in
    its children or finished with outcomes waiting to be written: not lost. A claim of its own it
    never heard back about (the reply was lost with the connection) is rescued: it never ran."""
    rows = [
        {"id": 1, "worker_id": "me"},  # running in a child, or its outcome is in the writer
        {"id": 2, "worker_id": "me"},  # claimed, but the claim's reply never arrived
        {"id": 3, "worker_id": "other"},
    ]
    assert [r["id"] for r in foreign_claims(rows, "me", known={1})] == [2, 3]
    assert [r["id"] for r in foreign_claims(rows, "other", known={1, 3})] == [1, 2]  # its own ids only


def test_a_session_name_is_what_postgresql_keeps_of_it() -> None:
    assert application_name("host:12:ab") == "tasklib-worker host:12:ab"
    long = "x" * 80
    assert application_name(long) == ("tasklib-worker " + long)[:63]
    # 63 bytes, cut at a character boundary (PostgreSQL does the same with application_name)
    assert application_name("é" * 40).encode() == ("tasklib-worker " + "é" * 24).encode()


def test_a_rescue_look_runs_less_often_when_it_gets_slow() -> None:
    pacing = Pacing(interval=1.0, share=0.05)
    assert pacing.due(0.0)
    pacing.ran(0.0, 0.002)  # cheap: again after the interval
    assert not pacing.due(0.9) and pacing.due(1.01)
    pacing.ran(2.0, 2.25)  # 250 ms (a bloated lock index): 5 s later, so it stays at 5 % of the time
    assert not pacing.due(6.0) and pacing.due(7.26)


class SlowStatements:
    """The worker's connections as liveness sees them: each statement answers no rows, taking
    ``seconds`` of liveness's clock (time.monotonic, patched)."""

    def __init__(self, clock: list[float], seconds: float) -> None:
        self.clock, self.seconds, self.run = clock, seconds, []

    async def execute(self, statement: str, params: Any, **_: Any) -> list[Any]:
        self.run.append(statement)
        self.clock[0] += self.seconds
        return []


def make(connections: Any, held: Held) -> Liveness:
    writer = OutcomeWriter(answer_all, "me", CONFIG)
    return Liveness(CONFIG, "me", connections, held, writer, asyncio.Event(), poll_interval=1.0)


def test_slow_rescue_reads_come_less_often(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a snapshot older than the lock timeout, the expired-lock read walks dead entries: it
    is paced like the sweep. The look for stale workers reads only the small presence table: paced
    too, but allowed a quarter of the time, so a slow server delays finding the dead by seconds."""
    clock = [1000.0]
    monkeypatch.setattr(liveness.time, "monotonic", lambda: clock[0])
    conn = SlowStatements(clock, seconds=0.5)
    keeper = make(conn, Held())

    async def rounds(n: int) -> None:
        for _ in range(n):
            await keeper.rescue()
            await keeper.rescue_vanished()
            clock[0] += 1.0  # the poll interval

    asyncio.run(rounds(10))  # 10 rounds, 1.5 s each with both reads at 0.5 s: 15 s
    assert conn.run.count(sql.EXPIRED_CLAIMS) == 1  # 0.5 s at 2 %: next after 25 s
    assert conn.run.count(sql.STALE_WORKERS) == 5  # 0.5 s at 25 %: every 2 s, not every round
    conn.seconds = 0.001
    clock[0] += 30.0
    asyncio.run(rounds(5))  # fast again: every round
    assert conn.run.count(sql.EXPIRED_CLAIMS) == 6 and conn.run.count(sql.STALE_WORKERS) == 10


class Renewals:
    """The worker's connections in front of a heartbeat: renews every id asked for except those in
    ``gone`` (finished or taken over meanwhile)."""

    def __init__(self, gone: set[uuid.UUID]) -> None:
        self.gone, self.asked = gone, set[uuid.UUID]()

    async def execute(self, statement: str, params: Any, **_: Any) -> list[Any]:
        self.asked = set(params["ids"])
        return [(i,) for i in params["ids"] if i not in self.gone]


def test_a_heartbeat_renews_finished_tasks_whose_outcome_is_not_written_yet() -> None:
    from tests.unit.worker.fakes import job

    running, taken_over = uuid.uuid4(), uuid.uuid4()
    unwritten, written_meanwhile = job(), job()
    conn = Renewals(gone={written_meanwhile.id, taken_over})
    held = Held({running, taken_over})
    keeper = make(conn, held)
    keeper._writer.release(unwritten)
    keeper._writer.release(written_meanwhile)
    asyncio.run(keeper.heartbeat())
    assert conn.asked == {running, taken_over, unwritten.id, written_meanwhile.id}
    assert held.lost == [{taken_over}]  # an outcome written meanwhile is not a lost task
