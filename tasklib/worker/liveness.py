"""Liveness: announce this worker (presence), renew the locks it holds (heartbeat), and rescue
the claims of workers that are gone.

A rescue is a failed attempt like any other (``outcome.decide``), applied only to claims still held
by the worker that lost them. Dead workers are found by their presence going stale (they stopped
refreshing their row of ``tasklib_workers``), or by their locks expiring. Presence needs no session
of theirs to be visible, so it works behind a transaction-mode pooler (docs/design/liveness.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any, Protocol

import psycopg
from psycopg.rows import dict_row

from tasklib import sql
from tasklib.config import Config
from tasklib.outcome import Outcome, OutcomeKind, decide
from tasklib.worker.connections import Outage, WorkerConnections
from tasklib.worker.writer import OutcomeWriter

log = logging.getLogger("tasklib.worker")

#: Expired claims handled per rescue statement (more are taken in the same round, a batch at a time).
RESCUE_BATCH = 256
#: How often a worker refreshes its presence.
PRESENCE_SECONDS = 1.0
VANISHED_AFTER_SECONDS = sql.VANISHED_AFTER_SECONDS
#: After this worker's own connection failed, how long it rescues nothing once back: the others'
#: refreshes and heartbeats stopped too, and they need a moment to renew what they still run.
RECONNECT_GRACE_SECONDS = 5.0
#: A repeated look at claims takes at most this share of the time between two looks.
VANISHED_CHECK_SHARE = 0.02
#: The look for stale workers reads no tasks, only the presence table: a larger share.
STALE_CHECK_SHARE = 0.25


class HeldWork(Protocol):
    """What liveness needs of the worker's executors: the jobs they hold, and a way to stop lost ones."""

    def held_ids(self) -> set[uuid.UUID]: ...

    def stop_lost(self, lost: set[uuid.UUID]) -> None: ...

    def rescued(self) -> None: ...  # tasks went back to pending: every claim source may have some


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


