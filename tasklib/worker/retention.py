"""Automatic retention: every ``retention.every_seconds`` each worker tries one round; an advisory
lock lets one worker at a time prune (``tasklib.retention``)."""

from __future__ import annotations

import asyncio
import logging
import random

import psycopg

from tasklib.config import Retention
from tasklib.db import connect_kwargs
from tasklib.errors import DatabaseError
from tasklib.retention import automatic_round
from tasklib.worker.connections import brief

log = logging.getLogger("tasklib.worker")


class RetentionLoop:
    def __init__(self, policy: Retention, url: str, worker_id: str) -> None:
        self.policy = policy
        self.url = url
        self.worker_id = worker_id

    async def run(self) -> None:
        """Until cancelled; the first round a few seconds after start, spread over workers started together."""
        await asyncio.sleep(random.uniform(1.0, min(5.0, self.policy.every_seconds)))
        while True:
            try:
                removed = await asyncio.to_thread(self.round)
                if removed:
                    log.info("retention removed %d finished task(s): %s", sum(removed.values()), removed)
            except (psycopg.Error, DatabaseError) as exc:
                log.warning("retention round failed (%s); next in %.0fs", brief(exc), self.policy.every_seconds)
            await asyncio.sleep(self.policy.every_seconds)

    def round(self) -> dict[str, int] | None:
        name = f"tasklib-retention {self.worker_id}"[:63]
        with psycopg.connect(self.url, connect_timeout=10, **connect_kwargs(name)) as conn:
            return automatic_round(conn, self.policy, self.worker_id)
