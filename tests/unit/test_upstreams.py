"""Queues, routes, task modules, gauges and health probes derive from the upstream registry."""

from __future__ import annotations

import pytest

from apis import ApiSettings, client_class
from brokers import ALL_QUEUES, DEFAULT_QUEUE, QUEUES
from ops.cli.health import PROBES
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
