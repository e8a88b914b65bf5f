"""The report's fixed sentences: what each section's numbers mean (bench/report/run_report.py puts them in place)."""

from __future__ import annotations

from bench.schema import fmt_margin
from bench.stats import CONTENDER_MARGIN, TIE_MARGIN

VERDICTS = (
    "verdict: every strategy of a shape is timed in short rounds, interleaved in a new shuffled order each sweep over "
    "the shape's window, so a slow moment of the machine hits all of them alike; rounds timed during a slow episode "
    "or under other processes' load are set aside and measured again. The contenders (valid autodiff strategies not "
    f"surely more than {fmt_margin(CONTENDER_MARGIN)} slower than the fastest) are timed to precision, then timed "
    "again in a second, fresh process: a process sets the speed of some calls. winner: every other contender is "
    f"surely (the whole 95% interval of its paired ratio, process noise included) more than {fmt_margin(TIE_MARGIN)} "
    "slower; tie: the listed strategies are not, so either is a good choice. runner-up / fastest: that ratio with its "
    "interval. The closed forms (analytic; for second order hessian_analytic, laplacian_analytic and "
    "laplacian_trace_analytic) exist for plain MLPs only and are not contenders; nor is a stochastic estimator "
    "(laplacian_hutchinson), whose error is in its note."
)

ANSWER = ("how: eager, or compiled with torch.compile (raced apart). × forward: one call over one forward pass; "
          "× closed form: over the hand-written Jacobian of plain MLPs (analytic); medians over the shapes where it "
          "is best or tied. verdict, on n of the range's shapes: winner (every other strategy surely more than "
          f"{fmt_margin(TIE_MARGIN)} slower) or tie (with the strategies named: not surely slower, either is a good "
          "choice); else: the best where it is neither. code: what to paste, after `import strategies`.")
ANSWER_SECOND_ORDER = (
    "how: eager, or compiled with torch.compile (raced apart). × forward: one call over one forward pass; × closed "
    "form: over the fastest hand-written second derivative of plain MLPs (hessian_analytic, laplacian_analytic); "
    "medians over the shapes where it is best or tied. verdict, on n of the range's shapes: winner (every other "
    f"strategy surely more than {fmt_margin(TIE_MARGIN)} slower) or tie (with the strategies named: not surely "
    "slower, either is a good choice); else: the best where it is neither. A stochastic estimator "
    "(laplacian_hutchinson) is never the answer: its time and error are in the tables below. code: what to paste, "
    "after `import strategies`; in train mode the result carries its graph for the PINN loss.")
AUTOTUNE = ("For your own model, input shape and machine, autotune validates every strategy on your input, races the "
            "valid ones with the same rule, and remembers the pick:")

FOLD_ROWS = 20  # a findings table longer than this is folded in HTML

PUBLISHED = ("Ratios a published source reports, next to the same ratio measured in this run at the same shape. The "
             "suite's strategies vmap over a batch (here of one sample), which adds a fixed cost to both sides of the "
             "ratio; the thread count changes it most.")
COMPILING = ("A compiled strategy compiles once per shape (torch.compile, dynamic=False); the first call, compiling "
             "included, is its setup time and is never in the timed rounds. It pays after setup / (eager time − "
             "compiled time) calls.")
TRAINING = ("train mode times J with its graph kept (create_graph=True), the penalty (the squared Frobenius norm of J "
            "summed over the batch) and its gradient with respect to every parameter, validated against a float64 "
            "reference. Strategies that keep no graph are unsupported there.")
PINN_STEP = ("train mode for second order times the PINN step: the Laplacian with its graph kept (the trace of H for a "
             "Hessian strategy), the Poisson residual Δu − f(x) with f(x) = Σ sin(x_i), its mean square, and the "
             "gradient of that loss with respect to every parameter, validated against a float64 reference. "
             "PINN step / alone: the fastest step over the fastest call of the quantity alone, at the same shape.")
TRAIN_TITLE = {"jacobian": "Training through the Jacobian", "hessian": "The PINN training step — Hessian strategies",
               "laplacian": "The PINN training step"}
COUPLED = ("Output row b depends on other rows (e.g. BatchNorm in training mode, or a statistic of the whole batch, "
           "even detached): strategies that assume independent "
           "samples return a wrong Jacobian without any error.")

READING = (
    "time: median of one full fn(model, x) call (forward included), validated first against a float64 reference; "
    "its interval is where a rerun's median falls (95%, from the rounds, their spread over time and the run's two "
    "processes). "
    "J/F: that time over the forward pass model(x) alone. × best: over the fastest valid strategy of the same shape. "
    "A case that is not ok shows its status instead of a number (the statuses are explained under \"Status of every "
    "case\"). "
    "Strategies returning the sum over outputs are not the Jacobian when out > 1 and never count as fastest."
)
