"""Queues and limits against their same-run references (``python -m bench --only-queues``).

- isolation: 20,000 tasks of the ``emails`` queue drained by one worker (x4) serving ``emails``
  only, with 1,000,000 ``default`` tasks waiting in the same table, against the same drain in a
  table holding nothing else; alternated rounds, each in its own database;
- concurrency limit: 60 tasks of 0.2 s limited to 2 at once on 3 workers x 4: the time they take
  against 60 x 0.2 / 2 = 6 s, and the most seen running (sampled every 10 ms);
- rate limit: a task limited to 20/s with 300 waiting, on 3 workers x 4: its starts in the first
  10 s and in its busiest 1-second window;
- what serving more costs a plain task: 20,000 no-op tasks of ``default`` drained, and pickup latency,
  by a worker of ``bench.tasks`` (one queue, no limits) against one of ``bench.queue_tasks`` (two
  queues and two limited tasks registered as well: six claim sources), alternated.
"""

from __future__ import annotations

import bisect
import statistics
import threading
import time
from typing import Any

import psycopg

import tasklib
from bench import burst
from bench import queue_tasks as qtasks
from bench import tasks as btasks
from bench.common import prefill, truncate
from bench.compare import pickup_samples
from tests.pg import fresh_database

APP_X4 = ("--app", "bench.queue_tasks", "--concurrency", "4")
BACKLOG = 1_000_000
DRAIN = 20_000


def _fill_backlog(url: str, rows: int) -> None:
    """``rows`` due ``default`` tasks, written by one INSERT … SELECT (a submit of a million would
    measure the submit), analyzed."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO tasks (id, name, kwargs, state, max_retries, scheduled_at, created_at, queue)"
            " SELECT gen_random_uuid(), %s, jsonb_build_object('i', g), 'pending', 3, now(), now(), 'default'"
            " FROM generate_series(1, %s) AS g",
            [btasks.noop.__tasklib_name__, rows],  # type: ignore[attr-defined]
        )
        conn.execute("VACUUM ANALYZE tasks")


def _drain_emails(url: str) -> float:
    """Tasks/s of one worker (x4) serving ``emails`` through DRAIN tasks; other queues untouched."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM tasks WHERE queue = 'emails'")
        tasklib.init(tasklib.Config(database_url=url))
        tasklib.submit_many_sync(qtasks.mail, [{"i": i} for i in range(DRAIN)])
        conn.execute("VACUUM ANALYZE tasks")  # both tables' statistics know what they hold
    options = ("--app", "bench.queue_tasks", "--concurrency", "4", "--queue", "emails")
    with burst.running_workers(url, 1, options=options), psycopg.connect(url, autocommit=True) as conn:
        deadline = time.monotonic() + 300
        query = "SELECT count(*) FROM tasks WHERE queue = 'emails' AND state = 'completed'"
        while conn.execute(query).fetchone()[0] < DRAIN:  # type: ignore[index]
            if time.monotonic() > deadline:
                raise TimeoutError("the emails queue did not drain")
            time.sleep(0.05)
        first, last = conn.execute("SELECT min(started_at), max(completed_at) FROM tasks WHERE queue = 'emails'").fetchone()  # type: ignore[misc]
    return DRAIN / (last - first).total_seconds()


def isolation(url: str, rounds: int) -> dict[str, Any]:
    rates: dict[str, list[float]] = {"alone": [], "backlog": []}
    with fresh_database("tasklib_bench_backlog") as crowded:
        tasklib.init(tasklib.Config(database_url=crowded))
        _fill_backlog(crowded, BACKLOG)
        truncate(url)
        for r in range(rounds):
            for name in ("alone", "backlog") if r % 2 == 0 else ("backlog", "alone"):
                rates[name].append(_drain_emails(url if name == "alone" else crowded))
                print(f"round {r + 1}/{rounds} emails drain {name:8} {rates[name][-1]:,.0f}/s", flush=True)
        with psycopg.connect(crowded) as conn:
            waiting = conn.execute("SELECT count(*) FROM tasks WHERE queue = 'default' AND state = 'pending'").fetchone()[0]  # type: ignore[index]
    assert waiting == BACKLOG  # the emails worker claimed none of them
    alone, crowded_rate = statistics.median(rates["alone"]), statistics.median(rates["backlog"])
    return {
        "backlog": BACKLOG,
        "tasks": DRAIN,
        "rates": rates,
        "alone_per_s": alone,
        "backlog_per_s": crowded_rate,
        "ratio": crowded_rate / alone,
        "spread": {k: max(v) / min(v) for k, v in rates.items()},
    }


