"""Where a worker's next claim starts: a floor on ``scheduled_at``, decided without a database.

Why a floor: claiming moves a row out of the pending index, but its old index entry stays until
nothing in the database can still see the row as pending. While some long transaction elsewhere
holds the cleanup horizon back (an analytics query, a session idle in transaction), those entries
pile up at the front of the index, exactly where every claim starts, and each claim would visit
every one of them. With a floor the claim starts just below the oldest task it could still be
missing, so its cost follows the tasks it takes, not the tasks taken before it.

Why it is safe: every path that makes a task pending stamps it with the database's ``now()`` (or a
later time), so after a claim that took everything claimable up to its own ``now()``, anything it
could still miss carries a later ``scheduled_at``. What the rule cannot see (a row whose inserting
transaction committed more than ``FLOOR_MARGIN_SECONDS`` after it began, a row another session had
locked) is picked up by a sweep: a claim with no floor, made at least once per sweep interval.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

#: Rows may commit this long after their transaction began and still be seen without a sweep.
FLOOR_MARGIN_SECONDS = 1.0
#: The floor of a sweep: lower than any ``scheduled_at`` a task can have.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)


class ClaimFloor:
    """Tracks the floor for one worker's claims. ``floor_for_next`` then ``observe`` per claim."""

    def __init__(self, sweep_every_seconds: float, margin_seconds: float = FLOOR_MARGIN_SECONDS) -> None:
        self.sweep_every = sweep_every_seconds
        self.margin = timedelta(seconds=margin_seconds)
        self.floor: datetime | None = None  # None: nothing known yet, the next claim sweeps
        self._last_sweep = float("-inf")

    def floor_for_next(self, now: float) -> datetime:
        """The floor for the claim about to be made (``now`` is the worker's monotonic clock)."""
        if self.floor is None or now - self._last_sweep >= self.sweep_every:
            self._last_sweep = now
            return EARLIEST
        return self.floor

    def observe(self, claimed_at: datetime, claimed: int, limit: int) -> None:
        """Learn from a finished claim: ``claimed_at`` is the database's ``now()`` for it.

        A claim that took fewer rows than it asked for took everything claimable between its floor
        and ``claimed_at``, so the floor can move up to just below ``claimed_at``. A full claim
        teaches nothing new: tasks may remain anywhere above the floor.
        """
        if claimed >= limit:
            return
        candidate = claimed_at - self.margin
        if self.floor is None or candidate > self.floor:
            self.floor = candidate

    def forget(self) -> None:
        """After a reconnect or an error: the next claim sweeps."""
        self.floor = None
