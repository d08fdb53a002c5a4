"""The wheel and the sdist, installed with no checkout in sight, do everything a user first does."""

from __future__ import annotations

import json
import re
import signal
import tomllib
from pathlib import Path

import httpx

from tasklib.schema import SCHEMA_VERSION
from tests.net import free_port, wait_healthy
from tests.release.conftest import Installed
from tests.workers import ROOT, stop

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def checkout_modules() -> set[str]:
    """Every module of the two packages in the source tree, by dotted name."""
    names = set()
    for package in ("tasklib", "dashboard"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def checkout_assets() -> set[str]:
    return {
        str(p.relative_to(ROOT / "dashboard"))
        for sub in ("templates", "static")
        for p in (ROOT / "dashboard" / sub).rglob("*")
        if p.is_file()
    }


IMPORT_EVERYTHING = """
import importlib, json, pkgutil, sys
from importlib.resources import files
names, outside = [], []
for package in ("tasklib", "dashboard"):
    root = importlib.import_module(package)
    names.append(package)
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        names.append(info.name)
for name in sys.argv[1:]:  # the checkout's modules, found or not by the walk
    if name not in names:
        names.append(name)
for name in names:
    module = importlib.import_module(name)
    if not module.__file__.startswith(sys.prefix):
        outside.append(module.__file__)
assets = [
    str(path.relative_to(files("dashboard")))
    for sub in ("templates", "static")
    for path in __import__("pathlib").Path(str(files("dashboard") / sub)).rglob("*")
    if path.is_file()
]
print(json.dumps({"modules": sorted(names), "outside": outside, "assets": sorted(assets)}))
"""


def test_every_module_and_asset_is_installed(installed: Installed, tmp_path: Path) -> None:
    expected = checkout_modules()
    result = installed.run(installed.python, "-I", "-c", IMPORT_EVERYTHING, *sorted(expected), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout)
    assert set(found["modules"]) == expected
    assert found["outside"] == []  # every module came from the virtual environment
    assert set(found["assets"]) == checkout_assets()


def test_version_names_the_release_and_the_schema(installed: Installed, tmp_path: Path) -> None:
    result = installed.run(installed.tasklib, "--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"tasklib {VERSION} (schema {SCHEMA_VERSION})"
    code = "import tasklib; print(tasklib.__version__)"
    assert installed.run(installed.python, "-I", "-c", code, cwd=tmp_path).stdout.strip() == VERSION


APP = """
import tasklib


@tasklib.task
def add(a: int, b: int) -> int:
    print("adding", a, b)
    return a + b


@tasklib.task
async def greet(name: str) -> str:
    return f"hello {name}"
"""

SUBMIT = """
import json, sys, time
sys.path.insert(0, sys.argv[1])  # the app's folder (-I leaves the script's own folder off the path)
import tasklib
import shop_tasks

tasklib.init(tasklib.Config(database_url=sys.argv[2]))
ids = [tasklib.submit_task_sync(shop_tasks.add, a=2, b=3), tasklib.submit_task_sync(shop_tasks.greet, name="pip")]
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    tasks = [tasklib.get_task(i) for i in ids]
    if all(t.state in ("completed", "failed") for t in tasks):
        break
    time.sleep(0.1)
print(json.dumps([[str(t.id), t.state, t.result, t.error] for t in tasks]))
"""


def test_worker_dashboard_and_a_round_trip(installed: Installed, tmp_path: Path, database_url: str) -> None:
    (tmp_path / "shop_tasks.py").write_text(APP)
    (tmp_path / "submit.py").write_text(SUBMIT)
    port = free_port()
    worker = installed.popen(
        installed.tasklib, "worker", "--app", "shop_tasks", "--concurrency", "2", "--database-url", database_url,
        cwd=tmp_path, log=tmp_path / "worker.log",
    )  # fmt: skip
    dashboard = installed.popen(
        installed.tasklib, "dashboard", "--port", str(port), "--database-url", database_url,
        cwd=tmp_path, log=tmp_path / "dashboard.log",
    )  # fmt: skip
    try:
        submitted = installed.run(installed.python, "-I", tmp_path / "submit.py", tmp_path, database_url, cwd=tmp_path)
        assert submitted.returncode == 0, submitted.stderr[-3000:] + (tmp_path / "worker.log").read_text()[-3000:]
        (add_id, add_state, add_result, _), (_, greet_state, greet_result, _) = json.loads(submitted.stdout)
        assert (add_state, add_result, greet_state, greet_result) == ("completed", 5, "completed", "hello pip"), (
            tmp_path / "worker.log"
        ).read_text()[-3000:]

        base = f"http://127.0.0.1:{port}"
        wait_healthy(base)
        for path in ("/", "/tasks", "/workers", "/queues", "/schedules", "/metrics", "/static/tasklib.css"):
            assert httpx.get(base + path).status_code == 200, path
        page = httpx.get(f"{base}/tasks/{add_id}")
        assert page.status_code == 200 and "shop_tasks.add" in page.text and "completed" in page.text
        assert "shop_tasks.add" in httpx.get(f"{base}/tasks").text
    finally:
        stop(worker)
        dashboard.send_signal(signal.SIGTERM)
        dashboard.wait(15)
    assert worker.returncode == 0, (tmp_path / "worker.log").read_text()[-3000:]


def test_wheel_and_sdist_metadata_render_on_an_index(dist: Path, tmp_path: Path) -> None:
    import subprocess
    import sys
    import tarfile
    import zipfile

    checked = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, sorted(dist.glob("tasklib-*")))],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        metadata = zf.read(f"tasklib-{VERSION}.dist-info/METADATA").decode()
        assert f"tasklib-{VERSION}.dist-info/licenses/LICENSE" in zf.namelist()
    for field in ("Classifier: ", "Project-URL: Documentation", "Project-URL: Changelog", "License-Expression: MIT"):
        assert field in metadata, field
    assert "Description-Content-Type: text/markdown" in metadata
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    for name in ("LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "scripts/release.sh"):
        assert name in names, name


def test_tasklib_demo_from_pip_on_the_embedded_database(installed_wheel: Installed, tmp_path: Path) -> None:
    """`pip install "tasklib[embedded]"` then `tasklib demo`: dashboard, worker, example tasks, nothing configured."""
    import os
    import shutil
    import tempfile

    from tests.workers import wait_for

    # Not pytest's tmp_path: as root the server runs as `nobody`, which must be able to enter the folder.
    home = Path(tempfile.mkdtemp(prefix="tasklib-demo-", dir="/tmp"))
    home.chmod(0o755)
    port = free_port()
    env = {"TASKLIB_EMBEDDED_DIR": str(home / "pg"), "TASKLIB_EMBEDDED_PORT": str(free_port())}
    log = tmp_path / "demo.log"
    proc = installed_wheel.popen(
        installed_wheel.tasklib, "demo", "--port", str(port), "--seconds", "12", cwd=tmp_path, log=log, **env
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, timeout=60)
        completed: dict[str, int] = {}
        metrics = ""

        def enough_ran() -> bool:
            nonlocal metrics, completed
            metrics = httpx.get(f"{base}/metrics").text
            completed = {
                line.split('name="', 1)[1].split('"', 1)[0]: int(float(line.rsplit(" ", 1)[1]))
                for line in metrics.splitlines()
                if line.startswith('tasklib_tasks{state="completed"')
            }
            return (
                sum(completed.values()) >= 5
                and "tasklib.demo.tasks.fetch_page" in completed  # async tasks
                and "tasklib.demo.tasks.resize" in completed  # a workflow's steps
            )

        assert wait_for(enough_ran, timeout=20, interval=0.5), metrics
        # Every page has something to show: the recurring task on Schedules, three queues and two limits on Queues.
        assert 'tasklib_schedule_next_run_timestamp_seconds{name="tasklib.demo.tasks.refresh_rates"}' in metrics
        assert "tasklib.demo.tasks.refresh_rates" in httpx.get(f"{base}/schedules").text

        def queues_shown() -> bool:
            page = httpx.get(f"{base}/queues").text
            shown = [f">{q}<" in page for q in ("default", "emails", "payments")]
            return all(shown) and "2/s" in page and "tasklib.demo.tasks.rebuild_search_index" in page

        assert wait_for(queues_shown, timeout=10, interval=0.5), httpx.get(f"{base}/queues").text[-3000:]
        assert proc.wait(60) == 0, log.read_text()[-3000:]
        output = log.read_text()
        assert f"TaskLib demo: open http://127.0.0.1:{port}/" in output
        assert "connect with: psql" in output  # where the data lives and how to reach it
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the demo and the dashboard and worker it started
        except ProcessLookupError:
            pass
        proc.wait(10)
        installed_wheel.run(installed_wheel.tasklib, "db", "stop", cwd=tmp_path, **env)
        shutil.rmtree(home, ignore_errors=True)


def test_the_image_installs_only_the_wheel_with_the_tested_recipe() -> None:
    """No docker daemon here: the Dockerfile must run scripts/release.sh, which the fixtures above run."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", dockerfile, flags=re.M)[1:]
    assert len(stages) == 2, "a build stage and a final stage"
    build, final = stages
    assert "release.sh build" in build
    assert "release.sh install /tmp/dist/tasklib-*.whl" in final
    assert "COPY . " not in final and "PYTHONPATH" not in dockerfile  # no checkout in the image
    assert "\nUSER tasklib" in final and "useradd" in final
    # compose runs the image's `tasklib` with the example tasks the wheel ships (imported above).
    compose = (ROOT / "compose.yaml").read_text()
    assert "tasklib.demo.tasks" in compose and "examples" not in compose
