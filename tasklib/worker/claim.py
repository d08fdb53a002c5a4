"""Claim: where each claim starts (``ClaimFloor``) and which statements make it (``ClaimPlanner``).

Both are plain objects with no I/O: the planner yields statements and receives their rows, the
worker runs them, and tests answer them from memory. Why floors, per priority, and sweeps in
windows: docs/design/claim.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tasklib import sql
from tasklib.limits import DEFAULT_QUEUE
from tasklib.states import PRIORITY_MAX, PRIORITY_MIN
from tasklib.worker.jobs import Job

#: Most rows one claim statement takes (a long claim holds its rows and the connection).
CLAIM_BATCH_LIMIT = 64
#: Rows may commit this long after their statement began and still be seen without a sweep.
FLOOR_MARGIN_SECONDS = 0.1
#: The floor of a sweep: lower than any ``scheduled_at`` a task can have.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
#: Sweeps that find nothing new space out up to this many poll intervals.
MAX_SWEEP_FACTOR = 8
#: A sweep takes at most this share of the time between two sweeps.
SWEEP_SHARE = 0.02
#: What one step of a sweep should take: its windows are sized from the last step's time to this.
SWEEP_STEP_SECONDS = 0.03
#: The window of a sweep's first step, at most (later ones follow the time each took).
FIRST_WINDOW = timedelta(seconds=1)
#: A step's window is at most this many times the last one's, and at least this share of it.
WINDOW_GROWTH, WINDOW_SHRINK = 2.0, 0.25
#: Windows never get narrower than this, and a sweep ends after at most ``MAX_SWEEP_STEPS`` steps.
MIN_WINDOW = timedelta(milliseconds=100)
MAX_SWEEP_STEPS = 128
#: A window this wide reaches ``EARLIEST``: the sweep's last step.
LAST_WINDOW = timedelta(days=366)
#: A sweep step's range of ``scheduled_at``: from (inclusive), below (exclusive).
Window = tuple[datetime, datetime]
#: Stands for "every priority" among the floors a notification lowered during a claim.
_ALL = object()


@dataclass(frozen=True)
class Step:
    """One statement of a claim: at one ``priority`` (None: across all), ``asked`` for so many rows,
    it took rows with these (priority, scheduled_at). A sweep's step also says the ``window`` it
    covered (``scheduled_at`` from, below) and how many ``seconds`` it took."""

    priority: int | None
    asked: int
    claimed: Sequence[tuple[int, datetime]] = ()
    window: Window | None = None
    seconds: float = 0.0

    @property
    def short(self) -> bool:
        return len(self.claimed) < self.asked


@dataclass
class _Sweep:
    """A sweep in progress: its next step covers the window below ``top``."""

    top: datetime
    window: timedelta
    floors: tuple[datetime, dict[int, datetime]]  # the common floor and each priority's, at its start
    spent: float = 0.0  # seconds its steps took so far
    windows: int = 0  # windows it finished
    stragglers: bool = False  # it took a row below the floor of its priority

    @property
    def next_window(self) -> Window:
        reaches_earliest = (
            self.window >= LAST_WINDOW or self.top - EARLIEST <= self.window or self.windows + 1 >= MAX_SWEEP_STEPS
        )
        return (EARLIEST if reaches_earliest else self.top - self.window), self.top


def other_priorities(known: Iterable[int]) -> tuple[list[int], list[int]]:
    """The priorities outside ``known`` as ranges, highest first: each range is the priorities
    strictly between its two bounds, as (lower bounds, upper bounds) for ``CLAIM_OTHER_PRIORITIES``.
    With nothing known, one range holds every priority."""
    edges = sorted(set(known), reverse=True)
    uppers = [PRIORITY_MAX + 1, *edges]
    lowers = [*edges, PRIORITY_MIN - 1]
    ranges = [(low, high) for low, high in zip(lowers, uppers, strict=True) if high - low > 1]
    return [low for low, _ in ranges], [high for _, high in ranges]


def claim_statement(
    priority: int | None, window: Window | None = None, others: Sequence[int] | None = None
) -> tuple[str, dict[str, Any]]:
    """One step of a claim: the statement and the parameters of its own. A sweep's step over
    ``window``; else at one ``priority``; else across every priority but ``others`` (the ones this
    claim asked for one by one), or across all when it asked for none."""
    if window is not None:
        return sql.CLAIM_IN_WINDOW, {"below": window[1]}
    if priority is not None:
        return sql.CLAIM_AT_PRIORITY, {"priority": priority}
    if others:
        above, below = other_priorities(others)
        return sql.CLAIM_OTHER_PRIORITIES, {"above": above, "below": below}
    return sql.CLAIM_NEXT, {}


def queue_params(queue: str = DEFAULT_QUEUE) -> dict[str, Any]:
    """A claim statement's parameters that name its queue."""
    return {"queue": queue}


