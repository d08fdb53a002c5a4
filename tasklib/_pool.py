"""The worker's pre-forked child processes and the parent's side of talking to them."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from tasklib._protocol import decode_available, encode

log = logging.getLogger("tasklib.worker")


class KillReason(StrEnum):
    """Why the worker killed a child (what its death then means for the task it was running)."""

    TIMEOUT = "timeout"  # the task ran past its timeout: the attempt failed
    CANCEL = "cancel"  # the task was cancelled or taken over: nothing to record
    SHUTDOWN = "shutdown"  # the worker is stopping: the task goes back to pending, no attempt counted


@dataclass(slots=True, eq=False)
class Job:
    """A claimed task as the worker holds it (the columns it needs, nothing more)."""

    id: UUID
    name: str
    kwargs_json: str
    retry_count: int
    max_retries: int
    timeout_seconds: int | None
    priority: int
    scheduled_at: datetime
    started_at: datetime  # identifies the claim: finishing requires the row to still carry it
    seq: int = 0  # the worker's own number for this job, used on the pipes to its children
    cancelled: bool = False
    recalling: bool = False  # asked its child to give it back (not started yet)
    # Async children run everything they are sent at once, so each job keeps its own times.
    sent_at: float = 0.0  # monotonic time it was sent to an async child
    cancel_sent_at: float | None = None  # when its async child was asked to cancel it
    overdue: bool = False  # past its timeout and the grace after it: its child is being killed

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        """From a CLAIM_NEXT row (named columns)."""
        return cls(
            id=row["id"],
            name=row["name"],
            kwargs_json=row["kwargs_json"],
            retry_count=row["retry_count"],
            max_retries=row["max_retries"],
            timeout_seconds=row["timeout_seconds"],
            priority=row["priority"],
            scheduled_at=row["scheduled_at"],
            started_at=row["started_at"],
        )

    @property
    def queue_order(self) -> tuple[int, datetime, UUID]:
        """The order tasks start in: priority first, then due time, then id (FIFO within a priority).
        Python orders UUIDs as PostgreSQL does (by their 128-bit value)."""
        return (-self.priority, self.scheduled_at, self.id)


@dataclass(eq=False)
class Child:
    """One child process and its pipes. ``outstanding`` is what it was sent, in order; the first
    entry is the one running now."""

    process: Any
    inbox_parent: Any  # parent's write end (Connection)
    outbox_parent: Any  # parent's read end (Connection)
    ready: bool = False
    outstanding: deque[Job] = field(default_factory=deque)
    current_since: float = 0.0  # monotonic time the head of ``outstanding`` started
    kill_reason: KillReason | None = None
    read_buffer: bytearray = field(default_factory=bytearray)
    write_buffer: bytearray = field(default_factory=bytearray)
    dead: bool = False

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    @property
    def current(self) -> Job | None:
        return self.outstanding[0] if self.outstanding else None

    def kill(self, reason: KillReason) -> None:
        if self.dead:
            return
        self.kill_reason = self.kill_reason or reason
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


#: ChildPools running in this process. multiprocessing has one fork server per process, started by
#: the first pool and reused by every later one; its children inherit the environment and the
#: preloaded modules of the moment it started. A pool that starts while no other runs restarts it,
#: so a second worker in the same process (test suites do this, one database each) gets children
#: that reflect the process as it is now, not as it was when the first worker ran.
_active_pools = 0
_active_lock = threading.Lock()


def _restart_fork_server() -> None:
    """Stop this process's fork server (the next child starts a new one). Only while no pool runs:
    the server's children die with it."""
    from multiprocessing import forkserver

    forkserver._forkserver._stop()  # documented as for tests; public API has no way to restart it


def _context(modules: list[str], preload_main: bool) -> multiprocessing.context.BaseContext:
    """A forkserver: the server imports the task modules once and forks each child from that clean
    state, so a replacement child starts in milliseconds and never inherits the worker's sockets."""
    ctx = multiprocessing.get_context("forkserver")
    # "__main__" re-runs the worker's script (minus its ``if __name__ == "__main__"`` block) so tasks
    # defined in that script exist in the children too.
    preload = ["tasklib._forkserver_init", "tasklib._child", "tasklib._async_child", *modules]
    ctx.set_forkserver_preload(["__main__", *preload] if preload_main else preload)
    return ctx


