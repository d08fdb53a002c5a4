"""Worker memory (PSS of every process it runs) and the throughput of 1-second async tasks.

Two shapes, each a worker that is already running when its tasks arrive:

* sync, concurrency 4: 20,000 no-op tasks drain through four child processes;
* async_concurrency 200: 2,000 tasks that ``await asyncio.sleep(1)`` (I/O-bound work such as an
  HTTP call), 200 in flight at a time. The same-run baseline is what 200 slots of 1-second tasks
  allow at best: 200 tasks/s, so the ratio says how much the claims, pipes and writes cost.

Memory is PSS (proportional set size): pages shared between the worker's processes (the
interpreter, modules the fork server imported once) are split between them instead of counted once
per process, so the sum is what the worker really costs the machine. Sampled every 0.1 s; the peak
and a breakdown by process role at the peak are reported.
"""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

import tasklib
from bench import async_tasks
from bench import tasks as btasks
from bench.burst import running_workers
from bench.common import truncate

ASYNC_SLOTS = 200
ASYNC_TASKS = 2_000
ASYNC_SECONDS = 1.0


def _pss_kb(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            return next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
    except (FileNotFoundError, ProcessLookupError, PermissionError, StopIteration):
        return 0


def _role(pid: str, worker_pid: int) -> str:
    """What a process of the worker's group is: the worker itself, a helper, or a task child."""
    if int(pid) == worker_pid:
        return "worker"
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_text()
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError):
        return "gone"
    if "resource_tracker" in cmdline:
        return "resource tracker"
    if ppid == worker_pid:
        return "fork server"
    return "children"


def sample(worker_pid: int) -> dict[str, float]:
    """PSS in MB by role, and ``total``, for every live process in the worker's process group."""
    pids = subprocess.run(["pgrep", "-g", str(worker_pid)], capture_output=True, text=True).stdout.split()
    roles: dict[str, float] = {}
    for pid in pids:
        role = _role(pid, worker_pid)
        roles[role] = roles.get(role, 0.0) + _pss_kb(pid) / 1024
    roles["total"] = sum(roles.values())
    roles["processes"] = len(pids)
    return roles


@contextlib.contextmanager
def _worker(url: str, *options: str) -> Iterator[subprocess.Popen[bytes]]:
    with running_workers(url, 1, options=options) as (proc,):
        time.sleep(2.0)  # children forked and ready, idle as in production before a burst
        yield proc


def _measure(url: str, proc: subprocess.Popen[bytes], n: int, timeout: float) -> dict[str, Any]:
    idle = sample(proc.pid)
    peak: dict[str, float] = idle
    with psycopg.connect(url, autocommit=True) as conn:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = sample(proc.pid)
            if now["total"] > peak["total"]:
                peak = now
            done = conn.execute("SELECT count(*) FROM tasks WHERE state = 'completed'").fetchone()[0]  # type: ignore[index]
            if done >= n:
                break
            time.sleep(0.1)
        first, last, done = conn.execute(
            "SELECT min(started_at), max(completed_at), count(*) FILTER (WHERE state = 'completed') FROM tasks"
        ).fetchone()  # type: ignore[misc]
    seconds = (last - first).total_seconds() if done else float("inf")
    return {
        "n": n,
        "completed": done,
        "seconds": seconds,
        "per_s": done / seconds,
        "idle_pss_mb": round(idle["total"], 1),
        "peak_pss_mb": round(peak["total"], 1),
        "peak_by_role_mb": {k: round(v, 1) for k, v in peak.items() if k not in ("total", "processes")},
        "processes": int(peak["processes"]),
    }


def sync_c4(url: str, n: int = 20_000) -> dict[str, Any]:
    truncate(url)
    with _worker(url, "--app", "bench.tasks", "--concurrency", "4") as proc:
        tasklib.submit_many_sync(btasks.noop, [{"i": i} for i in range(n)])
        return _measure(url, proc, n, timeout=120)


def async_200(url: str, n: int = ASYNC_TASKS) -> dict[str, Any]:
    truncate(url)
    with _worker(url, "--app", "bench.async_tasks", "--async-concurrency", str(ASYNC_SLOTS)) as proc:
        tasklib.submit_many_sync(async_tasks.asleep, [{"seconds": ASYNC_SECONDS} for _ in range(n)])
        out = _measure(url, proc, n, timeout=120)
    out["ideal_per_s"] = ASYNC_SLOTS / ASYNC_SECONDS
    out["ratio_to_ideal"] = out["per_s"] / out["ideal_per_s"]
    return out


def run(url: str, runs: int = 3) -> dict[str, Any]:
    tasklib.init(tasklib.Config(database_url=url))
    print(f"memory: sync worker, concurrency 4, {runs} runs…", flush=True)
    sync_runs = [sync_c4(url) for _ in range(runs)]
    print(f"memory: async_concurrency {ASYNC_SLOTS}, {ASYNC_TASKS:,} one-second tasks, {runs} runs…", flush=True)
    async_runs = [async_200(url) for _ in range(runs)]
    return {
        "sync_c4": {
            "runs": sync_runs,
            "median_peak_pss_mb": statistics.median(r["peak_pss_mb"] for r in sync_runs),
            "max_peak_pss_mb": max(r["peak_pss_mb"] for r in sync_runs),
            "target_pss_mb": 80,
        },
        "async_200": {
            "runs": async_runs,
            "median_peak_pss_mb": statistics.median(r["peak_pss_mb"] for r in async_runs),
            "max_peak_pss_mb": max(r["peak_pss_mb"] for r in async_runs),
            "median_per_s": statistics.median(r["per_s"] for r in async_runs),
            "min_per_s": min(r["per_s"] for r in async_runs),
            "ideal_per_s": ASYNC_SLOTS / ASYNC_SECONDS,
            "target_pss_mb": 150,
            "target_per_s": 180,
        },
    }


def print_memory(r: dict[str, Any]) -> None:
    m = r.get("memory")
    if not m:
        return
    s, a = m["sync_c4"], m["async_200"]
    print(f"\n{'worker memory (PSS, all processes)':<40} {'median peak':>12} {'max peak':>9} {'target':>7}   at the peak")
    for label, x in (("sync, concurrency 4", s), (f"async_concurrency {ASYNC_SLOTS}, 1 s tasks", a)):
        roles = ", ".join(f"{k} {v:.0f}" for k, v in x["runs"][0]["peak_by_role_mb"].items())
        print(
            f"{label:<40} {x['median_peak_pss_mb']:>9.0f} MB {x['max_peak_pss_mb']:>6.0f} MB"
            f" {x['target_pss_mb']:>4} MB   {roles}"
        )
    print(
        f"async throughput, {ASYNC_SLOTS} in flight, 1 s tasks: median {a['median_per_s']:.0f}/s, min"
        f" {a['min_per_s']:.0f}/s (best possible {a['ideal_per_s']:.0f}/s; target {a['target_per_s']}/s)"
    )
