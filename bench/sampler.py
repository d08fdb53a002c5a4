"""What the worker's statements do during a measure: ``pg_stat_activity`` sampled every 20 ms,
each statement's longest run and what it waited on (the disk, or locks and CPU)."""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

#: Wait events of a statement waiting for the disk rather than running: any I/O wait (reading,
#: writing or extending a data file, writing, flushing or creating WAL), the lock held by the
#: backend that flushes WAL for everyone, another backend's I/O on a buffer this one needs, and the
#: relation extension lock (held while another backend extends the file).
DISK_WAIT_TYPES = frozenset({"IO"})
DISK_WAITS = frozenset({"LWLock:WALWrite", "IPC:BufferIO", "Lock:extend"})


@dataclass
class Statement:
    """One worker statement as the sampler saw it: its longest age and what each sample found."""

    query: str
    kind: str = ""
    ms: float = 0.0
    waits: collections.Counter[str] = field(default_factory=collections.Counter)

    def mostly_disk(self) -> bool:
        disk = sum(n for event, n in self.waits.items() if event in DISK_WAITS or event.split(":")[0] in DISK_WAIT_TYPES)
        return disk * 2 >= sum(self.waits.values())


class StatementSampler:
    """Samples pg_stat_activity every 20 ms; remembers every worker statement it saw active.

    A statement is one (backend, ``query_start``). Each sample records what it was doing: running
    (no wait event) or waiting, and on what. The longest statement is reported with those counts,
    because "a statement took 300 ms" means two different things: a plan whose cost grew (it runs,
    or waits for locks and CPU) or a statement held up by the disk (``DISK_WAITS``: a commit waiting
    for its WAL flush, a page read or written), which no statement shape changes.
    ``longest_not_disk_ms`` is the longest statement for which fewer than half of the samples were
    disk waits.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples: list[tuple[float, str]] = []
        self.statements: dict[tuple[int, datetime], Statement] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.is_set():
                now = time.time()
                for pid, started, ms, query, autovacuum, waiting in conn.execute(
                    "SELECT pid, query_start, extract(epoch FROM clock_timestamp() - query_start) * 1000,"
                    " query, backend_type = 'autovacuum worker', wait_event_type || ':' || wait_event"
                    " FROM pg_stat_activity WHERE state = 'active' AND (application_name LIKE 'tasklib-worker %'"
                    " OR backend_type = 'autovacuum worker')"
                ):
                    text = " ".join(query.split())
                    kind = "autovacuum" if autovacuum else _kind(text)
                    text = text[:80]
                    self.samples.append((now, kind))
                    if waiting:
                        self.samples.append((now, f"{kind} waiting on {waiting}"))
                    if autovacuum or ms is None:
                        continue  # cleanup is reported in busy(), not as a worker statement
                    seen = self.statements.setdefault((pid, started), Statement(text, kind))
                    seen.ms = max(seen.ms, float(ms))
                    seen.waits[waiting or "running"] += 1
                time.sleep(0.02)

    @property
    def longest(self) -> Statement:
        return max(self.statements.values(), key=lambda s: s.ms, default=Statement(""))

    def longest_not_disk(self) -> Statement:
        return max((s for s in self.statements.values() if not s.mostly_disk()), key=lambda s: s.ms, default=Statement(""))

    def report(self) -> dict[str, Any]:
        """The figures a run records: the longest statement, what its samples saw, and the longest
        that was not mostly waiting for the disk."""
        longest, quiet = self.longest, self.longest_not_disk()
        return {
            "longest_statement_ms": round(longest.ms, 1),
            "longest_statement": longest.query,
            "longest_statement_kind": longest.kind,
            "longest_statement_waits": dict(longest.waits.most_common()),
            "longest_not_disk_ms": round(quiet.ms, 1),
            "longest_not_disk_statement": quiet.query,
            "longest_not_disk_kind": quiet.kind,
            "longest_not_disk_waits": dict(quiet.waits.most_common()),
        }

    def busy(self, start: float, end: float) -> dict[str, float]:
        """Share of samples in [start, end) in which a worker statement of each kind was active:
        where the workers' database time goes (1.0 = one statement of that kind always active)."""
        ticks = max(1, round((end - start) / 0.02))
        counts = collections.Counter(kind for at, kind in self.samples if start <= at < end)
        return {kind: round(n / ticks, 3) for kind, n in counts.most_common()}

    def __enter__(self) -> StatementSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _kind(query: str) -> str:
    if query.startswith("WITH claimed"):  # which of the claim's three shapes (tasklib.sql)
        if "AND priority = $" in query:
            return "claim-at-priority"
        if "gap.above" in query:
            return "claim-other-priorities"
        return "claim-in-window" if "AND scheduled_at < $" in query else "claim-next"
    for prefix, kind in (
        ("UPDATE tasks AS t SET locked_until", "heartbeat"),
        ("SELECT id, worker_id, started_at, locked_until", "expired-claims"),
        ("UPDATE tasks AS t SET state = 'pending'", "release"),
        ("LISTEN", "listen"),
    ):
        if query.startswith(prefix):
            return kind
    return "finish" if query.startswith("UPDATE tasks AS t SET state") else query[:30]
