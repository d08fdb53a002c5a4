"""Dashboard response times on a large table generated with generate_series."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.common import percentiles, tasklib_process
from tests.net import free_port, wait_healthy

ROOT = Path(__file__).resolve().parent.parent

# A realistic mix: mostly completed, some failed/cancelled, a backlog of pending, a few running;
# 20 task names, created over the last 30 days, 10 % tagged.
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
FROM generate_series(1, %(rows)s) AS g
CROSS JOIN LATERAL (SELECT now() - (%(rows)s - g) * (interval '30 days' / %(rows)s) AS created) AS c
CROSS JOIN LATERAL (SELECT CASE
    WHEN g %% 100 < 88 THEN 'completed' WHEN g %% 100 < 93 THEN 'failed' WHEN g %% 100 < 95 THEN 'cancelled'
    WHEN g %% 1000 = 999 THEN 'running' ELSE 'pending' END AS state) AS s
"""


def run(url: str, rows: int, repeats: int = 30) -> dict[str, Any]:
    started = time.time()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(GENERATE, {"rows": rows})
        conn.execute("VACUUM ANALYZE tasks")
        sample_id = conn.execute("SELECT id FROM tasks WHERE state = 'failed' LIMIT 1").fetchone()[0]  # type: ignore[index]
        pending_id = conn.execute(
            "SELECT id FROM tasks WHERE state = 'pending' ORDER BY priority, created_at DESC LIMIT 1"
        ).fetchone()[0]  # type: ignore[index]
    generated = time.time() - started
    port = free_port()
    proc = tasklib_process(url, "dashboard", "--port", str(port))
    base = f"http://127.0.0.1:{port}"
    pages = {
        "/": "/",
        "/tasks": "/tasks",
        "/tasks?state=failed&name=…": "/tasks?state=failed&name=app.tasks.job_7",
        "/tasks?tag=batch=b10": "/tasks?tag=batch%3Db10",
        "/tasks/{id} (failed)": f"/tasks/{sample_id}",
        # The worst case for "why isn't it running?": lowest priority, newest, so it counts the
        # whole backlog ahead of it (up to the cap).
        "/tasks/{id} (pending, explained)": f"/tasks/{pending_id}",
        "/partials/overview": "/partials/overview",
        "/partials/tasks": "/partials/tasks",
        "/partials/overview unchanged (204)": None,
        "/metrics": "/metrics",
    }
    results: dict[str, Any] = {}
    try:
        wait_healthy(base)
        with httpx.Client(base_url=base, timeout=30) as client:
            for label, path in pages.items():
                if path is None:
                    html = client.get("/partials/overview").text
                    version = html.split("/partials/overview?v=", 1)[1].split('"', 1)[0]
                    path = f"/partials/overview?v={version}"
                times = []
                for i in range(repeats + 3):
                    t = time.perf_counter()
                    response = client.get(path)
                    elapsed = (time.perf_counter() - t) * 1000
                    if response.status_code not in (200, 204):
                        raise RuntimeError(f"{path}: {response.status_code}")
                    if i >= 3:
                        times.append(elapsed)
                results[label] = {**percentiles(times), "status": response.status_code}
    finally:
        proc.terminate()
        proc.wait(30)
    return {"rows": rows, "generate_seconds": generated, "repeats": repeats, "pages": results}
