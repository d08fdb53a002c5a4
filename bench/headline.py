"""The headline: the everyday path and the shapes users live in, each beside its same-run baseline.

Every round measures each pair once per side, alternating which side goes first (A B, then B A), so
a slow minute on this shared machine falls on both sides; the figures are the medians over the
rounds, with each side's spread (max / min) to judge a ratio by. The rows:

- ``submit_task_sync`` one by one against a raw psycopg ``INSERT`` into the same table;
- ``submit_many`` against a raw ``INSERT … SELECT FROM unnest``;
- pickup latency (``submit_task_sync`` returning → the task running in a child) against a process
  that claims on each NOTIFY;
- a prefilled drain of 20,000 no-ops, 1 worker x 4, against pgqueuer's drain (asyncpg, batches of
  100) and against a loop claiming 50 at a time; 2 x 4 and 1 x 16 against 1 x 4;
- a burst of 20,000 into idle workers (1 x 16) against the prefilled drain of the same shape;
- ``/metrics`` p95 on a million rows from the last 14 hours and on five million (not alternated:
  generating the table is the expensive part; the dashboard is started on it and scraped).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import httpx

import tasklib
from bench import baseline, burst, peers
from bench import tasks as btasks
from bench.common import percentiles, prefill, tasklib_process, truncate
from bench.compare import pickup_samples
from bench.dashboard_bench import generate
from tests.net import free_port, wait_healthy

SUBMITS = 3_000
PICKUPS = 200


# -- one measure each ------------------------------------------------------------------------------


def submit_sync(url: str, n: int) -> float:
    truncate(url)
    tasklib.init(tasklib.Config(database_url=url))
    started = time.perf_counter()
    for i in range(SUBMITS):
        tasklib.submit_task_sync(btasks.noop, i=i)
    return SUBMITS / (time.perf_counter() - started)


def raw_insert(url: str, n: int) -> float:
    truncate(url)
    return baseline.single_inserts(url, SUBMITS)


def submit_many(url: str, n: int) -> float:
    truncate(url)
    tasklib.init(tasklib.Config(database_url=url))
    calls = [{"i": i} for i in range(n)]
    started = time.perf_counter()
    tasklib.submit_many_sync(btasks.noop, calls)
    return n / (time.perf_counter() - started)


def raw_bulk(url: str, n: int) -> float:
    truncate(url)
    return baseline.bulk_insert(url, n)


def pickup(url: str, n: int) -> dict[str, float]:
    truncate(url)
    tasklib.init(tasklib.Config(database_url=url))
    with burst.running_workers(url, 1, 4):
        time.sleep(1.0)  # children ready
        return percentiles(pickup_samples(PICKUPS))


def listener(url: str, n: int) -> dict[str, float]:
    truncate(url)
    return baseline.pickup_latency(url, PICKUPS)


def drain(processes: int, concurrency: int) -> Callable[[str, int], float]:
    def run(url: str, n: int) -> float:
        prefill(url, n)
        with burst.running_workers(url, processes, concurrency):
            first, last, done = burst.wait_done(url, n, 180, since="started_at")
        return done / (last - first).total_seconds()

    return run


def burst_1x16(url: str, n: int) -> float:
    return float(burst.burst(url, n, 1, 16, None)["per_s"])


def claim_50(url: str, n: int) -> float:
    prefill(url, n)
    return baseline.drain(url, n, batch=50)["per_s"]


def pgqueuer(url: str, n: int) -> float:
    truncate(url)
    return peers.pgqueuer_drain(url, n)


#: (row, subject, its baseline, what the target says): the subject and baseline run alternately.
PAIRS: list[tuple[str, str, str]] = [
    ("submit_task_sync, one by one", "submit_sync", "raw_insert"),
    ("submit_many", "submit_many", "raw_bulk"),
    ("pickup latency", "pickup", "listener"),
    ("drain 1 x 4 vs pgqueuer", "drain_1x4", "pgqueuer"),
    ("drain 1 x 4 vs claim-50 loop", "drain_1x4", "claim_50"),
    ("drain 2 x 4 vs 1 x 4", "drain_2x4", "drain_1x4"),
    ("drain 1 x 16 vs 1 x 4", "drain_1x16", "drain_1x4"),
    ("burst 1 x 16 vs prefilled 1 x 16", "burst_1x16", "drain_1x16"),
]
MEASURES: dict[str, Callable[[str, int], Any]] = {
    "submit_sync": submit_sync,
    "raw_insert": raw_insert,
    "submit_many": submit_many,
    "raw_bulk": raw_bulk,
    "pickup": pickup,
    "listener": listener,
    "drain_1x4": drain(1, 4),
    "drain_2x4": drain(2, 4),
    "drain_1x16": drain(1, 16),
    "burst_1x16": burst_1x16,
    "claim_50": claim_50,
    "pgqueuer": pgqueuer,
}
PICKUP_P99_MS = 3.0
METRICS_P95_MS = 50.0
#: Targets, as (row, which figure, at least / at most, value).
TARGETS = {
    "submit_task_sync, one by one": ("ratio", ">=", 0.95),
    "submit_many": ("ratio", ">=", 1.0),
    "pickup latency": ("p50_ms", "<=", 1.0),
    "drain 1 x 4 vs pgqueuer": ("ratio", ">=", 1.2),
    "drain 1 x 4 vs claim-50 loop": ("ratio", ">=", 0.8),
    "drain 2 x 4 vs 1 x 4": ("ratio", ">=", 1.0),
    "drain 1 x 16 vs 1 x 4": ("ratio", ">=", 1.0),
    "burst 1 x 16 vs prefilled 1 x 16": ("ratio", ">=", 0.9),
}


def run(url: str, n: int = 20_000, rounds: int = 5, metrics_shapes: bool = True) -> dict[str, Any]:
    skipped = peers.available()
    names = [m for m in MEASURES if not (m == "pgqueuer" and skipped)]
    values: dict[str, list[Any]] = {m: [] for m in names}
    for r in range(rounds):
        # Alternate: even rounds in list order, odd rounds reversed, so each pair's sides swap places.
        for name in names if r % 2 == 0 else list(reversed(names)):
            values[name].append(MEASURES[name](url, n))
            print(f"round {r + 1}/{rounds} {name:12} {_short(values[name][-1])}", flush=True)
    out: dict[str, Any] = {"tasks": n, "rounds": rounds, "values": values, "rows": {}}
    if skipped:
        out["skipped"] = {"pgqueuer": skipped}
    for row, subject, base in PAIRS:
        if subject in values and base in values:
            out["rows"][row] = _pair(values[subject], values[base])
    if metrics_shapes:
        out["metrics"] = {
            "1M rows from the last 14 h": metrics_p95(url, 1_000_000, 1_000_000, "14 hours"),
            "5M rows, 1M from the last 24 h": metrics_p95(url, 5_000_000, 1_000_000, "23 hours 59 minutes"),
        }
    return out


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return f"p50 {value['p50_ms']:.2f} ms  p99 {value['p99_ms']:.2f} ms"
    return f"{value:,.0f}/s"


def _pair(subject: list[Any], base: list[Any]) -> dict[str, Any]:
    if isinstance(subject[0], dict):  # latencies: the medians of each round's percentiles
        out: dict[str, Any] = {}
        for key in ("p50_ms", "p99_ms"):
            s = statistics.median(v[key] for v in subject)
            b = statistics.median(v[key] for v in base)
            out[key], out[f"baseline_{key}"] = s, b
        out["spread"] = _spread([v["p50_ms"] for v in subject]), _spread([v["p50_ms"] for v in base])
        return out
    s, b = statistics.median(subject), statistics.median(base)
    return {"per_s": s, "baseline_per_s": b, "ratio": s / b, "spread": (_spread(subject), _spread(base))}


def _spread(values: list[float]) -> float:
    return max(values) / min(values)


def metrics_p95(url: str, rows: int, recent: int, span: str, scrapes: int = 100) -> dict[str, Any]:
    """A dashboard started on the table and scraped like Prometheus: the scrapes while the day's
    figures load (each reads one slice), then ``scrapes`` more once they have."""
    generate(url, rows, recent, span)
    port = free_port()
    proc = tasklib_process(url, "dashboard", "--port", str(port))
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, timeout=60)
        loading: list[float] = []
        with httpx.Client(base_url=base, timeout=60) as client:
            while len(loading) < 500:
                started = time.perf_counter()
                text = client.get("/metrics").text
                loading.append((time.perf_counter() - started) * 1000)
                if _covered(text) >= 86_340:
                    break
            steady = []
            for _ in range(scrapes):
                started = time.perf_counter()
                assert client.get("/metrics").status_code == 200
                steady.append((time.perf_counter() - started) * 1000)
    finally:
        proc.terminate()
        proc.wait(30)
    truncate(url)
    loaded = percentiles(loading + loading[-1:])
    return {"rows": rows, "recent": recent, "span": span, "loading": loaded, **percentiles(steady)}


def _covered(text: str) -> float:
    for line in text.splitlines():
        if line.startswith("tasklib_finished_window_seconds "):
            return float(line.split()[1])
    return 0.0


def _verdict(row: str, r: dict[str, Any]) -> str:
    figure, op, value = TARGETS[row]
    met = r[figure] >= value if op == ">=" else r[figure] <= value
    if row == "pickup latency":
        met = met and r["p99_ms"] <= PICKUP_P99_MS
        return f"p50 <= {value} ms, p99 <= {PICKUP_P99_MS} ms: {'met' if met else 'missed'}"
    return f"{op} {value}: {'met' if met else 'missed'}"


def print_headline(h: dict[str, Any]) -> None:
    print("\n| Measure | TaskLib | Same-run baseline | Ratio | Target | Spread TaskLib / baseline |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row, r in h["rows"].items():
        spread = f"{r['spread'][0]:.2f} / {r['spread'][1]:.2f}"
        if "ratio" in r:
            figures = f"{r['per_s']:,.0f}/s | {r['baseline_per_s']:,.0f}/s | {r['ratio']:.2f}"
        else:
            figures = (
                f"p50 {r['p50_ms']:.2f} / p99 {r['p99_ms']:.2f} ms | "
                f"p50 {r['baseline_p50_ms']:.2f} / p99 {r['baseline_p99_ms']:.2f} ms |"
            )
        print(f"| {row} | {figures} | {_verdict(row, r)} | {spread} |")
    for shape, m in h.get("metrics", {}).items():
        verdict = "met" if m["p95_ms"] <= METRICS_P95_MS else "missed"
        loading = f"while the day loads: p95 {m['loading']['p95_ms']:.1f} ms"
        print(f"| /metrics, {shape} | p95 {m['p95_ms']:.1f} ms | | | p95 <= {METRICS_P95_MS} ms: {verdict} | {loading} |")
    for name, why in h.get("skipped", {}).items():
        print(f"(skipped {name}: {why})")
