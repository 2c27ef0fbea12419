"""The install prints no deprecation box: the licence is an SPDX expression, which
setuptools 77 and later read without warning (a TOML table is deprecated there)."""

from __future__ import annotations

import tomllib

from tests.support.celery_worker import REPO_ROOT

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def test_the_licence_is_an_spdx_string_for_a_setuptools_that_reads_it() -> None:
    """`license = "MIT"`, built by setuptools >= 77 (older ones need the table form)."""
    assert PYPROJECT["project"]["license"] == "MIT"
    assert "setuptools>=77" in PYPROJECT["build-system"]["requires"]
