"""Tasks of the FastAPI example (a module of their own, so a worker imports them without the web app)."""

from __future__ import annotations

import tasklib


@tasklib.task(max_retries=2)
def send_welcome(email: str, name: str = "there") -> str:
    return f"Welcome, {name}! (sent to {email})"
