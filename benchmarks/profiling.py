"""Where the time goes: cProfile in the worker's parent and children while one
path drains, summarised as shares of busy time (the profiler slows everything;
only shares mean anything)."""

from __future__ import annotations

import pstats
from pathlib import Path
from typing import Any

from benchmarks.contenders import Contender, make_messages, task_kwargs
from benchmarks.harness import Bench


def profile_paths(bench: Bench, contenders: list[Contender]) -> dict[str, Any]:
    """Profile each contender's path on a worker of its own, then start a plain one."""
    summaries: dict[str, Any] = {}
    for contender in contenders:
        prof_dir = bench.workdir / f"profile-{contender.key}"
        prof_dir.mkdir()
        bench.start_worker(
            {"VIGIL_BENCH_PROFILE_DIR": str(prof_dir)}, tag=f"profile-{contender.key}"
        )
        messages = make_messages(f"prof{contender.key}-p", contender.n)
        bench.send(contender.task, task_kwargs(contender, messages))
        bench.drain()
        bench.stop_worker()
        summaries[contender.key] = {
            role: summarize(sorted(prof_dir.glob(f"{role}-*.prof")), contender.n)
            for role in ("parent", "child")
        }
    bench.start_worker(tag="worker-after-profile")
    return summaries


_IDLE = ("poll", "select", "epoll", "_wait_for_tstate_lock", "acquire", "sleep", "posix.read",
         "waitpid")  # fmt: skip
_MARKS = {
    "IngestService.messages": ("services/ingest/service.py", "messages"),
    "scripts.run_many (Redis round trips)": ("services/core/scripts.py", "run_many"),
    "detector.detect": ("services/ingest/detector.py", "detect"),
    "SeedStyleIngest.message": ("benchmarks/seed_style.py", "message"),
    "celery trace (task call + bookkeeping)": ("celery/app/trace.py", "trace_task"),
}


def summarize(files: list[Path], n_msgs: int, top: int = 10) -> dict[str, Any]:
    if not files:
        return {"error": "no profile written"}
    stats = pstats.Stats(*(str(path) for path in files))
    raw = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in raw.values())
    idle = sum(entry[2] for (_, _, name), entry in raw.items() if _is_wait(name))
    busy = max(total - idle, 1e-9)
    rows = sorted(raw.items(), key=lambda item: item[1][2], reverse=True)
    top_rows = []
    for (path, line, name), (_, ncalls, tottime, _cum, _) in rows:
        if _is_wait(name):
            continue
        top_rows.append(
            {
                "function": f"{_short(path)}:{line}({name})",
                "calls": ncalls,
                "tottime_s": round(tottime, 3),
                "share_of_busy": round(tottime / busy, 3),
            }
        )
        if len(top_rows) == top:
            break
    marks = {}
    for label, (suffix, name) in _MARKS.items():
        cum = sum(
            entry[3]
            for (path, _, function), entry in raw.items()
            if path.endswith(suffix) and function == name
        )
        if cum:
            marks[label] = {
                "cumtime_s": round(cum, 3),
                "us_per_msg": round(cum / n_msgs * 1e6, 1),
                "share_of_busy": round(cum / busy, 3),
            }
    return {
        "processes": len(files),
        "busy_s": round(busy, 3),
        "idle_wait_s": round(idle, 3),
        "busy_us_per_msg": round(busy / n_msgs * 1e6, 1),
        "marks": marks,
        "top_tottime": top_rows,
    }


def _is_wait(function_name: str) -> bool:
    return any(wait in function_name for wait in _IDLE)


def _short(path: str) -> str:
    for anchor in ("site-packages/", "/work/main/", str(Path.cwd()) + "/"):
        if anchor in path:
            return path.split(anchor, 1)[1]
    return path