def _heads(claimed: Sequence[tuple[int, datetime]]) -> dict[int, datetime]:
    """The earliest ``scheduled_at`` taken per priority (a statement returns rows in any order)."""
    heads: dict[int, datetime] = {}
    for priority, at in claimed:
        heads[priority] = min(at, heads.get(priority, at))
    return heads


class ClaimFloor:
    """One executor's floors, driven by ``ClaimPlanner``: per claim ``floor_for_next``; while ``sweep_window`` gives
    one (and the claim's sweep budget lasts), a sweep step, reported with ``swept``; then the steps
    of ``priorities_for``, and ``observe`` with what each step took."""

    def __init__(self, sweep_every_seconds: float, margin_seconds: float = FLOOR_MARGIN_SECONDS) -> None:
        self.base_sweep_every = sweep_every_seconds
        self.sweep_every = sweep_every_seconds
        self.margin = timedelta(seconds=margin_seconds)
        self.floor: datetime | None = None  # the common floor; None: nothing known yet, the next claim sweeps
        self.floors: dict[int, datetime] = {}  # per priority seen pending (claimed, or in a NOTIFY)
        self._last_sweep = float("-inf")
        self._sweeping = False  # the claim in flight is the first one, with no floor
        self._sweep_cost = 0.0  # seconds the last sweep took
        self._sweep: _Sweep | None = None  # the sweep in progress (its steps start the next claims)
        self._first_window = FIRST_WINDOW  # of the next sweep's first step
        self._lowered: set[object] = set()  # priorities a notification lowered while a claim ran

    @property
    def priorities(self) -> set[int]:
        return set(self.floors)

    def floor_for_next(self, now: float) -> datetime:
        """The common floor for the claim about to be made (``now``: the worker's monotonic clock);
        ``EARLIEST`` for the first claim, which knows nothing yet. Starts a sweep when one is due."""
        self._sweeping = False
        self._lowered = set()
        if self.floor is None:
            self._last_sweep = now
            self._sweeping = True
            return EARLIEST
        if self._sweep is None and now - self._last_sweep >= max(self.sweep_every, self._sweep_cost / SWEEP_SHARE):
            self._last_sweep = now
            top = max([self.floor, *self.floors.values()])
            self._sweep = _Sweep(top, self._first_window, (self.floor, dict(self.floors)))
        return self.floor

    def sweep_window(self) -> Window | None:
        """The ``scheduled_at`` window (from, below) of the sweep step this claim makes first, across
        all priorities; None when no sweep is in progress."""
        return self._sweep.next_window if self._sweep is not None else None

    def priorities_for(self, floor: datetime) -> list[tuple[int, datetime]]:
        """The (priority, floor) steps a claim at common ``floor`` makes one by one, highest priority
        first, before its step across all priorities (none for a sweep: finding what the floors
        would miss is what a sweep is for)."""
        if self._sweeping:
            return []
        return sorted(self.floors.items(), key=lambda item: -item[0])

    def observe(self, claimed_at: datetime, steps: Sequence[Step], seconds: float = 0.0) -> None:
        """Learn from a finished claim: ``claimed_at`` is the database's ``now()`` for it (its first
        statement's), ``steps`` what each statement took, in order, ``seconds`` how long it took."""
        if self._sweeping:  # the first claim
            self._sweeping = False
            self._sweep_cost = seconds
        now_floor = claimed_at - self.margin
        for step in steps:  # (a sweep's steps are reported by swept(), not here)
            if step.short and step.priority is not None:
                self._raise(step.priority, now_floor)
                if not step.claimed and step.priority not in self._lowered:
                    del self.floors[step.priority]  # drained: not asked again until seen again
            elif step.short:  # across all, after every known priority's step came back short too
                for priority in {*self.floors, *(p for p, _ in step.claimed)}:
                    self._raise(priority, now_floor)
                self._raise(None, now_floor)
            else:  # full: each priority it took goes to its first row; the common floor stays
                for priority, at in _heads(step.claimed).items():
                    self._raise(priority, at - self.margin)
                if self.floor is None:  # a full first sweep: nothing is known below the common floor
                    self.floor = EARLIEST

    def swept(self, step: Step) -> None:
        """A sweep's step came back (reported at once: a claim may make several while they are
        cheap): take note of what it found, then size and place the next one."""
        sweep = self._sweep
        if sweep is None or step.window != sweep.next_window:
            return  # a step of a sweep that forget() ended
        common, floors = sweep.floors
        sweep.stragglers |= any(at < floors.get(p, common) for p, at in step.claimed)
        sweep.spent += step.seconds
        for priority, at in _heads(step.claimed).items():  # a priority not known yet: from its first row on
            if priority not in self.floors:
                self._raise(priority, at - self.margin)
        if not step.short:
            return  # the window holds more: the next step takes it again
        low, _ = step.window
        if low == EARLIEST:  # the last step: the sweep is done
            self._sweep = None
            self._sweep_cost = sweep.spent
            self.sweep_every = (
                self.base_sweep_every
                if sweep.stragglers
                else min(self.sweep_every * 2, self.base_sweep_every * MAX_SWEEP_FACTOR)
            )
            return
        if step.seconds <= SWEEP_STEP_SECONDS:
            factor = WINDOW_GROWTH
        else:
            factor = max(WINDOW_SHRINK, SWEEP_STEP_SECONDS / step.seconds)
        sweep.top, sweep.window, sweep.windows = low, max(MIN_WINDOW, sweep.window * factor), sweep.windows + 1
        if sweep.windows == 1:  # where the entries are densest: the next sweep starts from it
            self._first_window = min(FIRST_WINDOW, sweep.window)

    def _raise(self, priority: int | None, candidate: datetime) -> None:
        """Move one floor up to ``candidate`` (None: the common one), unless a notification lowered it
        while the claim ran: that claim may not have seen the late row."""
        if _ALL in self._lowered or priority in self._lowered:
            return
        if priority is None:
            if self.floor is None or candidate > self.floor:
                self.floor = candidate
        elif priority not in self.floors or candidate > self.floors[priority]:
            self.floors[priority] = candidate

    def lower_to(self, scheduled_at: datetime, priority: int | None = None) -> None:
        """A submit committed a task with this ``scheduled_at`` and ``priority`` (from its NOTIFY):
        make sure the next claim reaches it, however late its transaction committed. A priority
        not known yet starts no higher than the common floor, below which it was never claimed."""
        if self.floor is None:
            return  # the next claim sweeps anyway
        candidate = scheduled_at - self.margin
        if priority is None:  # an older payload without a priority: lower every floor
            self._lowered.add(_ALL)
            self.floor = min(self.floor, candidate)
            self.floors = {p: min(at, candidate) for p, at in self.floors.items()}
            return
        current = self.floors.get(priority, self.floor)
        if priority not in self.floors or candidate < current:
            self._lowered.add(priority)
            self.floors[priority] = min(current, candidate)

    def forget(self) -> None:
        """After a reconnect or an error: the next claim sweeps, and sweeps come at the poll interval."""
        self.floor = None
        self.floors.clear()
        self.sweep_every = self.base_sweep_every
        self._sweep = None


