"""Claim latency from a new deployment: the first seconds of a queue whose table was just created.

Every deployment starts with an empty ``tasks`` table that has never been analyzed, and its
statements are prepared while it is empty. Third-party runs of queues in this shape saw claim
latency p99 of 0.7-1.9 s in their first phase and 30-60 ms later in the same runs: plans chosen for
an empty table, kept until something replans them. This measure reproduces the shape: a database
created for the run (schema migrated by ``tasklib.init``, no statistics), workers started on it,
then a producer submitting at a steady rate below the workers' capacity for ``seconds``. Each
task's claim latency is ``started_at - scheduled_at`` (both stamped by the server, so no clock
skew), grouped by when the task was submitted: the first windows are the new deployment, the last
ones the same queue once settled. The ratio that matters is first window p99 over settled p99.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg

import tasklib
from bench import tasks as btasks
from bench.burst import running_workers, wait_done
from bench.common import percentiles
from bench.sampler import StatementSampler
from tests.pg import fresh_database

#: Submission windows, in seconds since the producer started: the first is the new deployment.
WINDOWS = ((0, 1), (1, 2), (2, 5), (5, 10), (10, 20), (20, 40), (40, 60))
BATCH = 10  # tasks per submit_many call; the producer paces calls to hold the rate


def _produce(rate: float, seconds: float, stop: threading.Event) -> int:
    """Submit ``rate`` tasks/s for ``seconds``, in calls of BATCH paced against a fixed schedule
    (a late call is caught up at once, so the rate holds over any second). Returns tasks submitted."""
    interval = BATCH / rate
    start = time.monotonic()
    sent = 0
    while not stop.is_set():
        due = start + (sent // BATCH) * interval
        if due - start >= seconds:
            break
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        tasklib.submit_many_sync(btasks.noop, [{"i": sent + i} for i in range(BATCH)])
        sent += BATCH
    return sent


def one_run(processes: int, concurrency: int, rate: float, seconds: float) -> dict[str, Any]:
    with fresh_database("tasklib_bench_startup") as url:
        tasklib.init(tasklib.Config(database_url=url))  # a new deployment: migrated, never analyzed
        with running_workers(url, processes, concurrency), StatementSampler(url) as sampler:
            time.sleep(1.0)  # children forked, listeners connected
            with psycopg.connect(url, autocommit=True) as conn:
                began = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
                sent = _produce(rate, seconds, threading.Event())
                wait_done(url, sent, 60)
                rows = conn.execute(
                    "SELECT extract(epoch FROM scheduled_at - %s), extract(epoch FROM started_at - scheduled_at) * 1000"
                    " FROM tasks WHERE started_at IS NOT NULL",
                    [began],
                ).fetchall()
                # Autovacuum's first ANALYZE of the table is when its plans could first see rows.
                analyzed = conn.execute(
                    "SELECT extract(epoch FROM coalesce(last_autoanalyze, last_analyze) - %s)"
                    " FROM pg_stat_user_tables WHERE relname = 'tasks'",
                    [began],
                ).fetchone()
    windows = []
    for low, high in WINDOWS:
        latencies = sorted(float(ms) for at, ms in rows if low <= float(at) < high)
        if len(latencies) < 100:  # too few for a p99
            continue
        spread = percentiles(latencies)
        windows.append(
            {
                "from_s": low,
                "to_s": high,
                "tasks": spread["count"],
                **{k: round(spread[k], 2) for k in ("p50_ms", "p95_ms", "p99_ms")},
                "max_ms": round(latencies[-1], 2),
            }
        )
    settled = windows[-1]["p99_ms"] if windows else 0.0
    return {
        "processes": processes,
        "concurrency": concurrency,
        "rate_per_s": rate,
        "submitted": sent,
        "claimed": len(rows),
        "windows": windows,
        "first_p99_over_settled_p99": round(windows[0]["p99_ms"] / settled, 2) if settled else None,
        "first_autoanalyze_s": None if analyzed is None or analyzed[0] is None else round(float(analyzed[0]), 1),
        **sampler.report(),
    }


def run(
    runs: int = 2, processes: int = 2, concurrency: int = 4, rates: tuple[float, ...] = (2000, 5000), seconds: float = 60
) -> dict[str, Any]:
    """``runs`` runs at each rate: one well below what the workers drain, one closer to it."""
    out = []
    for rate in rates:
        for i in range(runs):
            shape = f"{processes} x {concurrency}, {rate:,.0f} tasks/s for {seconds:.0f} s"
            print(f"new deployment {i + 1}/{runs}: {shape}…", flush=True)
            out.append(one_run(processes, concurrency, rate, seconds))
    return {"runs": out}


def print_startup(r: dict[str, Any]) -> None:
    startup = r.get("startup")
    if not startup:
        return
    print("\nclaim latency from a new deployment (started_at - scheduled_at), p50 / p99 / max ms by submission window:")
    for i, one in enumerate(startup["runs"], 1):
        cells = "  ".join(
            f"{w['from_s']}-{w['to_s']} s: {w['p50_ms']:.1f} / {w['p99_ms']:.1f} / {w['max_ms']:.0f}" for w in one["windows"]
        )
        print(
            f"run {i} ({one['processes']} x {one['concurrency']}, {one['rate_per_s']:,.0f}/s, {one['claimed']:,} claimed):"
            f" {cells}; first p99 / settled p99 {one['first_p99_over_settled_p99']}; first autoanalyze at"
            f" {one['first_autoanalyze_s']} s; longest statement {one['longest_statement_ms']:.0f} ms"
            f" (not disk {one['longest_not_disk_ms']:.0f} ms)"
        )
