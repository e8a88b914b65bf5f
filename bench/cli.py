"""python -m bench <command>: run, plan, merge, submit, report, compare, recommend, fidelity, check, depth, grids.

Bad input prints one line on stderr and exits with status 2; results already written are never touched.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.schema import FIXED_HIDDEN, QUANTITIES
from bench.spec import settings

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a pipe closed early


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        raise BenchError(f"{self.prog}: {message} (see --help)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _size_or_fixed(text: str) -> int:
    """A positive width, or 0: the hidden width recorded for a model of fixed sizes."""
    return FIXED_HIDDEN if text.strip() == str(FIXED_HIDDEN) else _positive_int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="measure a grid (what `make bench` runs)",
                         description="Measure a grid: every strategy on every case, validated, then timed.")
    settings.add_options(run.add_argument)
    _add_plan(sub)
    merge = sub.add_parser("merge", help="join the shards results/<run>.shard-k-of-N of one plan into results/<run>")
    merge.add_argument("run", help="the run id the shards were started with (RUN=)")
    merge.add_argument("--results-dir", default="results", metavar="RESULTS_DIR")
    merge.add_argument("--no-report", action="store_true", help="merge and write summary.csv only")
    _add_submit(sub)
    report = sub.add_parser("report", help="rebuild report.md/html of a run from its files")
    report.add_argument("run", nargs="?", default="latest")
    compare = sub.add_parser("compare", help="compare two or more runs (e.g. a CPU box and a GPU box)")
    compare.add_argument("runs", nargs="*")
    _add_recommend(sub)
    _add_fidelity(sub)
    check = sub.add_parser("check", help="what may make a run's numbers less than they seem (machine, unstable "
                                         "cases, fidelity), in a few lines")
    check.add_argument("run", nargs="?", default="latest")
    _add_depth(sub)
    sub.add_parser("grids", help="list the grid presets")
    return parser


def _add_plan(sub: argparse._SubParsersAction) -> None:
    plan = sub.add_parser("plan", help="what a run will do and how long it will take; nothing is measured",
                          description="The cases of a run, those the memory budget skips, and the predicted wall time "
                                      "(bench/scale/costs.py); nothing is measured, nothing is written.")
    settings.add_options(plan.add_argument)
    plan.add_argument("--from", dest="from_run", default="", metavar="FROM",
                      help="predict from this run (results/<run>), not the committed reference runs [make: FROM=]")
    plan.add_argument("--shards", type=_positive_int, default=None, metavar="SHARDS",
                      help="also show the split into this many shards [make: SHARDS=]")
    plan.add_argument("--json", action="store_true", help="one JSON object, for machines")


def _add_submit(sub: argparse._SubParsersAction) -> None:
    submit = sub.add_parser("submit", help="run the shards of a plan as one job array (submitit: SLURM or local "
                                           "processes), then merge them",
                            description="One submitit job array, one shard per task; waits, then merges. Needs the "
                                        "optional extra: pip install -e '.[cluster]'.")
    settings.add_options(submit.add_argument)
    submit.add_argument("--shards", type=_positive_int, required=True, metavar="SHARDS", help="tasks of the array")
    submit.add_argument("--executor", default="", choices=["", "slurm", "local"],
                        help="slurm, or local processes (default: slurm where srun is on PATH) [make: EXECUTOR=]")
    submit.add_argument("--partition", default="", metavar="PARTITION", help="SLURM partition [make: PARTITION=]")
    submit.add_argument("--gpus-per-task", type=int, default=None, metavar="GPUS_PER_TASK",
                        help="GPUs per task (default: 1 when DEVICES has cuda, else 0) [make: GPUS_PER_TASK=]")
    submit.add_argument("--cpus-per-task", type=_positive_int, default=None, metavar="CPUS_PER_TASK",
                        help="CPUs per SLURM task [make: CPUS_PER_TASK=]")
    submit.add_argument("--timeout-min", type=_positive_int, default=None, metavar="TIMEOUT_MIN",
                        help="time limit per task in minutes (default: twice the predicted time, plus 15) "
                             "[make: TIMEOUT_MIN=]")
    submit.add_argument("--parallelism", type=_positive_int, default=None, metavar="PARALLELISM",
                        help="tasks running at once [make: PARALLELISM=]")
    submit.add_argument("--cpusets", default="", metavar="CPUSETS",
                        help="local: disjoint CPU sets, one shard on each at a time, e.g. 0-7,8-15 [make: CPUSETS=]")


def _add_recommend(sub: argparse._SubParsersAction) -> None:
    rec = sub.add_parser("recommend", help="the best measured strategy for a shape")
    rec.add_argument("--results", nargs="+", required=True, metavar="DIR")
    rec.add_argument("--batch", type=_positive_int, required=True)
    rec.add_argument("--hidden", type=_size_or_fixed, default=FIXED_HIDDEN,
                     help="hidden width (leave out for a model of fixed sizes: its runs record 0)")
    rec.add_argument("--in-dim", type=_positive_int, required=True)
    rec.add_argument("--out-dim", type=_positive_int, required=True)
    rec.add_argument("--device", default=None)
    rec.add_argument("--model", default=None, help="model name in the runs (default: mlp when several)")
    rec.add_argument("--dtype", default=None, help="dtype in the runs (default: float32 when several)")
    rec.add_argument("--mode", default="jacobian", choices=["jacobian", "train"],
                     help="the quantity alone, or a training step through it (second order: the PINN step)")
    rec.add_argument("--quantity", default="jacobian", choices=list(QUANTITIES),
                     help="what is computed: the Jacobian, the Hessian or the Laplacian")
    rec.add_argument("--json", action="store_true")


def _add_fidelity(sub: argparse._SubParsersAction) -> None:
    fidelity = sub.add_parser("fidelity", help="time cases of a finished run in fresh processes with "
                                               "torch.utils.benchmark.Timer: is the run's number what a call costs?")
    fidelity.add_argument("run", nargs="?", default="latest", help="results/<run>, a run id, or latest")
    fidelity.add_argument("--cases", type=_positive_int, default=5,
                          help="ok cases to time, spread fast to slow (per strategy with --strategies)")
    fidelity.add_argument("--repeats", type=_positive_int, default=3, help="turns of fresh processes per case")
    fidelity.add_argument("--strategies", default="", help="comma-separated: time cases of these strategies")


def _add_depth(sub: argparse._SubParsersAction) -> None:
    depth = sub.add_parser("depth", help="how each strategy's time grows with the depth of the Python stack it is "
                                         "called from (fresh processes, the seed MLP at two shapes)")
    depth.add_argument("--out", default="results/stack-depth", help="folder for stack_depth.json and .md")
    depth.add_argument("--strategies", default="", help="comma-separated (default: every eager Jacobian strategy)")
    depth.add_argument("--rounds", type=_positive_int, default=21, help="rounds per depth")
    depth.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"jacobench: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    warnings.simplefilter("ignore", FutureWarning)  # torch's deprecation chatter is not the user's problem
    # nn.Module._apply (.to(), .float(), .double()) reads each parameter's .grad, which warns for a scripted or
    # traced model's parameters: torch's own access, once per model the run checks, about nothing the user did
    warnings.filterwarnings("ignore", message="The .grad attribute of a Tensor that is not a leaf",
                            category=UserWarning)
    warnings.showwarning = _one_line_warning
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except BenchError as exc:
        print(f"jacobench: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("jacobench: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`python -m bench grids | head`): stop quietly, like `cat`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def cmd_run(args: argparse.Namespace) -> int:
    """Plan (refusing bad input before anything is written), open the run folder, hand the run to pytest as a
    plugin object, then write the report."""
    from bench.run import host
    from bench.run.session import open_run
    from bench.scale.shards import planned

    plan = planned(settings.from_namespace(args))
    folder = open_run(plan)
    try:
        return host.run(plan, folder, _expected(plan), _report)
    finally:
        folder.release()  # after the report: nothing may replace the folder while it is written


def _expected(plan: Any) -> tuple[dict[str, float], float] | None:
    """The cost model's seconds per case and for the whole run (the progress line's ETA); None if it cannot tell."""
    from bench.scale import costs, forecast

    try:
        predicted = forecast.forecast(plan, costs.default())
    except Exception as exc:  # the ETA falls back to the mean time per case; the run goes on
        print(f"jacobench: note: no ETA from the cost model ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None
    return {c.case_id: c.seconds for c in predicted.cases}, predicted.total_s


def _report(folder: Path) -> None:
    from bench.report.run_report import write_report

    path = write_report(folder)
    print(f"jacobench: report {path} and {path.with_suffix('.html')}")


def cmd_plan(args: argparse.Namespace) -> int:
    """Plan as `run` would (here=False: a GPU run can be planned from a machine without one), then forecast."""
    from bench.scale import costs
    from bench.scale.forecast import as_json, forecast, render
    from bench.scale.shards import planned

    chosen = settings.from_namespace(args)
    if chosen.shard and args.shards:
        raise BenchError("SHARD=k/N plans one shard, SHARDS=N shows the split of the whole plan: give one of them")
    plan = planned(chosen, here=False)
    model = costs.from_run(args.from_run) if args.from_run else costs.default()
    predicted = forecast(plan, model)
    print(json.dumps(as_json(predicted, args.shards)) if args.json else render(predicted, args.shards))
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    return merge_run(Path(args.results_dir), args.run, report=not args.no_report)


def merge_run(results_root: Path, run: str, report: bool = True) -> int:
    """Merge the shards of `run` under the merged folder's lock, finish it, report it, seal it; 0 when every shard was
    there and finished, 1 when some were missing or unfinished (merged as far as they go)."""
    from bench import results
    from bench.scale import merge

    if not run:
        raise BenchError("merge needs the run id the shards were started with: make merge RUN=<run>")
    lock = results.lock_run(results_root, results.check_run_id(run))
    try:
        merged = merge.merge(results_root, run)
        if merged.changed:
            if report:
                _report(merged.folder)
            merge.seal(merged)
    finally:
        lock.close()
    print(f"jacobench: {merged.summary(run)}", file=sys.stdout if merged.complete else sys.stderr)
    return 0 if merged.complete else 1


def cmd_submit(args: argparse.Namespace) -> int:
    from bench.scale import submit

    resources = submit.Resources(shards=args.shards, executor=args.executor, partition=args.partition,
                                 gpus_per_task=args.gpus_per_task, cpus_per_task=args.cpus_per_task,
                                 timeout_min=args.timeout_min, parallelism=args.parallelism, cpusets=args.cpusets)
    chosen = settings.from_namespace(args)
    submission = submit.submit(chosen, resources)
    try:
        problems = submission.wait()
    except KeyboardInterrupt:
        print(f"jacobench: stopped waiting; the tasks keep running: `make merge RUN={submission.run}"
              + (f" RESULTS_DIR={chosen.results_dir}" if chosen.results_dir != "results" else "")
              + "` when they are done", file=sys.stderr)
        return EXIT_INTERRUPTED
    for line in problems:
        print(f"jacobench: {line}", file=sys.stderr)
    code = merge_run(submission.results_root, submission.run, report=not chosen.no_report)
    return code or (1 if problems else 0)


def cmd_report(args: argparse.Namespace) -> int:
    from bench import results

    folder = results.resolve_run_dir(args.run)
    if not results.read_cases(folder / "cases.jsonl"):
        raise BenchError(f"{folder}: cases.jsonl holds no finished case; run `make bench RUN=...` first")
    _report(folder)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from bench import results
    from bench.report.compare import build_compare

    if len(args.runs) < 2:
        raise BenchError('compare needs at least two runs: make compare RUNS="results/a results/b"')
    folders = [results.resolve_run_dir(r) for r in args.runs]
    path = build_compare(folders)
    print(f"jacobench: compare report {path} and {path.with_suffix('.html')}")
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from bench import results
    from bench.report.recommend import recommend

    folders = [results.resolve_run_dir(r) for r in args.results]
    pick = recommend(folders, args.batch, args.hidden, args.in_dim, args.out_dim, device=args.device,
                     model=args.model, dtype=args.dtype, mode=args.mode, quantity=args.quantity)
    if args.json:
        print(json.dumps(pick, default=str))
    else:
        print(f"{pick['strategy']}: expected {pick['expected_time_s'] * 1e3:.3f} ms on {pick.get('device')}"
              + (f"; runner-up {pick['runner_up']}" if pick.get("runner_up") else "")
              + (" (rests on an unstable measurement: rerun it on a quiet machine)" if pick["unstable"] else ""))
    return 0


def cmd_fidelity(args: argparse.Namespace) -> int:
    from bench import results
    from bench.run.fresh_check import measure_fidelity

    names = [s.strip() for s in args.strategies.split(",") if s.strip()] or None
    measure_fidelity(results.resolve_run_dir(args.run), args.cases, args.repeats, names)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from bench import results
    from bench.report.check import check

    for line in check(results.resolve_run_dir(args.run)):
        print(line)
    return 0


def cmd_depth(args: argparse.Namespace) -> int:
    from bench.run import depth

    names = depth.check_names([s.strip() for s in args.strategies.split(",") if s.strip()])
    depth.measure(Path(args.out), names, rounds=args.rounds, threads=args.threads)
    print(f"jacobench: {Path(args.out) / 'stack_depth.md'}")
    return 0


def cmd_grids(args: argparse.Namespace) -> int:
    from bench.spec import grid

    for name in grid.available():
        g = grid.load_grid(name)
        print(f"{name:<10} {len(grid.expand(g))} shapes  {g.description}")
    return 0


COMMANDS = {"run": cmd_run, "plan": cmd_plan, "merge": cmd_merge, "submit": cmd_submit, "report": cmd_report,
            "compare": cmd_compare, "recommend": cmd_recommend, "fidelity": cmd_fidelity, "check": cmd_check,
            "depth": cmd_depth, "grids": cmd_grids}
