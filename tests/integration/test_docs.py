"""Every Python example in the README and the docs runs, against a database of its own.

A block whose first line is ``# path/to/module.py`` is written to that path (then imported, or run
when it is a top-level script); the page's other blocks run in order as one script. So an example
that stops working fails here, not in a reader's terminal."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
FILE = re.compile(r"# ([\w/]+\.py)$")


def python_blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text())


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_the_python_examples_of_a_page_run(page: Path, database_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "TASKLIB_DATABASE_URL": database_url, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    modules, scripts, inline = [], [], []
    for block in python_blocks(page):
        named = FILE.match(block.splitlines()[0])
        if named is None:
            inline.append(block)
            continue
        path = tmp_path / named.group(1)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block)
        if path.parent == tmp_path:
            scripts.append(path)
        else:
            for package in path.relative_to(tmp_path).parents:
                (tmp_path / package / "__init__.py").touch()
            modules.append(named.group(1).removesuffix(".py").replace("/", "."))
    if inline:
        scripts.append(tmp_path / "page_examples.py")
        scripts[-1].write_text("\n\n".join(inline))
    assert modules or scripts
    for module in modules:
        result = subprocess.run(
            [sys.executable, "-c", f"import {module}"], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, f"{page.name}: import {module}\n{result.stderr[-3000:]}"
    for script in scripts:
        result = subprocess.run(
            [sys.executable, script.name], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, f"{page.name}: {script.name}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
