"""Where a chunked burst's gap to the prefilled drain comes from (a diagnostic, not in `make bench`).

`python -m bench.insert_load [--rounds N] [--json PATH]`. One worker x concurrency 4, 20,000 no-op
tasks, three measures alternated in a shuffled order every round (this machine's speed moves within
minutes, so only alternation makes them comparable):

- ``prefilled``: the reference drain (``bench.burst.prefilled``);
- ``prefilled_beside_inserts``: the same drain while the burst's own producer (``submit_many_sync``,
  20 chunks of 1,000, in this process) inserts into the ``tasks`` table of *another* database on
  the same server: the producer's CPU, WAL and commits, with none of its rows in the worker's table;
- ``burst``: the chunked burst itself (``bench.burst.burst``).

If the burst is about as fast as the drain beside inserts elsewhere, its gap to the plain drain is
the cost of inserting on the same machine, which no claim or worker change can remove.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import tasklib
from bench import burst as bburst
from bench import tasks as btasks
from bench.common import ROOT, prefill, truncate
from tests.pg import fresh_database

N, CHUNK = 20_000, 1_000


def produce(url: str) -> None:
    """The burst's producer, pointed at ``url``."""
    tasklib.init(tasklib.Config(database_url=url))
    for start in range(0, N, CHUNK):
        tasklib.submit_many_sync(btasks.noop, [{"i": i} for i in range(start, start + CHUNK)])


def beside_inserts(url: str, elsewhere: str) -> float:
    prefill(url, N)
    truncate(elsewhere)
    with bburst.running_workers(url, 1, 4):
        producer = threading.Thread(target=produce, args=(elsewhere,))
        producer.start()
        first, last, done = bburst.wait_done(url, N, 120, since="started_at")
        producer.join()
    return done / (last - first).total_seconds()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "insert-load-latest.json")
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"prefilled": [], "prefilled_beside_inserts": [], "burst": []}
    orders: list[list[str]] = []
    with fresh_database("tasklib_bench") as url, fresh_database("tasklib_bench_elsewhere") as elsewhere:
        for database in (elsewhere, url):  # init migrates each database's table
            tasklib.init(tasklib.Config(database_url=database))
        measures: dict[str, Callable[[], float]] = {
            "prefilled": lambda: bburst.prefilled(url, N)["per_s"],
            "prefilled_beside_inserts": lambda: beside_inserts(url, elsewhere),
            "burst": lambda: bburst.burst(url, N, 1, 4, CHUNK)["per_s"],
        }
        for round_ in range(args.rounds):
            order = random.sample(list(measures), len(measures))
            orders.append(order)
            for name in order:
                rates[name].append(measures[name]())
            print(round_, {name: round(values[-1]) for name, values in rates.items()}, flush=True)

    def over(a: str, b: str) -> float:
        """The median of the per-round ratios a / b: each pair saw the same spell of the machine."""
        return statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True))

    out = {
        "what": __doc__,
        "commit": subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True).strip(),
        "orders": orders,
        "per_s": rates,
        "median_per_s": {name: statistics.median(values) for name, values in rates.items()},
        "beside_inserts_over_prefilled": over("prefilled_beside_inserts", "prefilled"),
        "burst_over_prefilled": over("burst", "prefilled"),
        "burst_over_beside_inserts": over("burst", "prefilled_beside_inserts"),
    }
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    print({k: round(v, 3) for k, v in out.items() if k.endswith(("prefilled", "inserts"))})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
