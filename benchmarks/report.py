"""The report: ratios and targets, the Markdown table, and the results files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.contenders import Contender
from services.core.settings import get_settings

RESULTS = Path(__file__).parent / "results"


def write_results(result: dict[str, Any], out_dir: Path) -> str:
    """``latest.json`` and ``latest.md`` in ``out_dir``; returns the Markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "latest.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (out_dir / "latest.md").write_text(text)
    return text


def ratios_and_targets(by: dict[str, Contender], correlator: dict[str, Any] | None) -> tuple:
    def ratio(this: str, other: str) -> float | None:
        if this in by and other in by and by[other].msgs_per_s:
            return round(by[this].msgs_per_s / by[other].msgs_per_s, 2)
        return None

    def cpu_ratio(this: str, other: str) -> float | None:
        """Inverse ratio of total CPU per message: what the rates would be on a
        machine that nothing else loads, when CPU is the limit."""
        if this in by and other in by and by[this].cpu_us_per_msg.get("total"):
            return round(by[other].cpu_us_per_msg["total"] / by[this].cpu_us_per_msg["total"], 2)
        return None

    ratios = {
        "vigil_single_to_bare_noop": ratio("vigil_single", "bare_noop"),
        "vigil_single_to_ceiling": ratio("vigil_single", "ceiling"),
        "vigil_batch_to_ceiling": ratio("vigil_batch", "ceiling"),
        "vigil_single_to_seed_single": ratio("vigil_single", "seed_single"),
        "vigil_batch_to_seed_batch": ratio("vigil_batch", "seed_batch"),
        "vigil_batch_to_seed_single": ratio("vigil_batch", "seed_single"),
        "by_cpu_vigil_single_to_ceiling": cpu_ratio("vigil_single", "ceiling"),
        "by_cpu_vigil_batch_to_ceiling": cpu_ratio("vigil_batch", "ceiling"),
        "by_cpu_vigil_single_to_seed_single": cpu_ratio("vigil_single", "seed_single"),
        "by_cpu_vigil_batch_to_seed_batch": cpu_ratio("vigil_batch", "seed_batch"),
    }

    def target(name: str, value: Any, ok: bool | None, goal: str) -> dict[str, Any]:
        return {"target": name, "goal": goal, "value": value, "met": ok}

    def at_least(value: float | None, goal: float) -> bool | None:
        return None if value is None else value >= goal

    def at_most(value: float | None, goal: float) -> bool | None:
        return None if value is None else value <= goal

    vigil_keys = [key for key in ("vigil_single", "vigil_batch") if key in by]
    trips = [by[key].round_trips_per_msg for key in vigil_keys]
    p99 = [by[key].latency.get("p99_ms") for key in vigil_keys]
    single_p99 = by["vigil_single"].latency.get("p99_ms") if "vigil_single" in by else None
    idle_p99 = by["vigil_single"].latency_1ps.get("p99_ms") if "vigil_single" in by else None
    idle_goal = _flush_interval_ms() + 20
    targets = [
        target(
            "vigil single (buffered) vs bare Celery no-op",
            ratios["vigil_single_to_bare_noop"],
            at_least(ratios["vigil_single_to_bare_noop"], 1.5),
            ">= 1.5x",
        ),
        target(
            "p99 enqueue-to-envelope, vigil single, half load",
            single_p99,
            at_most(single_p99, 100),
            "<= 100 ms",
        ),
        target(
            "p99 enqueue-to-envelope, vigil single, 1 msg/s",
            idle_p99,
            at_most(idle_p99, idle_goal),
            f"<= flush interval + 20 = {idle_goal:.0f} ms",
        ),
        target(
            "vigil batch vs ceiling",
            ratios["vigil_batch_to_ceiling"],
            at_least(ratios["vigil_batch_to_ceiling"], 8),
            ">= 8x",
        ),
        target(
            "vigil single vs seed-style single",
            ratios["vigil_single_to_seed_single"],
            at_least(ratios["vigil_single_to_seed_single"], 3),
            ">= 3x",
        ),
        target(
            "vigil batch vs seed-style batch",
            ratios["vigil_batch_to_seed_batch"],
            at_least(ratios["vigil_batch_to_seed_batch"], 10),
            ">= 10x",
        ),
        target(
            "Redis round trips per message (vigil, worst path)",
            max(trips) if trips and None not in trips else None,
            at_most(max(trips), 2) if trips and None not in trips else None,
            "<= 2",
        ),
        target(
            "p99 enqueue-to-envelope at half load (vigil, worst path)",
            max(p99) if p99 and None not in p99 else None,
            at_most(max(p99), 50) if p99 and None not in p99 else None,
            "<= 50 ms",
        ),
    ]
    if correlator and "query_ms_median" in correlator:
        query_ms = correlator["query_ms_median"]
        targets.append(
            target(
                f"correlator query on {correlator.get('rows', '?')} rows (median)",
                query_ms,
                at_most(query_ms, 100),
                "< 100 ms",
            )
        )
        if "steady_tick_ms_median" in correlator:
            tick_ms = correlator["steady_tick_ms_median"]
            targets.append(
                target(
                    "correlator tick, nothing new (median)",
                    tick_ms,
                    at_most(tick_ms, 100),
                    "< 100 ms",
                )
            )
    return ratios, targets


