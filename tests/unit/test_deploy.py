"""deploy/: the alert rules pass promtool and their own unit tests, and every metric the
rules and the dashboard read is one the service exports; the compose profile wires them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

# Importing the tasks and the app defines every metric of the service.
import tasks.cms
import tasks.pokemon
import tasks.semaphore  # noqa: F401
import worker.app  # noqa: F401
from settings import WorkerSettings
from worker.backlog import BacklogCollector

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "api-layer-worker.json"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: apt-get install prometheus (make test does, as root)"
    return subprocess.run(
        [binary, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    "args",
    [
        ("check", "rules", "alerts.yml"),
        ("test", "rules", "alerts.test.yml"),
        ("check", "config", "prometheus.yml"),
    ],
    ids=["check-rules", "test-rules", "check-config"],
)
def test_promtool_accepts_the_rules_their_tests_and_the_config(args: tuple[str, ...]) -> None:
    """promtool check rules, test rules (the alerts' unit tests) and check config pass."""
    done = promtool(*args)
    assert done.returncode == 0, done.stdout + done.stderr


def alert_rules() -> list[dict[str, object]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_every_alert_has_a_severity_a_summary_and_a_runbook() -> None:
    """An on-call engineer paged by any of them knows how bad it is and what to do first."""
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == {
        "ApiworkerNoWorkerUp",
        "ApiworkerJobFailureRate",
        "ApiworkerCircuitOpen",
        "ApiworkerUpstreamLatencyHigh",
        "ApiworkerQueueBacklogGrowing",
        "ApiworkerFailureStreamGrowing",
    }
    for rule in rules:
        assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["runbook"], rule["alert"]


def test_every_alert_is_exercised_by_the_promtool_tests() -> None:
    """Each alert has a case in alerts.test.yml in which it fires."""
    tests = yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())["tests"]
    firing = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert firing == {rule["alert"] for rule in alert_rules()}


def exported_series() -> set[str]:
    """Every series name the worker's /metrics can show."""
    names: set[str] = set()
    gauges = BacklogCollector(
        queues=(), depths=None, results=None, failures_key="", circuit_keys={}
    ).describe()
    families = [*REGISTRY.collect(), *gauges]
    for family in families:
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


def referenced(text: str) -> set[str]:
    return set(re.findall(r"\bapiworker_[a-z_]+\b", text)) - {"apiworker_"}


def test_rules_and_dashboard_read_only_metrics_the_service_exports() -> None:
    """A renamed metric cannot leave an alert or a panel silently empty."""
    exported = exported_series()
    rules = " ".join(str(rule["expr"]) for rule in alert_rules())
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = " ".join(
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    )
    assert referenced(rules) - exported == set()
    assert referenced(exprs) - exported == set()
    assert referenced(rules) <= referenced(exprs) | {"apiworker_circuit_open"}


def test_the_dashboard_is_grafana_json_with_a_datasource_variable() -> None:
    """Unique panel ids, every query on the chosen Prometheus, every panel with a query."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] == "api-layer-worker"
    assert "datasource" in {var["name"] for var in dashboard["templating"]["list"]}
    for panel in panels:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_the_monitoring_profile_scrapes_the_workers_metrics_port_and_flower() -> None:
    """Prometheus (with the rules) and Grafana (with the dashboard) under `monitoring`."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    prometheus, grafana = compose["prometheus"], compose["grafana"]
    assert prometheus["profiles"] == grafana["profiles"] == ["monitoring"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "./deploy/grafana:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    (workers,) = jobs["apiworker"]["dns_sd_configs"]
    assert workers["names"] == ["worker"]
    assert workers["port"] == WorkerSettings.model_fields["metrics_port"].default
    assert jobs["flower"]["static_configs"][0]["targets"] == ["flower:5555"]
    assert config["rule_files"] == ["alerts.yml"]
