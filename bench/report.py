"""Tables, ratios against the baselines, targets, and the JSON file of a run.

The machine is shared and small, so absolute figures move from run to run; what a run
can support is a ratio between systems measured side by side in it. Every figure of the
project is therefore also given divided by the same figure of each baseline. Tables are
Markdown, so a run's output can go into `docs/performance.md` as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.systems import PROJECT

Results = Mapping[str, Mapping[str, Mapping[str, Any]]]  # system -> scenario -> figures
# 90 MB per worker process, in the MiB the tables use.
RSS_BUDGET_MIB = round(90e6 / 2**20, 1)

# (figure, label, which way is better) per scenario, in table order.
TABLES: dict[str, list[tuple[str, str, str]]] = {
    "cold": [
        ("jobs", "jobs (distinct names)", ""),
        ("runs", "runs (median of each figure below)", ""),
        ("jobs_per_s", "jobs/s, first enqueue to last stored", "higher"),
        ("jobs_per_s_each_run", "jobs/s, each run", ""),
        ("worker_cpu_ms_per_job", "worker CPU ms/job", "lower"),
        ("worker_cpu_ms_per_job_each_run", "worker CPU ms/job, each run", ""),
        ("peak_rss_mib", "worker peak RSS MiB (tree)", "lower"),
        ("peak_pss_mib", "worker peak PSS MiB (tree)", "lower"),
        ("peak_rss_mib_largest_process", "worker peak RSS MiB, largest process", "lower"),
        ("upstream_calls_per_job", "upstream calls/job", "lower"),
        ("upstream_cpu_ms_per_job", "upstream (sandbox) CPU ms/job", ""),
        ("redis_cpu_ms_per_job", "redis-server CPU ms/job", ""),
        ("driver_cpu_ms_per_job", "bench driver CPU ms/job", ""),
    ],
    "latency": [
        ("offered_per_s", "offered jobs/s (half own peak)", ""),
        ("jobs", "jobs", ""),
        ("p50_ms", "enqueue→stored p50 ms", "lower"),
        ("p95_ms", "enqueue→stored p95 ms", "lower"),
        ("p99_ms", "enqueue→stored p99 ms", "lower"),
        ("worker_cpu_ms_per_job", "worker CPU ms/job", "lower"),
    ],
    "catalog": [
        ("names", "names", ""),
        ("names_per_s", "names/s, enqueue to last stored", "higher"),
        ("seconds", "wall seconds", "lower"),
        ("upstream_calls", "upstream calls (incl. index pages)", "lower"),
        ("worker_cpu_ms_per_job", "worker CPU ms/name", "lower"),
        ("peak_rss_mib", "worker peak RSS MiB (tree)", "lower"),
    ],
    "hot": [
        ("jobs", "jobs", ""),
        ("distinct_names", "distinct names", ""),
        ("upstream_calls", "upstream calls", "lower"),
        ("calls_per_distinct_name", "upstream calls per distinct name", "lower"),
        ("jobs_per_s", "jobs/s (burst)", "higher"),
        ("p99_ms", "enqueue→done p99 ms (burst)", "lower"),
        ("worker_cpu_ms_per_job", "worker CPU ms/job", "lower"),
    ],
    "faulty": [
        ("jobs", "jobs", ""),
        ("accounted_share", "stored or recorded share", "higher"),
        ("stored_share", "stored share", "higher"),
        ("recorded_failure_share", "recorded failure share", ""),
        ("lost_jobs", "jobs neither stored nor recorded", "lower"),
        ("upstream_calls_per_job", "upstream calls/job", "lower"),
        ("p50_ms", "enqueue→done p50 ms", "lower"),
        ("p99_ms", "enqueue→done p99 ms", "lower"),
        ("worker_cpu_ms_per_job", "worker CPU ms/job", "lower"),
    ],
}
TABLES["small"] = [row for row in TABLES["cold"] if row[0] != "upstream_calls_per_job"]
ORDER = ("cold", "latency", "small", "catalog", "hot", "faulty")
TITLES = {
    "cold": "1. Cold: distinct names, every job reaches the upstream",
    "latency": "1b. Cold at a fixed offered rate: latency",
    "small": "1c. Small bodies, cold: ~4 KB records, 0 ms upstream latency",
    "catalog": "2. Catalog refresh (refresh_catalog, whole index)",
    "hot": "3. Hot duplicates: Zipf-like names within the freshness window",
    "faulty": "4. Faulty upstream: 10% 503, 1% hangs",
}


def ratios(results: Results) -> dict[str, dict[str, dict[str, float | None]]]:
    """project ÷ baseline for every numeric figure the two share, per baseline."""
    project = results.get(PROJECT, {})
    table: dict[str, dict[str, dict[str, float | None]]] = {}
    for baseline, scenarios in results.items():
        if baseline == PROJECT:
            continue
        table[baseline] = {}
        for scenario, figures in project.items():
            other = scenarios.get(scenario, {})
            table[baseline][scenario] = {
                key: _ratio(value, other.get(key))
                for key, value in figures.items()
                if _number(value) and _number(other.get(key))
            }
    return table


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _ratio(value: float, other: float | None) -> float | None:
    if other is None or other == 0:
        return None
    return round(value / other, 3)


@dataclass(frozen=True)
class Target:
    name: str
    value: float | None
    goal: str
    met: bool | None


def targets(results: Results) -> list[Target]:
    """The project's performance targets, each met or not (None: not measured)."""
    found: list[Target] = []

    def fig(system: str, scenario: str, key: str) -> float | None:
        value = results.get(system, {}).get(scenario, {}).get(key)
        return float(value) if isinstance(value, int | float) and value is not True else None

    def check(name: str, value: float | None, goal: str, test: bool | None) -> None:
        found.append(Target(name, None if value is None else round(value, 3), goal, test))

    def over(value: float | None, base: float | None) -> float | None:
        return value / base if value is not None and base else None

    jobs = fig(PROJECT, "cold", "jobs_per_s")
    for baseline, goal in (("tuned", 1.5), ("tutorial", 5.0), ("dramatiq", 1.5), ("probe", 0.7)):
        ratio = over(jobs, fig(baseline, "cold", "jobs_per_s"))
        check(
            f"cold jobs/s vs {baseline}",
            ratio,
            f">= {goal}x",
            None if ratio is None else ratio >= goal,
        )
    cpu = fig(PROJECT, "cold", "worker_cpu_ms_per_job")
    check("worker CPU ms/job (cold)", cpu, "<= 2.5", None if cpu is None else cpu <= 2.5)
    largest = fig(PROJECT, "cold", "peak_rss_mib_largest_process")
    check(
        "cold: peak RSS MiB of the largest worker process",
        largest,
        f"<= {RSS_BUDGET_MIB} (90 MB)",
        None if largest is None else largest <= RSS_BUDGET_MIB,
    )
    small = over(fig(PROJECT, "small", "jobs_per_s"), fig("tuned", "small", "jobs_per_s"))
    check(
        "small bodies: jobs/s vs tuned",
        small,
        ">= 1.0x",
        None if small is None else small >= 1.0,
    )
    refresh = over(fig(PROJECT, "catalog", "names_per_s"), fig(PROJECT, "cold", "jobs_per_s"))
    check(
        "catalog names/s vs cold jobs/s",
        refresh,
        ">= 1.5x",
        None if refresh is None else refresh >= 1.5,
    )
    for target in refresh_targets(results):
        found.append(target)
    dup = fig(PROJECT, "hot", "calls_per_distinct_name")
    check(
        "hot: upstream calls per distinct name",
        dup,
        "<= 1.01",
        None if dup is None else dup <= 1.01,
    )
    share = fig(PROJECT, "faulty", "accounted_share")
    check("faulty: stored or recorded", share, "= 100%", None if share is None else share >= 1.0)
    calls = fig(PROJECT, "faulty", "upstream_calls_per_job")
    check("faulty: upstream calls/job", calls, "<= 1.25", None if calls is None else calls <= 1.25)
    return found


