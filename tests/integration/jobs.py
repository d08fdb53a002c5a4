"""Task functions used by the integration tests. Each run appends a line to $TASKLIB_TEST_LOG."""

from __future__ import annotations

import datetime
import decimal
import enum
import os
import time
import uuid

from pydantic import BaseModel

import tasklib


def record(*parts: object) -> None:
    path = os.environ.get("TASKLIB_TEST_LOG")
    if path:
        line = " ".join(str(p) for p in parts) + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())  # O_APPEND: lines from many processes never interleave
        finally:
            os.close(fd)


@tasklib.task
def send_email(to: str, subject: str, body: str) -> bool:
    record("send_email", to)
    return True


@tasklib.task
def mark(key: str, sleep: float = 0.0) -> str:
    record("start", key, os.getpid(), time.time())
    if sleep:
        time.sleep(sleep)
    record("done", key, os.getpid(), time.time())
    return key


@tasklib.task(max_retries=3)
def flaky(key: str) -> None:
    record("attempt", key, time.time())
    raise RuntimeError(f"flaky {key} failed")


@tasklib.task
def hard_exit(code: int = 1) -> None:
    os._exit(code)


@tasklib.task
def unstorable() -> object:
    return object()


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Point(BaseModel):
    x: int
    y: int


@tasklib.task
def rich(when: datetime.datetime, ident: uuid.UUID, amount: decimal.Decimal, color: Color, point: Point) -> dict:
    assert isinstance(when, datetime.datetime)
    assert isinstance(ident, uuid.UUID)
    assert isinstance(amount, decimal.Decimal)
    assert isinstance(color, Color)
    assert isinstance(point, Point)
    return {"when": when, "ident": ident, "amount": amount, "color": color, "point": point}


@tasklib.task
def env_value(variable: str) -> str | None:
    """The child's view of an environment variable."""
    return os.environ.get(variable)


@tasklib.task(max_retries=1)
async def amark(key: str, sleep: float = 0.0, fail: bool = False) -> str:
    """An async task: awaits, records, and fails on request (one retry)."""
    import asyncio

    record("start", key, os.getpid(), time.time())
    await asyncio.sleep(sleep)
    if fail:
        raise RuntimeError(f"async failure {key}")
    record("done", key, os.getpid(), time.time())
    return f"async {key}"


@tasklib.task
async def astubborn(key: str, seconds: float, how: str = "block") -> str:
    """An async task that cannot be stopped from inside its loop: it blocks the loop with sync code
    (``block``), or catches every cancellation and keeps going (``swallow``)."""
    import asyncio

    record("start", key, os.getpid(), time.time())
    if how == "block":
        time.sleep(seconds)
    else:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                await asyncio.sleep(end - time.monotonic())
            except asyncio.CancelledError:
                record("ignored-cancel", key, os.getpid(), time.time())
    record("done", key, os.getpid(), time.time())
    return key


@tasklib.task
async def acrash(key: str, after: float = 0.2) -> None:
    """An async task that takes its whole process down (as a crash in native code would)."""
    import asyncio

    record("start", key, os.getpid(), time.time())
    await asyncio.sleep(after)
    os._exit(3)
