"""Peer queues measured in the same run as TaskLib: pgqueuer's prefilled drain.

pgqueuer (asyncpg driver) drains ``n`` no-op jobs in its drain mode with batches of 100, its jobs run
in its own process on its event loop (no child process per job, so nothing isolates or kills one).
Run as ``python -m bench.peers pgqueuer URL N`` in a process of its own; prints jobs per second from
the first job's start to the drain's end. Needs the ``peers`` extra (``make bench`` installs it).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import timedelta

from bench.common import ROOT


def available() -> str | None:
    """None when pgqueuer and asyncpg can be imported, else why not."""
    try:
        import asyncpg  # noqa: F401
        import pgqueuer  # noqa: F401
    except ImportError as exc:
        return f"pgqueuer not installed ({exc.name}): uv sync --extra peers, or pip install -e '.[peers]'"
    return None


def pgqueuer_drain(url: str, n: int, batch: int = 100) -> float:
    """Jobs/s of pgqueuer's drain of ``n`` prefilled no-op jobs, in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.peers", "pgqueuer", url, str(n), str(batch)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if out.returncode != 0:
        raise RuntimeError(f"pgqueuer drain failed:\n{out.stderr[-3000:]}")
    return float(out.stdout.strip().splitlines()[-1])


async def _pgqueuer(url: str, n: int, batch: int) -> float:
    import asyncpg
    from pgqueuer import QueueManager
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import Queries
    from pgqueuer.types import QueueExecutionMode

    conn = await asyncpg.connect(url)
    queries = Queries(AsyncpgDriver(conn))
    if await queries.schema_is_installed():  # from the last round: start from an empty queue
        await queries.uninstall()
    await queries.install()
    for start in range(0, n, 5000):
        size = min(5000, n - start)
        await queries.enqueue(["noop"] * size, [str(i).encode() for i in range(start, start + size)], [0] * size)
    await conn.execute("VACUUM ANALYZE")
    manager = QueueManager(queries)
    first: list[float] = []

    @manager.entrypoint("noop")
    async def noop(job: object) -> None:
        if not first:
            first.append(time.perf_counter())

    await manager.run(batch_size=batch, mode=QueueExecutionMode.drain, dequeue_timeout=timedelta(seconds=1))
    end = time.perf_counter()
    left = await conn.fetchval("SELECT count(*) FROM pgqueuer")
    await conn.close()
    if left:
        raise RuntimeError(f"pgqueuer left {left} jobs")
    return n / (end - first[0])


if __name__ == "__main__":
    _, peer, url, n, batch = sys.argv
    assert peer == "pgqueuer"
    print(asyncio.run(_pgqueuer(url, int(n), int(batch))))
