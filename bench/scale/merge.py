"""`make merge RUN=<run>` (`python -m bench merge <run>`): the shards results/<run>.shard-k-of-N/ of one plan joined
into the run folder results/<run>/, as if one process had measured them all.

Refused in one line: shards of different plans (plan hash: grid, settings, torch version; bench/scale/shards.py), of
different splits, or sharing a case. Merged: cases.jsonl, verdicts.jsonl and benchmark.json (pytest-benchmark's
records) in shard order; env.json is the first shard's, with the run id, the earliest start, every shard's host,
times and counts under `shards`, every shard's worker processes under `processes` (each marked with its shard, so
the merged `phases` add up what every shard spent), and `merged` (which shards, which are missing). Then
bench.run.session.finish writes summary.csv and the end of the run, as for any run, and the caller builds the report
and seals the merge.
Missing or unfinished shards are merged as far as they go and named. Merging the same shard files again changes
nothing: `merged.inputs` (a digest of every shard file) says the folder is up to date.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import results
from bench.run import session
from bench.scale import shards
from bench.scale.shards import ShardError
from bench.schema import case_key

SHARD_FILES = ("cases.jsonl", results.VERDICTS_FILE, "benchmark.json", "env.json")


@dataclass
class ShardRun:
    index: int
    count: int
    path: Path
    env: dict[str, Any]
    cases: list[dict[str, Any]]
    playoffs: list[dict[str, Any]]
    running: str = ""  # the pid that holds the shard's lock, "" when none does

    @property
    def finished(self) -> int:
        return len({case_key(r) for r in self.cases})

    @property
    def planned(self) -> int:
        return int(self.env.get("planned_cases") or 0)

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass
class Merged:
    folder: Path
    count: int
    planned: int
    finished: int
    present: list[int]
    missing: list[int] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)  # "2/4 (120 of 180 cases, still running as pid 7)"
    hosts: list[str] = field(default_factory=list)
    inputs: str = ""  # digest of every shard file merged
    changed: bool = True  # False: the folder already held this merge

    @property
    def complete(self) -> bool:
        return not self.missing and not self.incomplete

    def summary(self, run: str) -> str:
        head = (f"merged {len(self.present)} of {self.count} shards into {self.folder}: planned {self.planned}, "
                f"finished {self.finished}")
        if self.missing:
            head += f", missing shards {', '.join(f'{k}/{self.count}' for k in self.missing)}"
        if self.incomplete:
            head += f", unfinished shards {', '.join(self.incomplete)}"
        if not self.complete:
            head += (f"; run them (make bench RUN={run} SHARD=k/{self.count}, RESUME=1 for an unfinished one), then "
                     f"make merge RUN={run} again")
        elif self.hosts:
            head += f" (hosts: {', '.join(self.hosts)})"
        return head + ("" if self.changed else "; already merged from the same shard files, nothing changed")


def read_shards(results_root: Path, run: str) -> list[ShardRun]:
    found = shards.find(results_root, run)
    if not found:
        raise ShardError(f"no shards of run {run!r} in {results_root} (looked for "
                         f"{Path(results_root) / shards.folder_name(run, 1, 2).replace('1-of-2', 'k-of-N')})")
    runs = []
    for index, (count, path) in sorted(found.items()):
        env_path = path / "env.json"
        env = results.read_json(env_path) if env_path.exists() else {}
        if not isinstance(env, dict) or not env.get("plan_hash") or not isinstance(env.get("shard"), dict):
            raise ShardError(f"{path}: env.json names no plan and shard; it is not a shard of a jacobench run (or "
                             "was cut off before its env.json was written: run it again with FORCE=1)")
        runs.append(ShardRun(index, count, path, env, results.read_lines(path / "cases.jsonl"),
                             results.read_lines(results.verdicts_path(path)), _holder(results_root, path.name)))
    check_one_plan(runs)
    return runs


def _holder(results_root: Path, run_id: str) -> str:
    """The pid measuring a shard now, "" when none is (the shard's lock is free)."""
    try:
        results.lock_run(Path(results_root), run_id).close()
    except results.ResultsError as exc:
        return str(exc).split(" in use by pid ")[-1].split(":")[0]
    return ""


def check_one_plan(runs: list[ShardRun]) -> None:
    """One line naming two shards that do not belong together, and how."""
    first = runs[0]
    for other in runs[1:]:
        a, b = first.env, other.env
        if a["plan_hash"] != b["plan_hash"]:
            raise ShardError(f"shards of different plans: {first.path.name} is plan {a['plan_hash']} "
                             f"({_describe(a)}), {other.path.name} is plan {b['plan_hash']} ({_describe(b)}); "
                             "merge the shards of one plan only")
        if a["shard"].get("split") != b["shard"].get("split"):
            raise ShardError(f"{first.path.name} and {other.path.name}: one plan split differently (another "
                             "version of the cost model?); run the shards with one version of jacobench")
    seen: dict[tuple, str] = {}
    for shard in runs:
        for key in {case_key(r) for r in shard.cases}:
            if key in seen:
                raise ShardError(f"case {'-'.join(map(str, key))} is in {seen[key]} and {shard.path.name}: the "
                                 "shards overlap, they were not split from one plan")
            seen[key] = shard.path.name


def _describe(env: dict[str, Any]) -> str:
    grid = (env.get("grid") or {}).get("name", "?")
    fp = env.get("fingerprint") or {}
    return (f"grid {grid}, devices {','.join(fp.get('devices') or [])}, {len(fp.get('strategies') or [])} "
            f"strategies, threads {fp.get('threads')}, torch {env.get('torch')}")


def digest(runs: list[ShardRun]) -> str:
    h = hashlib.sha256()
    for shard in runs:
        h.update(f"shard {shard.label}\n".encode())
        for name in SHARD_FILES:
            path = shard.path / name
            h.update(name.encode() + b"\n" + (path.read_bytes() if path.exists() else b"") + b"\n")
    return h.hexdigest()[:16]


def merge(results_root: Path, run: str) -> Merged:
    """Merge the shards of `run` into results_root/run (the caller holds that folder's lock: results.lock_run)."""
    runs = read_shards(results_root, run)
    count = runs[0].count
    folder = Path(results_root) / results.check_run_id(run)
    result = Merged(folder, count, int(runs[0].env.get("plan_cases") or 0), sum(s.finished for s in runs),
                    [s.index for s in runs], sorted(set(range(1, count + 1)) - {s.index for s in runs}),
                    [_unfinished(s) for s in runs if s.running or s.finished < s.planned],
                    list(dict.fromkeys(str(s.env.get("hostname")) for s in runs)), digest(runs))
    previous = _previous(folder)
    if previous.get("inputs") == result.inputs:
        result.changed = False
        return result
    folder.mkdir(parents=True, exist_ok=True)
    results.write_lines(folder / "cases.jsonl", [r for s in runs for r in s.cases])
    results.write_lines(folder / results.VERDICTS_FILE, [r for s in runs for r in s.playoffs])
    benchmarks = [b for s in runs if (b := _benchmark(s.path / "benchmark.json"))]
    if benchmarks:
        results.write_json(folder / "benchmark.json",
                           benchmarks[0] | {"benchmarks": [x for b in benchmarks for x in b.get("benchmarks", [])]})
    results.write_json(folder / "env.json", merged_env(runs, run, result))
    session.finish(folder, interrupted=any(s.env.get("interrupted") for s in runs))
    return result


def _unfinished(shard: ShardRun) -> str:
    running = f", still running as pid {shard.running}" if shard.running else ""
    return f"{shard.label} ({shard.finished} of {shard.planned} cases{running})"


def _previous(folder: Path) -> dict[str, Any]:
    """The `merged` record of an earlier merge into `folder` ({} for none); a folder that holds another kind of run
    is refused."""
    env_path = folder / "env.json"
    if not env_path.exists():
        if (folder / "cases.jsonl").exists():
            raise ShardError(f"{folder} holds a run that is not a merge of its shards; choose another RUN")
        return {}
    env = results.read_json(env_path)
    if not isinstance(env, dict) or not isinstance(env.get("merged"), dict):
        raise ShardError(f"{folder} holds a run that is not a merge of its shards; choose another RUN")
    return env["merged"]


def seal(merged: Merged) -> None:
    """Record the merged inputs in env.json, last: an interrupted merge (or report) is done again next time."""
    env_path = merged.folder / "env.json"
    env = results.read_json(env_path)
    env["merged"]["inputs"] = merged.inputs
    results.write_json(env_path, env)


def merged_env(runs: list[ShardRun], run: str, merged: Merged) -> dict[str, Any]:
    base = dict(runs[0].env)
    for key in ("finished", "interrupted", "status_counts", "shard", "phases", "noise"):
        base.pop(key, None)  # finishing the merged run writes them anew
    created = sorted(str(s.env["created"]) for s in runs if s.env.get("created"))
    return base | {
        "run_id": run,
        "created": created[0] if created else None,
        "resumed": sorted({t for s in runs for t in s.env.get("resumed") or []}),
        "hostname": ", ".join(merged.hosts),
        "settings": (base.get("settings") or {}) | {"run": run, "shard": ""},
        "fingerprint": {k: v for k, v in (base.get("fingerprint") or {}).items() if k != "shard"},
        "planned_cases": merged.planned,
        "processes": [p | {"shard": s.index} for s in runs for p in s.env.get("processes") or []],
        "shard": None,
        "shards": [{"index": s.index, "folder": s.path.name, "hostname": s.env.get("hostname"),
                    "created": s.env.get("created"), "finished": s.env.get("finished"),
                    "interrupted": s.env.get("interrupted"), "planned_cases": s.planned, "cases": s.finished,
                    "status_counts": s.env.get("status_counts"), "git_commit": s.env.get("git_commit"),
                    "devices": s.env.get("devices"), "phases": s.env.get("phases")} for s in runs],
        "merged": {"count": merged.count, "present": merged.present, "missing": merged.missing,
                   "incomplete": merged.incomplete, "inputs": None},
    }


def _benchmark(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None
