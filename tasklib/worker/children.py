"""The worker's child processes (forked by ``forkserver``) and the parent's side of their pipes."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from tasklib.worker.forkserver import ForkServer
from tasklib.worker.jobs import Job
from tasklib.worker.messages import FromChild, ToChild, decode_available, encode

log = logging.getLogger("tasklib.worker")


class KillReason(StrEnum):
    """Why the worker killed a child (what its death then means for the task it was running)."""

    TIMEOUT = "timeout"  # the task ran past its timeout: the attempt failed
    CANCEL = "cancel"  # the task was cancelled or taken over: nothing to record
    SHUTDOWN = "shutdown"  # the worker is stopping: the task goes back to pending, no attempt counted


@dataclass(eq=False)
class Child:
    """One child process and the parent's ends of its pipes. ``outstanding`` is what it was sent, in
    order; in a sync child the first entry is the one running now, in an async child all are."""

    pid: int
    inbox_fd: int  # parent's write end of the child's input
    outbox_fd: int  # parent's read end of the child's output
    status_fd: int = -1  # the fork server writes the child's return code here when it exits
    ready: bool = False
    outstanding: deque[Job] = field(default_factory=deque)
    current_since: float = 0.0  # monotonic time the head of ``outstanding`` started
    kill_reason: KillReason | None = None
    read_buffer: bytearray = field(default_factory=bytearray)
    write_buffer: bytearray = field(default_factory=bytearray)
    dead: bool = False

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


class ChildEvents(Protocol):
    """What a pool reports to the executor that owns it."""

    def on_message(self, child: Child, message: FromChild) -> None: ...

    def on_death(self, child: Child, reason: str) -> None: ...


class ChildPool:
    """Starts, feeds and replaces ``size`` children, reporting their messages and deaths to ``events``."""

    def __init__(
        self,
        size: int,
        server: ForkServer,
        events: ChildEvents,
        default_memory_limit_mb: int | None = None,
        run_async: bool = False,
    ) -> None:
        self.size = size
        self.server = server
        self.run_async = run_async  # children of ``async_child`` (many tasks at once) instead of ``child``
        self.default_memory_limit_mb = default_memory_limit_mb
        self.children: list[Child] = []
        self._events = events
        self._loop: asyncio.AbstractEventLoop | None = None
        self._respawn_delay = 0.0
        self.closing = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for _ in range(self.size):
            self._spawn()

    def _spawn(self) -> Child | None:
        assert self._loop is not None
        modules = self.server.modules
        args: tuple[Any, ...] = (modules,) if self.run_async else (modules, self.default_memory_limit_mb)
        try:
            pid, inbox_fd, outbox_fd, status_fd = self.server.spawn(self.run_async, args)
        except OSError as exc:
            # The fork server is gone (killed by hand, say): start a new one, then try again.
            self._retry_later(f"cannot fork a child ({exc})")
            self._loop.create_task(self.server.ensure_running())
            return None
        os.set_blocking(inbox_fd, False)
        os.set_blocking(outbox_fd, False)
        child = Child(pid, inbox_fd, outbox_fd, status_fd)
        self.children.append(child)
        self._loop.add_reader(outbox_fd, self._readable, child)
        self._loop.add_reader(status_fd, self._exited, child)
        return child

    def outstanding(self) -> int:
        """Jobs sent to children and not answered yet."""
        return sum(len(child.outstanding) for child in self.children)

    def kill_busy(self, reason: KillReason) -> None:
        """Kill every child that holds a job."""
        for child in self.children:
            if child.outstanding:
                child.kill(reason)

    def send(self, child: Child, message: ToChild) -> None:
        child.write_buffer += encode(message)
        self._flush_writes(child)

    def _flush_writes(self, child: Child) -> None:
        assert self._loop is not None
        fd = child.inbox_fd
        try:
            while child.write_buffer:
                written = os.write(fd, child.write_buffer)
                del child.write_buffer[:written]
        except BlockingIOError:
            self._loop.add_writer(fd, self._flush_writes, child)
            return
        except (BrokenPipeError, OSError):
            child.write_buffer.clear()  # the child is gone; its status pipe reports that
        self._loop.remove_writer(fd)

    def _readable(self, child: Child) -> None:
        try:
            chunk = os.read(child.outbox_fd, 1 << 18)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            assert self._loop is not None
            self._loop.remove_reader(child.outbox_fd)
            return
        child.read_buffer += chunk
        for message in decode_available(child.read_buffer):
            self._events.on_message(child, message)  # type: ignore[arg-type]

    def _exited(self, child: Child) -> None:
        assert self._loop is not None
        self._loop.remove_reader(child.status_fd)
        try:
            status = os.read(child.status_fd, 4)
        except OSError:
            status = b""
        # Results written just before the exit are still in the pipe: read them first.
        try:
            while True:
                chunk = os.read(child.outbox_fd, 1 << 18)
                if not chunk:
                    break
                child.read_buffer += chunk
        except (BlockingIOError, OSError):
            pass
        for message in decode_available(child.read_buffer):
            self._events.on_message(child, message)  # type: ignore[arg-type]
        self._discard(child)
        if len(status) == 4:
            code = int.from_bytes(status, "big", signed=True)
            reason = f"killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        else:
            reason = "died with its fork server"
        self._events.on_death(child, reason)
        if self.closing:
            return
        if child.ready:
            self._respawn_delay = 0.0
            self._spawn()
            return
        # It died before it could take work: its imports fail. Retry, slower each time, instead of
        # forking in a hot loop; its traceback is on the worker's stderr.
        self._retry_later(f"a child process failed to start ({reason}); check that the task modules import cleanly")

    def _retry_later(self, why: str) -> None:
        assert self._loop is not None
        self._respawn_delay = min(max(self._respawn_delay * 2, 0.5), 30.0)
        log.error("%s. Retrying in %.1fs", why, self._respawn_delay)
        self._loop.call_later(self._respawn_delay, self._respawn_later)

    def _respawn_later(self) -> None:
        if not self.closing and len(self.children) < self.size:
            self._spawn()

    def _discard(self, child: Child) -> None:
        assert self._loop is not None
        child.dead = True
        for fd in (child.outbox_fd, child.inbox_fd, child.status_fd):
            try:
                self._loop.remove_reader(fd)
                self._loop.remove_writer(fd)
            except (OSError, ValueError):
                pass
            try:
                os.close(fd)
            except OSError:
                pass
        if child in self.children:
            self.children.remove(child)

    async def close(self, timeout: float = 5.0) -> None:
        """Ask idle children to exit (close their input), then kill what is left."""
        self.closing = True
        assert self._loop is not None
        for child in list(self.children):
            try:
                self._loop.remove_writer(child.inbox_fd)
                os.close(child.inbox_fd)
            except (OSError, ValueError):
                pass
            child.inbox_fd = -1
        deadline = time.monotonic() + timeout
        while self.children and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for child in list(self.children):
            child.kill(KillReason.SHUTDOWN)
        while self.children and time.monotonic() < deadline + 2:
            await asyncio.sleep(0.02)
