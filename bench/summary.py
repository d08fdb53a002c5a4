"""The burst and held-snapshot tables of docs/benchmarks.md from recorded runs:
`python -m bench.summary bench/results/burst.json` (a file of ``{"runs": [...]}``, as
`python -m bench --only-burst --sets 5` writes it, or single runs' files).

Every figure is a ratio within one run (the machine's speed moves between runs); a cell's row
gathers its bursts over all the runs given.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

TARGET = 0.8
X, DASH = "\u00d7", "\u2013"  # the docs' typography (spelled out for the linter)


def _shape(cell: dict[str, Any]) -> str:
    arrival = "chunks of 1,000" if cell["chunk"] else "one call"
    return f"{cell['processes']} {X} {cell['concurrency']}, {arrival}"


def _table(columns: list[str], rows: list[list[str]]) -> str:
    """A Markdown table: a header row, its separator, then ``rows``."""
    lines = [columns, ["---"] * len(columns), *rows]
    return "\n".join(f"| {' | '.join(line)} |" for line in lines)


def burst_table(runs: list[dict[str, Any]]) -> str:
    columns = [
        f"Shape (workers {X} concurrency), arrival",
        "min",
        "median",
        "min ÷ run's prefilled median, lowest run",
        f"runs whose min ≥ 0.8 {X}",
        "the shape's own prefilled drains: min ÷ the same, lowest run",
        "lowest burst ÷ the drains beside it",
        "longest worker statement (longest not waiting on the disk)",
    ]
    rows = []
    for key in runs[0]["burst"]:
        cells = [run["burst"][key] for run in runs]
        rates = [b["per_s"] for cell in cells for b in cell["runs"]]
        ratios = [cell["min_ratio_run"] for cell in cells]
        rows.append(
            [
                _shape(cells[0]),
                f"{min(rates):,.0f}/s",
                f"{statistics.median(rates):,.0f}/s",
                f"{min(ratios):.2f}",
                f"{sum(ratio >= TARGET for ratio in ratios)} of {len(runs)}",
                f"{min(cell['prefilled_beside_min_ratio_run'] for cell in cells):.2f}",
                f"{min(cell['min_ratio_beside'] for cell in cells):.2f}",
                f"{max(cell['longest_statement_ms'] for cell in cells):.0f} ms"
                f" ({max(cell['longest_not_disk_ms'] for cell in cells):.0f} ms)",
            ]
        )
    return _table(columns, rows)


def _first_pair(run: dict[str, Any]) -> dict[str, Any]:
    """A burst run's one held-snapshot run and its control (an ``--only-held`` file lists them all)."""
    return {"held": run["held_snapshot"], "control": run["held_control"]}


def _not_disk(phase: dict[str, Any]) -> str:
    """The longest statement not mostly waiting on the disk, with its kind when the run recorded it."""
    kind = phase.get("longest_not_disk_kind")
    return f"{phase['longest_not_disk_ms']:.0f} ms" + (f" ({kind})" if kind else "")


def held_table(runs: list[dict[str, Any]]) -> str:
    columns = [
        "Run",
        "Clean rate",
        "Held ÷ clean",
        "First 10 s after",
        f"10{DASH}20 s after",
        f"Control, none held: middle ÷ clean, first 10 s after, 10{DASH}20 s after",
        "Longest worker statement, held / control",
        "Longest not waiting on the disk, held / control",
    ]
    rows = []
    pairs = [(p["held"], p["control"]) for run in runs for p in run.get("held_runs") or [_first_pair(run)]]
    for i, (h, c) in enumerate(pairs, 1):
        rows.append(
            [
                str(i),
                f"{h['clean_per_s']:,.0f}/s",
                f"{h['held_ratio']:.2f}",
                f"{h['after_first_10s_ratio']:.2f}",
                f"{h['after_10s_ratio']:.2f}",
                f"{c['held_ratio']:.2f}, {c['after_first_10s_ratio']:.2f}, {c['after_10s_ratio']:.2f}",
                f"{h['longest_statement_ms']:.0f} / {c['longest_statement_ms']:.0f} ms",
                f"{_not_disk(h)} / {_not_disk(c)}",
            ]
        )
    return _table(columns, rows)


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__)
        return 2
    runs: list[dict[str, Any]] = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        runs += data.get("runs", [data])
    bursts = [run for run in runs if "burst" in run]
    if bursts:
        drains = [run["prefilled_c4_whole_run"]["median_per_s"] for run in bursts if "prefilled_c4_whole_run" in run]
        print(f"runs: {len(bursts)}; prefilled medians: {', '.join(f'{d:,.0f}/s' for d in drains)}\n")
        print(burst_table(bursts))
        print()
    print(held_table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
