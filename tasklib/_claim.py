"""Where a worker's next claim starts: a floor on ``scheduled_at`` per priority, decided without a
database.

Why a floor: claiming moves a row out of the pending index, but its old index entry stays until
nothing in the database can still see the row as pending. While some long transaction elsewhere
holds the cleanup horizon back (an analytics query, a session idle in transaction), those entries
pile up at the front of the index, exactly where every claim starts, and each claim would visit
every one of them. With a floor the claim starts just below the oldest task it could still be
missing, so its cost follows the tasks it takes, not the tasks taken before it.

Why one per priority: the pending index leads with priority, and a btree scan can start at
(priority, floor) only when the claim names one priority (``CLAIM_AT_PRIORITY``); otherwise it
starts at the index's first entry and tests every entry before the floor, so the entries a held
snapshot keeps cost every claim again, and keep costing until VACUUM. So a claim asks for each
priority it knows of in turn, highest first, each from that priority's own floor; when those leave
it short, one statement over every *other* priority (the ranges between the known ones,
``other_priorities``), from the lane's *common* floor, takes the rest, so a priority the worker has
not heard of yet is never left waiting behind an empty queue. (It leaves the known priorities out
because the common floor lags: it moves only when a whole claim comes back short, so after a
stretch of full claims a scan of the known priorities from it would visit every entry claimed
since, only to find what their own steps just found: nothing.) A priority that comes back empty is
forgotten until seen again (in a claimed row, or in a submit's NOTIFY).

Each floor only moves up (a notification aside, below), and only past what a claim took:

* after a **short** step (fewer rows than asked for), which took everything claimable at its
  priority up to its own ``now()``: that priority's floor goes to just below that ``now()``; a
  short claim across all priorities does this for every priority, and for the common floor;
* after a **full** step: each priority it took rows of goes to just below the ``scheduled_at`` of
  the first row it took there (rows of one priority are taken in ``scheduled_at`` order, so
  everything before that row was taken already). A full claim across all priorities leaves the
  common floor where it was: the priorities below its last row were never reached, and their
  rows may be older than anything it took (a worker that starts after tasks of four priorities
  were submitted takes the two highest in its first claim, and knows nothing of the other two).

So a lower priority's older task is never passed over because a higher priority kept claims full:
its floor moves only when a claim at its own priority moves it. (An earlier single floor did pass
it over, and it then waited for a sweep.)

Why it is safe: every path that makes a task pending stamps it with the database's ``now()`` (or a
later time), so anything a floored claim can miss is a row committed more than
``FLOOR_MARGIN_SECONDS`` after its statement began, a row another session had locked, or a row of
a priority the worker has not heard of that sits below the common floor. A submit's NOTIFY,
delivered at commit, carries the ``scheduled_at`` and priority it wrote, and the worker lowers
that priority's floor to it (``lower_to``): a transactional submit that commits seconds later is
claimed at once. A **sweep** finds the rest: once per sweep interval, which starts at the poll
interval and doubles, up to ``MAX_SWEEP_FACTOR`` times it, while sweeps find nothing a floored claim
would not have, and drops back to the poll interval as soon as one does.

Why a sweep goes in windows: under a held snapshot everything below the floors is dead entries of
claimed tasks, and a claim with no floor visits each of them (a heap visit each: 300-700 ms after
40 s at full speed, one statement holding the claim connection all along). So a sweep is a series
of steps, made at the start of claims (as many as fit in ``SWEEP_STEP_SECONDS`` of the claim, at
least one), each across all priorities over a
window of ``scheduled_at`` below the highest floor it started from, walking down: a window is
sized from the last one's time to take about ``SWEEP_STEP_SECONDS`` (entries outside it are
rejected on the index key, without a heap visit), doubles where entries are few (the cleaned
past), and ends at ``EARLIEST``. Only the very first claim (nothing known yet) is a single step
with no floor. A sweep's steps together take at most ``SWEEP_SHARE`` of the time between sweeps.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tasklib import sql
from tasklib.states import PRIORITY_MAX, PRIORITY_MIN

#: Rows may commit this long after their statement began and still be seen without a sweep. A
#: submit or a manual retry whose transaction commits later says so: its NOTIFY carries its
#: ``scheduled_at`` (``lower_to``). Why not wider: under a held snapshot every claim walks the dead
#: index entries of the tasks claimed within the margin below its floor, a second's worth at full
#: speed. Same-run A/B, 2 x 4 workers, four 40 s snapshots each: 0.1 s against 1.0 s cut the
#: claim's busy time per task by 16 % and raised the held rate from 12,500/s to 14,400/s (mean).
FLOOR_MARGIN_SECONDS = 0.1
#: The floor of a sweep: lower than any ``scheduled_at`` a task can have.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
#: Sweeps that find nothing new space out up to this many poll intervals.
MAX_SWEEP_FACTOR = 8
#: A sweep takes at most this share of the time between two sweeps. Under a held snapshot a sweep
#: walks every index entry the snapshot keeps (hundreds of milliseconds after 40 s); paced, what
#: only a sweep can find waits longer then, but the workers' own claims keep their speed.
SWEEP_SHARE = 0.02
#: What one step of a sweep should take: its windows are sized from the last step's time to this.
SWEEP_STEP_SECONDS = 0.03
#: The window of a sweep's first step, at most (later ones follow the time each took).
FIRST_WINDOW = timedelta(seconds=1)
#: A step's window is at most this many times the last one's, and at least this share of it. Growth
#: is slow because a window's time says nothing of what lies below it: after windows grew over an
#: idle stretch, the next one may land on a dense one.
WINDOW_GROWTH, WINDOW_SHRINK = 2.0, 0.25
#: Windows never get narrower, a window that took no longer than ``SWEEP_STEP_SECONDS`` is followed
#: by one at least twice as wide, and a sweep's last step comes after at most ``MAX_SWEEP_STEPS``:
#: a step also walks the index outside its window (on keys only, some 30 ns an entry), so past a
#: million kept entries no window meets ``SWEEP_STEP_SECONDS``, and a sweep must still end.
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


def _heads(claimed: Sequence[tuple[int, datetime]]) -> dict[int, datetime]:
    """The earliest ``scheduled_at`` taken per priority (a statement returns rows in any order)."""
    heads: dict[int, datetime] = {}
    for priority, at in claimed:
        heads[priority] = min(at, heads.get(priority, at))
    return heads


class ClaimFloor:
    """Tracks one lane's floors. Per claim: ``floor_for_next``; then, while ``sweep_window`` gives
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
