"""The same-run baselines: the least a psycopg program must do for each measure, on the same table."""

from __future__ import annotations

import json
import multiprocessing
import time
import uuid

import psycopg

from bench.common import percentiles

INSERT = """
INSERT INTO tasks (id, name, kwargs, state, max_retries, scheduled_at, created_at, priority)
VALUES (%s, 'bench.tasks.noop', %s::jsonb, 'pending', 3, now(), now(), 0)
"""


def single_inserts(url: str, n: int) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        start = time.perf_counter()
        for i in range(n):
            conn.execute(INSERT, (uuid.uuid4(), json.dumps({"i": i})))
        return n / (time.perf_counter() - start)


async def single_inserts_async(url: str, n: int) -> float:
    """The same with psycopg's AsyncConnection: the fair floor for ``await submit_task``."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        start = time.perf_counter()
        for i in range(n):
            await conn.execute(INSERT, (uuid.uuid4(), json.dumps({"i": i})))
        return n / (time.perf_counter() - start)


def bulk_insert(url: str, n: int) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        ids = [uuid.uuid4() for _ in range(n)]
        kwargs = [json.dumps({"i": i}) for i in range(n)]
        start = time.perf_counter()
        conn.execute(
            "INSERT INTO tasks (id, name, kwargs, state, max_retries, scheduled_at, created_at, priority) "
            "SELECT id, 'bench.tasks.noop', k::jsonb, 'pending', 3, now(), now(), 0 "
            "FROM unnest(%s::uuid[], %s::text[]) AS v(id, k)",
            (ids, kwargs),
        )
        return n / (time.perf_counter() - start)


CLAIM = """
UPDATE tasks SET state = 'running', worker_id = 'baseline', started_at = now(),
                 locked_until = now() + interval '10 minutes'
WHERE id IN (SELECT id FROM tasks WHERE state = 'pending' AND scheduled_at <= now()
             ORDER BY priority DESC, scheduled_at LIMIT %s FOR UPDATE SKIP LOCKED)
RETURNING id, kwargs
"""
DONE = "UPDATE tasks SET state = 'completed', completed_at = now(), locked_until = NULL WHERE id = ANY(%s)"


def drain(url: str, n: int, batch: int) -> dict[str, float]:
    """Claim `batch` at a time, 'run' a no-op, mark them done: the floor under any worker."""
    with psycopg.connect(url, autocommit=True) as conn:
        start = time.perf_counter()
        done = 0
        while True:
            rows = conn.execute(CLAIM, (batch,)).fetchall()
            if not rows:
                break
            conn.execute(DONE, ([r[0] for r in rows],))
            done += len(rows)
        seconds = time.perf_counter() - start
    return {"n": done, "batch": batch, "seconds": seconds, "per_s": done / seconds}


def _listener(url: str, ready: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    listen = psycopg.connect(url, autocommit=True)
    work = psycopg.connect(url, autocommit=True)
    listen.execute("LISTEN baseline")
    ready.set()
    for _ in listen.notifies():
        rows = work.execute(CLAIM, (1,)).fetchall()
        for task_id, _kw in rows:
            work.execute(
                "UPDATE tasks SET state = 'completed', result = to_jsonb(%s::float8), completed_at = now() WHERE id = %s",
                (time.time(), task_id),
            )


def pickup_latency(url: str, count: int) -> dict[str, float]:
    """A dedicated LISTEN connection that claims on each notification, in its own process."""
    ready = multiprocessing.get_context("spawn").Event()
    proc = multiprocessing.get_context("spawn").Process(target=_listener, args=(url, ready), daemon=True)
    proc.start()
    ready.wait(30)
    latencies = []
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            for i in range(count + 5):
                task_id = uuid.uuid4()
                conn.execute(INSERT, (task_id, "{}"))
                conn.execute("NOTIFY baseline")
                submitted = time.time()
                while True:
                    row = conn.execute(
                        "SELECT result FROM tasks WHERE id = %s AND state = 'completed'", (task_id,)
                    ).fetchone()
                    if row:
                        break
                    time.sleep(0.0005)
                if i >= 5:
                    latencies.append((row[0] - submitted) * 1000)
                time.sleep(0.01)
    finally:
        proc.terminate()
        proc.join(5)
    return percentiles(latencies)
