"""The dashboard on a streaming replica: how far the replica's replay is behind the primary, and
whether it has replayed a change this browser just made through an action.

Pages, partials and ``/metrics`` read the replica; actions write to the primary. After an action
the browser keeps the primary's WAL position (a cookie), and every page says so while the replica
has not replayed up to it: the change is made, the page just does not show it yet.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from tasklib import sql
from tasklib.db import Database
from tasklib.errors import DatabaseError

#: The cookie that carries the primary's WAL position after an action, and how long it matters.
SEEN_COOKIE = "tasklib_seen_lsn"
SEEN_SECONDS = 120
#: The header's figures are read at most this often, whatever the number of polls.
REFRESH_SECONDS = 1.0


@dataclass(frozen=True)
class ReplicaStatus:
    primary_lsn: str
    replayed_lsn: str
    behind_bytes: int
    #: Seconds since the last transaction the replica replayed, while it is behind (0: caught up).
    lag_seconds: float
    #: Whether replay is paused on the replica (``pg_wal_replay_pause()``).
    paused: bool


class ReplicaWatch:
    """Reads the primary's position and the replica's replay, at most every ``REFRESH_SECONDS``."""

    def __init__(self, primary: Database, replica: Database) -> None:
        self.primary = primary
        self.replica = replica
        self._lock = threading.Lock()
        self._status: ReplicaStatus | None = None
        self._read_at = float("-inf")

    def status(self) -> ReplicaStatus | None:
        """None when either server cannot answer (the page says nothing rather than fail)."""
        with self._lock:
            if time.monotonic() - self._read_at < REFRESH_SECONDS:
                return self._status
            try:
                primary = self.primary.value(sql.PRIMARY_WAL_POSITION)
                row = self.replica.rows(sql.REPLICA_REPLAY, {"primary": primary})[0]
                self._status = ReplicaStatus(
                    primary, row["replayed"], max(0, int(row["behind"])), float(row["lag"] or 0), bool(row["paused"])
                )
            except DatabaseError:
                self._status = None
            self._read_at = time.monotonic()
            return self._status

    def primary_position(self) -> str:
        """Where the primary's WAL is now (after an action's commit: a position that includes it)."""
        return str(self.primary.value(sql.PRIMARY_WAL_POSITION))

    def replayed(self, position: str) -> bool:
        """Whether the replica has replayed the primary's WAL up to ``position``."""
        try:
            return bool(self.replica.value(sql.REPLAYED_UP_TO, {"position": position}))
        except DatabaseError:
            return False


def note(request: Any) -> dict[str, Any] | None:
    """What the header says of the replica for this request (None: no replica configured)."""
    watch: ReplicaWatch | None = request.app.state.get("replica")
    if watch is None:
        return None
    status = watch.status()
    seen = request.cookies.get(SEEN_COOKIE)
    pending = bool(seen) and not watch.replayed(seen)
    return {"status": status, "pending": pending}