# (figure, label, which base the ratio columns divide by) of the refresh table. Bases:
# "cold" is the cold scenario (1.), "pass" the refresh scenario's own cold pass.
REFRESH_ROWS: list[tuple[str, str, str]] = [
    ("names_per_s", "names/s, enqueue to last event ↑ (÷ cold jobs/s)", "cold:jobs_per_s"),
    ("seconds", "wall seconds", ""),
    ("worker_cpu_ms_per_job", "worker CPU ms/name ↓ (÷ cold ms/job)", "cold:worker_cpu_ms_per_job"),
    ("upstream_body_bytes", "upstream body bytes ↓ (÷ cold pass)", "pass:upstream_body_bytes"),
    ("upstream_calls", "upstream calls (incl. index pages)", "pass:upstream_calls"),
    ("not_modified", "304 answers", ""),
    ("revalidated", "events with revalidated=1", ""),
    ("changed_flags", "events with changed=1", ""),
    ("changed_upstream", "records changed upstream", ""),
    ("flags_match_changes", "changed=1 exactly on the changed records", ""),
    ("upstream_cpu_ms_per_job", "upstream (sandbox) CPU ms/name", ""),
    ("redis_cpu_ms_per_job", "redis-server CPU ms/name", ""),
    ("peak_rss_mib", "worker peak RSS MiB (tree)", ""),
]
REFRESH_TITLE = "5. Refresh of a stored catalog: conditional requests (FRESHNESS_MAX_AGE=0)"


