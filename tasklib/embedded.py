"""The embedded local PostgreSQL used when no database URL is configured (placeholder until built)."""

from __future__ import annotations


def ensure_embedded_url() -> str:
    raise RuntimeError("no database URL configured: set TASKLIB_DATABASE_URL or pass database_url")


def cli(action: str) -> int:
    raise SystemExit("the embedded PostgreSQL is not available yet")
