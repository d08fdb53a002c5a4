"""Two versions of TaskLib, alternated in one run: `python -m bench.compare REF [--rounds 5]`.

REF (a commit, branch or tag) is checked out into a temporary worktree and measured against the
working tree, in rounds of A B B A …, each measure in a fresh database. Measures, through the public
API and the ``tasklib`` command only, so any version can be measured:

- ``drain_1x4``: 20,000 no-op tasks waiting, then one worker with concurrency 4 (tasks/s);
- ``burst_1x16``: one worker with concurrency 16 idle for 3 s, then 20,000 tasks in one call;
- ``pickup_p50_ms``: submit → started in a child, one at a time, 200 times (median);
- ``submit_sync``: 3,000 ``submit_task_sync`` one by one (tasks/s).

Prints each round and the medians with B ÷ A, and writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MEASURES = ("drain_1x4", "burst_1x16", "pickup_p50_ms", "submit_sync")
HIGHER_IS_BETTER = {"drain_1x4": True, "burst_1x16": True, "pickup_p50_ms": False, "submit_sync": True}


def measure(tree: Path, name: str, url: str, n: int) -> float:
    """One measure of the TaskLib in ``tree``, in a process of its own importing only that tree."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    argv = [sys.executable, __file__, "--measure", name, "--url", url, "--tasks", str(n)]
    out = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"{name} on {tree} failed:\n{out.stderr[-3000:]}")
    return float(out.stdout.strip().splitlines()[-1])


# -- the measures (run inside the measured tree) ---------------------------------------------------


@contextmanager
def _worker(url: str, concurrency: int, idle_seconds: float = 0.0) -> Iterator[None]:
    """A ``tasklib worker`` of the measured tree, left idle for ``idle_seconds``, stopped at the end."""
    argv = [sys.executable, "-m", "tasklib.cli", "--log-level", "warning", "worker", "--app", "bench.tasks"]
    argv += ["--concurrency", str(concurrency), "--poll-interval", "5", "--database-url", url]
    proc = subprocess.Popen(argv, start_new_session=True)
    try:
        time.sleep(idle_seconds)
        yield
    finally:
        proc.terminate()
        proc.wait(60)


def _wait_done(url: str, n: int, timeout: float = 300) -> tuple[Any, Any]:
    import psycopg

    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*), min(created_at), min(started_at), max(completed_at) FROM tasks WHERE state = 'completed'"
            ).fetchone()
            assert row is not None
            if row[0] >= n:
                return row[1], row[2], row[3]
            time.sleep(0.05)
    raise TimeoutError(f"{n} tasks not done in {timeout} s")


def _analyze(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE tasks")


def run_measure(name: str, url: str, n: int) -> float:
    import tasklib
    from bench import tasks as btasks

    tasklib.init(tasklib.Config(database_url=url))
    _analyze(url)
    if name == "submit_sync":
        count = 3000
        started = time.perf_counter()
        for i in range(count):
            tasklib.submit_task_sync(btasks.noop, i=i)
        return count / (time.perf_counter() - started)
    if name == "drain_1x4":
        tasklib.submit_many_sync(btasks.noop, [{"i": i} for i in range(n)])
        _analyze(url)
        with _worker(url, 4):
            _, first_start, last = _wait_done(url, n)
        return n / (last - first_start).total_seconds()
    if name == "burst_1x16":
        with _worker(url, 16, idle_seconds=3.0):  # children ready, the worker idle
            tasklib.submit_many_sync(btasks.noop, [{"i": i} for i in range(n)])
            created, _, last = _wait_done(url, n)
        return n / (last - created).total_seconds()
    if name == "pickup_p50_ms":
        with _worker(url, 4, idle_seconds=2.0):
            return statistics.median(pickup_samples(200))
    raise ValueError(name)


def pickup_samples(count: int) -> list[float]:
    """Milliseconds from ``submit_task_sync`` returning to the task running in a child (its result
    is its start time), one task at a time, after 5 for warm-up; a worker must be running."""
    import tasklib
    from bench import tasks as btasks

    latencies = []
    for i in range(count + 5):
        task_id = tasklib.submit_task_sync(btasks.stamp)
        submitted = time.time()
        while (task := tasklib.get_task(task_id)) is None or task.state != "completed":
            time.sleep(0.0005)
        if i >= 5:  # warm-up
            latencies.append((task.result - submitted) * 1000)
        time.sleep(0.01)  # idle again before the next submit
    return latencies


# -- the driver -----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ref", nargs="?", help="the version to compare the working tree with (A)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of A B B A (each measure once per version)")
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--only", action="append", choices=MEASURES, help="just these measures (repeatable)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "compare.json")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(run_measure(args.measure, args.url, args.tasks))
        return 0
    if not args.ref:
        parser.error("name the version to compare with, e.g. HEAD~1")
    sys.path.insert(0, str(ROOT))
    from tests.pg import fresh_database

    measures = args.only or list(MEASURES)
    with tempfile.TemporaryDirectory(prefix="tasklib-compare-") as tmp:
        old = Path(tmp) / "a"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), args.ref], cwd=ROOT, check=True, capture_output=True)
        try:
            rounds: dict[str, dict[str, list[float]]] = {m: {"a": [], "b": []} for m in measures}
            for r in range(args.rounds):
                order = ("a", "b") if r % 2 == 0 else ("b", "a")
                for name in measures:
                    for side in order:
                        with fresh_database("tasklib_compare") as url:
                            value = measure(old if side == "a" else ROOT, name, url, args.tasks)
                        rounds[name][side].append(value)
                        print(f"round {r + 1} {name:14} {side.upper()} {value:10.2f}", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, capture_output=True)
    summary = summarize(rounds)
    print_summary(args.ref, summary)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    args.json.parent.mkdir(parents=True, exist_ok=True)
    record = {"a": args.ref, "b": f"working tree on {commit.strip()}", "rounds": rounds, "summary": summary}
    args.json.write_text(json.dumps(record, indent=1) + "\n")
    return 0


def summarize(rounds: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    """Medians per version, B ÷ A of the medians, and the spread of each side (max ÷ min)."""
    out = {}
    for name, sides in rounds.items():
        a, b = statistics.median(sides["a"]), statistics.median(sides["b"])
        better = (b / a) if HIGHER_IS_BETTER[name] else (a / b)
        out[name] = {
            "a_median": a,
            "b_median": b,
            "b_over_a": b / a,
            "b_better_by": better,
            "a_spread": max(sides["a"]) / min(sides["a"]),
            "b_spread": max(sides["b"]) / min(sides["b"]),
        }
    return out


def print_summary(ref: str, summary: dict[str, dict[str, float]]) -> None:
    print(f"\n| measure | A ({ref}) median | B (working tree) median | B ÷ A | B better by | spread A / B |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, s in summary.items():
        print(
            f"| {name} | {s['a_median']:.2f} | {s['b_median']:.2f} | {s['b_over_a']:.3f} | {s['b_better_by']:.3f} "
            f"| {s['a_spread']:.2f} / {s['b_spread']:.2f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