def refresh_ratio(results: Results, part: str, key: str, base: str) -> float | None:
    """One refresh pass's figure divided by its base (the cold scenario or the cold pass)."""
    if not base:
        return None
    project = results.get(PROJECT, {})
    refresh = project.get("refresh", {})
    where, base_key = base.split(":")
    other = project.get("cold", {}) if where == "cold" else refresh.get("cold", {})
    value = refresh.get(part, {}).get(key)
    if not _number(value):
        return None
    return _ratio(value, other.get(base_key))


def refresh_table(results: Results) -> str:
    """The refresh scenario: its three passes side by side, ratios against cold."""
    refresh = results.get(PROJECT, {}).get("refresh", {})
    parts = ("cold", "unchanged", "changed")
    names = refresh.get("names", 0)
    changed = refresh.get("changed", {}).get("changed_upstream", 0)
    head = [
        "figure",
        "cold pass (stores all)",
        "unchanged",
        f"{changed} of {names} changed",
        "unchanged ÷ base",
        "changed ÷ base",
    ]
    lines = [
        f"### {REFRESH_TITLE}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for key, label, base in REFRESH_ROWS:
        row = [label, *(_cell(refresh.get(part, {}).get(key)) for part in parts)]
        for part in ("unchanged", "changed"):
            ratio = refresh_ratio(results, part, key, base)
            row.append("-" if ratio is None else f"{_cell(ratio)}x")
        lines.append("| " + " | ".join(row) + " |")
    if refresh.get("timed_out"):
        lines += ["", "Timed out before every name of a pass had its event."]
    return "\n".join(lines)


def refresh_targets(results: Results) -> list[Target]:
    """Refreshing unchanged data: faster and cheaper than fetching it cold."""
    refresh = results.get(PROJECT, {}).get("refresh")
    if not refresh:
        return []
    speed = refresh_ratio(results, "unchanged", "names_per_s", "cold:jobs_per_s")
    cpu = refresh.get("unchanged", {}).get("worker_cpu_ms_per_job")
    size = refresh_ratio(results, "unchanged", "upstream_body_bytes", "pass:upstream_body_bytes")
    match = refresh.get("changed", {}).get("flags_match_changes")
    return [
        Target("refresh unchanged: names/s vs cold jobs/s", speed, ">= 2x",
               None if speed is None else speed >= 2),
        Target("refresh unchanged: worker CPU ms/name", cpu, "<= 1.2",
               None if cpu is None else cpu <= 1.2),
        Target("refresh unchanged: body bytes vs cold refresh", size, "<= 0.01",
               None if size is None else size <= 0.01),
        Target("refresh 10% changed: changed flags = changed records", None, "exact",
               None if match is None else bool(match)),
    ]  # fmt: skip


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def scenario_table(scenario: str, results: Results) -> str:
    systems = [name for name in results if scenario in results[name]]
    baselines = [name for name in systems if name != PROJECT]
    table_ratios = ratios(results)
    head = ["figure", *systems, *(f"project ÷ {name}" for name in baselines)]
    lines = [
        f"### {TITLES.get(scenario, scenario)}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for key, label, better in TABLES[scenario]:
        arrow = {"higher": " ↑", "lower": " ↓"}.get(better, "")
        row = [label + arrow]
        row += [_cell(results[name][scenario].get(key)) for name in systems]
        if key.endswith("_each_run"):
            row += [
                _per_round(results.get(PROJECT, {}).get(scenario, {}), results[name][scenario], key)
                for name in baselines
            ]
        else:
            row += [
                _cell(table_ratios.get(name, {}).get(scenario, {}).get(key)) + "x"
                if table_ratios.get(name, {}).get(scenario, {}).get(key) is not None
                else "-"
                for name in baselines
            ]
        lines.append("| " + " | ".join(row) + " |")
    if any(results[name][scenario].get("timed_out") for name in systems):
        late = [name for name in systems if results[name][scenario].get("timed_out")]
        lines += ["", f"Timed out before every job finished: {', '.join(late)}."]
    return "\n".join(lines)


def _per_round(project: Mapping[str, Any], other: Mapping[str, Any], key: str) -> str:
    """project ÷ baseline for each round of cold runs ("1.2x / 0.9x / ..."): the runs of a
    round were made minutes apart at most, so their ratio is the one drift spares."""
    mine, theirs = str(project.get(key, "")), str(other.get(key, ""))
    pairs = zip(mine.split(" / "), theirs.split(" / "), strict=False)
    ratios = [f"{float(a) / float(b):.2f}x" for a, b in pairs if a and b and float(b)]
    return " / ".join(ratios) if ratios else "-"


def targets_table(found: list[Target]) -> str:
    lines = ["### Targets", "", "| target | measured | goal | met |", "|---|---|---|---|"]
    for target in found:
        met = "-" if target.met is None else ("met" if target.met else "NOT met")
        lines.append(f"| {target.name} | {_cell(target.value)} | {target.goal} | {met} |")
    return "\n".join(lines)


def render(results: Results) -> str:
    """Every scenario's table, then the targets; ↑/↓ says which way is better."""
    order = [name for name in ORDER if any(name in figures for figures in results.values())]
    parts = [scenario_table(name, results) for name in order]
    if "refresh" in results.get(PROJECT, {}):
        parts.append(refresh_table(results))
    parts.append(targets_table(targets(results)))
    return "\n\n".join(parts)


def document(meta: Mapping[str, Any], results: Results) -> dict[str, Any]:
    return {
        "meta": dict(meta),
        "systems": {name: dict(figures) for name, figures in results.items()},
        "ratios": ratios(results),
        "targets": [target.__dict__ for target in targets(results)],
    }


def write(path: Path, meta: Mapping[str, Any], results: Results) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(document(meta, results), option=orjson.OPT_INDENT_2))


def profile_table(results: Results, system: str = PROJECT) -> str:
    """One system's CPU per job split by component (exclusive) and function (inclusive)."""
    profile = results.get(system, {}).get("profile", {})
    if "error" in profile or not profile:
        return f"profile of {system}: {profile.get('error', 'not run')}"
    lines = [
        f"### Profile of a cold job, {system} ({profile['samples']} samples, "
        f"{profile['cpu_ms_per_job']} worker CPU ms/job)",
        "",
        f"Collapsed stacks: {profile.get('raw', '-')}",
        "",
        "| where (exclusive, by leaf frame) | share | ms/job |",
        "|---|---|---|",
    ]
    for name, figures in profile["buckets"].items():
        lines.append(f"| {name} | {figures['share']:.1%} | {figures['ms_per_job']:.2f} |")
    lines += ["", "| what (inclusive) | share | ms/job |", "|---|---|---|"]
    for name, figures in profile["functions"].items():
        label = name.replace("  ", "&nbsp;&nbsp;")
        lines.append(f"| {label} | {figures['share']:.1%} | {figures['ms_per_job']:.2f} |")
    lines += ["", "| hottest leaf frames | share | ms/job |", "|---|---|---|"]
    for name, figures in profile["top_self"].items():
        lines.append(f"| `{name}` | {figures['share']:.1%} | {figures['ms_per_job']:.2f} |")
    return "\n".join(lines)
