"""Liveness: renew the locks this worker holds (heartbeat) and rescue claims whose worker is gone.

Each round heartbeats before it rescues, and a rescue never takes this worker's own claims: after
an outage longer than the lock timeout, the worker first renews what it still runs, and what it
finished meanwhile is written by its writer, instead of being rescued and run again.

A rescue is a failed attempt like any other: ``outcome.decide`` chooses retry (with backoff) or
failure, exactly as for an exception, and ``RESCUE_MANY`` applies that only to claims whose lock is
still expired and still held by the worker that lost it.

Dead workers are found two ways. A killed process's connections close at once, so a worker that
holds claims but has had no session open for ``VANISHED_AFTER_SECONDS`` (as this worker observed it
throughout, with its own connection up) is gone: its claims are rescued without waiting for their
locks, which default to ten minutes. A worker cut off by the network may keep its sessions open on
the server for a long time; for that case lock expiry remains the fallback.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tasklib import sql
from tasklib._connections import Outage, WorkerConnections
from tasklib.config import Config
from tasklib.outcome import Outcome, OutcomeKind, decide

log = logging.getLogger("tasklib.worker")

#: Expired claims handled per rescue statement (more are taken in the same round, one batch at a
#: time): a few hundred rows keep each statement in the tens of milliseconds.
RESCUE_BATCH = 256
#: How long a worker holding claims must stay without any session before its claims are rescued.
#: Long enough that a PostgreSQL restart (every session closes; live workers reconnect within about a
#: second) or a worker's reconnect never counts as a death; short next to the default lock.
VANISHED_AFTER_SECONDS = 5.0
#: After this worker's own connection failed, how long it rescues nothing once it is back. An
#: outage that cut everyone (a PostgreSQL restart) also stopped every other worker's heartbeats, so
#: their locks may have expired meanwhile; they reconnect within about a second and renew their
#: claims and write the outcomes they held. Rescuing first would run those tasks again.
RECONNECT_GRACE_SECONDS = 5.0


#: The look for vanished workers takes at most this share of the time between two looks. It reads
#: every unexpired entry of the lock index, and while a long transaction elsewhere holds back
#: cleanup those include the entries of every task finished since: measured at 0.54 busy sessions
#: (a quarter of this machine's CPU) with two workers looking every second, under a 40 s snapshot;
#: paced, 0.05. A vanished worker is then found later than 5 s (lock expiry stays the fallback).
VANISHED_CHECK_SHARE = 0.02


class Pacing:
    """When a repeated check is due: each ``interval``, or less often when it gets slow, so that it
    never takes more than ``share`` of the time."""

    def __init__(self, interval: float, share: float = VANISHED_CHECK_SHARE) -> None:
        self.interval = interval
        self.share = share
        self._next = float("-inf")

    def due(self, now: float) -> bool:
        return now >= self._next

    def ran(self, started: float, finished: float) -> None:
        self._next = finished + max(self.interval, (finished - started) / self.share)


class VanishedWorkers:
    """Workers seen holding claims without a session, and since when (this worker's monotonic clock)."""

    def __init__(self, after_seconds: float = VANISHED_AFTER_SECONDS) -> None:
        self.after_seconds = after_seconds
        self._since: dict[str, float] = {}

    def observe(self, missing: Iterable[str], now: float) -> list[str]:
        """Record one look at which workers have no session; return those gone long enough to rescue.
        A worker seen connected again (absent from ``missing``) starts over."""
        self._since = {worker: self._since.get(worker, now) for worker in missing}
        return sorted(worker for worker, since in self._since.items() if now - since >= self.after_seconds)

    def forget(self) -> None:
        """Our own connection failed: what we saw before it says nothing about the others now."""
        self._since.clear()


def rescue_decisions(
    rows: Iterable[dict[str, Any]], config: Config, vanished: bool = False
) -> list[tuple[Any, str, Any, Any]]:
    """``(id, worker id, started_at, Action)`` for each claim to rescue (rows of EXPIRED_CLAIMS, or
    of CLAIMS_OF_WORKER for a worker whose sessions are gone)."""
    decisions = []
    for row in rows:
        why = (
            "has had no database session for several seconds (its process is gone)"
            if vanished
            else f"stopped renewing its lock, which expired at {row['locked_until'].isoformat()}"
        )
        lost = Outcome(
            OutcomeKind.LOST,
            error=(
                f"WorkerLost: worker {row['worker_id']} {why}; the attempt started at "
                f"{row['started_at'].isoformat()} is counted as failed."
            ),
        )
        action = decide(lost, row["retry_count"], row["max_retries"], config)
        decisions.append((row["id"], row["worker_id"], row["started_at"], action))
    return decisions


def foreign_claims(rows: Iterable[dict[str, Any]], worker_id: str, known: set[uuid.UUID]) -> list[dict[str, Any]]:
    """The expired claims a rescue may take: all but this worker's own that it knows it holds
    (``known``: running or queued in its children, or finished with the outcome waiting in its
    writer). Rescuing those would run them twice. Its own claims it does not know of (a claim whose
    reply was lost with the connection) are rescued like anyone's: they never ran."""
    return [r for r in rows if r["worker_id"] != worker_id or r["id"] not in known]


class LockKeeper:
    """Runs ``loop()`` in the background: heartbeats every ``heartbeat_interval``, rescues every ``poll_interval``."""

    def __init__(
        self,
        config: Config,
        worker_id: str,
        connections: WorkerConnections,
        held: Callable[[], set[uuid.UUID]],
        unwritten: Callable[[], set[uuid.UUID]],
        on_lost: Callable[[set[uuid.UUID]], None],
        on_rescued: Callable[[], None],
        poll_interval: float,
    ) -> None:
        self.config = config
        self.worker_id = worker_id
        self._connections = connections
        self._held = held
        self._unwritten = unwritten
        self._on_lost = on_lost
        self._on_rescued = on_rescued
        self.poll_interval = poll_interval
        self.heartbeat_interval = max(0.2, min(config.lock_timeout_seconds / 3, 10.0))
        self.vanished = VanishedWorkers()
        self.vanished_pacing = Pacing(poll_interval)
        self._quiet_until = 0.0  # monotonic time before which this worker rescues nothing

    async def loop(self) -> None:
        last_beat = 0.0
        outage = Outage("heartbeat and rescue")
        while True:
            await asyncio.sleep(min(self.poll_interval, self.heartbeat_interval))
            try:
                now = time.monotonic()
                if now - last_beat >= self.heartbeat_interval:
                    await self.heartbeat()
                    last_beat = now
                if time.monotonic() < self._quiet_until:
                    await self._connections.execute(sql.NOW, {})  # back yet? (rescues wait out the grace)
                await self.rescue()
                await self.rescue_vanished()
                outage.ok()
            except psycopg.Error as exc:
                self.vanished.forget()
                self._quiet_until = time.monotonic() + RECONNECT_GRACE_SECONDS
                outage.failed(exc)

    async def heartbeat(self) -> None:
        """Extend our locks; tasks whose rows are no longer ours (cancelled, rescued) are stopped."""
        held = self._held()
        if not held:
            return
        rows = await self._connections.execute(
            sql.HEARTBEAT,
            {"ids": list(held), "worker_id": self.worker_id, "lock_seconds": float(self.config.lock_timeout_seconds)},
        )
        # A task that finished meanwhile is not lost: only count those still held now.
        lost = (held - {r[0] for r in rows}) & self._held()
        if lost:
            self._on_lost(lost)

    async def rescue(self) -> int:
        """Fail or retry (by policy) the claims of workers that stopped renewing their locks."""
        if time.monotonic() < self._quiet_until:
            return 0
        total = 0
        while True:
            found = await self._connections.execute(sql.EXPIRED_CLAIMS, {"limit": RESCUE_BATCH}, row_factory=dict_row)
            if not found:
                break
            expired = foreign_claims(found, self.worker_id, self._held() | self._unwritten())
            if not expired:
                break
            rescued = await self._apply(sql.RESCUE_MANY, rescue_decisions(expired, self.config))
            total += len(rescued)
            if len(found) < RESCUE_BATCH or not rescued:
                break  # all done, or another worker is rescuing the same rows
        if total:
            self._on_rescued()
        return total

    async def rescue_vanished(self) -> int:
        """Fail or retry (by policy) the claims of workers whose sessions have stayed gone."""
        started = time.monotonic()
        if started < self._quiet_until or not self.vanished_pacing.due(started):
            return 0
        rows = await self._connections.execute(sql.VANISHED_WORKERS, {})
        self.vanished_pacing.ran(started, time.monotonic())
        missing = [r[0] for r in rows if r[0] != self.worker_id]
        total = 0
        for worker_id in self.vanished.observe(missing, time.monotonic()):
            while True:
                claims = await self._connections.execute(
                    sql.CLAIMS_OF_WORKER, {"worker_id": worker_id, "limit": RESCUE_BATCH}, row_factory=dict_row
                )
                if not claims:
                    break
                log.warning("worker %s has no database session: rescuing %d task(s) it claimed", worker_id, len(claims))
                rescued = await self._apply(sql.RESCUE_VANISHED, rescue_decisions(claims, self.config, vanished=True))
                total += len(rescued)
                if len(claims) < RESCUE_BATCH or not rescued:
                    break
        if total:
            self._on_rescued()
        return total

    async def _apply(self, statement: str, decisions: list[tuple[Any, str, Any, Any]]) -> set[Any]:
        """Run a rescue statement per lost worker; the ids it changed."""
        by_worker: dict[str, list[tuple[Any, Any, Any]]] = defaultdict(list)
        for task_id, worker_id, started_at, action in decisions:
            by_worker[worker_id].append((task_id, started_at, action))
        rescued: set[Any] = set()
        for worker_id, batch in by_worker.items():  # usually one lost worker per round
            rows = await self._connections.execute(statement, sql.outcome_params(batch, worker_id))
            done = {r[0] for r in rows}
            for task_id, _started, action in batch:
                if task_id in done:
                    log.warning("rescued task %s from worker %s: now %s", task_id, worker_id, action.state.value)
            rescued |= done
        return rescued
