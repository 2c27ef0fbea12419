"""Each client is configured from its registry entry: the base URL from the variable the
entry names, the budget from the entry itself, found by the client's class, not by a
name that has to match."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from apis import ApiSettings, client_class
from apis.pokeapi import PokeAPI
from upstreams import BUILT_IN, Upstream

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("entry", BUILT_IN, ids=lambda entry: entry.name)
def test_a_client_reads_the_base_url_variable_its_entry_names(
    entry: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(entry.base_url_setting, f"http://{entry.name}.test/api")
    cls = client_class(entry)
    assert cls.entry() is entry
    config = cls.configure(ApiSettings(semaphore_api_token="t0ken-for-the-test"))
    assert config.base_url == f"http://{entry.name}.test/api"
    assert config.base_url_setting == entry.base_url_setting
    assert config.service == entry.name


def test_the_budget_comes_from_the_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POKEAPI_RATE_LIMIT", "7")
    assert PokeAPI.configure(ApiSettings()).rate_limit.rate == 7.0


def test_a_client_misnamed_against_its_entry_is_refused() -> None:
    """A typo in `service` once matched no entry and silently turned the budget off."""

    class Misnamed(PokeAPI):
        service = "pokeap"

    with pytest.raises(LookupError, match="names itself 'pokeap'"):
        Misnamed.configure(ApiSettings())


def test_no_client_restates_its_base_url_variable() -> None:
    """The variable is named once, in the entry (upstreams/)."""
    restated = [
        f"{path.relative_to(ROOT)}: {line.strip()}"
        for path in sorted((ROOT / "apis").glob("*.py"))
        if path.name != "config.py"
        for line in path.read_text().splitlines()
        if re.search(r"""["'][A-Z_]+_BASE_URL["']""", line)
    ]
    assert restated == []


def test_the_beat_schedule_names_no_upstream() -> None:
    """worker/beat.py builds the schedule from the entries' periodic jobs alone."""
    text = (ROOT / "worker" / "beat.py").read_text().lower()
    named = [word for word in ("pokeapi", "pokemon", "cms", "semaphore") if word in text]
    assert named == []
