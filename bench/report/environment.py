"""The report's environment section: env.json as a table, with where the harness's time went and the run's noise."""

from __future__ import annotations

from typing import Any

from bench.report.document import Block, Section, table_block
from bench.report.tables import env_table


def environment_section(env: dict[str, Any]) -> Section:
    if not env:
        return Section("Environment", [Block("warning", text="env.json is missing: machine and versions unknown")])
    blocks = [Block("text", text=line) for line in (phases_line(env), noise_line(env)) if line]
    return Section("Environment", [*blocks, table_block(env_table({"value": env}).rename(columns={"": "key"}),
                                                        "env")], folded=True)


PHASE_WORDS = {"timing": "timed rounds", "validation": "validation", "references": "float64 references",
               "compiling": "compiling", "models": "models and forward passes", "warm-up": "warm-up", "heap": "heap",
               "startup": "start-up", "finish": "finishing", "report": "report"}


def phases_line(env: dict[str, Any]) -> str:
    """"Where the harness's time went: 212 s in all: timed rounds 120 s, ...": env.json's phases, largest first."""
    phases = env.get("phases") if isinstance(env.get("phases"), dict) else {}
    if not phases:
        return ""
    processes = [p for p in env.get("processes", []) if isinstance(p, dict)]
    waited = sum(p.get("waited_s") or 0.0 for p in processes)
    waiting = {"timing": f" ({waited:.0f} s of it waiting for a slow episode of the machine or other processes' "
                         "load to pass)"} if waited >= 0.5 else {}
    parts = ", ".join(f"{PHASE_WORDS.get(name, name)} {seconds:.0f} s{waiting.get(name, '')}" for name, seconds in
                      sorted(phases.items(), key=lambda kv: -kv[1]) if seconds >= 0.5)
    walls = [p.get("wall_s") for p in processes if p.get("wall_s")]
    total = f"{sum(walls) + phases.get('finish', 0) + phases.get('report', 0):.0f} s in all over " \
            f"{len(walls)} worker process{'es' if len(walls) != 1 else ''}: " if walls else ""
    return f"Where the harness's time went: {total}{parts}."


def noise_line(env: dict[str, Any]) -> str:
    """The run's own measure of its noise: what a second process changes."""
    noise = env.get("noise") if isinstance(env.get("noise"), dict) else {}
    if not noise.get("cases_in_two_processes"):
        return ""
    compiled = noise.get("between_process_sd_time_compiled")
    solo = noise.get("between_process_sd_time_no_contender") or 0.0
    others = [f"compiled strategies ±{100 * compiled:.1f}%" if compiled else "",
              f"a strategy that is no contender, timed on its own in a few stretches, ±{100 * solo:.1f}%"
              if solo > noise["between_process_sd_time"] else ""]
    return (f"Noise: a worker process moves a case's median by ±{100 * noise['between_process_sd_time']:.1f}% "
            + (f"({'; '.join(o for o in others if o)}) " if any(others) else "")
            + f"(typical standard deviation, over {noise['cases_in_two_processes']} cases timed in both processes; "
            f"a case that moved more keeps its own) and a paired ratio by "
            f"±{100 * noise['between_process_sd_ratio']:.1f}%; intervals and verdicts include it.")