def rescue_decisions(
    rows: Iterable[dict[str, Any]], config: Config, vanished: bool = False
) -> list[tuple[Any, str, Any, Any]]:
    """``(id, worker id, started_at, Action)`` for each claim to rescue (rows of EXPIRED_CLAIMS, or
    of CLAIMS_OF_WORKER for a worker whose presence went stale)."""
    decisions = []
    for row in rows:
        why = (
            f"stopped announcing itself more than {VANISHED_AFTER_SECONDS:.0f} s ago (its process or host is gone)"
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


class Liveness:
    """Runs ``loop()`` in the background: presence every ``PRESENCE_SECONDS``, heartbeats every
    ``heartbeat_interval``, rescues every ``poll_interval``; sets ``wake`` when a rescue made tasks
    pending again. ``presence`` is the row ``register()`` writes (``sql.REGISTER_WORKER``)."""

    def __init__(
        self,
        config: Config,
        worker_id: str,
        connections: WorkerConnections,
        work: HeldWork,
        writer: OutcomeWriter,
        wake: asyncio.Event,
        poll_interval: float,
        presence: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.worker_id = worker_id
        self._connections = connections
        self._work = work
        self._writer = writer
        self._wake = wake
        self.poll_interval = poll_interval
        self.presence = {"worker_id": worker_id, **(presence or {})}
        self.heartbeat_interval = max(0.2, min(config.lock_timeout_seconds / 3, 10.0))
        # The stale look reads the small presence table: it is paced only against a slow server, so
        # a dead worker is still found within about a second of going stale on a busy machine.
        self.vanished_pacing = Pacing(poll_interval, share=STALE_CHECK_SHARE)
        self.expired_pacing = Pacing(poll_interval)
        self._quiet_until = 0.0  # monotonic time before which this worker rescues nothing

    async def loop(self) -> None:
        last_beat = last_seen = time.monotonic()  # (``register()`` has just announced it)
        outage = Outage("heartbeat and rescue")
        while True:
            await asyncio.sleep(min(self.poll_interval, self.heartbeat_interval, PRESENCE_SECONDS))
            try:
                now = time.monotonic()
                if now - last_seen >= PRESENCE_SECONDS:
                    await self.refresh()
                    last_seen = now
                if now - last_beat >= self.heartbeat_interval:
                    await self.heartbeat()
                    last_beat = now
                if time.monotonic() < self._quiet_until:
                    await self._connections.execute(sql.NOW, {})  # back yet? (rescues wait out the grace)
                await self.rescue()
                await self.rescue_vanished()
                outage.ok()
            except psycopg.Error as exc:
                self._quiet_until = time.monotonic() + RECONNECT_GRACE_SECONDS
                outage.failed(exc)

    async def register(self) -> None:
        """Announce this worker: from now on the others can tell when it is gone."""
        await self._connections.execute(sql.REGISTER_WORKER, self.presence)

    async def refresh(self) -> None:
        """This worker is alive; registered again if its row was removed (it was taken for dead)."""
        if not await self._connections.execute(sql.REFRESH_PRESENCE, {"worker_id": self.worker_id}):
            log.warning("worker %s was taken for gone by another worker; announcing it again", self.worker_id)
            await self.register()

    async def leave(self) -> None:
        """A clean stop: nobody needs to wait for this worker's presence to go stale."""
        await self._connections.execute(sql.UNREGISTER_WORKER, {"worker_id": self.worker_id})

    async def heartbeat(self) -> None:
        """Extend our locks; tasks whose rows are no longer ours (cancelled, rescued) are stopped.
        Finished tasks whose outcome the writer has not recorded yet are renewed too: their rows are
        still running under this worker, and a rescue of one would run it again."""
        held = self._work.held_ids()
        renew = held | self._writer.unwritten_ids()
        if not renew:
            return
        rows = await self._connections.execute(
            sql.HEARTBEAT,
            {"ids": list(renew), "worker_id": self.worker_id, "lock_seconds": float(self.config.lock_timeout_seconds)},
        )
        # A task that finished meanwhile is not lost: only count those still held now.
        lost = (held - {r[0] for r in rows}) & self._work.held_ids()
        if lost:
            self._work.stop_lost(lost)

    async def rescue(self) -> int:
        """Fail or retry (by policy) the claims of workers that stopped renewing their locks."""
        started = time.monotonic()
        if started < self._quiet_until or not self.expired_pacing.due(started):
            return 0
        total = 0
        while True:
            looked = time.monotonic()
            found = await self._connections.execute(sql.EXPIRED_CLAIMS, {"limit": RESCUE_BATCH}, row_factory=dict_row)
            self.expired_pacing.ran(looked, time.monotonic())
            if not found:
                break
            expired = foreign_claims(found, self.worker_id, self._work.held_ids() | self._writer.unwritten_ids())
            if not expired:
                break
            rescued = await self._apply(sql.RESCUE_MANY, rescue_decisions(expired, self.config))
            total += len(rescued)
            if len(found) < RESCUE_BATCH or not rescued:
                break  # all done, or another worker is rescuing the same rows
        if total:
            self._work.rescued()
            self._wake.set()
        return total

    async def rescue_vanished(self) -> int:
        """Fail or retry (by policy) the claims of workers whose presence went stale."""
        started = time.monotonic()
        if started < self._quiet_until or not self.vanished_pacing.due(started):
            return 0
        after = {"after": VANISHED_AFTER_SECONDS}
        stale = await self._connections.execute(sql.STALE_WORKERS, after)
        self.vanished_pacing.ran(started, time.monotonic())
        total = 0
        for (worker_id,) in stale:
            if worker_id == self.worker_id:
                continue  # (our own claims are never rescued by ourselves: we run them)
            while True:
                claims = await self._connections.execute(
                    sql.CLAIMS_OF_WORKER, {"worker_id": worker_id, "limit": RESCUE_BATCH}, row_factory=dict_row
                )
                if not claims:
                    await self._connections.execute(sql.FORGET_WORKER, {"worker_id": worker_id, **after})
                    break
                for owner, count in sorted(Counter(c["worker_id"] for c in claims).items()):
                    log.warning("worker %s stopped announcing itself: rescuing %d task(s) it claimed", owner, count)
                rescued = await self._apply(sql.RESCUE_VANISHED, rescue_decisions(claims, self.config, vanished=True), after)
                total += len(rescued)
                if not rescued:
                    break  # it came back meanwhile, or another worker took them: look again next round
        if total:
            self._work.rescued()
            self._wake.set()
        return total

    async def _apply(
        self, statement: str, decisions: list[tuple[Any, str, Any, Any]], extra: dict[str, Any] | None = None
    ) -> set[Any]:
        """Run a rescue statement per lost worker; the ids it changed."""
        by_worker: dict[str, list[tuple[Any, Any, Any]]] = defaultdict(list)
        for task_id, worker_id, started_at, action in decisions:
            by_worker[worker_id].append((task_id, started_at, action))
        rescued: set[Any] = set()
        for worker_id, batch in by_worker.items():  # usually one lost worker per round
            rows = await self._connections.execute(statement, {**sql.outcome_params(batch, worker_id), **(extra or {})})
            done = {r[0] for r in rows}
            for task_id, _started, action in batch:
                if task_id in done:
                    log.warning("rescued task %s from worker %s: now %s", task_id, worker_id, action.state.value)
            rescued |= done
        return rescued