def _flush_interval_ms() -> float:
    return get_settings().ingest_flush_interval_s * 1000


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# vigil benchmark ({result['mode']}, {result['generated_at']})",
        "",
        f"Machine: {result['machine']['cpus']} CPUs, Python {result['machine']['python']}, "
        f"celery {result['machine']['celery']}, redis-server {result['machine']['redis_server']}. "
        f"Worker: {result['worker']}.",
        "",
        "| contender | task | msgs/task | msgs/s (median) | runs | p50 ms | p99 ms "
        "| p50 / p99 ms at 1 msg/s | round trips/msg | server cmds/msg | bytes/user | bytes/msg "
        "| CPU us/msg worker + broker + state = total | verified |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["contenders"].values():
        lat = row["latency"]
        idle = row.get("latency_1ps") or {}
        lines.append(
            f"| {row['label']} | `{row['task']}` | {row['batch'] or 1} | {row['msgs_per_s']:.0f} "
            f"| {', '.join(f'{rate:.0f}' for rate in row['runs_msgs_per_s'])} "
            f"| {_fmt(lat.get('p50_ms'))} | {_fmt(lat.get('p99_ms'))} "
            f"| {_fmt(idle.get('p50_ms'))} / {_fmt(idle.get('p99_ms'))} "
            f"| {_fmt(row['round_trips_per_msg'])} | {_fmt(row['server_commands_per_msg'])} "
            f"| {_fmt(row['memory_bytes_per_user'])} | {_fmt(row.get('memory_bytes_per_msg'))} "
            f"| {_cpu_cell(row['cpu_us_per_msg'])} "
            f"| {row['verified']} |"
        )
    lines += ["", "## Ratios", ""]
    for name, value in result["ratios"].items():
        lines.append(f"- {name.replace('_', ' ')}: {_fmt(value)}x")
    lines += ["", "## Targets", "", "| target | goal | measured | met |", "|---|---|---|---|"]
    for goal in result["targets"]:
        met = {True: "yes", False: "NO", None: "not measured"}[goal["met"]]
        lines.append(f"| {goal['target']} | {goal['goal']} | {_fmt(goal['value'])} | {met} |")
    events = result.get("events_ab")
    if events:
        lines += [
            "",
            "## Task events of the buffered path: per request or per buffer",
            "",
            f"`vigil.ingest.message`, {events['messages_per_run']} messages per run, the two "
            f"modes alternating for {events['rounds']} rounds (a fresh worker per run).",
            "",
            "| VIGIL_INGEST_TASK_EVENTS | msgs/s (median) | runs "
            "| worker CPU us/msg | total CPU us/msg |",
            "|---|---|---|---|---|",
        ]
        for mode in ("per_request", "per_buffer"):
            row = events[mode]
            lines.append(
                f"| {mode} | {row['msgs_per_s']:.0f} "
                f"| {', '.join(f'{rate:.0f}' for rate in row['msgs_per_s_runs'])} "
                f"| {row['worker_cpu_us_per_msg']:.0f} | {row['total_cpu_us_per_msg']:.0f} |"
            )
        lines += [
            "",
            f"per_buffer / per_request throughput: {_fmt(events['per_buffer_to_per_request'])}x; "
            f"per-request events cost {_fmt(events['per_request_extra_worker_cpu_us_per_msg'])} "
            "us of worker CPU per message.",
        ]
    corr = result.get("correlator")
    if corr:
        lines += ["", "## Correlator", ""]
        if "error" in corr:
            lines.append(f"Not measured: {corr['error']}")
        else:
            lines.append(
                f"{corr['rows']} attribution_state rows ({corr['multi_actor_rows']} multi_actor, "
                f"{corr['identities']} identities, loaded in {corr['load_s']} s); "
                f"{corr['suspected_identities']} identities suspected. Query median "
                f"{corr['query_ms_median']} ms over {len(corr['query_ms_all'])} runs "
                f"({', '.join(map(str, corr['query_ms_all']))})."
            )
            if "steady_tick_ms_median" in corr:
                lines.append(
                    f"Whole tick (lock, query, compare with correlator_fired, outbox): first "
                    f"{corr['first_tick_ms']} ms (announces every suspect), then median "
                    f"{corr['steady_tick_ms_median']} ms with nothing new."
                )
            lines += ["", "```", *corr.get("plan_summary", []), "```"]
    prof = result.get("profile")
    if prof:
        lines += ["", "## Where the time goes (cProfile in the worker)", ""]
        lines.append(
            "The profiler slows every call, so only shares mean anything. busy = profiled "
            "time minus waits (poll/select/sleep); per message = busy / messages."
        )
        for key, roles in prof.items():
            for role, summary in roles.items():
                if "error" in summary:
                    lines += ["", f"### {key}, {role}: {summary['error']}"]
                    continue
                lines += [
                    "",
                    f"### {key}, pool {role} ({summary['processes']} process(es)): "
                    f"busy {summary['busy_s']} s, {summary['busy_us_per_msg']} us/msg, "
                    f"waiting {summary['idle_wait_s']} s",
                    "",
                ]
                for label, mark in summary["marks"].items():
                    lines.append(
                        f"- {label}: {mark['us_per_msg']} us/msg, "
                        f"{mark['share_of_busy']:.0%} of busy"
                    )
                lines += ["", "| function | calls | tottime s | share of busy |", _RULE4]
                for row in summary["top_tottime"]:
                    lines.append(
                        f"| `{row['function']}` | {row['calls']} | {row['tottime_s']} "
                        f"| {row['share_of_busy']:.1%} |"
                    )
    lines.append("")
    return "\n".join(lines)


_RULE4 = "|---|---|---|---|"


def _cpu_cell(cpu: dict[str, float]) -> str:
    if not cpu:
        return "-"
    return (
        f"{cpu['worker']:.0f} + {cpu['broker_redis']:.0f} + {cpu['state_redis']:.0f}"
        f" = {cpu['total']:.0f}"
    )


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.0f}"
    return str(value)
