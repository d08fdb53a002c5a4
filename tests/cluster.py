"""A PostgreSQL cluster of the test's own (the embedded server in a throwaway folder), for tests
that restart it or use up its connections without disturbing the shared one."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import tasklib
from tests.net import free_port


@dataclass
class Cluster:
    url: str

    def stop(self) -> None:
        from tasklib import embedded

        embedded.stop()  # fast shutdown: every connection is cut

    def start(self) -> None:
        from tasklib import embedded

        embedded.start()


def private_cluster() -> Iterator[Cluster]:
    """A started cluster in a throwaway folder on a free port; stopped and removed afterwards
    (the ``cluster`` fixture of tests/conftest.py)."""
    from tasklib import embedded

    home = Path(tempfile.mkdtemp(prefix="tasklib-chaos-", dir="/tmp"))
    home.chmod(0o755)  # as root the server runs as nobody, which must reach its folder
    saved = {k: os.environ.get(k) for k in (embedded.ENV_HOME, embedded.ENV_PORT)}
    os.environ[embedded.ENV_HOME], os.environ[embedded.ENV_PORT] = str(home), str(free_port())
    try:
        url = embedded.start()
        tasklib.init(tasklib.Config(database_url=url))
        yield Cluster(url)
    finally:
        embedded.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(home, ignore_errors=True)
