"""Result files of one run: append-only cases.jsonl, atomic JSON/CSV writes, tolerant reading, the run's lock.

results/<run-id>/cases.jsonl     one JSON object per finished case (CASE_FIELDS), appended + fsynced as it finishes
results/<run-id>/benchmark.json  pytest-benchmark's JSON
results/<run-id>/env.json        machine, versions, settings, grid as run
results/<run-id>/summary.csv     one row per case, SUMMARY_COLUMNS first
results/<run-id>/playoffs.jsonl  one JSON object per shape: its contenders re-timed interleaved, and the verdict
This module is shared by measurement and reporting: it imports neither `strategies` nor plotting code.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import secrets
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from bench.errors import BenchError
from bench.schema import KEY_COLUMNS, case_key

SUMMARY_COLUMNS = [
    *(k for k in KEY_COLUMNS if k != "mode"),
    "status",
    "time_median_s",  # one full fn(model, x) call, forward included; only for status ok
    "time_iqr_s",
    "rounds",
    "forward_median_s",  # model(x) under no_grad, same device
    "peak_memory_bytes",  # peak bytes above the pre-call baseline, separate pass
    "max_abs_error",  # vs the float64 reference
    "is_jacobian",  # False where the strategy returns the sum over outputs and out_dim > 1: not a Jacobian timing
    "time_ci_low_s",  # 95% bootstrap interval of time_median_s
    "time_ci_high_s",
    "unstable",  # timed while other processes loaded the CPUs or the machine ran slow: the reason is in message
    "mode",  # "jacobian": J alone; "train": J with its graph, the penalty sum(J²) and its parameter gradient
    "setup_s",  # one-time cost before the first call: compiling (torch.compile) and that call; empty for eager
]

# Every field of a cases.jsonl record, in order.
CASE_FIELDS = SUMMARY_COLUMNS + [
    "message",  # why a case is not ok; empty when ok
    "iterations",  # calls per round
    "time_min_s",
    "time_mean_s",
    "predicted_memory_bytes",
    "tolerance",  # max_abs_error must stay <= tolerance
    "returns",  # "jacobian" | "output_sum"
    "independent_samples",
    "coupled",  # the model couples samples (row b depends on other rows), detected on this input
    "summary",  # the strategy's one-line description
    "cost",  # the strategy's asymptotic cost
    "sweeps",  # grid parts the shape belongs to: "base", "batch", "hidden", "in_dim", "out_dim", "plane", "cartesian"
    "compiled",  # the strategy compiles (torch.compile) for each shape
    "warnings",  # distinct warnings of the first call, e.g. torch.func falling back to a slow loop
    "case_id",  # pytest id: vmap_jacrev-cpu-mlp-B64-H256-in16-out16
    "wall_s",  # wall time spent on the whole case
    "round_times_s",  # seconds per call in each timed round (cases.jsonl only: summary.csv keeps the statistics)
]
SUMMARY_FIELDS = [f for f in CASE_FIELDS if f != "round_times_s"]  # summary.csv: every field but the raw rounds

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ResultsError(BenchError):
    """A result folder or file that cannot be used; the message says which and why."""


def check_run_id(run_id: str) -> str:
    if not _RUN_ID.match(run_id) or ".." in run_id:
        raise ResultsError(
            f"invalid run id {run_id!r}: use letters, digits, '.', '_' or '-' (no path separators, no '..')"
        )
    return run_id


def lock_run(results_root: Path, run_id: str) -> IO:
    """Hold an exclusive OS lock on results/.<run-id>.lock for as long as this process lives (the returned file stays
    open; the OS drops the lock when the process ends, even on kill -9). The lock file sits beside the run folder, so
    FORCE=1 can replace the folder while holding it. A second process gets a ResultsError naming the owner's pid."""
    results_root.mkdir(parents=True, exist_ok=True)
    lock = open(results_root / f".{run_id}.lock", "a+", encoding="utf-8")  # held open until the process ends
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        owner = _lock_owner(lock)
        lock.close()
        raise ResultsError(f"{results_root / run_id} is in use by pid {owner}: wait for that run to finish, or "
                           "choose another RUN") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def _lock_owner(lock: IO) -> str:
    for _ in range(20):  # the owner writes its pid right after taking the lock
        lock.seek(0)
        pid = lock.read().strip()
        if pid:
            return pid
        time.sleep(0.05)
    return "unknown"


