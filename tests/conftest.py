from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

import tasklib
from tests.cluster import Cluster, private_cluster
from tests.pg import fresh_database


@pytest.fixture
def database_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test only."""
    with fresh_database() as url:
        yield url


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A PostgreSQL cluster of this test's own, for tests that restart it or use up its connections."""
    yield from private_cluster()


@pytest.fixture
def config(database_url: str) -> tasklib.Config:
    return tasklib.Config(database_url=database_url, base_retry_delay_seconds=0.2)


@pytest.fixture
def tl(config: tasklib.Config) -> Iterator[tasklib.Config]:
    """TaskLib initialised on a fresh database."""
    tasklib.init(config)
    yield config


_RELEASE_DIR = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """One folder per run for what the release tier builds and installs, shared by the parallel
    workers (they inherit this process's environment), so the artifacts are built once a run."""
    if not hasattr(config, "workerinput") and "TASKLIB_RELEASE_DIR" not in os.environ:
        # In /tmp and enterable by others: as root, the embedded server runs as `nobody`.
        folder = tempfile.mkdtemp(prefix="tasklib-release-", dir="/tmp")
        os.chmod(folder, 0o755)
        os.environ["TASKLIB_RELEASE_DIR"] = folder
        config.stash[_RELEASE_DIR] = folder


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Leave no server behind: stop the embedded PostgreSQL if this session started it."""
    from tests import pg

    if folder := session.config.stash.get(_RELEASE_DIR, None):
        shutil.rmtree(folder, ignore_errors=True)

    if pg.STARTED_EMBEDDED:
        from tasklib import embedded

        embedded.stop()
