"""TaskLib benchmarks: `python -m bench` (or `make bench`).

Every measure runs against a real PostgreSQL in a fresh database and is paired with a baseline
measured in the same run (a minimal psycopg loop on the same table), because this machine is shared
and absolute figures drift: compare the ratios. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tasklib  # noqa: E402
from bench import (  # noqa: E402
    burst,
    dashboard_bench,
    fleet_bench,
    headline,
    memory_bench,
    queues_bench,
    retention_bench,
    search_bench,
    startup,
    workflows_bench,
)
from bench.report import print_burst, print_dashboard, print_held, print_retention  # noqa: E402
from tests.pg import fresh_database  # noqa: E402


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median rate, plus every run's rate (the machine is shared: one run can
    overlap autovacuum or a neighbour's job)."""
    ordered = sorted(runs, key=lambda r: r["per_s"])
    return {**ordered[len(ordered) // 2], "runs_per_s": [round(r["per_s"]) for r in runs]}


SERVER_SETTINGS = ("autovacuum", "shared_buffers", "max_wal_size", "synchronous_commit", "fsync")


def server_settings(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """The server settings that move the figures, recorded beside them."""
    rows = conn.execute("SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s)", [list(SERVER_SETTINGS)])
    return dict(rows.fetchall())  # type: ignore[arg-type]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks per submit/drain measure")
    parser.add_argument(
        "--dashboard-shapes",
        default="1000000:1000000,5000000:1000000",
        help="dashboard tables as ROWS:ROWS_IN_LAST_24H, comma-separated (default: 1M all recent; 5M with 1M recent)",
    )
    parser.add_argument("--load-tasks", type=int, default=50_000, help="tasks drained under the polling load")
    parser.add_argument("--latency-count", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3, help="drain runs per setting (the median is reported)")
    parser.add_argument("--burst-runs", type=int, default=5, help="runs per burst shape (min and median reported)")
    parser.add_argument("--skip-burst", action="store_true", help="skip the burst and held-snapshot measures")
    parser.add_argument("--only-burst", action="store_true", help="run just the burst and held-snapshot measures")
    parser.add_argument(
        "--only-held", action="store_true", help="run just the held-snapshot measure and its control, --held-runs times"
    )
    parser.add_argument("--held-runs", type=int, default=1, help="held-snapshot runs (each with its no-snapshot control)")
    parser.add_argument("--startup-runs", type=int, default=2, help="new-deployment latency runs per rate")
    parser.add_argument("--skip-startup", action="store_true", help="skip the new-deployment claim latency measure")
    parser.add_argument("--only-startup", action="store_true", help="run just the new-deployment claim latency measure")
    parser.add_argument("--skip-dashboard", action="store_true")
    parser.add_argument("--only-dashboard", action="store_true", help="run just the dashboard measure")
    parser.add_argument("--skip-retention", action="store_true", help="skip the prune-under-load measure")
    parser.add_argument("--only-retention", action="store_true", help="run just the prune-under-load measure")
    parser.add_argument("--skip-memory", action="store_true", help="skip the memory and async-throughput measure")
    parser.add_argument("--only-memory", action="store_true", help="run just the memory and async-throughput measure")
    parser.add_argument("--skip-workflows", action="store_true", help="skip the workflow measures")
    parser.add_argument("--only-workflows", action="store_true", help="run just the workflow measures")
    parser.add_argument("--skip-queues", action="store_true", help="skip the queue and limit measures")
    parser.add_argument("--only-queues", action="store_true", help="run just the queue and limit measures")
    parser.add_argument("--skip-search", action="store_true", help="skip the search-by-arguments measure")
    parser.add_argument("--only-search", action="store_true", help="run just the search-by-arguments measure")
    parser.add_argument("--skip-fleet", action="store_true", help="skip the fleet measures")
    parser.add_argument("--only-fleet", action="store_true", help="run just the fleet measures (many workers, a pooler)")
    parser.add_argument(
        "--only-headline", action="store_true", help="run just the headline: submit, pickup, drains, bursts, /metrics"
    )
    parser.add_argument("--rounds", type=int, default=5, help="alternated rounds of the headline's pairs")
    parser.add_argument("--sets", type=int, default=1, help="with --only-burst: this many whole runs, in one file")
    parser.add_argument("--json", type=Path, default=None, help="where to write (default: bench/results/<part>.json)")
    args = parser.parse_args()
    if args.only_headline:
        args.skip_burst = args.skip_startup = args.skip_memory = args.skip_retention = args.skip_workflows = True
        args.skip_queues = args.skip_fleet = args.skip_search = True
    args.json = args.json or ROOT / "bench" / "results" / f"{part_name(args)}.json"
    if args.only_burst and args.sets > 1:
        return burst_sets(args.sets, args.json)
    started = time.time()
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "versions": {"tasklib": tasklib.__version__, "psycopg": psycopg.__version__},
        "settings": vars(args) | {"json": str(args.json)},
    }
    with fresh_database("tasklib_bench") as url:
        with psycopg.connect(url) as conn:
            results["versions"]["postgresql"] = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
            results["server"] = server_settings(conn)
        if results["server"]["autovacuum"] != "on":
            # Seen on CI-style machines (a conf.d file sets it off): dead row versions then stay for the
            # whole run, the table outgrows shared_buffers and rates fall as it grows. Said up front so
            # figures from such a server are not compared with a production one's without knowing.
            print("note: autovacuum is off on this server; long measures drift down as dead rows pile up", flush=True)
        tasklib.init(tasklib.Config(database_url=url))
        shapes = [tuple(int(x) for x in shape.split(":")) for shape in args.dashboard_shapes.split(",")]
        if args.only_dashboard:
            results["dashboard"] = dashboard_bench.run(url, shapes, args.load_tasks)  # type: ignore[arg-type]
            write(results, args.json, started)
            print_dashboard(results)
            return 0
        if args.only_workflows:
            results["workflows"] = workflows_bench.run(url)
            write(results, args.json, started)
            workflows_bench.print_workflows(results)
            return 0
        if args.only_queues:
            results["queues"] = queues_bench.run(url)
            write(results, args.json, started)
            queues_bench.print_queues(results)
            return 0
        if args.only_search:
            results["search"] = search_bench.run(url)
            write(results, args.json, started)
            search_bench.print_search(results)
            return 0
        if args.only_fleet:
            results["fleet"] = fleet_bench.run(url)
            write(results, args.json, started)
            fleet_bench.print_fleet(results)
            return 0
        if args.only_memory:
            results["memory"] = memory_bench.run(url)
            write(results, args.json, started)
            memory_bench.print_memory(results)
            return 0
        if args.only_retention:
            results["retention"] = retention_bench.run(url, drain=args.tasks)
            write(results, args.json, started)
            print_retention(results)
            return 0
        if args.only_startup:
            results["startup"] = startup.run(args.startup_runs)
            write(results, args.json, started)
            startup.print_startup(results)
            return 0
        if args.only_held:
            run_held(results, url, args.held_runs)
            write(results, args.json, started)
            print_held(results)
            return 0
        n = args.tasks
        if not args.skip_burst:
            run_burst(results, url, n, args.burst_runs)
        if args.only_burst:
            write(results, args.json, started)
            print_burst(results)
            return 0
        results["headline"] = headline.run(url, n, rounds=args.rounds, metrics_shapes=not args.skip_dashboard)
        if args.only_headline:
            write(results, args.json, started)
            headline.print_headline(results["headline"])
            return 0
        if not args.skip_startup:
            results["startup"] = startup.run(args.startup_runs)
        if not args.skip_memory:
            results["memory"] = memory_bench.run(url)
        if not args.skip_retention:
            results["retention"] = retention_bench.run(url, drain=n)
        if not args.skip_dashboard:
            results["dashboard"] = dashboard_bench.run(url, shapes, args.load_tasks)  # type: ignore[arg-type]
        if not args.skip_workflows:
            results["workflows"] = workflows_bench.run(url)
        if not args.skip_queues:
            results["queues"] = queues_bench.run(url)
        if not args.skip_fleet:
            results["fleet"] = fleet_bench.run(url)
        if not args.skip_search:
            results["search"] = search_bench.run(url)
    write(results, args.json, started)
    headline.print_headline(results["headline"])
    memory_bench.print_memory(results)
    print_burst(results)
    startup.print_startup(results)
    print_retention(results)
    print_dashboard(results)
    if "workflows" in results:
        workflows_bench.print_workflows(results)
    if "queues" in results:
        queues_bench.print_queues(results)
    if "fleet" in results:
        fleet_bench.print_fleet(results)
    if "search" in results:
        search_bench.print_search(results)
    print(f"\nJSON: {args.json}")
    return 0


#: The result file each part writes by default; a re-measurement replaces it. Only the files the docs
#: cite are committed (a whole run's ``latest.json`` is not).
PARTS = (
    "headline",
    "burst",
    "held",
    "startup",
    "memory",
    "retention",
    "dashboard",
    "workflows",
    "queues",
    "fleet",
    "search",
)


def part_name(args: argparse.Namespace) -> str:
    return next((part for part in PARTS if getattr(args, f"only_{part}", False)), "latest")


def burst_sets(sets: int, path: Path) -> int:
    """``sets`` whole ``--only-burst`` runs, one process each, recorded together as ``{"runs": [...]}``."""
    import subprocess

    argv, skip = [], False
    for arg in sys.argv[1:]:  # every argument but --sets N / --sets=N (and --json: each set has its own)
        if skip:
            skip = False
        elif arg in ("--sets", "--json"):
            skip = True
        elif not arg.startswith(("--sets=", "--json=")):
            argv.append(arg)
    runs = []
    for i in range(sets):
        part = path.with_suffix(f".set{i + 1}.json")
        subprocess.run([sys.executable, "-m", "bench", *argv, "--sets", "1", "--json", str(part)], check=True)
        runs.append(json.loads(part.read_text()))
        part.unlink()
    path.write_text(json.dumps({"command": f"python -m bench --only-burst --sets {sets}", "runs": runs}, indent=1))
    print(f"\nJSON: {path} (tables: python -m bench.summary {path})")
    return 0


def write(results: dict[str, Any], path: Path, started: float) -> None:
    results["elapsed_seconds"] = time.time() - started
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str))


