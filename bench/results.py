"""Result files of one run: the format, its version and its upgrade; append-only writes, tolerant reads, the lock.

results/<run-id>/cases.jsonl     one CaseRecord per finished case, appended + fsynced as it finishes
results/<run-id>/benchmark.json  pytest-benchmark's JSON
results/<run-id>/env.json        machine, versions, settings, grid as run, and format_version
results/<run-id>/summary.csv     one row per case: the CaseRecord fields marked for the summary, in their order
results/<run-id>/verdicts.jsonl  one VerdictRecord per shape: its contenders' paired rounds, and the verdict

Format versions: 1 (no format_version in env.json) is every run folder written before the records were typed
(early ones lack `mode`, `is_jacobian`, round times, or hold "a|b" strings where lists belong); 2 writes every
CaseRecord field, and the verdicts in playoffs.jsonl; 3 marks closed forms and other frameworks' peers in the record
(`closed_form`, `peer`: before, closed forms were known by name), keeps each worker process's forward time
(`forward_process_s`), and writes the verdicts to verdicts.jsonl. Older folders are upgraded when they are read
(`read_run`), never rewritten and never rejected.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bench.errors import BenchError
from bench.schema import AXES, KEY_COLUMNS, SUMMARY_COLUMNS, CaseRecord, VerdictRecord, case_key, is_jacobian

FORMAT_VERSION = 3
VERDICTS_FILE = "verdicts.jsonl"
VERDICTS_FILE_2 = "playoffs.jsonl"  # format 2's name for it
CLOSED_FORMS_2 = frozenset({"analytic", "hessian_analytic", "laplacian_analytic", "laplacian_trace_analytic"})

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


def append_case(path: Path, record: CaseRecord) -> None:
    """Append one case record to cases.jsonl; see append_line. A later record of the same case replaces an earlier
    one when the file is read (a resumed run, the second worker process, the finished numbers)."""
    append_line(path, record.as_dict())


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


def read_cases(path: Path) -> list[CaseRecord]:
    """All valid records, upgraded to the current format. A torn line (a writer killed mid-line) or a corrupt one is
    skipped with one warning; a file with lines but no valid record at all is an error."""
    if not path.exists():
        raise ResultsError(f"{path}: no such file (is this a run folder?)")
    records, skipped = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            record = _case(line)
            if record is None:
                skipped.append(n)
            else:
                records.append(record)
    if skipped and not records:
        raise ResultsError(f"{path}: corrupt, none of its {len(skipped)} line(s) is a case record")
    if skipped:
        lines = ", ".join(map(str, skipped[:5])) + (", ..." if len(skipped) > 5 else "")
        warnings.warn(f"{path}: skipped {len(skipped)} torn or corrupt line(s): {lines}", stacklevel=2)
    return records


def _case(line: str) -> CaseRecord | None:
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    try:
        record = CaseRecord.from_dict(upgrade_case(data))
    except (KeyError, TypeError):
        return None
    sizes_ok = all(isinstance(getattr(record, a), int) and not isinstance(getattr(record, a), bool) for a in AXES)
    return record if sizes_ok and all(isinstance(getattr(record, k), str) for k in KEY_COLUMNS if k not in AXES) \
        else None


def read_verdicts(path: Path) -> list[VerdictRecord]:
    """The verdicts of a verdict file (none for an older run without one), upgraded; unusable lines are skipped."""
    found = []
    for data in read_lines(path):
        try:
            found.append(VerdictRecord.from_dict(upgrade_verdict(data)))
        except (KeyError, TypeError):
            continue
    return found


# ---- upgrading older run folders -------------------------------------------------------------------------------------

def upgrade_case(data: dict[str, Any]) -> dict[str, Any]:
    """A case record of any format version as the current version writes it (idempotent)."""
    data = dict(data)
    data.setdefault("mode", "jacobian")  # a run from before train mode
    data["quantity"] = data.get("quantity") or "jacobian"  # a run from before the QUANTITY axis measured Jacobians
    for key in ("sweeps", "warnings"):  # summary.csv-style "a|b" strings in early files
        value = data.get(key)
        data[key] = value.split("|") if isinstance(value, str) and value else value if isinstance(value, list) else []
    if not isinstance(data.get("round_times_s"), list):
        data["round_times_s"] = []
    if data.get("is_jacobian") is None and "out_dim" in data:
        data["is_jacobian"] = is_jacobian(data.get("returns") or "jacobian", data["out_dim"])
    if data.get("closed_form") is None:  # format 2 knew the closed forms by name
        data["closed_form"] = data.get("strategy") in CLOSED_FORMS_2
    data["peer"] = data.get("peer") or ""
    for key in ("unstable", "compiled", "estimator", "closed_form"):
        data[key] = data.get(key) is True
    for key in ("message", "summary", "cost", "returns"):
        data[key] = data.get(key) or ("jacobian" if key == "returns" else "")
    return data


def upgrade_verdict(data: dict[str, Any]) -> dict[str, Any]:
    """A playoff record of any format version as the current version writes it (idempotent)."""
    data = dict(data)
    data.setdefault("mode", "jacobian")
    data["quantity"] = data.get("quantity") or "jacobian"
    tied = data.get("tied_with")
    data["tied_with"] = tied.split(", ") if isinstance(tied, str) and tied else tied if isinstance(tied, list) else []
    data["unstable"] = data.get("unstable") is True
    return data


def upgrade_env(env: dict[str, Any]) -> dict[str, Any]:
    """env.json of any format version, with the version it was written in recorded as `format_version_read`."""
    return {**env, "format_version_read": env.get("format_version", 1), "format_version": FORMAT_VERSION}


@dataclass
class RunFiles:
    """A run folder's files as the current format reads them, whatever version wrote them."""

    env: dict[str, Any]
    cases: list[CaseRecord]
    verdicts: list[VerdictRecord]
    warnings: list[str] = field(default_factory=list)  # what a reader must know: corrupt lines, a missing env.json


