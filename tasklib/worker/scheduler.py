"""The worker's scheduler: keep the next slot of each recurring task in the table as a delayed row.

Every worker with recurring tasks registered runs one; none is a leader. Each pass reads the
database clock, and for each schedule inserts the row of its next slot (and, with ``catch_up``, of
the latest slot already due) keyed by ``schedules.slot_key``. The unique index keeps one row per
slot however many workers insert it; a slot key stays taken after its run, so a slot whose row
finished (or was cancelled) is never scheduled again. Passes wake at each slot boundary.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime
from typing import Any

import psycopg

from tasklib import sql
from tasklib.config import Config
from tasklib.ids import new_id
from tasklib.registry import TaskDefinition
from tasklib.schedules import slot_key
from tasklib.worker.connections import MAX_BACKOFF_SECONDS, Outage, WorkerConnections

log = logging.getLogger("tasklib.worker")

#: A pass runs at least this often even when no slot is near: a sleep computed from one clock reading
#: never runs long (the database clock may be set, a laptop may sleep).
MAX_SLEEP_SECONDS = 30.0
#: Wake this long after a slot boundary, so the database clock has passed it too.
BOUNDARY_MARGIN_SECONDS = 0.01


class Scheduler:
    """Schedules the slots of the recurring tasks among ``definitions``."""

    def __init__(
        self,
        definitions: dict[str, TaskDefinition],
        config: Config,
        connections: WorkerConnections,
        wake: asyncio.Event,
    ) -> None:
        self.definitions = {name: d for name, d in definitions.items() if d.schedule is not None}
        self.config = config
        self._connections = connections
        #: Set when a pass wakes at a slot boundary: the slot's row is due now, not at the next poll.
        self._wake = wake
        self._inserted: dict[str, datetime] = {}  # task -> the next slot this worker already inserted

    def slot_params(self, definition: TaskDefinition, slot: datetime) -> dict[str, Any]:
        schedule = definition.schedule
        assert schedule is not None
        max_retries = definition.max_retries if definition.max_retries is not None else self.config.max_retries
        return {
            "id": str(new_id()),
            "name": definition.name,
            "kwargs": json.dumps(dict(schedule.kwargs), separators=(",", ":"), ensure_ascii=False),
            "max_retries": max_retries,
            "at": slot,
            "timeout": definition.timeout_seconds or self.config.default_task_timeout_seconds,
            "priority": 0,
            "tags": json.dumps(schedule.tags()),
            "unique_key": slot_key(definition.name, slot),
            "queue": definition.queue,
        }

    async def run(self, statement: str, params: dict[str, Any]) -> list[Any]:
        return await self._connections.execute(statement, params, role="schedule")

    async def tick(self, now: datetime) -> datetime:
        """One pass at database time ``now``; returns the earliest next slot (when to pass again)."""
        soonest: datetime | None = None
        for name, definition in self.definitions.items():
            schedule = definition.schedule
            assert schedule is not None
            upcoming = schedule.next_after(now)
            if self._inserted.get(name) != upcoming:
                if schedule.catch_up:
                    # The latest due slot: normally inserted a period ago (a no-op now); after downtime,
                    # the one missed slot that runs late.
                    await self.run(sql.INSERT_SLOT, self.slot_params(definition, schedule.latest_at_or_before(now)))
                await self.run(sql.INSERT_SLOT, self.slot_params(definition, upcoming))
                self._inserted[name] = upcoming
            soonest = upcoming if soonest is None or upcoming < soonest else soonest
        assert soonest is not None
        return soonest

    async def loop(self) -> None:
        """Pass at every slot boundary until cancelled; database errors are logged and retried."""
        if not self.definitions:
            return
        log.info("scheduling %d recurring task(s): %s", len(self.definitions), ", ".join(sorted(self.definitions)))
        backoff = 0.1
        outage = Outage("scheduling recurring tasks")
        while True:
            try:
                started = asyncio.get_running_loop().time()
                now: datetime = (await self.run(sql.NOW, {}))[0][0]
                soonest = await self.tick(now)
                backoff = 0.1
                outage.ok()
                wait = (soonest - now).total_seconds() - (asyncio.get_running_loop().time() - started)
                if wait + BOUNDARY_MARGIN_SECONDS <= MAX_SLEEP_SECONDS:
                    await asyncio.sleep(max(0.0, wait) + BOUNDARY_MARGIN_SECONDS)
                    self._wake.set()
                else:
                    await asyncio.sleep(MAX_SLEEP_SECONDS)
            except psycopg.Error as exc:
                self._inserted.clear()  # after an outage, check every schedule again
                outage.failed(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
            except Exception:  # a bug here must not silently end scheduling for this worker's lifetime
                self._inserted.clear()
                log.exception("scheduling failed unexpectedly; retrying in %.0fs", MAX_SLEEP_SECONDS)
                await asyncio.sleep(MAX_SLEEP_SECONDS)
