"""Retention: delete old finished tasks in short batches, by hand (``prune``) or from the workers.

The original design keeps every result forever, so nothing is deleted unless asked: ``prune`` (and
``tasklib prune``) on demand, or ``Config(retention=...)``, which makes workers prune periodically.
Rows are deleted oldest completion first, at most ``BATCH_ROWS`` per statement, each statement its
own transaction: no long lock, and no long snapshot holding back the cleanup of a busy queue table.
Pending and running rows are never touched (every batch names the finished state it deletes).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import psycopg

from tasklib import sql
from tasklib.config import Retention

log = logging.getLogger("tasklib.retention")

#: Rows one DELETE removes at most (the issue's bound is 10,000; 5,000 keeps each statement at a few
#: tens of milliseconds on a busy table, so its locks and snapshot are short).
BATCH_ROWS = 5_000
#: How long a round may hold the retention lease: past it (a worker that died mid-round) another
#: worker may take it. Far longer than a round of 1,000,000 rows at the paced rate.
LEASE_SECONDS = 600.0


def prune_with(
    run: Callable[[str, dict[str, Any]], list[Any]],
    periods: dict[str, timedelta],
    pause: float = 0.0,
    now: datetime | None = None,
) -> dict[str, int]:
    """Delete finished rows older than each state's period; return ``{state: rows removed}``.

    ``run`` executes one statement in its own transaction. Each state is walked by completion time
    from its oldest row, every batch starting where the last one ended (a keyset), so rows of other
    states are stepped over once, not once per batch. ``pause`` sleeps that fraction of each
    batch's time between batches, leaving the database to the workers.
    """
    removed = {state: 0 for state in periods}
    if now is None:  # the database's clock: periods count back from it, not from this host's
        now = run(sql.NOW, {})[0][0]
    for state, period in periods.items():
        after: datetime | None = None
        while True:
            started = time.monotonic()
            count, last = run(
                sql.PRUNE_BATCH, {"state": state, "before": now - period, "after": after, "limit": BATCH_ROWS}
            )[0]
            removed[state] += int(count)
            if count < BATCH_ROWS or last is None:
                break
            after = last
            if pause:
                time.sleep((time.monotonic() - started) * pause)
    return removed


def connection_runner(conn: psycopg.Connection[Any]) -> Callable[[str, dict[str, Any]], list[Any]]:
    """A ``run`` for ``prune_with`` on an autocommit connection."""

    def run(statement: str, params: dict[str, Any]) -> list[Any]:
        return conn.execute(statement, params).fetchall()  # type: ignore[arg-type]

    return run


def automatic_round(conn: psycopg.Connection[Any], policy: Retention, worker_id: str) -> dict[str, int] | None:
    """One worker's periodic round: prune while holding the retention lease and record the round
    (the dashboard shows the policy and outcome from it). Returns None when another worker holds
    the lease (it is pruning now)."""
    if not conn.execute(sql.TAKE_RETENTION_LEASE, {"worker_id": worker_id, "seconds": LEASE_SECONDS}).fetchall():
        return None
    try:
        started = conn.execute(sql.NOW).fetchone()[0]  # type: ignore[index]
        removed = prune_with(connection_runner(conn), policy.periods(), pause=1.0, now=started)
        record = {"policy": policy.describe(), "removed": removed, "total": sum(removed.values()), "worker_id": worker_id}
        conn.execute(sql.RECORD_RETENTION, {"record": json.dumps(record), "started_at": started})
        return removed
    finally:
        conn.execute(sql.END_RETENTION_LEASE, {"worker_id": worker_id})