def append_case(path: Path, record: dict[str, Any]) -> None:
    """Append one case record (CASE_FIELDS) to cases.jsonl; see append_line."""
    append_line(path, {k: record.get(k) for k in CASE_FIELDS})


def append_line(path: Path, record: dict[str, Any]) -> None:
    """Append one record as a JSON line and force it to disk: a kill -9 right after loses nothing.
    A NaN or inf number is written as null (strict JSON has neither)."""
    line = json.dumps(_finite(record), allow_nan=False, default=str)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a .jsonl file that may not exist (an older run) or end in a torn line (skipped)."""
    if not path.exists():
        return []
    found = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            found.append(record)
    return found


def read_cases(path: Path) -> list[dict[str, Any]]:
    """All valid records. A torn line (a writer killed mid-line) or a corrupt one is skipped with one warning;
    a file with lines but no valid record at all is an error."""
    if not path.exists():
        raise ResultsError(f"{path}: no such file (is this a run folder?)")
    records, skipped = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict) or any(k not in record for k in (*KEY_COLUMNS, "status")):
                skipped.append(n)
                continue
            records.append(record)
    if skipped and not records:
        raise ResultsError(f"{path}: corrupt, none of its {len(skipped)} line(s) is a case record")
    if skipped:
        lines = ", ".join(map(str, skipped[:5])) + (", ..." if len(skipped) > 5 else "")
        warnings.warn(f"{path}: skipped {len(skipped)} torn or corrupt line(s): {lines}", stacklevel=2)
    return records


def drop_torn_tail(path: Path) -> None:
    """Cut a last line that has no newline (its writer was killed mid-write) so appends start on a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, then rename: readers see the old file or the new one."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        # mode 0o666 under the process umask, like any file the user creates (mkstemp would make it 0600)
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: not valid JSON ({exc})") from None


def write_summary(path: Path, records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """summary.csv: one row per case, the last record wins when a case appears twice (a resumed run).
    Returns those rows' records."""
    import pandas as pd

    latest = list({case_key(r): r for r in records}.values())
    frame = pd.DataFrame(latest, columns=SUMMARY_FIELDS)
    for column in ("sweeps", "warnings"):  # lists, one cell each
        frame[column] = frame[column].map(lambda s: "|".join(s) if isinstance(s, list) else s)
    atomic_write_text(path, frame.to_csv(index=False))
    return latest


def plots_dir(run_folder: Path) -> Path:
    """Where a run's figures go: plots/ mirrors results/. The results root is the nearest folder above the run named
    `results` (else the run's parent: whatever --results-dir named); its sibling `plots` holds the run's path below
    it: results/x -> plots/x, results/reference/x -> plots/reference/x, /out/results/x -> /out/plots/x."""
    folder = Path(run_folder).resolve()
    root = next((p for p in folder.parents if p.name == "results"), folder.parent)
    return root.parent / "plots" / folder.relative_to(root)


def resolve_run_dir(spec: str | Path, results_root: Path = Path("results")) -> Path:
    """A run given as a folder path, a run id under results/, or 'latest'."""
    path = Path(spec)
    if not path.exists() and not path.is_absolute() and len(path.parts) == 1:
        path = results_root / path
    if not path.is_dir():
        raise ResultsError(f"run folder {spec!r} not found (give results/<run-id>, a run id, or 'latest')")
    if not (path / "cases.jsonl").exists():
        raise ResultsError(f"{path}: no cases.jsonl, not a jacobench run folder")
    return path


def merge_benchmark_json(main: Path, part: Path) -> None:
    """Fold a resumed session's pytest-benchmark JSON into the run's benchmark.json (the part file is removed)."""
    if not part.exists():
        return
    try:
        new = json.loads(part.read_text(encoding="utf-8") or "{}")
    except json.JSONDecodeError:
        part.unlink()
        return
    try:
        old = json.loads(main.read_text(encoding="utf-8")) if main.exists() else {}
    except json.JSONDecodeError:
        old = {}
    if new:
        merged = new | {"benchmarks": old.get("benchmarks", []) + new.get("benchmarks", [])}
        write_json(main, merged)
    part.unlink()
