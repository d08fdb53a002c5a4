"""Each worker's own fork server: imports the task modules once, then forks every child from there.

Children get the worker's environment of the moment it started, and share the server's imported
pages. How it works, and why not multiprocessing's: docs/design/children.md.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import json
import logging
import os
import runpy
import selectors
import signal
import socket
import struct
import subprocess
import sys
import traceback
from typing import Any

log = logging.getLogger("tasklib.worker")
_PID = struct.Struct("!i")
#: The server's ``-c`` program: the worker's ``sys.path`` first, so tasklib and the task modules
#: import from where the worker found them.
_BOOT = (
    "import sys, json; a = json.loads(sys.argv[1]); sys.path[:] = a['sys_path']; "
    "from tasklib.worker.forkserver import main; main(a)"
)


class ForkServerGone(OSError):
    """The fork server exited (or never started): no child can be forked."""


class ForkServer:
    """The parent's handle on one fork server."""

    def __init__(self, modules: list[str], preload_main: bool = False) -> None:
        self.modules = modules
        self.preload_main = preload_main
        self.process: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._restarting = asyncio.Lock()

    async def start(self) -> None:
        """Start the server and wait (without blocking the loop) until it has imported everything."""
        ours, theirs = socket.socketpair()
        setup: dict[str, Any] = {"fd": theirs.fileno(), "sys_path": sys.path, "modules": self.modules}
        if self.preload_main:
            setup.update(_main_location())
        self.process = subprocess.Popen(
            [sys.executable, *subprocess._args_from_interpreter_flags(), "-c", _BOOT, json.dumps(setup)],  # type: ignore[attr-defined]
            pass_fds=(theirs.fileno(),),
            close_fds=True,
        )
        theirs.close()
        ours.setblocking(False)
        ready = await asyncio.get_running_loop().sock_recv(ours, 1)
        if ready != b"r":
            ours.close()
            raise ForkServerGone(f"the worker's fork server exited while starting (code {self.process.wait()})")
        ours.setblocking(True)
        ours.settimeout(30)
        self._sock = ours

    async def ensure_running(self) -> None:
        """Start a new server if this one died (its children died with it)."""
        async with self._restarting:
            if self.process is not None and self.process.poll() is None and self._sock is not None:
                return
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            log.warning("the worker's fork server exited; starting a new one")
            await self.start()

    def spawn(self, run_async: bool, args: tuple[Any, ...]) -> tuple[int, int, int, int]:
        """Fork a child; returns (pid, write fd to its input, read fd of its output, status fd)."""
        if self._sock is None:
            raise ForkServerGone("the worker's fork server is not running")
        inbox_r, inbox_w = os.pipe()
        outbox_r, outbox_w = os.pipe()
        status_r, status_w = os.pipe()
        try:
            request = json.dumps({"async": run_async, "args": args}).encode()
            socket.send_fds(self._sock, [request], [inbox_r, outbox_w, status_w])
            reply = self._sock.recv(_PID.size)
            if len(reply) != _PID.size:
                raise ForkServerGone("the worker's fork server exited")
        except BaseException:
            for fd in (inbox_w, outbox_r, status_r):
                os.close(fd)
            raise
        finally:
            for fd in (inbox_r, outbox_w, status_w):
                os.close(fd)
        (pid,) = _PID.unpack(reply)
        return pid, inbox_w, outbox_r, status_r

    def close(self) -> None:
        """Closing our end makes the server exit; its remaining children die with it."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self.process is not None:
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _main_location() -> dict[str, str]:
    """Where the worker's ``__main__`` comes from, so the server can run it as ``__mp_main__``."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name and spec.name != "__main__":
        return {"main_module": spec.name.removesuffix(".__main__")}
    path = getattr(main, "__file__", None)
    return {"main_path": os.path.abspath(path)} if path else {}


# -- the server side ------------------------------------------------------------------------------


def _preload(setup: dict[str, Any]) -> None:
    # Imported once here, shared by every child.
    import tasklib.worker.async_child
    import tasklib.worker.child  # noqa: F401

    try:
        # The worker's script (minus its ``if __name__ == "__main__"`` block), for tasks defined there.
        if setup.get("main_module"):
            main = runpy.run_module(setup["main_module"], run_name="__mp_main__", alter_sys=True)
            _install_main(main)
        elif setup.get("main_path"):
            _install_main(runpy.run_path(setup["main_path"], run_name="__mp_main__"))
    except BaseException:
        traceback.print_exc()  # the child imports it again and reports it: see child_main
    for module in setup["modules"]:
        try:
            importlib.import_module(module)
        except BaseException:
            traceback.print_exc()


def _install_main(namespace: dict[str, Any]) -> None:
    import types

    module = types.ModuleType("__mp_main__")
    module.__dict__.update(namespace)
    sys.modules["__main__"] = sys.modules["__mp_main__"] = module


def main(setup: dict[str, Any]) -> None:
    """The server's loop (runs in its own interpreter, started by ``ForkServer.start``)."""
    from tasklib.worker.child import _die_with_parent

    # Service managers signal the whole process group; the worker alone decides when task code
    # stops, so the server (the parent of every child) must outlive SIGTERM and Ctrl+C.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    sock = socket.socket(fileno=setup["fd"])
    _preload(setup)
    gc.collect()
    gc.freeze()
    statuses: dict[int, int] = {}  # child pid -> its status fd
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wake-up fd hears of exits
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    sock.sendall(b"r")
    while True:
        for key, _ in selector.select():
            if key.fileobj == wake_r:
                os.read(wake_r, 4096)
                _reap(statuses)
                continue
            try:
                request, fds, _flags, _addr = socket.recv_fds(sock, 1 << 16, 3)
            except OSError:
                request, fds = b"", []
            if not request:  # the worker closed its end, or died
                os._exit(0)
            pid = os.fork()
            if pid == 0:
                _in_child(sock, [wake_r, wake_w, *statuses.values()], request, fds)
            os.close(fds[0])
            os.close(fds[1])
            statuses[pid] = fds[2]
            sock.sendall(_PID.pack(pid))
        _reap(statuses)


def _reap(statuses: dict[int, int]) -> None:
    while statuses:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        fd = statuses.pop(pid, None)
        if fd is not None:
            try:
                os.write(fd, _PID.pack(os.waitstatus_to_exitcode(status)))
            except OSError:
                pass
            os.close(fd)


def _in_child(sock: socket.socket, server_fds: list[int], request: bytes, fds: list[int]) -> None:
    """In the forked child: drop the server's resources, run the child's main, never return."""
    code = 1
    try:
        sock.close()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in [*server_fds, fds[2]]:
            os.close(fd)
        order = json.loads(request)
        if order["async"]:
            from tasklib.worker.async_child import async_child_main

            async_child_main(fds[0], fds[1], *order["args"])
        else:
            from tasklib.worker.child import child_main

            child_main(fds[0], fds[1], *order["args"])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
