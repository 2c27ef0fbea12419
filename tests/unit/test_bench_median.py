"""Repeated cold runs: each number is the median over the runs, each run stays visible."""

from __future__ import annotations

from bench.scenarios import median_of_runs


def test_each_number_is_the_median_and_each_run_is_listed() -> None:
    runs = [
        {"jobs": 10, "jobs_per_s": 300.0, "worker_cpu_ms_per_job": 3.9, "timed_out": False},
        {"jobs": 10, "jobs_per_s": 250.0, "worker_cpu_ms_per_job": 3.1, "timed_out": True},
        {"jobs": 10, "jobs_per_s": 320.0, "worker_cpu_ms_per_job": 3.5, "timed_out": False},
    ]
    merged = median_of_runs(runs)
    assert merged["jobs"] == 10
    assert merged["jobs_per_s"] == 300.0
    assert merged["worker_cpu_ms_per_job"] == 3.5
    assert merged["timed_out"] is True  # any run that timed out is reported
    assert merged["runs"] == 3
    assert merged["worker_cpu_ms_per_job_each_run"] == "3.9 / 3.1 / 3.5"


def test_a_single_run_is_reported_as_it_is() -> None:
    run = {"jobs": 5, "jobs_per_s": 100.0, "worker_cpu_ms_per_job": 3.25}
    assert median_of_runs([run]) == {
        **run,
        "runs": 1,
        "jobs_per_s_each_run": "100",
        "worker_cpu_ms_per_job_each_run": "3.25",
    }
