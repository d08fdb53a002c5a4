"""Search by arguments (``python -m bench --only-search``): ``list_tasks(kwargs_contain=…)`` on a table
of 1,000,000 finished tasks from the last day, with and without a name filter, for a value a few
tasks hold and for one no task holds; and what a GIN index on ``kwargs`` would cost submits
(``submit_many`` of 20,000, with and without the index, alternated)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import psycopg

import tasklib
from bench import tasks as btasks
from bench.common import truncate

ROWS = 1_000_000
NAMES = 20
INDEX = "CREATE INDEX bench_kwargs_idx ON tasks USING gin (kwargs jsonb_path_ops)"


def fill(url: str) -> None:
    """1,000,000 completed tasks of 20 names over the last 24 h; ``user_id`` runs from 0 to 99,999."""
    truncate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO tasks (id, name, kwargs, state, created_at, scheduled_at, started_at, completed_at, result)
            SELECT gen_random_uuid(), 'bench.name' || (g %% %(names)s), jsonb_build_object('user_id', g %% 100000, 'n', g),
                   'completed', t, t, t, t, 'null'
            FROM (SELECT g, now() - make_interval(secs => g * 86400.0 / %(rows)s) AS t
                  FROM generate_series(1, %(rows)s) AS g) AS s
            """,
            {"rows": ROWS, "names": NAMES},
        )
        conn.execute("VACUUM ANALYZE tasks")


def timed(call: Any, runs: int = 5) -> float:
    """Median milliseconds of ``runs`` calls."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def submit_rate(url: str, n: int = 20_000) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM tasks WHERE name = 'bench.tasks.noop'")
    started = time.perf_counter()
    tasklib.submit_many_sync(btasks.noop, [{"i": i} for i in range(n)])
    return n / (time.perf_counter() - started)


def run(url: str, rounds: int = 4) -> dict[str, Any]:
    tasklib.init(tasklib.Config(database_url=url))
    fill(url)
    held = {"user_id": 4242}  # 10 rows of the million
    absent = {"user_id": -1}
    results: dict[str, Any] = {"rows": ROWS}
    for label, index in (("no index", False), ("gin index", True)):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP INDEX IF EXISTS bench_kwargs_idx")
            if index:
                conn.execute(INDEX)
                conn.execute("ANALYZE tasks")
        results[label] = {
            "held_ms": timed(lambda: tasklib.list_tasks(kwargs_contain=held, limit=50)),
            "held_with_name_ms": timed(lambda: tasklib.list_tasks(kwargs_contain=held, name="bench.name2", limit=50)),
            "absent_ms": timed(lambda: tasklib.list_tasks(kwargs_contain=absent, limit=50), runs=3),
            "absent_with_name_ms": timed(lambda: tasklib.list_tasks(kwargs_contain=absent, name="bench.name2", limit=50)),
        }
        print(f"  {label}: {results[label]}", flush=True)
    sides: dict[str, list[float]] = {"without": [], "with": []}
    for r in range(rounds):
        for side in ("without", "with") if r % 2 == 0 else ("with", "without"):
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("DROP INDEX IF EXISTS bench_kwargs_idx")
                if side == "with":
                    conn.execute(INDEX)
            sides[side].append(submit_rate(url))
            print(f"  round {r + 1} submit_many {side} the index: {sides[side][-1]:,.0f}/s", flush=True)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP INDEX IF EXISTS bench_kwargs_idx")
    a, b = statistics.median(sides["without"]), statistics.median(sides["with"])
    results["submit_many"] = {
        "without": sides["without"],
        "with": sides["with"],
        "with_over_without": b / a,
        "spreads": [max(v) / min(v) for v in sides.values()],
    }
    return results


def print_search(results: dict[str, Any]) -> None:
    s = results["search"]
    print("\n| kwargs_contain on 1,000,000 rows | no index | GIN index |\n| --- | --- | --- |")
    for key, label in (
        ("held_ms", "a value 10 tasks hold"),
        ("held_with_name_ms", "the same, with a name filter"),
        ("absent_ms", "a value no task holds"),
        ("absent_with_name_ms", "the same, with a name filter"),
    ):
        print(f"| {label} | {s['no index'][key]:.1f} ms | {s['gin index'][key]:.1f} ms |")
    m = s["submit_many"]
    spreads = f"spreads {m['spreads'][0]:.2f} / {m['spreads'][1]:.2f}"
    print(f"| submit_many of 20,000 with the index / without | {m['with_over_without']:.2f} ({spreads}) | |")
