"""Queues, routes, task modules, gauges and health probes derive from the upstream registry."""

from __future__ import annotations

import importlib

import pytest

from apis import ApiSettings, client_class
from apis.config import upstream_settings_model
from brokers import ALL_QUEUES, DEFAULT_QUEUE, QUEUES
from ops.cli.health import PROBES
from settings import ConfigurationError, checked_settings
from upstreams import BUILT_IN, Upstream, all_upstreams


def test_the_broker_queues_are_one_per_registered_upstream() -> None:
    """Each upstream has its queue, and the default queue is consumed too."""
    assert tuple(QUEUES) == tuple(u.queue for u in all_upstreams())
    assert (*QUEUES, DEFAULT_QUEUE) == ALL_QUEUES


def test_the_worker_routes_and_includes_come_from_the_registry() -> None:
    """Every task module of an upstream is included and routed to its queue."""
    from worker.app import app

    assert app.conf.task_routes == dict(u.route for u in all_upstreams())
    assert set(app.conf.include) == {u.tasks for u in all_upstreams()}


def test_every_entry_names_a_client_of_its_service_with_a_probe() -> None:
    """An entry's client class is found, serves that upstream and has a health probe."""
    for upstream in BUILT_IN:
        cls = client_class(upstream)
        assert cls.service == upstream.name
        assert PROBES[cls] == cls.probe


@pytest.mark.parametrize("upstream", BUILT_IN, ids=lambda u: u.name)
def test_rate_limits_are_read_from_the_settings_the_entry_names(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """POKEAPI_RATE_LIMIT (and _BURST) set the pokeapi bucket, and so on."""
    monkeypatch.setenv(upstream.rate_limit_setting, "2.5")
    monkeypatch.setenv(f"{upstream.rate_limit_setting}_BURST", "7")
    policy = ApiSettings().rate_limit_policy(upstream)
    assert (policy.rate, policy.burst) == (2.5, 7)
    assert ApiSettings().rate_limit_policy(None).rate == 0.0


@pytest.mark.parametrize("upstream", BUILT_IN, ids=lambda u: u.name)
def test_the_budget_variables_are_declared_fields_of_the_upstreams_settings(
    upstream: Upstream,
) -> None:
    """Rate, burst and concurrency are fields of the upstream's settings model (read,
    checked at start and listed with its base URL), defaulting to what its entry allows."""
    model = upstream_settings_model(upstream)
    assert model is not None
    module, _, name = upstream.settings.partition(":")
    assert issubclass(model, getattr(importlib.import_module(module), name))
    rate, burst, concurrency = (name.lower() for name in upstream.budget_settings)
    fields = model.model_fields
    assert (fields[rate].default, fields[burst].default, fields[concurrency].default) == (
        upstream.rate_limit,
        0,
        upstream.concurrency,
    )
    assert upstream.base_url_setting.lower() in fields


@pytest.mark.parametrize(
    ("value", "line"),
    [
        ("inf", "POKEAPI_RATE_LIMIT='inf': must be a finite number"),
        ("-0.5", "POKEAPI_RATE_LIMIT='-0.5': must be at least 0"),
    ],
)
def test_a_bad_rate_is_one_line_at_start(
    value: str, line: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked as a field: the variable as the user wrote it, and what it must be."""
    monkeypatch.setenv("POKEAPI_RATE_LIMIT", value)
    with pytest.raises(ConfigurationError) as bad:
        checked_settings()
    assert bad.value.lines == [line]


def test_a_budget_variable_set_to_nothing_is_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """`POKEAPI_RATE_LIMIT=` (a compose file's empty pass-through) is the entry's budget."""
    monkeypatch.setenv("POKEAPI_RATE_LIMIT", " ")
    monkeypatch.setenv("POKEAPI_CONCURRENCY", "")
    policy = checked_settings().api.rate_limit_policy(BUILT_IN[0])
    assert (policy.rate, policy.concurrency) == (BUILT_IN[0].rate_limit, BUILT_IN[0].concurrency)
