"""Packaging: every import is declared, overridden libraries are bounded, tests stay out."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# The product's packages (the sandbox and the bench are tools around it).
PACKAGES = tuple(
    pattern.rstrip("*")
    for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    if pattern.rstrip("*") not in ("sandbox", "bench")
)
# Libraries whose internals the project subclasses or overrides (pyproject.toml says where).
OVERRIDDEN = ("celery", "kombu", "billiard", "celery-redbeat", "urllib3", "flower")
# Import names that differ from their distribution's name.
DISTRIBUTION_OF = {
    "pythonjsonlogger": "python-json-logger",
    "prometheus_client": "prometheus-client",
    "redbeat": "celery-redbeat",
    "pydantic_settings": "pydantic-settings",
    "opentelemetry": "opentelemetry-api",
    "yaml": "pyyaml",
}


def _requirements(*extras: str) -> dict[str, Requirement]:
    lines = list(PYPROJECT["project"]["dependencies"])
    for extra in extras:
        lines += PYTHON_EXTRAS[extra]
    return {Requirement(line).name.lower(): Requirement(line) for line in lines}


PYTHON_EXTRAS: dict[str, list[str]] = PYPROJECT["project"]["optional-dependencies"]


def _third_party_imports() -> set[str]:
    found: set[str] = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
    own = {*PACKAGES, "sandbox", "bench"}
    return {name for name in found if name not in own and name not in sys.stdlib_module_names}


def test_every_import_of_the_product_code_is_declared() -> None:
    """Each third-party package the product code imports is a dependency (or an extra's)."""
    declared = set(_requirements("tracing"))
    missing = sorted(
        name
        for name in _third_party_imports()
        if DISTRIBUTION_OF.get(name, name).replace("_", "-").lower() not in declared
    )
    assert missing == []


@pytest.mark.parametrize("name", OVERRIDDEN)
def test_overridden_libraries_are_bounded_and_the_installed_version_is_tested(name: str) -> None:
    """A library whose internals are overridden has an upper bound, and the version
    installed is inside the tested range: an untested release fails here first."""
    requirement = _requirements("flower")[name]
    assert any(spec.operator in ("<", "<=", "~=", "==") for spec in requirement.specifier)
    installed = metadata.version(name)
    assert requirement.specifier.contains(installed, prereleases=True), (
        f"{name} {installed} is outside the tested range {requirement.specifier}"
    )


def test_test_only_code_is_not_packaged() -> None:
    """No module of the wheel imports pytest: fixtures live under tests/."""
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    assert not any(pattern.startswith("tests") for pattern in include)
    shipped = [p.rstrip("*") for p in include]
    for package in shipped:
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            names = {
                alias.name.split(".")[0]
                for node in ast.walk(tree)
                if isinstance(node, ast.Import)
                for alias in node.names
            } | {
                node.module.split(".")[0]
                for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module
            }
            assert "pytest" not in names, path


def test_the_image_copies_every_product_package() -> None:
    """The Dockerfile builds from the packages pyproject.toml finds (the sandbox too, for
    the offline profile): a package left out of it is an image that cannot import."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    [listed] = [
        line.split("=", 1)[1].strip('"').split()
        for line in dockerfile.splitlines()
        if line.startswith("ARG PACKAGES=")
    ]
    copied = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ")]
    assert sorted(listed) == sorted([*PACKAGES, "sandbox"])
    assert set(listed) <= set(copied)
