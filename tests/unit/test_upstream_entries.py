"""Each client is configured from its registry entry: the base URL from the variable the
entry names, the budget from the entry itself, found by the client's class, not by a
name that has to match."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from apis import ApiSettings, client_class
from apis.pokeapi import PokeAPI
from upstreams import BUILT_IN, Upstream, offline_settings

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


UPSTREAM_NAMES = re.compile(r"pok[eé]api|pok[eé]mon|cms|semaphore", re.IGNORECASE)
#: The rooms that hold no line of any one upstream: what they need of one comes from its
#: registry entry (the alias index of a kind whose results another ident finds, too).
GENERIC = (
    ROOT / "apis" / "config.py",
    ROOT / "settings",
    ROOT / "results",
    ROOT / "worker",
    ROOT / "ops",
)


def generic_sources() -> list[Path]:
    found: list[Path] = []
    for place in GENERIC:
        found.extend([place] if place.is_file() else sorted(place.rglob("*.py")))
    return found


def test_the_generic_rooms_name_no_upstream() -> None:
    """apis/config.py, settings/, results/, worker/ and ops/ build everything per upstream
    from the registry: no line names one (the demo's jobs are its data file,
    ops/demo.toml)."""
    named = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in generic_sources()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if UPSTREAM_NAMES.search(line)
    ]
    assert named == []


def test_the_grep_can_fail() -> None:
    """The pattern finds a name where one is."""
    assert UPSTREAM_NAMES.search('SEMAPHORE_BASE_URL = "x"')
    assert UPSTREAM_NAMES.search("refresh_pokemon_catalog")
    assert UPSTREAM_NAMES.search("the Pokémon id index")
    assert generic_sources()


def test_an_entry_the_breaker_does_not_guard_has_it_off() -> None:
    """`breaker=False` in the entry turns the client's breaker off, whatever the
    threshold."""
    guarded = BUILT_IN[0]
    unguarded = dataclasses.replace(guarded, breaker=False)
    settings = ApiSettings(circuit_failure_threshold=5)
    assert settings.upstream(guarded).circuit.failure_threshold == 5
    assert settings.upstream(unguarded).circuit.failure_threshold == 0


def test_the_token_and_user_agent_come_from_the_entry() -> None:
    """The entry names the token's variable, its scheme and the user agent; the value is
    read from the upstream's own settings."""
    entry = next(u for u in BUILT_IN if u.token_setting)
    config = client_class(entry).configure(ApiSettings(semaphore_api_token="t0ken-value"))
    assert config.token is not None
    assert config.token.get_secret_value() == "t0ken-value"
    assert config.token_setting == entry.token_setting == "SEMAPHORE_API_TOKEN"
    assert config.user_agent == entry.user_agent
    assert not client_class(entry).configure(ApiSettings()).configured
    plain = PokeAPI.configure(ApiSettings())
    assert plain.token is None
    assert plain.configured
    assert plain.user_agent.startswith("api-layer-worker/")


def test_offline_mode_points_every_served_upstream_at_the_sandbox() -> None:
    """One variable per entry with a sandbox path, and the token of those that take one."""
    found = offline_settings("http://127.0.0.1:9/", "sandbox-token")
    assert found == {
        "POKEAPI_BASE_URL": "http://127.0.0.1:9/api/v2",
        "CMS_BASE_URL": "http://127.0.0.1:9/api/v1",
        "SEMAPHORE_BASE_URL": "http://127.0.0.1:9/api/v1alpha",
        "SEMAPHORE_API_TOKEN": "sandbox-token",
    }


def test_an_entry_may_set_its_own_timeouts_and_the_soft_limit_covers_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A slow upstream's timeouts are its entry's; the longest call, which
    TASK_SOFT_TIME_LIMIT must exceed, counts them."""
    slow = dataclasses.replace(BUILT_IN[0], read_timeout=40.0)
    settings = ApiSettings()
    config = settings.upstream(slow)
    assert (config.connect_timeout, config.read_timeout) == (settings.http_connect_timeout, 40.0)
    assert settings.upstream(BUILT_IN[0]).read_timeout == settings.http_read_timeout
    shared = settings.worst_case_call_seconds
    monkeypatch.setattr("apis.config.all_upstreams", lambda: (*BUILT_IN[1:], slow))
    assert settings.worst_case_call_seconds == pytest.approx(
        shared + 2 * (40.0 - settings.http_read_timeout)
    )
