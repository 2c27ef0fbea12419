"""`python -m bench --quick` end to end: it runs, and its JSON has every scenario's figures.

Speeds are never asserted: the machine is shared and small, and a benchmark that fails
the suite on a busy minute would teach everyone to ignore it. What is checked is that
the harness starts and stops its processes, reaches every scenario and measures
something real in each.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.celery_worker import REPO_ROOT

pytestmark = pytest.mark.integration

# What each system of a smoke run takes part in: the queue-only baselines have no result
# a caller can wait on and no catalog task; the small-body case runs for two systems.
SCENARIOS = {
    "project": ("cold", "latency", "hot", "catalog", "faulty", "small"),
    "tuned": ("cold", "latency", "hot", "catalog", "faulty", "small"),
    "dramatiq": ("cold", "latency"),
    "probe": ("cold", "latency"),
}
POSITIVE = {
    "cold": (
        "jobs",
        "jobs_per_s",
        "worker_cpu_ms_per_job",
        "peak_rss_mib",
        "peak_rss_mib_largest_process",
    ),
    "small": ("jobs", "jobs_per_s", "worker_cpu_ms_per_job", "peak_rss_mib"),
    "latency": ("offered_per_s", "jobs", "p50_ms", "p99_ms"),
    "hot": ("jobs", "distinct_names", "upstream_calls", "jobs_per_s"),
    "catalog": ("names", "names_per_s", "upstream_calls", "worker_cpu_ms_per_job"),
    "faulty": ("jobs", "upstream_calls_per_job", "p99_ms"),
}


@pytest.fixture(scope="module")
def quick_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Any]:
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--repeat", "2", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    document = json.loads(Path(out).read_text()) if out.exists() else None
    return completed, document


@pytest.mark.timeout(180)
def test_quick_run_exits_zero_and_prints_the_tables(quick_run: Any) -> None:
    """The harness finishes on its own and prints its tables."""
    completed, _ = quick_run
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "### 1. Cold" in completed.stdout
    assert "### Targets" in completed.stdout


def test_every_system_has_each_of_its_scenarios_with_positive_figures(quick_run: Any) -> None:
    """Each of the four systems measured something real in every scenario it takes."""
    _, document = quick_run
    assert document is not None
    systems = document["systems"]
    assert set(systems) == set(SCENARIOS)
    for name, figures in systems.items():
        for scenario in SCENARIOS[name]:
            assert scenario in figures, f"{name} lacks {scenario}"
            if name == "probe":
                # No retries by design: a job whose call fails is dropped, so a busy
                # host may leave a few keys unwritten; most must still be stored.
                stored, jobs = figures[scenario]["stored"], figures[scenario]["jobs"]
                assert stored >= 0.9 * jobs, f"probe {scenario}: {stored} of {jobs} stored"
            else:
                assert figures[scenario]["timed_out"] is False, f"{name} {scenario} timed out"
            for key in POSITIVE[scenario]:
                assert figures[scenario][key] > 0, f"{name} {scenario} {key}"


def test_ratios_are_the_two_figures_divided_and_targets_and_cpus_are_reported(
    quick_run: Any,
) -> None:
    """A ratio is project / baseline of the same run, against each baseline; the targets
    are listed; nproc is the CPUs it could use."""
    _, document = quick_run
    assert document is not None
    systems = document["systems"]
    project, tuned = systems["project"]["cold"], systems["tuned"]["cold"]
    ratio = document["ratios"]["tuned"]["cold"]["jobs_per_s"]
    assert ratio == pytest.approx(project["jobs_per_s"] / tuned["jobs_per_s"], rel=0.01, abs=0.001)
    for baseline in ("tuned", "dramatiq", "probe"):
        assert document["ratios"][baseline]["cold"]["jobs_per_s"] > 0, baseline
    assert document["ratios"]["tuned"]["small"]["jobs_per_s"] > 0
    assert {target["name"] for target in document["targets"]} >= {
        "worker CPU ms/job (cold)",
        "hot: upstream calls per distinct name",
        "cold jobs/s vs dramatiq",
        "cold jobs/s vs probe",
        "small bodies: jobs/s vs tuned",
    }
    assert document["meta"]["nproc"] == len(os.sched_getaffinity(0))


def test_repeated_cold_runs_report_their_median_and_each_run(quick_run: Any) -> None:
    """--repeat 2: two cold runs, each one's figure listed beside the median."""
    _, document = quick_run
    assert document is not None
    cold = document["systems"]["project"]["cold"]
    assert cold["runs"] == 2
    for key in ("jobs_per_s", "worker_cpu_ms_per_job"):
        each = [float(figure) for figure in cold[f"{key}_each_run"].split(" / ")]
        assert len(each) == 2
        assert cold[key] == pytest.approx(statistics.median(each), rel=0.01, abs=0.001), key


def test_the_project_stores_or_records_every_faulty_job(quick_run: Any) -> None:
    """A correctness property, not a speed: no job of the project is lost to 503s."""
    _, document = quick_run
    assert document is not None
    assert document["systems"]["project"]["faulty"]["lost_jobs"] == 0


def test_the_refresh_scenario_revalidates_and_flags_exactly_the_changed(quick_run: Any) -> None:
    """Refresh unchanged: a 304 per name, no body bytes; 10% changed: the flags match."""
    _, document = quick_run
    assert document is not None
    refresh = document["systems"]["project"]["refresh"]
    assert refresh["timed_out"] is False
    names = refresh["names"]
    unchanged, changed = refresh["unchanged"], refresh["changed"]
    assert unchanged["not_modified"] == unchanged["revalidated"] == names
    assert unchanged["upstream_body_bytes"] == 0 < refresh["cold"]["upstream_body_bytes"]
    assert changed["flags_match_changes"] is True
    assert changed["changed_flags"] == changed["changed_upstream"] > 0
    assert changed["revalidated"] == names - changed["changed_upstream"]
    assert unchanged["names_per_s"] > 0
    assert unchanged["worker_cpu_ms_per_job"] > 0
