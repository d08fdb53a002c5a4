"""A fleet (``python -m bench --only-fleet``): many worker processes on one database.

- **Idle polling**: N idle workers for 15 s, pooled without LISTEN (they poll every second) against
  the same N in session mode (they LISTEN): server transactions a second and server CPU a second,
  per worker, read from ``pg_stat_database`` and the backends' ``/proc`` times.
- **Trickle**: 16 worker processes x 1 in session mode while 50 tasks a second arrive one by one
  for 10 s: claim statements per task (scans of the claim index, ``pg_stat_user_indexes``), so
  claims that found nothing show as scans beyond one a task.
- **Rolling restart**: 8 workers x 2, each in turn stopped with SIGTERM and replaced while a
  producer submits 500 tasks a second for 60 s: every task runs exactly once, none handed back is
  charged an attempt, and the pickup latency (created to started) during the restart.
- **Many processes**: 10,000 no-op tasks drained by 16 processes x 1 against 4 x 4 (the same total
  concurrency), and by 16 x 1 through PgBouncer in transaction mode (a pool of 8) against 16 x 1
  direct; alternated rounds (A B, B A, …), each drain in a fresh table.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import psycopg

import tasklib
from bench import tasks as btasks
from bench.common import prefill, tasklib_process, truncate

IDLE_SECONDS = 15.0


@contextmanager
def fleet(url: str, count: int, concurrency: int, *extra: str) -> Iterator[list[Any]]:
    procs = [
        tasklib_process(url, "worker", "--app", "bench.tasks", "--concurrency", str(concurrency), *extra)
        for _ in range(count)
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(60)


def live(url: str) -> int:
    from tasklib import sql

    with psycopg.connect(url) as conn:
        return sum(1 for row in conn.execute(sql.WORKERS, {"after": sql.VANISHED_AFTER_SECONDS}) if row[-1])


def wait(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the fleet did not get there in time")
        time.sleep(0.2)


def _server_load(url: str) -> tuple[int, float]:
    """(transactions committed in this database so far, CPU seconds of its backends so far)."""
    ticks = os.sysconf("SC_CLK_TCK")
    with psycopg.connect(url, autocommit=True) as conn:
        xacts = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").fetchone()[0]  # type: ignore[index]
        pids = [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")]
    cpu = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / ticks
        except (OSError, IndexError, ValueError):
            continue
    return int(xacts), cpu


def idle_cost(url: str, count: int, pooled_url: str | None) -> dict[str, float]:
    """Per idle worker: server transactions and CPU seconds a second, over IDLE_SECONDS."""
    truncate(url)
    target, extra = (pooled_url, ("--pool-mode", "transaction")) if pooled_url else (url, ())
    with fleet(target, count, 1, "--poll-interval", "1", *extra):
        wait(lambda: live(url) == count, 60)
        time.sleep(3)  # past start-up
        x0, c0 = _server_load(url)
        t0 = time.monotonic()
        time.sleep(IDLE_SECONDS)
        x1, c1 = _server_load(url)
        elapsed = time.monotonic() - t0
    return {
        "workers": count,
        "transactions_per_s_per_worker": (x1 - x0) / elapsed / count,
        "server_cpu_ms_per_s_per_worker": (c1 - c0) / elapsed / count * 1000,
    }


def _claim_scans(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        return int(
            conn.execute(
                "SELECT coalesce(sum(idx_scan), 0) FROM pg_stat_user_indexes WHERE indexrelname = 'tasks_queue_pending_idx'"
            ).fetchone()[0]  # type: ignore[index]
        )


def trickle(url: str, workers: int = 16, rate: float = 50.0, seconds: float = 10.0) -> dict[str, float]:
    """Claim-index scans per task while ``rate`` tasks a second arrive one at a time."""
    truncate(url)
    tasklib.init(tasklib.Config(database_url=url))
    with fleet(url, workers, 1, "--poll-interval", "1"):
        wait(lambda: live(url) == workers, 60)
        time.sleep(3)
        time.sleep(1.5)  # (statistics are flushed about once a second)
        before = _claim_scans(url)
        count = int(rate * seconds)
        started = time.monotonic()
        for i in range(count):
            tasklib.submit_task_sync(btasks.noop, i=i)
            time.sleep(max(0.0, started + (i + 1) / rate - time.monotonic()))
        wait(lambda: tasklib.count_by_state()["completed"] == count, 60)
        elapsed = time.monotonic() - started
        time.sleep(2.0)
        after = _claim_scans(url)
    return {"workers": workers, "tasks": count, "seconds": elapsed, "claim_scans_per_task": (after - before) / count}


def drain(url: str, n: int, count: int, concurrency: int, target: str | None = None, *extra: str) -> float:
    """Tasks a second: ``n`` waiting no-op tasks drained by ``count`` x ``concurrency``."""
    prefill(url, n)
    with fleet(target or url, count, concurrency, "--poll-interval", "1", *extra):
        deadline = time.monotonic() + 300
        with psycopg.connect(url, autocommit=True) as conn:
            while True:
                row = conn.execute(
                    "SELECT count(*), min(started_at), max(completed_at) FROM tasks WHERE state = 'completed'"
                ).fetchone()
                assert row is not None
                if row[0] >= n:
                    return n / (row[2] - row[1]).total_seconds()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{n} tasks not drained")
                time.sleep(0.1)


def rolling_restart(url: str, workers: int = 8, rate: int = 500, seconds: float = 60.0) -> dict[str, Any]:
    """SIGTERM each worker in turn (a new one started in its place) while ``rate`` tasks a second arrive."""
    import signal
    import subprocess
    import sys
    import tempfile
    import threading

    from bench.common import ROOT

    tasklib.init(tasklib.Config(database_url=url))
    truncate(url)
    log = Path(tempfile.mkdtemp(prefix="tasklib-rolling-")) / "runs.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TASKLIB_TEST_LOG": str(log)}
    argv = [sys.executable, "-m", "tasklib.cli", "--log-level", "error", "worker", "--app", "tests.integration.jobs"]
    argv += ["--concurrency", "2", "--database-url", url]

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, cwd=ROOT, env=env, start_new_session=True)

    from tests.integration import jobs

    procs = [start() for _ in range(workers)]
    wait(lambda: live(url) == workers, 60)
    submitted = [0]
    done = threading.Event()

    def produce() -> None:
        batch, started = rate // 10, time.monotonic()
        while time.monotonic() - started < seconds:
            i = submitted[0]
            tasklib.submit_many_sync(jobs.mark, [{"key": f"r{i + k}"} for k in range(batch)])
            submitted[0] += batch
            time.sleep(max(0.0, started + submitted[0] / rate - time.monotonic()))
        done.set()

    window_start = time.time()
    producer = threading.Thread(target=produce)
    producer.start()
    restarts = 0
    for slot in range(workers):  # one restart every seconds / workers, across the whole window
        time.sleep(seconds / (workers + 1))
        old = procs[slot]
        old.send_signal(signal.SIGTERM)
        procs[slot] = start()
        old.wait(60)
        restarts += 1
    producer.join()
    window_end = time.time()
    wait(lambda: tasklib.count_by_state()["completed"] == submitted[0], 120)
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(60)
    starts: dict[str, int] = {}
    for line in log.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "start":
            starts[parts[1]] = starts.get(parts[1], 0) + 1
    with psycopg.connect(url) as conn:
        charged = conn.execute("SELECT count(*) FROM tasks WHERE retry_count > 0").fetchone()[0]  # type: ignore[index]
        waits = [
            float(r[0]) * 1000
            for r in conn.execute(
                "SELECT extract(epoch FROM started_at - created_at) FROM tasks"
                " WHERE created_at BETWEEN to_timestamp(%s) AND to_timestamp(%s)",
                [window_start, window_end],
            )
        ]
    q = statistics.quantiles(waits, n=100)
    return {
        "workers": workers,
        "rate": rate,
        "seconds": seconds,
        "restarts": restarts,
        "submitted": submitted[0],
        "ran_once": sum(1 for n in starts.values() if n == 1),
        "ran_twice_or_more": sum(1 for n in starts.values() if n > 1),
        "never_ran": submitted[0] - len(starts),
        "charged_an_attempt": int(charged),
        "pickup_p50_ms": statistics.median(waits),
        "pickup_p99_ms": q[98],
    }


def pairs(rounds: int, a: Callable[[], float], b: Callable[[], float]) -> dict[str, Any]:
    sides: dict[str, list[float]] = {"a": [], "b": []}
    for r in range(rounds):
        for side in ("a", "b") if r % 2 == 0 else ("b", "a"):
            sides[side].append((a if side == "a" else b)())
            print(f"  round {r + 1} {side.upper()} {sides[side][-1]:,.0f}/s", flush=True)
    ma, mb = statistics.median(sides["a"]), statistics.median(sides["b"])
    return {
        "a": sides["a"],
        "b": sides["b"],
        "a_median": ma,
        "b_median": mb,
        "b_over_a": mb / ma,
        "a_spread": max(sides["a"]) / min(sides["a"]),
        "b_spread": max(sides["b"]) / min(sides["b"]),
    }


def run(url: str, rounds: int = 3, n: int = 10_000) -> dict[str, Any]:
    from tests.pgbouncer import PGBOUNCER, pgbouncer

    results: dict[str, Any] = {}
    bouncer = pgbouncer(url, pool_size=8) if PGBOUNCER else nullcontext(None)
    with bouncer as pooled:
        tx_url = pooled[0] if pooled else None
        print("idle polling, 20 workers", flush=True)
        results["idle_session"] = idle_cost(url, 20, None)
        if tx_url:
            results["idle_pooled"] = idle_cost(url, 20, tx_url)
        print("rolling restart of 8 workers under 500 tasks/s", flush=True)
        results["rolling_restart"] = rolling_restart(url)
        print("trickle of 50/s into 16 workers", flush=True)
        results["trickle"] = trickle(url)
        print("drain: 4 x 4 (A) against 16 x 1 (B)", flush=True)
        results["processes_16_vs_4"] = pairs(rounds, lambda: drain(url, n, 4, 4), lambda: drain(url, n, 16, 1))
        if tx_url:
            print("drain: 16 x 1 direct (A) against 16 x 1 through PgBouncer, pool of 8 (B)", flush=True)
            results["pooled_vs_direct"] = pairs(
                rounds,
                lambda: drain(url, n, 16, 1),
                lambda: drain(url, n, 16, 1, tx_url, "--pool-mode", "transaction", "--listen-url", url),
            )
    return results


def print_fleet(results: dict[str, Any]) -> None:
    fleet_results = results["fleet"]
    print("\n| measure | figure |\n| --- | --- |")
    for key in ("idle_session", "idle_pooled"):
        if key in fleet_results:
            r = fleet_results[key]
            print(
                f"| idle, {key.split('_')[1]} ({r['workers']} workers) | {r['transactions_per_s_per_worker']:.1f} "
                f"transactions/s and {r['server_cpu_ms_per_s_per_worker']:.2f} ms server CPU/s per worker |"
            )
    if "rolling_restart" in fleet_results:
        r = fleet_results["rolling_restart"]
        print(
            f"| rolling restart, {r['workers']} workers, {r['rate']}/s for {r['seconds']:.0f} s | {r['submitted']:,} tasks: "
            f"{r['ran_once']:,} ran once, {r['ran_twice_or_more']} twice, {r['never_ran']} never, "
            f"{r['charged_an_attempt']} charged an attempt; pickup p50 {r['pickup_p50_ms']:.1f} ms, "
            f"p99 {r['pickup_p99_ms']:.1f} ms |"
        )
    t = fleet_results["trickle"]
    print(f"| trickle 50/s, 16 workers | {t['claim_scans_per_task']:.2f} claim-index scans per task |")
    for key, label in (("processes_16_vs_4", "16 x 1 vs 4 x 4"), ("pooled_vs_direct", "through PgBouncer vs direct")):
        if key in fleet_results:
            r = fleet_results[key]
            print(
                f"| drain, {label} | {r['b_median']:,.0f} vs {r['a_median']:,.0f}/s: {r['b_over_a']:.2f} "
                f"(spreads {r['a_spread']:.2f} / {r['b_spread']:.2f}) |"
            )
