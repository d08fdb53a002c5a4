"""An async recurring task (a module of its own: only the workers that ask for it schedule it)."""

from __future__ import annotations

import asyncio
import os

import tasklib
from tests.integration.jobs import record


@tasklib.task(every=1, schedule_kwargs={"label": "atick"})
async def atick(label: str) -> str:
    await asyncio.sleep(0)
    record("atick", label, os.getpid())
    return label