class ChildPool:
    """Starts, feeds and replaces ``size`` children. Callbacks report results and deaths to the worker."""

    def __init__(
        self,
        size: int,
        modules: list[str],
        on_message: Callable[[Child, Any], None],
        on_death: Callable[[Child, str], None],
        preload_main: bool = False,
        default_memory_limit_mb: int | None = None,
        run_async: bool = False,
    ) -> None:
        self.size = size
        self.run_async = run_async  # children of ``_async_child`` (many tasks at once) instead of ``_child``
        self.modules = modules
        self.default_memory_limit_mb = default_memory_limit_mb
        self.children: list[Child] = []
        self._ctx = _context(modules, preload_main)
        self._on_message = on_message
        self._on_death = on_death
        self._loop: asyncio.AbstractEventLoop | None = None
        self._respawn_delay = 0.0
        self.closing = False
        self._counted = False  # counted in _active_pools (between start() and close())

    def start(self) -> None:
        global _active_pools
        self._loop = asyncio.get_running_loop()
        with _active_lock:
            if _active_pools == 0:
                _restart_fork_server()
            _active_pools += 1
        self._counted = True
        for _ in range(self.size):
            self._spawn()

    def _spawn(self) -> Child:
        from tasklib._async_child import async_child_main
        from tasklib._child import child_main

        assert self._loop is not None
        inbox_child, inbox_parent = self._ctx.Pipe(duplex=False)
        outbox_parent, outbox_child = self._ctx.Pipe(duplex=False)
        if self.run_async:
            target: Callable[..., None] = async_child_main
            args: tuple[Any, ...] = (inbox_child, outbox_child, self.modules)
        else:
            target, args = child_main, (inbox_child, outbox_child, self.modules, self.default_memory_limit_mb)
        process = self._ctx.Process(
            target=target, args=args, name="tasklib-async-child" if self.run_async else "tasklib-child", daemon=True
        )
        process.start()
        inbox_child.close()
        outbox_child.close()
        os.set_blocking(inbox_parent.fileno(), False)
        os.set_blocking(outbox_parent.fileno(), False)
        child = Child(process, inbox_parent, outbox_parent)
        self.children.append(child)
        self._loop.add_reader(outbox_parent.fileno(), self._readable, child)
        self._loop.add_reader(process.sentinel, self._exited, child)
        return child

    def send(self, child: Child, message: Any) -> None:
        child.write_buffer += encode(message)
        self._flush_writes(child)

    def _flush_writes(self, child: Child) -> None:
        assert self._loop is not None
        fd = child.inbox_parent.fileno()
        try:
            while child.write_buffer:
                written = os.write(fd, child.write_buffer)
                del child.write_buffer[:written]
        except BlockingIOError:
            self._loop.add_writer(fd, self._flush_writes, child)
            return
        except (BrokenPipeError, OSError):
            child.write_buffer.clear()  # the child is gone; its sentinel reports that
        self._loop.remove_writer(fd)

    def _readable(self, child: Child) -> None:
        try:
            chunk = os.read(child.outbox_parent.fileno(), 1 << 18)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            assert self._loop is not None
            self._loop.remove_reader(child.outbox_parent.fileno())
            return
        child.read_buffer += chunk
        for message in decode_available(child.read_buffer):
            self._on_message(child, message)

    def _exited(self, child: Child) -> None:
        assert self._loop is not None
        self._loop.remove_reader(child.process.sentinel)
        # Results written just before the exit are still in the pipe: read them first.
        try:
            while True:
                chunk = os.read(child.outbox_parent.fileno(), 1 << 18)
                if not chunk:
                    break
                child.read_buffer += chunk
        except (BlockingIOError, OSError):
            pass
        for message in decode_available(child.read_buffer):
            self._on_message(child, message)
        self._discard(child)
        child.process.join(1)
        code = child.process.exitcode
        if code is not None and code < 0:
            reason = f"killed by signal {signal.Signals(-code).name}"
        else:
            reason = f"exited with code {code}"
        self._on_death(child, reason)
        if self.closing:
            return
        if child.ready:
            self._respawn_delay = 0.0
            self._spawn()
            return
        # It died before it could take work: its imports fail. Retry, slower each time, instead of
        # forking in a hot loop; its traceback is on the worker's stderr.
        self._respawn_delay = min(max(self._respawn_delay * 2, 0.5), 30.0)
        log.error(
            "a child process failed to start (%s); check that the task modules import cleanly. Retrying in %.1fs",
            reason,
            self._respawn_delay,
        )
        self._loop.call_later(self._respawn_delay, self._respawn_later)

    def _respawn_later(self) -> None:
        if not self.closing and len(self.children) < self.size:
            self._spawn()

    def _discard(self, child: Child) -> None:
        assert self._loop is not None
        child.dead = True
        for fd_owner in (child.outbox_parent, child.inbox_parent):
            try:
                self._loop.remove_reader(fd_owner.fileno())
                self._loop.remove_writer(fd_owner.fileno())
            except (OSError, ValueError):
                pass
        if child in self.children:
            self.children.remove(child)
        for conn in (child.inbox_parent, child.outbox_parent):
            try:
                conn.close()
            except OSError:
                pass

    async def close(self, timeout: float = 5.0) -> None:
        """Ask idle children to exit (close their input), then kill what is left."""
        self.closing = True
        global _active_pools
        if self._counted:
            with _active_lock:
                _active_pools -= 1
            self._counted = False
        assert self._loop is not None
        for child in list(self.children):
            try:
                self._loop.remove_writer(child.inbox_parent.fileno())
                child.inbox_parent.close()
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + timeout
        while self.children and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for child in list(self.children):
            child.kill(KillReason.SHUTDOWN)
        while self.children and time.monotonic() < deadline + 2:
            await asyncio.sleep(0.02)
