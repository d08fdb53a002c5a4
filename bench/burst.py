"""Throughput in the shapes users live in: bursts into workers that are already running and idle,
many workers at once, and a long transaction elsewhere holding back cleanup (MVCC pressure).

Every figure is paired with one from the same run: the prefilled drain (a backlog that exists
before one worker x concurrency 4 starts). A sampler reads pg_stat_activity during every run and
reports the longest-running worker statement, because a single statement that goes quadratic is
exactly what an average rate hides.
"""

from __future__ import annotations

import collections
import statistics
import subprocess
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import psycopg

import tasklib
from bench import tasks as btasks
from bench.common import prefill, tasklib_process, truncate
from bench.sampler import StatementSampler

SHAPES = ((1, 4), (1, 16), (2, 4), (4, 4))  # (worker processes, concurrency each)
IDLE_SECONDS = 3.0


@contextmanager
def running_workers(url: str, processes: int, concurrency: int = 1, options: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    """Start ``processes`` workers and return once they are connected and their children ready.
    ``options`` replace the default worker options (``--app bench.tasks --concurrency N``)."""
    options = options or ("--app", "bench.tasks", "--concurrency", str(concurrency))
    procs = [tasklib_process(url, "worker", *options) for _ in range(processes)]
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                live = conn.execute(
                    "SELECT count(DISTINCT application_name) FROM pg_stat_activity"
                    " WHERE application_name LIKE 'tasklib-worker %'"
                ).fetchone()[0]  # type: ignore[index]
                if live >= processes:
                    break
                time.sleep(0.1)
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


class CpuSteal:
    """The share of this machine's CPU time its hypervisor gave to other guests meanwhile (the
    ``steal`` column of /proc/stat): on a shared virtual machine the part of the noise that can be
    read, so a slow run can be told from a run the machine was taken from. None where unreadable."""

    def __init__(self) -> None:
        self._start = self._read()
        self.share: float | None = None

    @staticmethod
    def _read() -> list[int] | None:
        try:
            with open("/proc/stat") as stat:
                return [int(v) for v in stat.readline().split()[1:9]]
        except (OSError, ValueError):
            return None

    def stop(self) -> float | None:
        end = self._read()
        if self._start is not None and end is not None:
            delta = [b - a for a, b in zip(self._start, end, strict=True)]
            self.share = round(delta[7] / sum(delta), 3) if sum(delta) else None  # 8th column: steal
        return self.share


def wait_done(url: str, n: int, timeout: float, since: str = "created_at") -> tuple[datetime, datetime, int]:
    """Wait until ``n`` tasks completed; (first ``since``, last completion, completed)."""
    assert since in ("created_at", "started_at")
    with psycopg.connect(url, autocommit=True) as conn:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = conn.execute("SELECT count(*) FROM tasks WHERE state = 'completed'").fetchone()[0]  # type: ignore[index]
            if done >= n:
                break
            time.sleep(0.05)
        return conn.execute(  # type: ignore[return-value]
            f"SELECT min({since}), max(completed_at), count(*) FILTER (WHERE state = 'completed') FROM tasks"
        ).fetchone()


def prefilled(url: str, n: int, concurrency: int = 4) -> dict[str, Any]:
    """The friendliest shape, as the reference: the backlog exists before the worker starts."""
    prefill(url, n)
    steal = CpuSteal()
    with running_workers(url, 1, concurrency):
        wait_done(url, n, 120)
        steal.stop()
        with psycopg.connect(url, autocommit=True) as conn:
            first, last, done = conn.execute(
                "SELECT min(started_at), max(completed_at), count(*) FILTER (WHERE state = 'completed') FROM tasks"
            ).fetchone()  # type: ignore[misc]
    return {"n": n, "completed": done, "per_s": done / (last - first).total_seconds(), "cpu_steal": steal.share}


def burst(url: str, n: int, processes: int, concurrency: int, chunk: int | None) -> dict[str, Any]:
    """Workers running and idle for a few seconds, then ``n`` tasks arrive (in chunks, or in one call).

    ``per_s`` runs from the moment the first tasks became visible (the first submit committed) to
    the last completion: how fast the workers drain the burst, comparable with the prefilled
    reference, which has no insert in its time either. ``per_s_from_creation`` starts at the first
    task's ``created_at`` instead, so it also holds the time the producer took to insert the burst
    (a one-call submit of 20,000 rows commits some 0.3 s after its ``now()``): what a user waits for.
    """
    truncate(url)
    tasklib.init(tasklib.Config(database_url=url))
    with running_workers(url, processes, concurrency), psycopg.connect(url, autocommit=True) as clock:
        time.sleep(IDLE_SECONDS)  # idle polling on an empty table: the shape that used to break
        visible = None
        with StatementSampler(url) as sampler:
            steal = CpuSteal()
            for start in range(0, n, chunk or n):
                tasklib.submit_many_sync(btasks.noop, [{"i": i} for i in range(start, min(start + (chunk or n), n))])
                visible = visible or clock.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
            first, last, done = wait_done(url, n, 180)
            steal.stop()
        first_done_ms, longest_gap_ms = clock.execute(
            "SELECT extract(epoch FROM min(completed_at) - %s) * 1000, max(gap) * 1000 FROM ("
            " SELECT completed_at, extract(epoch FROM completed_at - lag(completed_at) OVER (ORDER BY completed_at)) AS gap"
            " FROM tasks WHERE state = 'completed') AS c",
            [visible],
        ).fetchone()  # type: ignore[misc]
    return {
        "n": n,
        "completed": done,
        "per_s": done / (last - visible).total_seconds(),
        "per_s_from_creation": done / (last - first).total_seconds(),
        # A slow burst is either uniformly slow or stalled: the time to its first completion and its
        # longest pause between two completions tell which (a stall of a few hundred ms shows here).
        "first_completion_ms": round(float(first_done_ms), 1),
        "longest_gap_ms": round(float(longest_gap_ms or 0.0), 1),
        **sampler.report(),
        "cpu_steal": steal.share,
    }


def burst_matrix(url: str, n: int, runs: int, reference_per_s: float) -> dict[str, Any]:
    """Every shape x arrival mode, ``runs`` times: min, median and every run, against the reference.

    A prefilled drain also runs before the first burst of every cell and after each burst, so each
    burst has a reference taken on either side of it, seconds apart. On a shared machine whose speed
    moves within a ten-minute run, a single reference taken at the start moves every ratio of the
    run with it (a run whose reference fell in a fast spell reads 0.5x where the queue had not
    changed); the reference beside a burst saw the same machine. Both are reported:
    ``min_ratio`` (against ``reference_per_s``, the start of the run) and ``min_ratio_beside``
    (each burst against the mean of the two drains on either side of it).
    """
    out: dict[str, Any] = {}
    for processes, concurrency in SHAPES:
        for chunk in (1000, None):
            key = f"{processes}x{concurrency}_{'chunks1000' if chunk else 'one_call'}"
            print(f"burst: {key}…", flush=True)
            beside = [prefilled(url, n)["per_s"]]
            results = []
            for _ in range(runs):
                results.append(burst(url, n, processes, concurrency, chunk))
                beside.append(prefilled(url, n)["per_s"])
            for i, r in enumerate(results):
                r["reference_beside_per_s"] = (beside[i] + beside[i + 1]) / 2
                r["ratio_beside"] = r["per_s"] / r["reference_beside_per_s"]
            rates = [r["per_s"] for r in results]
            slowest = results[rates.index(min(rates))]
            from_creation = [r["per_s_from_creation"] for r in results]
            out[key] = {
                "processes": processes,
                "concurrency": concurrency,
                "chunk": chunk,
                "min_per_s": min(rates),
                "median_per_s": statistics.median(rates),
                "min_ratio": min(rates) / reference_per_s,
                "median_ratio": statistics.median(rates) / reference_per_s,
                "min_ratio_beside": min(r["ratio_beside"] for r in results),
                "median_ratio_beside": statistics.median(r["ratio_beside"] for r in results),
                "prefilled_beside_per_s": beside,
                "min_per_s_from_creation": min(from_creation),
                "min_ratio_from_creation": min(from_creation) / reference_per_s,
                "longest_statement_ms": max(r["longest_statement_ms"] for r in results),
                "longest_not_disk_ms": max(r["longest_not_disk_ms"] for r in results),
                "cpu_steal_of_slowest": slowest["cpu_steal"],
                "first_completion_ms_of_slowest": slowest["first_completion_ms"],
                "longest_gap_ms_of_slowest": slowest["longest_gap_ms"],
                "runs": results,
            }
    return out


WAITING, BATCH = 2000, 500


def held_snapshot(
    url: str,
    processes: int = 2,
    concurrency: int = 4,
    clean: float = 20,
    held: float = 40,
    after: float = 20,
    hold: bool = True,
) -> dict[str, Any]:
    """A producer keeps 2,000 tasks waiting while another session sits idle in transaction.

    Phases: ``clean`` seconds, then a session holds ``BEGIN; SELECT txid_current()`` for ``held``
    seconds (the xmin horizon stops), then ``after`` seconds clean again. Rates come from the
    completions per second recorded in the table. ``hold=False`` runs the same phases with no
    snapshot held: the control, showing what the table's growth alone costs.
    """
    truncate(url)
    tasklib.init(tasklib.Config(database_url=url))
    stop = threading.Event()
    marks: dict[str, datetime] = {}

    def produce() -> None:
        # Keeps about WAITING tasks queued: a new batch goes in once the last task of the batch
        # submitted WAITING tasks ago has left pending. That check is one primary-key read, so the
        # producer's own cost does not grow with the dead rows a held snapshot keeps (counting
        # pending rows through an index would, and would take CPU from the workers being measured).
        batches: collections.deque[uuid.UUID] = collections.deque()
        with psycopg.connect(url, autocommit=True) as conn:
            while not stop.is_set():
                if len(batches) >= WAITING // BATCH:
                    state = conn.execute("SELECT state FROM tasks WHERE id = %s", [batches[0]]).fetchone()[0]  # type: ignore[index]
                    if state == "pending":
                        time.sleep(0.005)
                        continue
                    batches.popleft()
                ids = tasklib.submit_many_sync(btasks.noop, [{"i": i} for i in range(BATCH)])
                batches.append(ids[-1])

    with running_workers(url, processes, concurrency), StatementSampler(url) as sampler:
        time.sleep(1.0)
        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        with psycopg.connect(url, autocommit=True) as clock:

            def mark(name: str) -> None:
                marks[name] = clock.execute("SELECT now()").fetchone()[0]  # type: ignore[index]

            time.sleep(2.0)  # warm-up
            wall = {"clean_start": time.time()}
            mark("clean_start")
            steal = {"clean": CpuSteal()}
            time.sleep(clean)
            steal["clean"].stop()
            steal["held"] = CpuSteal()
            holder = psycopg.connect(url)
            if hold:
                holder.execute("SELECT txid_current()")  # idle in transaction from here on
            mark("held_start")
            wall["held_start"] = time.time()
            time.sleep(held)
            steal["held"].stop()
            steal["after"] = CpuSteal()
            holder.rollback()
            holder.close()
            mark("held_end")
            wall["held_end"] = time.time()
            time.sleep(after)
            steal["after"].stop()
            mark("after_end")
            wall["after_end"] = time.time()
        stop.set()
        producer.join(10)
    with psycopg.connect(url, autocommit=True) as conn:
        per_second = conn.execute(
            "SELECT date_trunc('second', completed_at) AS s, count(*) FROM tasks"
            " WHERE state = 'completed' AND completed_at >= %s AND completed_at < %s GROUP BY 1 ORDER BY 1",
            (marks["clean_start"], marks["after_end"]),
        ).fetchall()

    def rate(start: datetime, end: datetime) -> float:
        seconds = [count for s, count in per_second if start <= s and s + _SECOND <= end]
        return statistics.median(seconds) if seconds else 0.0

    clean_rate = rate(marks["clean_start"], marks["held_start"])
    held_rate = rate(marks["held_start"], marks["held_end"])
    after_first = rate(marks["held_end"], marks["held_end"] + 10 * _SECOND)
    after_later = rate(marks["held_end"] + 10 * _SECOND, marks["after_end"])
    return {
        "processes": processes,
        "concurrency": concurrency,
        "hold": hold,
        "clean_per_s": clean_rate,
        "held_per_s": held_rate,
        "held_ratio": held_rate / clean_rate if clean_rate else 0.0,
        "after_first_10s_per_s": after_first,
        "after_first_10s_ratio": after_first / clean_rate if clean_rate else 0.0,
        "after_10s_per_s": after_later,
        "after_10s_ratio": after_later / clean_rate if clean_rate else 0.0,
        "held_last_10s_per_s": rate(marks["held_end"] - 10 * _SECOND, marks["held_end"]),
        **sampler.report(),
        "cpu_steal": {phase: meter.share for phase, meter in steal.items()},
        "busy_clean": sampler.busy(wall["clean_start"], wall["held_start"]),
        "busy_held": sampler.busy(wall["held_start"], wall["held_end"]),
        "busy_after": sampler.busy(wall["held_end"], wall["after_end"]),
        "per_second": [(s.isoformat(), c) for s, c in per_second],
        "marks": {k: v.isoformat() for k, v in marks.items()},
    }


_SECOND = timedelta(seconds=1)
