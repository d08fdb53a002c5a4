"""A TCP proxy a test can cut (closing every connection and refusing new ones) and restore."""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit, urlunsplit


class TcpProxy:
    """Forwards ``listen_host``:<port> to ``target``; ``through(url)`` points a database URL at it."""

    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.listen_host = listen_host
        self._server = socket.create_server((listen_host, 0))
        self.port = self._server.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._up = True
        self._closed = False
        #: Connections accepted and forwarded so far: tests assert their client really went through.
        self.accepted = 0

    def through(self, url: str) -> str:
        """``url`` with its host and port replaced by this proxy's (credentials and database kept)."""
        parts = urlsplit(url)
        assert (parts.hostname, parts.port or 5432) == self.target, f"{url} is not the proxied server {self.target}"
        userinfo = parts.netloc.rpartition("@")[0]
        return urlunsplit(parts._replace(netloc=f"{userinfo + '@' if userinfo else ''}{self.listen_host}:{self.port}"))

    def __enter__(self) -> TcpProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        self.cut()
        self._server.close()

    def cut(self) -> int:
        """Close every forwarded connection and refuse new ones; returns how many were open."""
        with self._lock:
            self._up = False
            open_now = len(self._sockets) // 2
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self._sockets.clear()
        return open_now

    def restore(self) -> None:
        with self._lock:
            self._up = True

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                if not self._up:
                    client.close()
                    continue
                try:
                    upstream = socket.create_connection(self.target)
                except OSError:
                    client.close()
                    continue
                self._sockets += [client, upstream]
                self.accepted += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.close()
                except OSError:
                    pass
