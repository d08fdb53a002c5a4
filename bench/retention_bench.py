"""Retention under load: prune a million old finished rows while workers drain a burst.

Each run fills the table with ``finished`` completed rows from eight days ago, starts the workers
(idle for a moment, as in production), then submits ``drain`` tasks in one call: once without
pruning (the same-run baseline) and once with ``tasklib.prune(completed_older_than="7d")``
started at the same moment. Reported: each drain rate, their ratio, and the prune's rows/s.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import psycopg

import tasklib
from bench import tasks as btasks
from bench.burst import IDLE_SECONDS, running_workers
from bench.common import truncate
from tasklib import retention

FILL = """
INSERT INTO tasks (id, name, kwargs, state, result, created_at, scheduled_at, started_at, completed_at)
SELECT gen_random_uuid(), 'bench.tasks.old', '{}', 'completed', 'null', t, t, t, t + interval '5 ms'
FROM (SELECT now() - interval '8 days' - make_interval(secs => g * 0.05) AS t FROM generate_series(1, %(rows)s) AS g) AS s
"""


def _fill(url: str, rows: int) -> None:
    truncate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(FILL, {"rows": rows})
        conn.execute("VACUUM ANALYZE tasks")


def _drain(url: str, n: int, processes: int, concurrency: int, prune: bool, pause: float) -> dict[str, Any]:
    tasklib.init(tasklib.Config(database_url=url))
    pruned: dict[str, Any] = {}

    def prune_all() -> None:
        started = time.perf_counter()
        with psycopg.connect(url, autocommit=True) as conn:
            removed = retention.prune_with(retention.connection_runner(conn), {"completed": timedelta(days=7)}, pause=pause)
        pruned.update(rows=removed["completed"], seconds=time.perf_counter() - started)

    with running_workers(url, processes, concurrency):
        time.sleep(IDLE_SECONDS)
        thread = threading.Thread(target=prune_all) if prune else None
        if thread:
            thread.start()
        tasklib.submit_many_sync(btasks.noop, [{"i": i} for i in range(n)])
        with psycopg.connect(url, autocommit=True) as conn:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                done = conn.execute(
                    "SELECT count(*) FROM tasks WHERE state = 'completed' AND name = 'bench.tasks.noop'"
                ).fetchone()[0]  # type: ignore[index]
                if done >= n:
                    break
                time.sleep(0.05)
            first, last = conn.execute(
                "SELECT min(created_at), max(completed_at) FROM tasks WHERE name = 'bench.tasks.noop'"
            ).fetchone()  # type: ignore[misc]
        if thread:
            thread.join()
    result: dict[str, Any] = {"drain_per_s": n / (last - first).total_seconds()}
    if prune:
        result |= {"pruned_rows": pruned["rows"], "prune_rows_per_s": pruned["rows"] / pruned["seconds"]}
    return result


def run(url: str, finished: int = 1_000_000, drain: int = 20_000, runs: int = 3, processes: int = 2) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for pause in (0.0, 1.0):
        for _ in range(runs):
            print(f"retention: {finished:,} old rows, drain {drain:,}, pause {pause}…", flush=True)
            _fill(url, finished)
            plain = _drain(url, drain, processes, 4, prune=False, pause=pause)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("DELETE FROM tasks WHERE name = 'bench.tasks.noop'")
                conn.execute("VACUUM tasks")
            pruning = _drain(url, drain, processes, 4, prune=True, pause=pause)
            rows.append(
                {"pause": pause, "plain": plain, "pruning": pruning, "ratio": pruning["drain_per_s"] / plain["drain_per_s"]}
            )
    summary = {}
    for pause in (0.0, 1.0):
        mine = [r for r in rows if r["pause"] == pause]
        ratios = sorted(r["ratio"] for r in mine)
        summary[f"pause_{pause:g}"] = {
            "min_ratio": ratios[0],
            "median_ratio": ratios[len(ratios) // 2],
            "median_prune_rows_per_s": sorted(r["pruning"]["prune_rows_per_s"] for r in mine)[len(mine) // 2],
            "median_plain_drain_per_s": sorted(r["plain"]["drain_per_s"] for r in mine)[len(mine) // 2],
        }
    return {"finished_rows": finished, "drain_tasks": drain, "workers": f"{processes} x 4", "runs": rows, "summary": summary}
