"""`python -m bench check RUN`: what may make a run's numbers less than they seem, in a few lines (like `pyperf check`).

From the run's files only: the machine (frequency governor, isolated CPUs, time stolen by the hypervisor and used by
other processes while the run lasted, slow episodes the calibration call saw), the unstable cases and why, and the
strategies whose numbers the fidelity check found more than 10% away from a fresh process's.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from bench import results
from bench.fidelity import judged
from bench.schema import fmt_ratio

STEAL_WARN = 0.05  # of all CPU time, over the whole run
FOREIGN_WARN = 0.10
SLOW_WARN = 0.25  # share of calibrations that found the machine slower than usual


def check(folder: Path) -> list[str]:
    """The lines of the check; each starts with "warning:" or "ok:"."""
    env = results.read_json(folder / "env.json")
    records = results.read_cases(folder / "cases.jsonl")
    return machine_lines(env) + unstable_lines(records) + fidelity_lines(env.get("fidelity"))


def machine_lines(env: dict[str, Any]) -> list[str]:
    lines = []
    facts = env.get("cpu_facts") or {}
    governors = facts.get("governor")
    if governors and governors != ["performance"]:
        lines.append(f"warning: CPU frequency governor {', '.join(governors)} (not performance): the clock may change "
                     "under the benchmark")
    elif governors is None and "cpu_facts" in env:
        lines.append("ok: CPU frequency governor not exposed (a VM): frequency unknown")
    if facts.get("isolated"):
        lines.append(f"ok: isolated CPUs {facts['isolated']}")
    for load in env.get("load") or []:
        steal, foreign = load.get("steal_share"), load.get("foreign_share")
        if steal is not None and steal > STEAL_WARN:
            lines.append(f"warning: the hypervisor stole {steal:.0%} of the CPU time while the run lasted")
        if foreign is not None and foreign > FOREIGN_WARN:
            lines.append(f"warning: other processes used {foreign:.0%} of the CPUs while the run lasted")
    slow = [p["calibration"]["slow_share"] for p in env.get("processes", []) if (p.get("calibration") or {})
            .get("slow_share") is not None]
    if slow and max(slow) > SLOW_WARN:
        lines.append(f"warning: the machine ran slower than usual in {max(slow):.0%} of the calibration checks of a "
                     "worker process (slow episodes: their rounds were set aside and measured again)")
    return lines


def unstable_lines(records: list[Any]) -> list[str]:
    unstable = [r for r in records if r.status == "ok" and r.unstable]
    if not unstable:
        return [f"ok: no unstable case among {sum(r.status == 'ok' for r in records)} ok cases"]
    reasons = Counter(_reason(r.message) for r in unstable)
    lines = [f"warning: {len(unstable)} unstable cases (timed under disturbance; rerun on a quiet machine)"]
    lines += [f"  {n} × {reason}" for reason, n in reasons.most_common(5)]
    return lines


def _reason(message: str) -> str:
    for part in message.split("; "):
        if "unstable: " in part:
            return part.split("unstable: ", 1)[1]
    return "unstable"


def fidelity_lines(fidelity: dict[str, Any] | None) -> list[str]:
    if not fidelity or not fidelity.get("strategies"):
        return ["warning: no fidelity check: the run's numbers were not compared with a fresh process's "
                "(FIDELITY=0, an older run, or too short a run)"]
    strategies = fidelity["strategies"]
    off, unresolved = judged(fidelity)
    cases = fidelity.get("cases") or []
    head = (f"{fidelity.get('within_10pct', 0)} of {len(cases)} re-timed cases within ±10% of a fresh process")
    lines = [f"ok: fidelity: {head}; no strategy surely off by more than 10%" if not off else
             f"warning: fidelity: {head}; surely off by more than 10%:"]
    lines += [f"  {n}: run/fresh {_interval(strategies[n])}" for n in off]
    if unresolved:
        lines.append("note: past ±10% but not resolved by the check (its interval reaches back inside, or one fresh "
                     "process alone measured it; `python -m bench fidelity` times cases in several): "
                     + ", ".join(f"{n} {_interval(strategies[n])}" for n in unresolved))
    return lines


def _interval(s: dict[str, Any]) -> str:
    processes = s.get("processes", 1)
    return (f"{fmt_ratio(s['ratio'])} [{fmt_ratio(s['low'])}–{fmt_ratio(s['high'])}], {s['cases']} "
            f"case{'s' if s['cases'] != 1 else ''}, {processes} fresh process{'es' if processes != 1 else ''}")
