"""Ports and readiness for tests and benchmarks that start real servers."""

from __future__ import annotations

import socket

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(base_url: str, timeout: float = 30) -> None:
    """Until ``/healthz`` answers 200; RuntimeError after ``timeout`` seconds."""
    from tests.workers import wait_for

    def healthy() -> bool:
        try:
            return httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    if not wait_for(healthy, timeout, interval=0.1):
        raise RuntimeError(f"{base_url} did not become healthy within {timeout} s")
