"""``tasklib dashboard``: serve the app with uvicorn, refusing an open bind without auth."""

from __future__ import annotations

import ipaddress
import logging

import uvicorn

from tasklib.config import Config, redact_url

log = logging.getLogger("tasklib.dashboard")


LOOPBACK_NAMES = ["127.0.0.1", "localhost", "[::1]"]


def loopback_hosts(port: int) -> list[str]:
    """Host header values a browser sends for this server on loopback (Litestar matches them whole)."""
    return [*LOOPBACK_NAMES, *(f"{name}:{port}" for name in LOOPBACK_NAMES)]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(config: Config, *, host: str, port: int, auth: str | None) -> int:
    """Serve until stopped; ``tasklib dashboard`` has checked the bind against ``auth`` already."""
    from dashboard.app import create_app

    # On loopback without auth, accept only loopback Host names: a page on another site that rebinds
    # its DNS name to 127.0.0.1 must not be able to read task data.
    hosts = loopback_hosts(port) if is_loopback(host) and not auth else None
    app = create_app(config, auth=auth, allowed_hosts=hosts)
    log.info("dashboard on http://%s:%d/ (database %s)", host, port, redact_url(config.resolved_database_url()))
    # log_config=None: uvicorn logs through the root logger, in the format `tasklib` set up.
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, log_config=None)
    return 0