@dataclass(frozen=True)
class ClaimQuery:
    """One statement of a claim, with every parameter it needs."""

    statement: str
    params: dict[str, Any]


@dataclass(frozen=True)
class ClaimReply:
    """What one claim statement returned: the server's ``now()``, the jobs, how long it took."""

    claimed_at: datetime
    jobs: list[Job]
    seconds: float

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, Any]], seconds: float) -> ClaimReply:
        """From a claim statement's rows (one row with a NULL id when it claimed nothing)."""
        return cls(rows[0]["claimed_at"], [Job.from_row(row) for row in rows if row["id"] is not None], seconds)


def _taken(jobs: Sequence[Job]) -> list[tuple[int, datetime]]:
    return [(job.priority, job.scheduled_at) for job in jobs]


class ClaimPlanner:
    """Plans the claims of one executor's task ``names`` in one ``queue``: sweep steps first while a sweep is in
    progress, then each priority it knows of from its own floor, then every other priority."""

    def __init__(
        self,
        names: Sequence[str],
        worker_id: str,
        lock_seconds: float,
        sweep_every_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        margin_seconds: float = FLOOR_MARGIN_SECONDS,
        queue: str = DEFAULT_QUEUE,
    ) -> None:
        self.floor = ClaimFloor(sweep_every_seconds, margin_seconds)
        self.names = frozenset(names)
        self._params: dict[str, Any] = {
            "names": list(names),
            "worker_id": worker_id,
            "lock_seconds": float(lock_seconds),
            **queue_params(queue),
        }
        self._clock = clock

    def claim(self, limit: int) -> Generator[ClaimQuery, ClaimReply, list[Job]]:
        """Yields each statement of one claim of up to ``limit`` jobs and receives its reply; returns
        every job claimed. Sweep steps go on while they are cheap (an idle queue's sweep is one step)."""
        started = self._clock()
        floor = self.floor.floor_for_next(started)
        jobs: list[Job] = []
        steps: list[Step] = []
        claimed_at: datetime | None = None
        swept = 0.0
        while len(jobs) < limit and swept < SWEEP_STEP_SECONDS and (window := self.floor.sweep_window()):
            asked = limit - len(jobs)
            reply = yield self._query(None, window[0], asked, window=window)
            self.floor.swept(Step(None, asked, _taken(reply.jobs), window, reply.seconds))
            swept += reply.seconds
            claimed_at, jobs = claimed_at or reply.claimed_at, jobs + reply.jobs
        known = self.floor.priorities_for(floor)
        others = [priority for priority, _ in known]  # the last step, across priorities, leaves these out
        for priority, at in [*known, (None, floor)]:
            if len(jobs) >= limit:
                break
            asked = limit - len(jobs)
            reply = yield self._query(priority, at, asked, others=others)
            steps.append(Step(priority, asked, _taken(reply.jobs), None, reply.seconds))
            claimed_at, jobs = claimed_at or reply.claimed_at, jobs + reply.jobs
        assert claimed_at is not None
        self.floor.observe(claimed_at, steps, seconds=self._clock() - started)
        return jobs

    def _query(
        self,
        priority: int | None,
        floor: datetime,
        limit: int,
        window: Window | None = None,
        others: list[int] | None = None,
    ) -> ClaimQuery:
        statement, params = claim_statement(priority, window, others)
        return ClaimQuery(statement, {**self._params, **params, "floor": floor, "limit": limit})

    def lower_to(self, scheduled_at: datetime, priority: int | None) -> None:
        self.floor.lower_to(scheduled_at, priority)

    def forget(self) -> None:
        self.floor.forget()
