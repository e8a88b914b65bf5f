"""Each setting, column and format rule lives in one place, and everything that lists them stays in step with it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from bench import results
from bench.report.document import render
from bench.report.frames import load_run
from bench.report.run_report import Tables, run_document
from bench.schema import CASE_FIELDS, SUMMARY_COLUMNS, CaseRecord, columns_table
from bench.spec import settings
from tests.helpers import REPO, bench_env

MAKEFILE = (REPO / "Makefile").read_text()
RUNNING = (REPO / "docs" / "running.md").read_text()  # the variable table
RESULTS = (REPO / "docs" / "results.md").read_text()  # the columns of summary.csv


@pytest.mark.parametrize("setting", list(settings.declared()), ids=lambda f: f.name)
def test_the_makefile_passes_every_setting_under_its_one_flag(setting):
    var, flag = setting.metadata["make"], settings.flag(setting)
    assert re.search(rf"^{var} \?=", MAKEFILE, re.M), f"{var} is not declared in the Makefile"
    if isinstance(setting.default, bool):
        passed = f"$(if $(call yes,$({var})),{flag})"
    elif setting.name == "grid":
        passed = f"{flag} '$({var})'"
    else:
        passed = f"$(if $({var}),{flag} '$({var})')"
    assert passed in MAKEFILE, f"BENCH_ARGS does not pass {var} as {flag}"
    assert f"`{var}" in RUNNING, f"docs/running.md's variable table has no row for {var}"


@pytest.mark.slow
def test_run_help_explains_every_option():
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--help"], cwd=REPO, env=bench_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    for f in settings.declared():
        assert settings.flag(f) in text and f"[make: {f.metadata['make']}=" in text, f.name


@pytest.mark.slow
def test_pytest_takes_the_same_flags_as_the_command_line():
    proc = subprocess.run([sys.executable, "-m", "pytest", "--help", "-p", "no:cacheprovider"], cwd=REPO,
                          env=bench_env(), capture_output=True, text=True, timeout=60)
    for f in settings.declared():
        assert re.search(rf"^\s+{re.escape(settings.flag(f))}\b", proc.stdout, re.M), settings.flag(f)


def test_documented_columns_come_from_the_record():
    table = RESULTS.split("<!-- columns:", 1)[1].split("-->", 1)[1].split("<!-- /columns -->", 1)[0].strip()
    assert table == columns_table()
    assert SUMMARY_COLUMNS == [c for c in CASE_FIELDS if c not in ("round_times_s", "process_rounds", "round_sweeps",
                                                                   "forward_process_s")]


def test_a_record_round_trips_through_cases_jsonl(tmp_path):
    record = CaseRecord(strategy="grad_loop", model="mlp", device="cpu", dtype="float32", batch=2, hidden=3,
                        in_dim=4, out_dim=5, status="ok", round_times_s=[1e-3, 2e-3], sweeps=["base"])
    results.append_case(tmp_path / "cases.jsonl", record)
    assert results.read_cases(tmp_path / "cases.jsonl") == [record]


def test_a_format_1_record_is_upgraded_on_reading(tmp_path):
    """A line as the first versions wrote it: no mode, no is_jacobian, sweeps as one string, no round times."""
    old = {"strategy": "grad_summed", "model": "mlp", "device": "cpu", "dtype": "float32", "batch": 4, "hidden": 8,
           "in_dim": 3, "out_dim": 2, "status": "ok", "time_median_s": 1e-4, "returns": "output_sum",
           "sweeps": "base|batch", "summary": "grad", "unknown_future_field": 1}
    (tmp_path / "cases.jsonl").write_text(json.dumps(old) + "\n")
    (record,) = results.read_cases(tmp_path / "cases.jsonl")
    assert record.mode == "jacobian" and record.is_jacobian is False and record.sweeps == ["base", "batch"]
    assert record.round_times_s == [] and record.warnings == []


REFERENCE_RUNS = sorted(p.parent for p in (REPO / "results" / "reference").glob("*/cases.jsonl"))


@pytest.mark.parametrize("folder", REFERENCE_RUNS, ids=lambda p: p.name)
def test_committed_reference_runs_load_and_render(folder, tmp_path):
    run = load_run(folder)
    assert run.env["format_version"] == results.FORMAT_VERSION and len(run.frame) > 0
    assert run.env["format_version_read"] <= results.FORMAT_VERSION
    doc = run_document(run, {}, Tables(tmp_path / "tables"))
    md = render(doc, tmp_path).read_text()
    assert "Fastest autodiff strategy per shape" in md
    assert re.search(r"\| (winner|tie with \w+)", md), "no verdict in the best table"


def test_the_smallest_reference_run_rebuilds_its_whole_report(tmp_path):
    copy = tmp_path / "results" / "cpu-published"
    shutil.copytree(REPO / "results" / "reference" / "cpu-published", copy)
    from bench.report.run_report import build_report

    md = build_report(copy)
    assert md.is_file() and md.with_suffix(".html").is_file()
    assert list((tmp_path / "plots" / "cpu-published").glob("*.png"))


DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_relative_link_of_the_docs_leads_to_a_file(document):
    """The README and docs/ link each other and the committed runs; a moved file breaks no link."""
    text = document.read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    missing = [t for t in targets if "://" not in t and not (document.parent / t).exists()]
    assert not missing, f"{document.name} links to files that do not exist: {missing}"
