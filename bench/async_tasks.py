"""Async tasks for the memory and async-throughput benchmarks (a module of their own: a worker
given only ``bench.tasks`` must not start async children)."""

from __future__ import annotations

import asyncio

import tasklib


@tasklib.task
async def asleep(seconds: float = 1.0) -> None:
    """An I/O-bound task: waits without using the CPU, as a network call does."""
    await asyncio.sleep(seconds)