def run_burst(results: dict[str, Any], url: str, n: int, runs: int) -> None:
    """Bursts into idle workers against the prefilled 1 x 4 drain, then the held-snapshot measure."""
    print("burst: prefilled reference, 1 worker x concurrency 4…", flush=True)
    reference = median_of([burst.prefilled(url, n) for _ in range(3)])
    results["prefilled_c4"] = reference
    results["burst"] = burst.burst_matrix(url, n, runs, reference["per_s"])
    # Every prefilled drain of the run (the three above and those beside each burst): the run's
    # prefilled rate, sampled across the whole run instead of at its start only.
    drains = [float(rate) for rate in reference["runs_per_s"]]
    drains += [rate for cell in results["burst"].values() for rate in cell["prefilled_beside_per_s"]]
    whole = statistics.median(drains)
    results["prefilled_c4_whole_run"] = {"median_per_s": whole, "runs": drains}
    for cell in results["burst"].values():
        # The same ratio for the prefilled drains beside the cell's bursts: what the target's
        # "minimum of five >= 0.8 x the median" reads for a shape that is the reference itself,
        # i.e. how far this machine's noise alone takes a minimum of five.
        cell["min_ratio_run"] = cell["min_per_s"] / whole
        cell["prefilled_beside_min_ratio_run"] = min(cell["prefilled_beside_per_s"]) / whole
    run_held(results, url, 1)


def run_held(results: dict[str, Any], url: str, runs: int) -> None:
    """The held-snapshot measure, each run beside a control with the same phases and no snapshot
    (what the table's growth alone costs). The first run is also kept as ``held_snapshot``."""
    results["held_runs"] = []
    for i in range(runs):
        print(f"held snapshot {i + 1}/{runs}: 20 s clean, 40 s idle in transaction, 20 s clean…", flush=True)
        held = burst.held_snapshot(url)
        print(f"control {i + 1}/{runs}: the same phases, no snapshot held…", flush=True)
        control = burst.held_snapshot(url, hold=False)
        results["held_runs"].append({"held": held, "control": control})
    results["held_snapshot"] = results["held_runs"][0]["held"]
    results["held_control"] = results["held_runs"][0]["control"]


if __name__ == "__main__":
    sys.exit(main())
