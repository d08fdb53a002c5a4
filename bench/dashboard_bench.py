"""Dashboard response times on large tables, and what polling tabs cost PostgreSQL under load.

Two data shapes, both generated with generate_series (run ``VACUUM ANALYZE`` after, as autovacuum
would): a million rows all finished within the last 24 h, and five million of which a million in
the last 24 h (the rest spread over the 30 days before). Rows spread over 30 days would hide the
cost of "the last day" aggregates, so the shapes put the day's traffic where users have it.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
import psycopg

import tasklib
from bench import tasks as btasks
from bench.burst import running_workers
from bench.common import percentiles, tasklib_process, truncate
from tests.net import free_port, wait_healthy

ROOT = Path(__file__).resolve().parent.parent
#: Longer than Monitor.OVERVIEW_SHARE_SECONDS: each overview request measured computes its own.
SHARE_GAP = 0.55

# A realistic mix: mostly completed, some failed/cancelled, a backlog of pending, a few running; 20 task
# names, 10 % tagged. Row g is created at `created`: the newest %(recent)s rows within the last 24 h,
# older ones over the 30 days before.
GENERATE = """
INSERT INTO tasks (id, name, args, kwargs, state, result, error, retry_count, max_retries, scheduled_at,
                   started_at, completed_at, created_at, worker_id, locked_until, priority, tags)
SELECT gen_random_uuid(),
       'app.tasks.job_' || (g %% 20),
       '[]', jsonb_build_object('n', g, 'email', 'user' || g || '@example.com'),
       s.state,
       CASE WHEN s.state = 'completed' THEN to_jsonb(g) END,
       CASE WHEN s.state = 'failed' THEN 'Traceback (most recent call last):\n  ...\nValueError: bad input ' || g END,
       CASE WHEN s.state = 'failed' THEN 3 ELSE 0 END, 3,
       c.created, CASE WHEN s.state <> 'pending' THEN c.created + interval '1 second' END,
       CASE WHEN s.state IN ('completed', 'failed', 'cancelled') THEN c.created + interval '2 seconds' END,
       c.created,
       CASE WHEN s.state <> 'pending' THEN 'bench-worker-' || (g %% 4) END,
       CASE WHEN s.state = 'running' THEN now() + interval '10 minutes' END,
       (g %% 3) - 1,
       CASE WHEN g %% 10 = 0 THEN jsonb_build_object('batch', 'b' || (g %% 100)) END
FROM generate_series(%(start)s, %(stop)s) AS g
CROSS JOIN LATERAL (SELECT CASE
    WHEN g > %(rows)s - %(recent)s
        THEN now() - interval '10 seconds' - (%(rows)s - g) * (CAST(%(span)s AS interval) / %(recent)s)
    ELSE now() - interval '1 day' - (%(rows)s - %(recent)s - g) * (interval '30 days' / greatest(%(rows)s - %(recent)s, 1))
    END AS created) AS c
CROSS JOIN LATERAL (SELECT CASE
    WHEN g %% 100 < 88 THEN 'completed' WHEN g %% 100 < 93 THEN 'failed' WHEN g %% 100 < 95 THEN 'cancelled'
    WHEN g %% 10000 = 9999 THEN 'running' WHEN g %% 1000 = 999 THEN 'pending' ELSE 'completed' END AS state) AS s
