"""The tables ``python -m bench`` prints from its results."""

from __future__ import annotations

from typing import Any


def print_burst(r: dict[str, Any]) -> None:
    if "burst" not in r:
        return
    ref = r["prefilled_c4"]["per_s"]
    print(f"\nprefilled drain, 1 worker x concurrency 4 (reference, start of run): {ref:,.0f}/s")
    whole = r.get("prefilled_c4_whole_run")
    if whole:
        rates = whole["runs"]
        print(
            f"prefilled drains through the run ({len(rates)}): median {whole['median_per_s']:,.0f}/s,"
            f" {min(rates):,.0f}-{max(rates):,.0f}/s"
        )
    print(
        f"{'burst into idle workers':<28} {'min':>9} {'median':>9} {'min/ref':>8} {'min/run':>8} {'min/beside':>11}"
        f" {'prefilled min/run':>18} {'from creation':>14} {'longest stmt':>13} {'not disk wait':>13}"
        f" {'cpu steal, slowest':>19} {'slowest: first done, longest gap':>33}"
    )
    for key, b in r["burst"].items():
        print(
            f"{key:<28} {b['min_per_s']:>8,.0f}/s {b['median_per_s']:>8,.0f}/s {b['min_ratio']:>8.2f}"
            f" {_ratio(b.get('min_ratio_run')):>8} {_ratio(b.get('min_ratio_beside')):>11}"
            f" {_ratio(b.get('prefilled_beside_min_ratio_run')):>18}"
            f" {b['min_ratio_from_creation']:>14.2f} {b['longest_statement_ms']:>10.0f} ms"
            f" {_disk_ms(b.get('longest_not_disk_ms')):>13} {_share(b.get('cpu_steal_of_slowest')):>19}"
            f" {_disk_ms(b.get('first_completion_ms_of_slowest')):>16}, {_disk_ms(b.get('longest_gap_ms_of_slowest')):>15}"
        )
    if whole:
        print(
            "min/ref: the slowest of five bursts against the three drains at the start of the run; min/run: against"
            " the median of every prefilled drain of the run; min/beside: each burst against the drains just"
            " before and after it (the lowest of five); prefilled min/run: the slowest of the six drains beside the shape's"
            " bursts against the same median, i.e. where the machine's noise alone puts a minimum"
        )
    print_held(r)


def _ratio(value: float | None) -> str:
    """Results recorded before a figure existed have none."""
    return "n/a" if value is None else f"{value:.2f}"


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _disk_ms(value: float | None) -> str:
    """Results recorded before the sampler told disk waits apart have no such figure."""
    return "n/a" if value is None else f"{value:.0f} ms"


def print_held(r: dict[str, Any]) -> None:
    for run in r.get("held_runs", []):
        for label, h in (("held snapshot", run["held"]), ("control, none held", run["control"])):
            print(
                f"{label} ({h['processes']} x {h['concurrency']}): clean {h['clean_per_s']:,.0f}/s, "
                f"middle {h['held_per_s']:,.0f}/s ({h['held_ratio']:.2f}), "
                f"first 10 s after {h['after_first_10s_ratio']:.2f}, "
                f"10-20 s after {h['after_10s_ratio']:.2f}; longest statement {h['longest_statement_ms']:.0f} ms "
                f"(waits {h.get('longest_statement_waits', 'n/a')}; longest not waiting on the disk "
                f"{_disk_ms(h.get('longest_not_disk_ms'))}); "
                f"cpu steal {', '.join(_share(v) for v in h.get('cpu_steal', {}).values()) or 'n/a'}"
            )


def print_retention(r: dict[str, Any]) -> None:
    ret = r.get("retention")
    if not ret:
        return
    print(f"\nprune {ret['finished_rows']:,} old completed rows while {ret['workers']} workers drain {ret['drain_tasks']:,}")
    print(f"{'prune pacing':<28} {'drain ratio min':>16} {'median':>8} {'prune rows/s':>13} {'drain alone':>12}")
    for key, label in (("pause_0", "full speed (tasklib.prune)"), ("pause_1", "paced 50 % (workers)")):
        x = ret["summary"][key]
        print(
            f"{label:<28} {x['min_ratio']:>16.2f} {x['median_ratio']:>8.2f} {x['median_prune_rows_per_s']:>13,.0f}"
            f" {x['median_plain_drain_per_s']:>10,.0f}/s"
        )


def print_dashboard(r: dict[str, Any]) -> None:
    d = r.get("dashboard")
    if not d:
        return
    shapes = d["shapes"]
    labels = list(shapes[0]["pages"])
    heads = [f"{s['rows'] / 1e6:g}M rows, {s['recent_rows'] / 1e6:g}M in 24 h" for s in shapes]
    print(f"\n{'dashboard p50 / p95 (ms)':<36} " + " ".join(f"{h:>26}" for h in heads))
    for label in labels:
        cells = [f"{s['pages'][label]['p50_ms']:.1f} / {s['pages'][label]['p95_ms']:.1f}" for s in shapes]
        print(f"{label:<36} " + " ".join(f"{c:>26}" for c in cells))
    print(f"{'first overview after start':<36} " + " ".join(f"{s['first_overview_ms']:>23.0f} ms" for s in shapes))
    loads = [s["overview_while_loading"] for s in shapes]
    cells = [f"{x['refreshes']} x, p95 {x['p95_ms']:.0f} ms" for x in loads]
    print(f"{'overview while the day loads':<36} " + " ".join(f"{c:>26}" for c in cells))
    load = d["polling_load"]
    print(
        f"\npolling load: {load['tabs']} tabs, {load['workers']} draining {load['tasks']:,} tasks"
        f" ({load['drained_per_s']:,.0f}/s): {load['errors_5xx_or_transport']} errors;"
        f" PostgreSQL CPU {load['postgres_cpu_seconds_per_minute_per_tab']:.2f} s/min per tab"
    )
    for partial, p in load["partials"].items():
        print(f"  {partial:<34} p50 {p['p50_ms']:.1f} ms  p95 {p['p95_ms']:.1f} ms  {p['status']}")
