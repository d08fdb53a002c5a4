"""A lane's sources: one per queue (and per limited task), taken in turn; paused queues skipped."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from tasklib import sql
from tasklib.registry import TaskDefinition
from tasklib.worker.claim import ClaimPlanner, ClaimQuery
from tasklib.worker.jobs import Job
from tasklib.worker.sources import Claimer, Source, make_sources
from tests.unit.worker.fakes import T0, Tasks


class Queues:
    """One in-memory table per queue, answering the claim statements of that queue."""

    def __init__(self, settings: list[dict[str, Any]] | None = None) -> None:
        self.tables: dict[str, Tasks] = {}
        self.settings = settings or []
        self.asked: list[str] = []  # the queue of every claim statement, in order

    def table(self, queue: str) -> Tasks:
        return self.tables.setdefault(queue, Tasks())

    async def execute(self, statement: str, params: dict[str, Any], **_: Any) -> list[Any]:
        if statement is sql.QUEUE_SETTINGS:
            return self.settings
        self.asked.append(params["queue"])
        return self.table(params["queue"]).answer(ClaimQuery(statement, params), T0 + timedelta(seconds=60))


def _sources(queues: list[str]) -> list[Source]:
    return [Source(q, ClaimPlanner(["n"], "w", 60, 1e12, queue=q)) for q in queues]


def _claim(claimer: Claimer, sources: list[Source], limit: int) -> list[Job]:
    taken: list[Job] = []

    async def go() -> None:
        await claimer.start_round()
        await claimer.claim(sources, limit, taken.extend)

    asyncio.run(go())
    return taken


def test_each_claim_starts_at_the_next_queue_so_a_backlog_cannot_starve_another() -> None:
    db = Queues()
    for i in range(100):
        db.table("default").add(f"d{i}", T0 + timedelta(seconds=i / 100))
    for i in range(3):
        db.table("emails").add(f"e{i}", T0 + timedelta(seconds=i / 100))
    claimer, sources = Claimer(db, 1.0), _sources(["default", "emails"])
    firsts = []
    for _ in range(4):
        db.asked.clear()
        _claim(claimer, sources, 2)
        firsts.append(db.asked[0])
    assert firsts[:2] in (["default", "emails"], ["emails", "default"]) and firsts[0::2] == [firsts[0]] * 2
    assert not db.table("emails").pending  # served although default always had more than a claim's worth


def test_a_paused_queue_is_not_asked_until_it_resumes() -> None:
    db = Queues([{"queue": "emails", "settings": {"paused": True}}])
    db.table("emails").add("e0", T0)
    db.table("default").add("d0", T0)
    claimer, sources = Claimer(db, 1.0), _sources(["default", "emails"])
    assert [j.name for j in _claim(claimer, sources, 4)] == ["d0"]
    assert "emails" not in db.asked
    db.settings = [{"queue": "emails", "settings": {"paused": False}}]
    claimer.settings.stale = True  # (as a notification of the change makes it)
    assert [j.name for j in _claim(claimer, sources, 4)] == ["e0"]


def test_limited_tasks_get_sources_of_their_own_in_every_queue() -> None:
    defs = {
        "free": TaskDefinition("free", print),
        "capped": TaskDefinition("capped", print, concurrency_limit=2),
    }
    made = make_sources(["capped", "free"], defs, ["a", "b"], lambda names, q: ClaimPlanner(names, "w", 60, 1, queue=q))
    assert [(s.queue, sorted(s.planner.names), s.task and s.task.name) for s in made] == [
        ("a", ["free"], None),
        ("a", ["capped"], "capped"),
        ("b", ["free"], None),
        ("b", ["capped"], "capped"),
    ]


def test_a_source_a_submit_named_is_asked_first() -> None:
    db = Queues()
    db.table("emails").add("e0", T0)
    claimer, sources = Claimer(db, 1.0), _sources(["default", "emails", "reports"])
    for _ in range(3):  # whichever source the turn starts at
        db.asked.clear()
        sources[1].hinted = True
        _claim(claimer, sources, 4)
        assert db.asked[0] == "emails" and not sources[1].hinted


def test_a_notified_submit_hints_only_the_sources_of_its_queue_and_name() -> None:
    from tasklib.worker.connections import QueueChanged, Submitted

    claimer, sources = Claimer(Queues(), 1.0), _sources(["default", "emails"])
    claimer.heard(Submitted.of("n @emails 1764590400.25 0"), sources)
    assert [s.hinted for s in sources] == [False, True]
    claimer.heard(Submitted.of("other 1764590400.25 0"), sources)  # a name none of them runs
    assert [s.hinted for s in sources] == [False, True]
    claimer.heard(QueueChanged("emails"), sources)
    assert [s.hinted for s in sources] == [True, True] and claimer.settings.stale