"""
CHUNK = 1_000_000


def generate(url: str, rows: int, recent: int, span: str = "23 hours 59 minutes") -> float:
    """``rows`` tasks, the newest ``recent`` of them created over the last ``span``, analyzed."""
    started = time.time()
    truncate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        for start in range(1, rows + 1, CHUNK):
            stop = min(start + CHUNK - 1, rows)
            conn.execute(GENERATE, {"start": start, "stop": stop, "rows": rows, "recent": recent, "span": span})
        conn.execute("VACUUM ANALYZE tasks")
    return time.time() - started


def _dashboard(url: str) -> tuple[Any, str]:
    port = free_port()
    proc = tasklib_process(url, "dashboard", "--port", str(port))
    base = f"http://127.0.0.1:{port}"
    wait_healthy(base, timeout=60)
    return proc, base


def _version(html: str) -> str | None:
    marker = "v="
    head = html.split('hx-get="', 1)
    if len(head) < 2:
        return None
    url = head[1].split('"', 1)[0].replace("&amp;", "&")
    return url.split(marker, 1)[1].split("&", 1)[0] if marker in url else None


def pages(url: str, rows: int, recent: int, repeats: int = 30) -> dict[str, Any]:
    """p50/p95 of every page, partial and /metrics from a dashboard started on this table (so the
    overview's first-day backfill is part of what is measured, as after any deploy)."""
    generated = generate(url, rows, recent)
    with psycopg.connect(url, autocommit=True) as conn:
        sample_id = conn.execute("SELECT id FROM tasks WHERE state = 'failed' LIMIT 1").fetchone()[0]  # type: ignore[index]
        pending_id = conn.execute(
            "SELECT id FROM tasks WHERE state = 'pending' ORDER BY priority, created_at DESC LIMIT 1"
        ).fetchone()[0]  # type: ignore[index]
    proc, base = _dashboard(url)
    targets = {
        "/": "/",
        "/tasks": "/tasks",
        "/tasks?sort=oldest": "/tasks?sort=oldest",
        "/tasks?state=failed&name=…": "/tasks?state=failed&name=app.tasks.job_7",
        "/tasks?tag=batch=b10": "/tasks?tag=batch%3Db10",
        # A tag on 1 % of the rows that no failed row holds: the walk of failed rows cannot prove the
        # page empty, so the tag index's query answers (it reads every row holding the tag).
        "/tasks?state=failed&tag=batch=b10": "/tasks?state=failed&tag=batch%3Db10",
        # A tag no row holds: every state's walk runs its full length, then the tag index finds nothing.
        "/tasks?tag=batch=none": "/tasks?tag=batch%3Dnone",
        "/tasks/{id} (failed)": f"/tasks/{sample_id}",
        # The worst case for "why isn't it running?": lowest priority, newest, so it counts the
        # whole backlog ahead of it (up to the cap).
        "/tasks/{id} (pending, explained)": f"/tasks/{pending_id}",
        "/workers": "/workers",
        "/partials/overview": "/partials/overview",
        "/partials/tasks": "/partials/tasks",
        "/partials/workers": "/partials/workers",
        "/partials/overview unchanged (204)": None,
        "/metrics": "/metrics",
    }
    results: dict[str, Any] = {}
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            # After a start the overview loads the day's figures one slice per refresh: time those
            # refreshes (spaced past the overview's sharing window, so each one computes) until done.
            loading: list[float] = []
            while len(loading) < 500:
                t = time.perf_counter()
                html = client.get("/partials/overview").text
                loading.append((time.perf_counter() - t) * 1000)
                if "loaded the last" not in html:
                    break
                time.sleep(SHARE_GAP)
            for label, path in targets.items():
                if path is None:
                    for _ in range(100):  # until the day's figures have loaded and the version settles
                        version = _version(client.get("/partials/overview").text)
                        if client.get(f"/partials/overview?v={version}").status_code == 204:
                            break
                    path = f"/partials/overview?v={version}"
                times = []
                statuses: Counter[int] = Counter()
                shared = path.startswith(("/partials/overview", "/?")) or path == "/"
                for _ in range(repeats):
                    if shared:
                        time.sleep(SHARE_GAP)  # measure a computed overview, not one shared between tabs
                    t = time.perf_counter()
                    response = client.get(path)
                    times.append((time.perf_counter() - t) * 1000)
                    statuses[response.status_code] += 1
                if set(statuses) - {200, 204}:
                    raise RuntimeError(f"{path}: {dict(statuses)}")
                results[label] = {**percentiles(times), "status": dict(statuses)}
    finally:
        proc.terminate()
        proc.wait(30)
    return {
        "rows": rows,
        "recent_rows": recent,
        "generate_seconds": generated,
        "repeats": repeats,
        "first_overview_ms": loading[0],
        "overview_while_loading": {**percentiles(loading + loading[-1:]), "refreshes": len(loading)},
        "pages": results,
    }


def _backend_cpu_seconds(url: str) -> float:
    """CPU time (user + system) of the dashboard's PostgreSQL backends, from /proc (same host)."""
    tick = os.sysconf("SC_CLK_TCK")
    with psycopg.connect(url, autocommit=True) as conn:
        pids = [
            r[0]
            for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'tasklib-dashboard'").fetchall()
        ]
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


TABS = {"/partials/overview": 8, "/partials/tasks": 8, "/partials/workers": 2, "detail": 2}


def polling_load(url: str, tasks: int = 50_000, processes: int = 4, concurrency: int = 4) -> dict[str, Any]:
    """20 tabs' worth of htmx polling (each tab polls its partial every 2 s with the version it has,
    as the browser does) while ``processes`` workers drain ``tasks`` submitted in one burst."""
    truncate(url)
    tasklib.init(tasklib.Config(database_url=url))
    proc, base = _dashboard(url)
    latencies: dict[str, list[float]] = defaultdict(list)
    statuses: dict[str, Counter[int]] = defaultdict(Counter)
    stop = threading.Event()
    detail_id = tasklib.submit_task_sync(btasks.noop, i=-1, delay_seconds=3600)

    def tab(partial: str, offset: float) -> None:
        path = f"/partials/tasks/{detail_id}" if partial == "detail" else partial
        version = None
        time.sleep(offset)
        with httpx.Client(base_url=base, timeout=30) as client:
            while not stop.is_set():
                t = time.perf_counter()
                try:
                    response = client.get(path, params={"v": version} if version else None)
                except httpx.HTTPError:
                    statuses[partial][0] += 1
                    continue
                latencies[partial].append((time.perf_counter() - t) * 1000)
                statuses[partial][response.status_code] += 1
                if response.status_code == 200:
                    version = _version(response.text) or version
                stop.wait(max(0.0, 2.0 - (time.perf_counter() - t)))

    threads = []
    n = 0
    for partial, count in TABS.items():
        for _ in range(count):
            threads.append(threading.Thread(target=tab, args=(partial, (n % 20) * 0.1), daemon=True))
            n += 1
    try:
        with running_workers(url, processes, concurrency):
            for thread in threads:
                thread.start()
            time.sleep(4)  # every tab has polled twice
            cpu_before, started = _backend_cpu_seconds(url), time.monotonic()
            for start in range(0, tasks, 1000):
                tasklib.submit_many_sync(btasks.noop, [{"i": i} for i in range(start, min(start + 1000, tasks))])
            with psycopg.connect(url, autocommit=True) as conn:
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline:
                    done = conn.execute("SELECT count(*) FROM tasks WHERE state = 'completed'").fetchone()[0]  # type: ignore[index]
                    if done >= tasks:
                        break
                    time.sleep(0.2)
            drain_seconds = time.monotonic() - started
            cpu = _backend_cpu_seconds(url) - cpu_before
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        proc.terminate()
        proc.wait(30)
    per_partial = {partial: {**percentiles(latencies[partial]), "status": dict(statuses[partial])} for partial in TABS}
    errors = sum(c for s in statuses.values() for code, c in s.items() if code == 0 or code >= 500)
    minutes = drain_seconds / 60
    return {
        "tabs": sum(TABS.values()),
        "tasks": tasks,
        "workers": f"{processes} x concurrency {concurrency}",
        "drain_seconds": drain_seconds,
        "drained_per_s": tasks / drain_seconds,
        "errors_5xx_or_transport": errors,
        "partials": per_partial,
        "postgres_cpu_seconds_per_minute": cpu / minutes,
        "postgres_cpu_seconds_per_minute_per_tab": cpu / minutes / sum(TABS.values()),
    }


def run(url: str, shapes: list[tuple[int, int]], load_tasks: int = 50_000) -> dict[str, Any]:
    results: dict[str, Any] = {"shapes": []}
    for rows, recent in shapes:
        print(f"dashboard: {rows:,} rows, {recent:,} in the last 24 h…", flush=True)
        results["shapes"].append(pages(url, rows, recent))
    print(f"dashboard: 20 polling tabs while 4 workers drain {load_tasks:,} tasks…", flush=True)
    results["polling_load"] = polling_load(url, load_tasks)
    return results
