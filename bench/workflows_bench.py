"""Workflows against the same work without them, in one run (``python -m bench --only-workflows``).

- fan-out/fan-in: a parent, 10,000 children from one ``submit_many`` (``depends_on=[parent]``) and
  one child of all 10,000, on 2 workers x 4, against 10,000 independent tasks on the same workers,
  in alternated rounds; time from the first start to the last completion;
- a chain of 200 no-op steps on 1 worker x 4: each step's start minus its parent's completion.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import psycopg

import tasklib
from bench import burst
from bench import tasks as btasks
from bench.common import percentiles, truncate

FAN = 10_000
CHAIN = 200


def _span(url: str) -> float:
    with psycopg.connect(url) as conn:
        first, last = conn.execute("SELECT min(started_at), max(completed_at) FROM tasks").fetchone()  # type: ignore[misc]
    return (last - first).total_seconds()


def _wait(url: str, total: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while tasklib.count_by_state()["completed"] < total:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{total} tasks not completed: {tasklib.count_by_state()}")
        time.sleep(0.05)


def independent(url: str) -> float:
    truncate(url)
    tasklib.init(tasklib.Config(database_url=url))
    with burst.running_workers(url, 2, 4):
        tasklib.submit_many_sync(btasks.noop, [{"i": i} for i in range(FAN)])
        _wait(url, FAN)
    return _span(url)


def fan_out_in(url: str) -> float:
    truncate(url)
    tasklib.init(tasklib.Config(database_url=url))
    with burst.running_workers(url, 2, 4):
        parent = tasklib.submit_task_sync(btasks.noop, i=-1, delay_seconds=0.5)  # the children exist before it runs
        children = tasklib.submit_many_sync(btasks.noop, [{"i": i} for i in range(FAN)], depends_on=[parent])
        tasklib.submit_task_sync(btasks.noop, i=FAN, depends_on=children)
        _wait(url, FAN + 2)
    return _span(url)


def chain(url: str) -> dict[str, Any]:
    truncate(url)
    tasklib.init(tasklib.Config(database_url=url))
    with burst.running_workers(url, 1, 4):
        time.sleep(1.0)
        ids = tasklib.chain([tasklib.step(btasks.noop, i=i) for i in range(CHAIN)])
        _wait(url, CHAIN)
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT extract(epoch FROM c.started_at - p.completed_at) * 1000 FROM tasks AS c"
            " JOIN tasks AS p ON p.id = c.parent_ids[1] WHERE c.id = ANY(%s)",
            [ids],
        ).fetchall()
    return {"steps": CHAIN, **percentiles([float(r[0]) for r in rows])}


def run(url: str, rounds: int = 3) -> dict[str, Any]:
    spans: dict[str, list[float]] = {"independent": [], "fan_out_in": []}
    for r in range(rounds):
        for name in ("independent", "fan_out_in") if r % 2 == 0 else ("fan_out_in", "independent"):
            spans[name].append(independent(url) if name == "independent" else fan_out_in(url))
            print(f"round {r + 1}/{rounds} {name:12} {spans[name][-1]:.2f} s", flush=True)
    fan, alone = statistics.median(spans["fan_out_in"]), statistics.median(spans["independent"])
    chained = chain(url)
    print(f"chain of {CHAIN}: step-to-step p50 {chained['p50_ms']:.2f} ms, p99 {chained['p99_ms']:.2f} ms", flush=True)
    return {
        "fan": {"tasks": FAN, "spans": spans, "fan_out_in_s": fan, "independent_s": alone, "ratio": fan / alone},
        "chain": chained,
    }


def print_workflows(r: dict[str, Any]) -> None:
    w = r["workflows"]
    fan, chained = w["fan"], w["chain"]
    print("\n| Measure | Workflow | Same-run baseline | Ratio | Target |")
    print("| --- | --- | --- | --- | --- |")
    print(
        f"| 1 -> {fan['tasks']:,} -> 1 on 2 x 4 | {fan['fan_out_in_s']:.2f} s | {fan['tasks']:,} independent "
        f"{fan['independent_s']:.2f} s | {fan['ratio']:.2f} | <= 1.25 |"
    )
    print(
        f"| chain of {chained['steps']}, step to step p50 / p99 | {chained['p50_ms']:.2f} / {chained['p99_ms']:.2f} ms"
        " | | | <= 5 / <= 20 ms |"
    )
