"""Where a worker's next claim starts: a floor on ``scheduled_at``, decided without a database.

Why a floor: claiming moves a row out of the pending index, but its old index entry stays until
nothing in the database can still see the row as pending. While some long transaction elsewhere
holds the cleanup horizon back (an analytics query, a session idle in transaction), those entries
pile up at the front of the index, exactly where every claim starts, and each claim would visit
every one of them. With a floor the claim starts just below the oldest task it could still be
missing, so its cost follows the tasks it takes, not the tasks taken before it.

How it moves (never down):

* after a **short** claim (fewer rows than asked for), which took everything claimable up to its
  own ``now()``: to just below that ``now()``;
* after a **full** claim: to just below the ``scheduled_at`` of the first row it took in queue
  order (highest priority, oldest). Everything claimable before that row in the index is gone:
  the claim walked past it. Rows of *lower* priorities may remain below the new floor; they are
  claimed only once the higher ones run out anyway, and a sweep finds them then.

Why it is safe: every path that makes a task pending stamps it with the database's ``now()`` (or a
later time), so anything a floored claim can miss is either a lower priority's backlog, a row
committed more than ``FLOOR_MARGIN_SECONDS`` after its statement began, or a row another session
had locked. A submit's NOTIFY, delivered at commit, carries the ``scheduled_at`` it wrote, and the
worker lowers its floor to it (``lower_to``): a transactional submit that commits seconds later is
claimed at once. A **sweep** (a claim with no floor) finds those: once per sweep interval, which
starts at the poll interval and doubles, up to ``MAX_SWEEP_FACTOR`` times it, while sweeps find
nothing a floored claim would not have (under a held snapshot a sweep walks every dead entry, so
sweeping less often is what keeps its cost bounded), and drops back to the poll interval as soon as
one does.

Why priorities too: the pending index leads with priority, and a btree scan can start at
(priority, floor) only when the claim names one priority (``CLAIM_AT_PRIORITY``); otherwise it
starts at the index's first entry and tests every entry before the floor, so the entries a held
snapshot keeps cost every claim again, and keep costing until VACUUM. So the floor also remembers
the priorities it has seen pending (in claimed rows, and in each submit's NOTIFY), and a floored
claim asks for each of them in turn, highest first; a priority that comes back empty is forgotten
until seen again. When those leave the claim short, one claim across all priorities, still above
the floor, takes the rest, so a priority the worker has not seen yet is never left waiting behind
an empty queue. What this can put behind a known lower priority for a moment is a higher one the
worker did not hear of (a lost notification, a rescue by another worker): a sweep finds it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

#: Rows may commit this long after their statement began and still be seen without a sweep. A
#: submit whose transaction commits later says so: its NOTIFY carries its ``scheduled_at``
#: (``lower_to``). (0.1 s was tried: no measurable gain under a held snapshot, more reliance on
#: notifications, so the margin stays wide.)
FLOOR_MARGIN_SECONDS = 1.0
#: The floor of a sweep: lower than any ``scheduled_at`` a task can have.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
#: Sweeps that find nothing new space out up to this many poll intervals.
MAX_SWEEP_FACTOR = 8
#: A sweep takes at most this share of the time between two sweeps. Under a held snapshot a sweep
#: walks every index entry the snapshot keeps (hundreds of milliseconds after 40 s); paced, what
#: only a sweep can find waits longer then, but the workers' own claims keep their speed.
SWEEP_SHARE = 0.02


class ClaimFloor:
    """Tracks the floor for one worker's claims. ``floor_for_next`` then ``observe`` per claim."""

    def __init__(self, sweep_every_seconds: float, margin_seconds: float = FLOOR_MARGIN_SECONDS) -> None:
        self.base_sweep_every = sweep_every_seconds
        self.sweep_every = sweep_every_seconds
        self.margin = timedelta(seconds=margin_seconds)
        self.floor: datetime | None = None  # None: nothing known yet, the next claim sweeps
        self._last_sweep = float("-inf")
        self._sweeping_below: datetime | None = None  # the floor a sweep in flight looks under
        self._lowered = 0  # how many times a notification lowered the floor
        self._sweep_cost = 0.0  # seconds the last sweep took
        self._lowered_before_claim = 0
        self.priorities: set[int] = set()  # priorities seen pending (claimed, or in a submit's NOTIFY)
        self._sweeping = False  # the claim in flight is a sweep

    def floor_for_next(self, now: float) -> datetime:
        """The floor for the claim about to be made (``now`` is the worker's monotonic clock)."""
        self._sweeping_below = None
        self._sweeping = False
        self._lowered_before_claim = self._lowered
        if self.floor is None or now - self._last_sweep >= max(self.sweep_every, self._sweep_cost / SWEEP_SHARE):
            self._last_sweep = now
            self._sweeping_below = self.floor
            self._sweeping = True
            return EARLIEST
        return self.floor

    def priorities_for(self, floor: datetime) -> list[int]:
        """The priorities a claim at ``floor`` asks for one by one, highest first (none for a sweep:
        finding what the floor and these would miss is what a sweep is for)."""
        return [] if floor == EARLIEST else sorted(self.priorities, reverse=True)

    def drained(self, priority: int) -> None:
        """A claim at ``priority`` found nothing: stop asking for it until it is seen again."""
        self.priorities.discard(priority)

    def observe(
        self, claimed_at: datetime, limit: int, claimed: Sequence[tuple[int, datetime]] = (), seconds: float = 0.0
    ) -> None:
        """Learn from a finished claim: ``claimed_at`` is the database's ``now()`` for it (the first
        statement's, when it took several), ``claimed`` the (priority, scheduled_at) of each row it
        took, ``seconds`` how long it took."""
        self.priorities.update(priority for priority, _ in claimed)
        if self._sweeping:
            self._sweep_cost = seconds
            self._sweeping = False
        if self._sweeping_below is not None:
            stragglers = any(scheduled < self._sweeping_below for _, scheduled in claimed)
            self.sweep_every = (
                self.base_sweep_every if stragglers else min(self.sweep_every * 2, self.base_sweep_every * MAX_SWEEP_FACTOR)
            )
            self._sweeping_below = None
        if len(claimed) < limit:
            candidate = claimed_at - self.margin
        else:
            _, head = min((-priority, scheduled) for priority, scheduled in claimed)
            candidate = head - self.margin
        if self._lowered != self._lowered_before_claim:
            return  # a late commit lowered the floor while this claim ran: it may not have seen that row
        if self.floor is None or candidate > self.floor:
            self.floor = candidate

    def lower_to(self, scheduled_at: datetime, priority: int | None = None) -> None:
        """A submit committed a task with this ``scheduled_at`` and ``priority`` (from its NOTIFY):
        make sure the next claim reaches it, however late its transaction committed."""
        if priority is not None:
            self.priorities.add(priority)
        candidate = scheduled_at - self.margin
        if self.floor is not None and candidate < self.floor:
            self.floor = candidate
            self._lowered += 1

    def forget(self) -> None:
        """After a reconnect or an error: the next claim sweeps, and sweeps come at the poll interval."""
        self.floor = None
        self.sweep_every = self.base_sweep_every
        self.priorities.clear()
