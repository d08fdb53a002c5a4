"""``tasklib dashboard``: serve the app with uvicorn, refusing an open bind without auth."""

from __future__ import annotations

import ipaddress
import logging

import uvicorn

from tasklib.config import Config, redact_url

log = logging.getLogger("tasklib.dashboard")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(config: Config, *, host: str, port: int, auth: str | None, insecure: bool) -> int:
    if auth is not None and ":" not in auth:
        raise SystemExit("tasklib: --auth must be user:password")
    if not is_loopback(host) and not auth and not insecure:
        raise SystemExit(
            f"tasklib: refusing to serve the dashboard on {host} without authentication: "
            "pass --auth user:password (or set TASKLIB_DASHBOARD_AUTH), or --insecure if a proxy in front "
            "already authenticates"
        )
    from dashboard.app import create_app

    app = create_app(config, auth=auth)
    log.info("dashboard on http://%s:%d/ (database %s)", host, port, redact_url(config.resolved_database_url()))
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    return 0
