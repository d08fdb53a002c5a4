"""Soak: a steady mixed load with failures, timeouts, cancels and a worker restart every minute.

``make test`` runs it for 60 s (one restart, halfway); ``make soak`` for 10 minutes (``TASKLIB_SOAK_SECONDS`` sets it).
At the end nothing is stuck, every task has its outcome in the table, nothing ran more often than
its policy allows, and the worker that ran throughout grew by at most 10 %.
"""

from __future__ import annotations

import collections
import os
import random
import threading
import time
from pathlib import Path

import psycopg
import pytest

import tasklib
from tests.chaos import jobs
from tests.workers import read_log, start_worker, states, stop, wait_for

SECONDS = float(os.environ.get("TASKLIB_SOAK_SECONDS", "60"))
#: A restart every minute in a long soak; in a short one, halfway through (so there is always one).
RESTART_EVERY = min(60.0, SECONDS / 2)
RATE_PER_SECOND = 40
MODES = ["ok"] * 80 + ["fail"] * 8 + ["slow"] * 8 + ["hang"] * 2 + ["cancel"] * 2
OPTIONS = ("--app", "tests.chaos.jobs", "--concurrency", "4", "--retry-delay", "0.2", "--poll-interval", "0.5")


def pss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        return next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))


@pytest.mark.timeout(SECONDS + 300)
def test_soak(tl: tasklib.Config, tmp_path: Path) -> None:
    url, log = tl.database_url, tmp_path / "runs.log"
    assert url is not None
    rng = random.Random(42)
    submitted: dict[str, str] = {}  # key -> mode
    ids: dict[str, object] = {}
    stop_at = time.monotonic() + SECONDS
    cancels = [0]

    def produce() -> None:
        n = 0
        while time.monotonic() < stop_at:
            tick = time.monotonic()
            for _ in range(RATE_PER_SECOND // 10):
                mode = rng.choice(MODES)
                key = f"s{n}"
                n += 1
                ids[key] = tasklib.submit_task_sync(
                    jobs.soak,
                    key=key,
                    mode="slow" if mode == "cancel" else mode,
                    delay_seconds=0.3 if mode == "cancel" else 0,
                )
                submitted[key] = mode
                if mode == "cancel":
                    try:
                        tasklib.cancel_task(ids[key])  # type: ignore[arg-type]
                        cancels[0] += 1
                    except tasklib.InvalidTransition:
                        pass  # it already ran
            time.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))

    steady = start_worker(url, log, *OPTIONS, "--worker-id", "steady")
    restarted = start_worker(url, log, *OPTIONS)
    restarts = 0
    producer = threading.Thread(target=produce)
    producer.start()
    try:
        time.sleep(min(20.0, SECONDS / 4))
        warm = pss_kb(steady.pid)
        next_restart = time.monotonic() + RESTART_EVERY - min(20.0, SECONDS / 4)
        while time.monotonic() < stop_at:
            time.sleep(0.5)
            if time.monotonic() >= next_restart:
                stop(restarted)  # SIGTERM: running tasks finish, queued ones go back
                restarted = start_worker(url, log, *OPTIONS)
                restarts += 1
                next_restart += RESTART_EVERY
            assert steady.poll() is None, "the steady worker died"
        producer.join(30)
        settled = wait_for(lambda: not ({"pending", "running"} & set(states(url))), timeout=120)
        final = pss_kb(steady.pid)
    finally:
        for proc in (steady, restarted):
            stop(proc)
    assert settled, f"tasks stuck: {states(url)}"
    with psycopg.connect(url) as conn:
        rows = {
            r[0]: (r[1], r[2], r[3] or "")
            for r in conn.execute("SELECT kwargs->>'key', state, retry_count, error FROM tasks")
        }
    assert set(rows) == set(submitted), "a submitted task is missing from the table"
    starts = collections.Counter(line[1] for line in read_log(log) if line[0] == "start")
    problems = []
    for key, mode in submitted.items():
        state, retries, error = rows[key]
        expected = {
            "ok": ("completed",),
            "slow": ("completed",),
            "fail": ("failed",),
            "hang": ("failed",),
            "cancel": ("cancelled", "completed"),
        }[mode]
        if state not in expected:
            problems.append((key, mode, state, error[-200:]))
        allowed = 2 if mode in ("fail", "hang") else 1  # first attempt + max_retries=1
        if starts[key] > allowed:
            problems.append((key, mode, f"ran {starts[key]} times"))
        if mode == "fail" and retries != 1:
            problems.append((key, mode, f"retry_count {retries}"))
        if mode == "hang" and "TimeoutError" not in error:
            problems.append((key, mode, error[-200:]))
    growth = (final - warm) / warm
    print(
        f"\nsoak {SECONDS:.0f} s: {len(submitted)} tasks ({collections.Counter(submitted.values())}),"
        f" {cancels[0]} cancelled before running, {restarts} restart(s); steady worker PSS {warm} -> {final} kB"
        f" ({growth:+.1%})"
    )
    assert not problems, problems[:10]
    assert restarts >= 1
    assert growth <= 0.10, f"the worker grew {growth:.1%}"
