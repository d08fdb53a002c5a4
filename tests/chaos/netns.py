"""A second network host on this machine: a network namespace joined to the host by a veth pair.

A worker started inside it reaches PostgreSQL only over that link, so taking the link down is a
network partition of that one host: its packets are dropped, nothing is closed, and the server
keeps its sessions open (which is what makes a partition harder than a crash).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's ip command is missing"
    name = f"tasklib-probe-{os.getpid()}"  # one per test process: the parallel suite probes at once
    probe = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"ip netns add is not allowed here: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", name], capture_output=True)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Island:
    name: str
    host_ip: str  # the host's end of the link: what the island connects to
    island_ip: str
    host_link: str

    def command(self, *argv: str) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def cut(self) -> None:
        _ip("link", "set", self.host_link, "down")

    def restore(self) -> None:
        _ip("link", "set", self.host_link, "up")


@contextmanager
def island(index: int = 0) -> Iterator[Island]:
    """A namespace with a /30 link to the host; everything is removed afterwards."""
    tag = f"{os.getpid() % 10000}{index}"
    name, host_link, ns_link = f"tlchaos{tag}", f"tlh{tag}", f"tln{tag}"
    subnet = 200 + index
    host_ip, island_ip = f"10.{subnet}.{os.getpid() % 250}.1", f"10.{subnet}.{os.getpid() % 250}.2"
    _ip("netns", "add", name)
    try:
        _ip("link", "add", host_link, "type", "veth", "peer", "name", ns_link)
        _ip("link", "set", ns_link, "netns", name)
        _ip("addr", "add", f"{host_ip}/30", "dev", host_link)
        _ip("link", "set", host_link, "up")
        _ip("netns", "exec", name, "ip", "addr", "add", f"{island_ip}/30", "dev", ns_link)
        _ip("netns", "exec", name, "ip", "link", "set", ns_link, "up")
        _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield Island(name, host_ip, island_ip, host_link)
    finally:
        subprocess.run(["ip", "link", "delete", host_link], capture_output=True)
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)
