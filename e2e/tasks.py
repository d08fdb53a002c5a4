"""Tasks the browser tests submit. ``needs_file`` fails until its file exists: a fix a user applies."""

from __future__ import annotations

import os
import time

import tasklib


@tasklib.task(max_retries=0)
def needs_file(path: str) -> str:
    if not os.path.exists(path):
        raise FileNotFoundError(f"expected input file {path} is missing")
    return "found it"


@tasklib.task
def echo(text: str) -> str:
    return text


@tasklib.task(queue="emails")
def send(text: str) -> str:
    time.sleep(0.02)
    return text


@tasklib.task(concurrency_limit=1, rate_limit="5/s")
def report(text: str) -> str:
    return text