def _sample_running(url: str, name: str, stop: threading.Event, seen: list[int]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        while not stop.is_set():
            seen.append(
                conn.execute("SELECT count(*) FROM tasks WHERE name = %s AND state = 'running'", [name]).fetchone()[0]
            )  # type: ignore[index]
            time.sleep(0.01)


def concurrency(url: str) -> dict[str, Any]:
    truncate(url)
    tasklib.init(tasklib.Config(database_url=url))
    tasklib.submit_many_sync(qtasks.limited, [{"i": i} for i in range(60)])
    seen: list[int] = []
    stop = threading.Event()
    name = qtasks.limited.__tasklib_name__  # type: ignore[attr-defined]
    sampler = threading.Thread(target=_sample_running, args=(url, name, stop, seen))
    sampler.start()
    try:
        with burst.running_workers(url, 3, options=APP_X4):
            while tasklib.count_by_state()["completed"] < 60:
                time.sleep(0.05)
    finally:
        stop.set()
        sampler.join()
    with psycopg.connect(url) as conn:
        first, last = conn.execute("SELECT min(started_at), max(completed_at) FROM tasks").fetchone()  # type: ignore[misc]
    span = (last - first).total_seconds()
    return {
        "tasks": 60,
        "limit": 2,
        "ideal_s": 6.0,
        "span_s": span,
        "ratio": span / 6.0,
        "most_running": max(seen),
        "samples": len(seen),
    }


def rate(url: str) -> dict[str, Any]:
    truncate(url)
    tasklib.init(tasklib.Config(database_url=url))
    tasklib.submit_many_sync(qtasks.paced, [{"i": i} for i in range(300)])
    with burst.running_workers(url, 3, options=APP_X4):
        time.sleep(12.0)
    with psycopg.connect(url) as conn:
        starts = sorted(r[0].timestamp() for r in conn.execute("SELECT started_at FROM tasks WHERE started_at IS NOT NULL"))
    first = starts[0]
    in_ten = bisect.bisect_left(starts, first + 10.0)
    busiest = max(bisect.bisect_left(starts, t + 1.0) - i for i, t in enumerate(starts))
    return {"rate": "20/s", "starts_in_10s": in_ten, "busiest_second": busiest}


def _plain_drain(url: str, app: str) -> float:
    prefill(url, DRAIN)
    with burst.running_workers(url, 1, options=("--app", app, "--concurrency", "4")):
        first, last, done = burst.wait_done(url, DRAIN, 180, since="started_at")
    return done / (last - first).total_seconds()


def _plain_pickup(url: str, app: str) -> float:
    truncate(url)
    tasklib.init(tasklib.Config(database_url=url))
    with burst.running_workers(url, 1, options=("--app", app, "--concurrency", "4")):
        return statistics.median(pickup_samples(100))


def sources(url: str, rounds: int) -> dict[str, Any]:
    """The plain path, served alone and beside other queues and limited tasks (alternated)."""
    figures: dict[str, list[float]] = {f"{m}_{a}": [] for m in ("drain", "pickup") for a in ("plain", "more")}
    apps = {"plain": "bench.tasks", "more": "bench.queue_tasks"}
    for r in range(rounds):
        for side in ("plain", "more") if r % 2 == 0 else ("more", "plain"):
            figures[f"drain_{side}"].append(_plain_drain(url, apps[side]))
            figures[f"pickup_{side}"].append(_plain_pickup(url, apps[side]))
            print(
                f"round {r + 1}/{rounds} {side:5} drain {figures[f'drain_{side}'][-1]:,.0f}/s"
                f" pickup p50 {figures[f'pickup_{side}'][-1]:.2f} ms",
                flush=True,
            )
    med = {k: statistics.median(v) for k, v in figures.items()}
    return {
        "figures": figures,
        "medians": med,
        "drain_ratio": med["drain_more"] / med["drain_plain"],
        "pickup_ratio": med["pickup_more"] / med["pickup_plain"],
        "spread": {k: max(v) / min(v) for k, v in figures.items()},
    }


def run(url: str, rounds: int = 4) -> dict[str, Any]:
    return {
        "isolation": isolation(url, rounds),
        "sources": sources(url, rounds),
        "concurrency": concurrency(url),
        "rate": rate(url),
    }


def print_queues(r: dict[str, Any]) -> None:
    q = r["queues"]
    iso, lim, rt = q["isolation"], q["concurrency"], q["rate"]
    print("\n| Measure | Result | Same-run reference | Ratio | Target |")
    print("| --- | --- | --- | --- | --- |")
    print(
        f"| `emails` drain, 1 x 4, beside {iso['backlog']:,} waiting `default` tasks | {iso['backlog_per_s']:,.0f}/s"
        f" | alone {iso['alone_per_s']:,.0f}/s | {iso['ratio']:.2f} (spreads {iso['spread']['backlog']:.2f} / "
        f"{iso['spread']['alone']:.2f}) | >= 0.9 |"
    )
    print(
        f"| 60 x 0.2 s limited to 2, 3 workers x 4 | {lim['span_s']:.2f} s, at most {lim['most_running']} running"
        f" ({lim['samples']} samples) | 6.00 s | {lim['ratio']:.2f} | never > 2, about 6 s |"
    )
    src = q["sources"]
    m, sp = src["medians"], src["spread"]
    print(
        f"| plain drain 1 x 4, worker also serving `emails` and 2 limited tasks | {m['drain_more']:,.0f}/s"
        f" | serving `default` alone {m['drain_plain']:,.0f}/s | {src['drain_ratio']:.2f}"
        f" (spreads {sp['drain_more']:.2f} / {sp['drain_plain']:.2f}) | >= 0.95 |"
    )
    print(
        f"| plain pickup p50, the same two workers | {m['pickup_more']:.2f} ms | {m['pickup_plain']:.2f} ms"
        f" | {src['pickup_ratio']:.2f} (spreads {sp['pickup_more']:.2f} / {sp['pickup_plain']:.2f}) | <= 1.05 |"
    )
    starts = f"{rt['starts_in_10s']} starts in 10 s, busiest second {rt['busiest_second']}"
    print(f"| 20/s on 3 workers x 4 | {starts} | 200 | | 200 +- 10, <= 22 |")
