"""Where a worker's claims come from: each queue it serves, and each limited task in it, in turn.

A lane (one executor) has one source per queue it serves for its task names without limits, and
one per queue for each task with a concurrency or rate limit. A limited task's source, and every
source of a queue that has a concurrency limit, claims in a transaction that first takes the
limits' advisory locks, then counts what runs against them in a snapshot taken after the locks
(``tasklib.sql.queues``): claims counted against one limit take turns, so no count misses another
worker's claim, and the claim asks for no more than the limits leave. The jobs of such a claim go
to the executor only once it has committed. docs/queues.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from psycopg.rows import dict_row

from tasklib import sql
from tasklib.limits import allowance, lock_key
from tasklib.registry import TaskDefinition
from tasklib.worker.claim import ClaimPlanner, ClaimQuery, ClaimReply
from tasklib.worker.connections import QueueChanged, Submitted
from tasklib.worker.jobs import Job

#: Runs one statement and returns its rows as dicts.
Run = Callable[[str, dict[str, Any]], Awaitable[list[dict[str, Any]]]]


@dataclass(eq=False)
class Source:
    """One queue's tasks of some names, claimed by one planner (its own floors)."""

    queue: str
    planner: ClaimPlanner
    #: A limited task's own source: the definition whose limits its claims count against.
    task: TaskDefinition | None = None
    #: Monotonic time before which a rate-limited source claims nothing (its next allowed start).
    not_before: float = 0.0
    #: Its task's row of limits is saved (``sql.SAVE_LIMITS``, before its first gated claim).
    saved: bool = False
    #: A submit of one of its names was notified since its last claim: the next claim asks it first.
    hinted: bool = False
    #: Monotonic time before which it is not asked unless hinted: its last claim came back short,
    #: so it held nothing due; what becomes due later without a notification (a delay, a retry)
    #: waits at most one poll interval, as it would for a worker with nothing to do.
    rest_until: float = 0.0


@dataclass
class QueueSettings:
    """The queues' settings as this worker last read them: every poll interval, and at once when a
    change is notified (a pause or a new limit applies from the claim after that read). Read by the
    worker rather than by each claim statement, which would pay for it on every claim
    (docs/queues.md)."""

    paused: set[str] = field(default_factory=set)
    limits: dict[str, int] = field(default_factory=dict)
    read_at: float = float("-inf")
    stale: bool = True

    def load(self, rows: Sequence[dict[str, Any]], now: float) -> None:
        self.paused = {r["queue"] for r in rows if r["settings"].get("paused")}
        limits = {r["queue"]: r["settings"].get("concurrency_limit") for r in rows}
        self.limits = {queue: int(limit) for queue, limit in limits.items() if limit}
        self.read_at, self.stale = now, False


def make_sources(
    names: Sequence[str],
    definitions: dict[str, TaskDefinition],
    queues: Sequence[str],
    planner: Callable[[list[str], str], ClaimPlanner],
) -> list[Source]:
    """A lane's sources: per queue, one for its names without limits and one per limited name."""
    limited = sorted(n for n in names if definitions[n].limited)
    free = [n for n in names if n not in limited]
    sources: list[Source] = []
    for queue in queues:
        if free:
            sources.append(Source(queue, planner(free, queue)))
        sources += [Source(queue, planner([n], queue), task=definitions[n]) for n in limited]
    return sources


async def drive(plan: Generator[ClaimQuery, ClaimReply, list[Job]], run: Run, hold: Callable[[list[Job]], None]) -> int:
    """Run one planner claim's statements; each statement's jobs go to ``hold`` as it returns."""
    claimed = 0
    try:
        query = next(plan)
        while True:
            started = time.monotonic()
            rows = await run(query.statement, query.params)
            reply = ClaimReply.from_rows(rows, time.monotonic() - started)
            hold(reply.jobs)
            claimed += len(reply.jobs)
            query = plan.send(reply)
    except StopIteration:
        return claimed


async def gated_claim(
    source: Source, limit: int, queue_limit: int | None, run: Run, clock: Callable[[], float] = time.monotonic
) -> list[Job]:
    """One claim of ``source`` counted against its limits, inside the caller's transaction: the
    jobs to hold once it commits (none when a limit is reached; a rate sets ``not_before``)."""
    task = source.task
    keys = ([lock_key("queue", source.queue)] if queue_limit is not None else []) + (
        [lock_key("task", task.name)] if task is not None else []
    )
    rate = task.rate_limit if task is not None else None
    clock_id = task.name if rate is not None and task is not None else None
    await run(sql.GATE_LOCK, {"keys": keys})
    counts = (
        await run(
            sql.GATE_COUNTS,
            {
                "count_queue": queue_limit is not None,
                "queue": source.queue,
                "task": task.name if task is not None and task.concurrency_limit is not None else None,
                "clock": clock_id,
            },
        )
    )[0]
    room = [limit]
    if queue_limit is not None:
        room.append(queue_limit - counts["queue_running"])
    if task is not None and task.concurrency_limit is not None:
        room.append(task.concurrency_limit - counts["task_running"])
    allowed = None
    if rate is not None:
        allowed = allowance(rate, counts["clock"], counts["now"])
        room.append(allowed.count)
        if allowed.count == 0:
            source.not_before = clock() + allowed.wait_seconds(counts["now"])
    wanted = min(room)
    if wanted <= 0:
        return []
    jobs: list[Job] = []
    await drive(source.planner.claim(wanted), run, jobs.extend)
    if allowed is not None and jobs:
        if not await run(sql.SET_CLOCK, {"clock": clock_id, "at": allowed.clock_after(len(jobs))}):
            source.saved = False  # its row is gone (deleted by hand): saved again before the next claim
        source.not_before = clock() + max(0.0, (allowed.clock_after(len(jobs)) - counts["now"]).total_seconds())
    return jobs


