"""What the table's ``fillfactor`` buys (a diagnostic, not in `make bench`).

`python -m bench.fillfactor [--fillfactors 100,85,50] [--rounds N] [--json PATH]`. Every round runs
each fillfactor once, in a shuffled order (this machine's speed moves within minutes), through two
measures on the same database:

- ``drain``: 20,000 tasks prefilled, then one worker x 4 drains them. Records the rate, the WAL
  written per task (``pg_current_wal_insert_lsn`` before and after), and, when ``pg_waldump`` can
  read the server's WAL (same machine, enough privilege), how many of the claims' and outcomes'
  row updates put the new version on another page than the old one. Such an update also writes a
  ``Heap/LOCK`` record for the old version first, and dirties a second page.
- ``steady``: 2 workers x 4 with a producer keeping 2,000 tasks waiting (``bench.burst``'s held
  measure with no snapshot held, 40 s), autovacuum on as the server has it. Records the median
  per-second rate, the table's bytes per row, and its free space after a ``VACUUM`` (pgstattuple).

The question it answers: does leaving room on each page (a lower fillfactor) keep a row's next
version on its page often enough to matter for speed or size?
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import statistics
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg

import tasklib
from bench import burst as bburst
from bench.common import ROOT, prefill
from tests.pg import fresh_database

N = 20_000


def _lsn(conn: psycopg.Connection[Any]) -> str:
    return str(conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0])  # type: ignore[index]


def _waldump(conn: psycopg.Connection[Any]) -> str | None:
    """The server's own pg_waldump, when this machine has it."""
    bindir = f"/usr/lib/postgresql/{conn.info.server_version // 10000}/bin/pg_waldump"
    return bindir if Path(bindir).exists() else shutil.which("pg_waldump")


def update_pages(conn: psycopg.Connection[Any], start: str, end: str) -> dict[str, int] | None:
    """Heap records of the ``tasks`` table between two WAL positions: updates whose new version
    stayed on the old one's page, updates that moved it, and row locks. None when the WAL cannot be
    read from here."""
    waldump = _waldump(conn)
    if waldump is None:
        return None
    wal_dir = Path(str(conn.execute("SHOW data_directory").fetchone()[0])) / "pg_wal"  # type: ignore[index]
    node = int(conn.execute("SELECT pg_relation_filenode('tasks')").fetchone()[0])  # type: ignore[index]
    done = subprocess.run(
        [waldump, "-p", str(wal_dir), "-r", "Heap", "-s", start, "-e", end], capture_output=True, text=True
    )
    if not done.stdout:
        return None
    counts: Counter[str] = Counter()
    for line in done.stdout.splitlines():
        kind = re.search(r"desc: (\w+)", line)
        refs = re.findall(r"blkref #\d+: rel \d+/\d+/(\d+) (?:fork \w+ )?blk (\d+)", line)
        blocks = {int(block) for rel, block in refs if int(rel) == node}
        if kind is None or not blocks:
            continue
        if kind.group(1).startswith("UPDATE"):
            counts["update_other_page" if len(blocks) > 1 else "update_same_page"] += 1
        else:
            counts[kind.group(1).lower()] += 1
    return dict(counts)


def drain(url: str) -> dict[str, Any]:
    prefill(url, N)
    with psycopg.connect(url, autocommit=True) as conn:
        start = _lsn(conn)
        with bburst.running_workers(url, 1, 4):
            first, last, done = bburst.wait_done(url, N, 300, since="started_at")
        time.sleep(0.2)  # the last commits' WAL
        end = _lsn(conn)
        wal = float(conn.execute("SELECT pg_wal_lsn_diff(%s, %s)", (end, start)).fetchone()[0])  # type: ignore[index]
        pages = update_pages(conn, start, end)
    return {"per_s": done / (last - first).total_seconds(), "wal_bytes_per_task": wal / done, "heap_records": pages}


def steady(url: str) -> dict[str, Any]:
    run = bburst.held_snapshot(url, hold=False, clean=15, held=15, after=10)
    seconds = [count for _, count in run["per_second"]][1:-1]  # whole seconds only
    with psycopg.connect(url, autocommit=True) as conn:
        rows, size = conn.execute("SELECT count(*), pg_relation_size('tasks') FROM tasks").fetchone()  # type: ignore[misc]
        conn.execute("VACUUM tasks")
        free = conn.execute("SELECT free_percent FROM pgstattuple('tasks')").fetchone()[0]  # type: ignore[index]
    return {
        "per_s": statistics.median(seconds),
        "rows": rows,
        "bytes_per_row": size / rows,
        "free_percent_after_vacuum": float(free),
        "longest_statement_ms": run["longest_statement_ms"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fillfactors", default="100,85,50")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "fillfactor.json")
    args = parser.parse_args()
    fillfactors = [int(f) for f in args.fillfactors.split(",")]
    results: dict[str, dict[int, list[dict[str, Any]]]] = {m: {f: [] for f in fillfactors} for m in ("drain", "steady")}
    with fresh_database("tasklib_bench") as url:
        tasklib.init(tasklib.Config(database_url=url))
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
        for round_ in range(args.rounds):
            for fillfactor in random.sample(fillfactors, len(fillfactors)):
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(f"ALTER TABLE tasks SET (fillfactor = {fillfactor})")
                for name, measure in (("drain", drain), ("steady", steady)):
                    results[name][fillfactor].append(measure(url))
                    print(round_, fillfactor, name, results[name][fillfactor][-1], flush=True)

    def median(name: str, fillfactor: int, key: str) -> float:
        return statistics.median(r[key] for r in results[name][fillfactor])

    out = {
        "what": __doc__,
        "commit": subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True).strip(),
        "runs": results,
        "medians": {
            f: {
                "drain_per_s": median("drain", f, "per_s"),
                "drain_wal_bytes_per_task": median("drain", f, "wal_bytes_per_task"),
                "steady_per_s": median("steady", f, "per_s"),
                "steady_bytes_per_row": median("steady", f, "bytes_per_row"),
                "steady_free_percent_after_vacuum": median("steady", f, "free_percent_after_vacuum"),
            }
            for f in fillfactors
        },
    }
    args.json.write_text(json.dumps(out, indent=1, default=float) + "\n")
    for f, m in out["medians"].items():
        print(f, {k: round(v, 1) for k, v in m.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