def read_run(folder: Path) -> RunFiles:
    """Read and upgrade every file of a run folder (cases.jsonl, verdicts.jsonl, env.json): the one way reporting
    reads a run. ResultsError when the folder holds no usable case."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ResultsError(f"{folder}: no such run folder (give results/<run-id>)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cases = read_cases(folder / "cases.jsonl")
    notes = [str(w.message) for w in caught]
    if not cases:
        torn = f" ({len(notes)} corrupt lines skipped)" if notes else ""
        raise ResultsError(f"{folder / 'cases.jsonl'}: no case records{torn}; the run is empty or broken: run "
                           "`make bench` again")
    env_path = folder / "env.json"
    env = read_json(env_path) if env_path.exists() else {}
    if not isinstance(env, dict):
        raise ResultsError(f"{env_path}: expected a JSON object; delete it or rerun the benchmark")
    if not env_path.exists():
        notes.append(f"{env_path}: missing, environment unknown")
    return RunFiles(upgrade_env(env) if env else {}, cases, read_verdicts(verdicts_path(folder)), notes)


def verdicts_path(folder: Path) -> Path:
    """The run's verdict file: verdicts.jsonl, or playoffs.jsonl in a format-2 folder."""
    path = Path(folder) / VERDICTS_FILE
    older = Path(folder) / VERDICTS_FILE_2
    return older if not path.exists() and older.exists() else path


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


def write_lines(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """A whole .jsonl file replaced at once (finishing a run compacts its records: one line per case, with the run's
    numbers): readers, and a kill in the middle, see the old file or the new one."""
    atomic_write_text(path, "".join(json.dumps(_finite(r), allow_nan=False, default=str) + "\n" for r in records))


def replace_benchmark_entries(path: Path, entries: list[dict[str, Any]]) -> None:
    """benchmark.json with the per-case entries replaced by `entries` (pytest-benchmark's own entries of the run,
    the forward passes, stay); nothing is written when pytest-benchmark wrote no file (no pytest session ran)."""
    if not path.exists():
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return
    kept = [b for b in data.get("benchmarks", []) if (b.get("extra_info") or {}).get("kind") != "case"]
    write_json(path, data | {"benchmarks": kept + entries})


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: not valid JSON ({exc})") from None


def write_summary(path: Path, records: Iterable[CaseRecord]) -> list[CaseRecord]:
    """summary.csv: one row per case, the last record wins when a case appears twice (a resumed run).
    Returns those rows' records."""
    import pandas as pd

    latest = list({case_key(r): r for r in records}.values())
    frame = pd.DataFrame([r.as_dict() for r in latest], columns=SUMMARY_COLUMNS)
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