def limits_params(task: TaskDefinition) -> dict[str, Any]:
    """SAVE_LIMITS's parameters: what a task's ``@task`` declares."""
    limits = {
        "queue": task.queue,
        "concurrency_limit": task.concurrency_limit,
        "rate_limit": None if task.rate_limit is None else str(task.rate_limit),
    }
    return {"task": task.name, "limits": json.dumps(limits)}


class Claimer:
    """Claims for a worker's lanes from their sources, in turn (each claim round starts one source
    further on, so no queue waits behind another's backlog), those a notified submit names first (a
    task just submitted starts without waiting for the other sources' statements), through the
    worker's connections."""

    def __init__(self, connections: Any, refresh_every: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._connections = connections
        self._refresh_every = refresh_every
        self._clock = clock
        self.settings = QueueSettings()
        self._turn = 0
        self._skipped = float("inf")  # the earliest next start of a source the last round skipped

    async def save_limits(self, sources: Sequence[Source]) -> None:
        """At start: save each limited task's limits (the dashboard shows them from then on, not
        from the first claim that reaches the source). A failure leaves them to the first claim."""
        saved: set[str] = set()
        for source in sources:
            if source.task is None or source.saved:
                continue
            if source.task.name not in saved:  # (one row per task, whatever its queues)
                await self._save(source)
                saved.add(source.task.name)
            source.saved = True

    async def start_round(self) -> None:
        """Before a claim round (one claim per lane): read the queues' settings when a change was
        notified or a poll interval has passed."""
        self._skipped = float("inf")
        now = self._clock()
        if self.settings.stale or now - self.settings.read_at >= self._refresh_every:
            rows = await self._connections.execute(sql.QUEUE_SETTINGS, {}, role="claim", row_factory=dict_row)
            self.settings.load(rows, now)

    async def claim(self, sources: Sequence[Source], limit: int, hold: Callable[[list[Job]], None]) -> int:
        """Up to ``limit`` jobs from ``sources``, each claimed job handed to ``hold``."""
        claimed = 0
        self._turn += 1
        now = self._clock()
        turn = [sources[(self._turn + i) % len(sources)] for i in range(len(sources))]
        for source in sorted(turn, key=lambda s: not s.hinted):  # (stable: in turn within each part)
            if claimed >= limit or source.queue in self.settings.paused:
                continue
            if source.not_before > now:
                self._skipped = min(self._skipped, source.not_before)
                continue
            if not source.hinted and source.rest_until > now:
                continue
            source.hinted = False
            asked = limit - claimed
            got = await self._claim_source(source, asked, hold)
            held_back = source.not_before > self._clock()  # (a rate's next start wakes it instead)
            source.rest_until = now + self._refresh_every if got < asked and not held_back else 0.0
            claimed += got
        return claimed

    async def _claim_source(self, source: Source, limit: int, hold: Callable[[list[Job]], None]) -> int:
        queue_limit = self.settings.limits.get(source.queue)
        if source.task is None and queue_limit is None:
            return await drive(source.planner.claim(limit), self._run, hold)
        if source.task is not None and not source.saved:
            await self._save(source)
        due = await self._run(sql.ANY_DUE, {"names": sorted(source.planner.names), "queue": source.queue})
        if not due[0]["due"]:
            return 0
        try:
            async with self._connections.transaction("claim") as run:
                jobs = await gated_claim(source, limit, queue_limit, run, self._clock)
        except BaseException:
            source.planner.forget()  # its floors may have moved on rows the rollback gave back
            raise
        hold(jobs)
        return len(jobs)

    async def _save(self, source: Source) -> None:
        assert source.task is not None
        await self._run(sql.SAVE_LIMITS, limits_params(source.task))
        source.saved = True

    async def _run(self, statement: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await self._connections.execute(statement, params, role="claim", row_factory=dict_row)
        return rows

    def heard(self, event: Submitted | QueueChanged, sources: Sequence[Source]) -> None:
        """A notification: a submit lowers the floors of the sources of its task's name and has them
        asked first; a queue's change (or a reconnect, after which anything may have changed) has
        the settings read again and every source asked."""
        if isinstance(event, QueueChanged) or event.scheduled_at is None:
            self.settings.stale = True
            self.hint_all(sources)
            return
        at = datetime.fromtimestamp(event.scheduled_at, UTC)
        for source in sources:
            if (event.name is None or event.name in source.planner.names) and event.queue in (None, source.queue):
                source.planner.lower_to(at, event.priority)
                source.hinted = True

    @staticmethod
    def hint_all(sources: Sequence[Source]) -> None:
        """Anything may be due anywhere (a rescue, a reconnect, a queue's settings changed)."""
        for source in sources:
            source.hinted = True

    def recheck_in(self, sources: Sequence[Source]) -> float | None:
        """Seconds until a rate-limited source may start a task again (None: none is waiting). A
        source the last claim skipped counts even if its time came while the claim went on."""
        now = self._clock()
        waits = [s.not_before - now for s in sources if s.not_before > now] + [self._skipped - now]
        return max(0.001, min(waits)) if min(waits) < float("inf") else None
