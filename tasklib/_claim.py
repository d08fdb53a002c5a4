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
it short, one claim across all priorities, from the lane's *common* floor, takes the rest, so a
priority the worker has not heard of yet is never left waiting behind an empty queue. A priority
that comes back empty is forgotten until seen again (in a claimed row, or in a submit's NOTIFY).

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
claimed at once. A **sweep** (a claim with no floor) finds the rest: once per sweep interval, which
starts at the poll interval and doubles, up to ``MAX_SWEEP_FACTOR`` times it, while sweeps find
nothing a floored claim would not have (under a held snapshot a sweep walks every dead entry, so
sweeping less often is what keeps its cost bounded), and drops back to the poll interval as soon as
one does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

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
#: Stands for "every priority" among the floors a notification lowered during a claim.
_ALL = object()


@dataclass(frozen=True)
class Step:
    """One statement of a claim: at one ``priority`` (None: across all), ``asked`` for so many rows,
    it took rows with these (priority, scheduled_at)."""

    priority: int | None
    asked: int
    claimed: Sequence[tuple[int, datetime]] = ()

    @property
    def short(self) -> bool:
        return len(self.claimed) < self.asked


class ClaimFloor:
    """Tracks one lane's floors. Per claim: ``floor_for_next``, then ``priorities_for`` to get the
    steps to make, then ``observe`` with what each step took."""

    def __init__(self, sweep_every_seconds: float, margin_seconds: float = FLOOR_MARGIN_SECONDS) -> None:
        self.base_sweep_every = sweep_every_seconds
        self.sweep_every = sweep_every_seconds
        self.margin = timedelta(seconds=margin_seconds)
        self.floor: datetime | None = None  # the common floor; None: nothing known yet, the next claim sweeps
        self.floors: dict[int, datetime] = {}  # per priority seen pending (claimed, or in a NOTIFY)
        self._last_sweep = float("-inf")
        self._sweeping = False  # the claim in flight is a sweep
        self._before_sweep: tuple[datetime | None, dict[int, datetime]] = (None, {})
        self._sweep_cost = 0.0  # seconds the last sweep took
        self._lowered: set[object] = set()  # priorities a notification lowered while a claim ran

    @property
    def priorities(self) -> set[int]:
        return set(self.floors)

    def floor_for_next(self, now: float) -> datetime:
        """The common floor for the claim about to be made (``now``: the worker's monotonic clock);
        ``EARLIEST`` when this claim is a sweep."""
        self._sweeping = False
        self._lowered = set()
        if self.floor is None or now - self._last_sweep >= max(self.sweep_every, self._sweep_cost / SWEEP_SHARE):
            self._last_sweep = now
            self._sweeping = True
            self._before_sweep = (self.floor, dict(self.floors))
            return EARLIEST
        return self.floor

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
        if self._sweeping:
            self._sweeping = False
            self._sweep_cost = seconds
            common, floors = self._before_sweep
            claimed = [row for step in steps for row in step.claimed]
            if common is not None:  # the first sweep has no floors to compare with
                stragglers = any(at < floors.get(p, common) for p, at in claimed)
                self.sweep_every = (
                    self.base_sweep_every
                    if stragglers
                    else min(self.sweep_every * 2, self.base_sweep_every * MAX_SWEEP_FACTOR)
                )
        now_floor = claimed_at - self.margin
        for step in steps:
            if step.short and step.priority is not None:
                self._raise(step.priority, now_floor)
                if not step.claimed and step.priority not in self._lowered:
                    del self.floors[step.priority]  # drained: not asked again until seen again
            elif step.short:  # across all, after every known priority's step came back short too
                for priority in {*self.floors, *(p for p, _ in step.claimed)}:
                    self._raise(priority, now_floor)
                self._raise(None, now_floor)
            else:  # full: each priority it took goes to its first row; the common floor stays
                heads: dict[int, datetime] = {}
                for priority, at in step.claimed:
                    heads[priority] = min(at, heads.get(priority, at))
                for priority, at in heads.items():
                    self._raise(priority, at - self.margin)
                if self.floor is None:  # a full first sweep: nothing is known below the common floor
                    self.floor = EARLIEST

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
