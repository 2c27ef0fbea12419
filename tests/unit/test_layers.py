"""The import direction of pyproject.toml's [tool.importlinter] contracts holds."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_imports_run_one_way() -> None:
    """Every contract is kept: apis <- results <- tasks <- worker <- ops, bench and sandbox
    outside."""
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "backward"),
    [
        ("apis/errors.py", "apis.errors -> tasks.base"),
        # The results room sits below the tasks: it keeps any upstream's results, and
        # knows no upstream's job.
        ("results/keys.py", "results.keys -> tasks.base"),
    ],
)
def test_a_backward_import_breaks_the_contract(tmp_path: Path, module: str, backward: str) -> None:
    """A module importing a task from below (even inside a function) fails the check."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    for package in config["root_packages"]:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("data"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    below = tmp_path / module
    below.write_text(below.read_text() + "\n\ndef _backward() -> None:\n    import tasks.base\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert backward in result.stdout
