"""The first table of a run report: which strategy to use, per model and regime, what it costs, and the code to paste.

Per shape, two verdicts by the run's own rule (best.best_per_shape: the shape's playoff when its best is among the
strategies considered, else the tie rule on first timings): among the eager strategies, and among the compiled ones.
A strategy is *good* at a shape when it is the verdict's best or tied with it. A regime is a setting (model,
device, dtype, mode, quantity) and a batch range: consecutive measured batch sizes that share a strategy good on the
most shapes of each; that strategy is the one to use there. Names come from the result files only (reports never
import `strategies`).
"""

from __future__ import annotations

from collections import Counter

import pandas as pd

from bench.report.best import NONE_VALID, best_per_shape, playoffs_among
from bench.report.frames import groups
from bench.schema import RESULT_NAME, SETTING, SHAPE_COLUMNS, fmt_ratio

# One row per regime and kind (eager, compiled): tables/answer.csv holds these, the report the display columns.
ANSWER_COLUMNS = [*SETTING, "batch_min", "batch_max", "how", "use", "shapes", "wins", "ties", "tied_with",
                  "otherwise", "jf_median", "vs_closed_form_median", "code"]
HOW = ("eager", "compiled")
AUTOTUNE_LINE = "from bench import autotune; tuned = autotune(model, x); J = tuned(x)"


def autotune_line(quantity: str = "jacobian") -> str:
    """The autotune call that answers the same question for the user's own model."""
    if quantity == "jacobian":
        return AUTOTUNE_LINE
    name = RESULT_NAME.get(quantity, "out")
    return f'from bench import autotune; tuned = autotune(model, x, quantity="{quantity}"); {name} = tuned(x)'


def code_line(strategy: str, mode: str, returns: str = "jacobian", quantity: str = "jacobian") -> str:
    """What to paste: the strategy's call through the registry (with its graph in train mode; J.sum(1), which is J
    at out = 1, made (B, 1, in)); H or the Laplacian for a second-order quantity."""
    call = f'{RESULT_NAME.get(quantity, "out")} = strategies.REGISTRY["{strategy}"](model, x' \
        + (", create_graph=True)" if mode == "train" else ")")
    return call + (".unsqueeze(1)" if returns == "output_sum" else "")


def verdicts(frame: pd.DataFrame, playoffs: pd.DataFrame | None, how: str) -> pd.DataFrame:
    """best_per_shape among the eager or the compiled strategies, with `good`: the best and those tied with it."""
    compiled = frame["compiled"].fillna(False).astype(bool)
    part = frame[compiled if how == "compiled" else ~compiled]
    if part.empty or (how == "compiled" and not part["valid"].any()):
        return pd.DataFrame()
    best = best_per_shape(part, playoffs_among(playoffs, set(part["strategy"])))
    best["good"] = [set() if f == NONE_VALID else {f, *t} for f, t in zip(best["fastest"], best["tied_with"],
                                                                         strict=True)]
    return best


def batch_ranges(best: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(strategy to use, its shapes) per batch range of one setting: a range grows while some strategy stays among
    the most often good of every batch size in it."""
    ranges: list[tuple[set[str], pd.DataFrame]] = []
    for _, rows in best.groupby("batch", sort=True):
        cover = Counter(name for good in rows["good"] for name in good)
        top = {n for n, c in cover.items() if c == max(cover.values())} if cover else set()
        if ranges and (ranges[-1][0] & top or not (ranges[-1][0] or top)):
            ranges[-1] = (ranges[-1][0] & top, pd.concat([ranges[-1][1], rows]))
        else:
            ranges.append((top, rows))
    return [(_first_pick(names, rows), rows) for names, rows in ranges]


def _first_pick(names: set[str], rows: pd.DataFrame) -> str:
    """Among strategies equally good over a range: the one most often the verdict's best, then by name."""
    if not names:
        return NONE_VALID
    picked = Counter(rows["fastest"])
    return sorted(names, key=lambda n: (-picked[n], n))[0]


def answer_rows(frame: pd.DataFrame, playoffs: pd.DataFrame | None) -> pd.DataFrame:
    """The answer, machine-readable: per setting, eager then compiled (where the run measured compiled strategies),
    one row per batch range."""
    closed = frame[frame["valid"] & frame["closed_form"]].groupby(SHAPE_COLUMNS)["time_median_s"].min()  # the fastest
    # closed form of each shape (the Laplacian has two)
    by_strategy = frame[frame["valid"]].set_index(["strategy", *SHAPE_COLUMNS])
    rows = []
    for how in HOW:
        best = verdicts(frame, playoffs, how)
        if best.empty:
            continue
        for key, _ in groups(frame):
            mine = best[(best[SETTING] == list(key)).all(axis=1)]
            for use, shapes in batch_ranges(mine):
                if use != NONE_VALID or how == "eager":  # no compiled strategy valid (train mode): nothing to say
                    rows.append(_row(key, how, use, shapes, by_strategy, closed))
    order = {key: i for i, (key, _) in enumerate(groups(frame))}
    out = pd.DataFrame(rows, columns=ANSWER_COLUMNS)
    keys = out[SETTING].apply(tuple, axis=1).map(order)
    return out.assign(_k=keys, _h=out["how"].map(HOW.index)).sort_values(["_k", "_h", "batch_min"], kind="stable") \
        .drop(columns=["_k", "_h"]).reset_index(drop=True)


def _row(key: tuple, how: str, use: str, shapes: pd.DataFrame, by_strategy: pd.DataFrame, closed: pd.Series) -> dict:
    good = shapes[[use in g for g in shapes["good"]]]
    wins = good[(good["fastest"] == use) & (good["verdict"] == "winner")]
    partners = Counter(n for g in good["good"] for n in g if n != use)
    otherwise = Counter(f for f, g in zip(shapes["fastest"], shapes["good"], strict=True)
                        if use not in g and f != NONE_VALID)
    jf, vs_closed = [], []
    for _, shape in good.iterrows():
        at = tuple(shape[c] for c in SHAPE_COLUMNS)
        if (use, *at) in by_strategy.index:
            mine = by_strategy.loc[(use, *at)]
            jf.append(mine["jf_ratio"])
            if at in closed.index:
                vs_closed.append(mine["time_median_s"] / closed.loc[at])
    mode, quantity = key[SETTING.index("mode")], key[SETTING.index("quantity")]
    return {**dict(zip(SETTING, key, strict=True)), "batch_min": int(shapes["batch"].min()),
            "batch_max": int(shapes["batch"].max()), "how": how, "use": use, "shapes": len(shapes),
            "wins": len(wins), "ties": len(good) - len(wins),
            "tied_with": sorted(partners, key=lambda n: (-partners[n], n)),  # sets have no stable order
            "otherwise": [f"{n} ({c})" for n, c in otherwise.most_common()],
            "jf_median": pd.Series(jf, dtype=float).median(),
            "vs_closed_form_median": pd.Series(vs_closed, dtype=float).median(),
            "code": code_line(use, mode, _returns(by_strategy, use), quantity) if use != NONE_VALID else ""}


def _returns(by_strategy: pd.DataFrame, strategy: str) -> str:
    rows = by_strategy.xs(strategy, level="strategy") if strategy in by_strategy.index.get_level_values(0) else None
    return "jacobian" if rows is None or rows.empty else str(rows["returns"].iloc[0])


def answer_table(rows: pd.DataFrame, device_names: dict[str, str] | None = None) -> tuple[pd.DataFrame, str]:
    """The answer as display strings, and what every row shares ("cpu · float32 · jacobian"): model, the setting
    fields that differ between rows, batch range, eager or compiled, the strategy to use, its cost, the verdict, the
    code."""
    fields = ("device", "dtype", "mode", "how")
    varies = [c for c in fields if rows[c].nunique() > 1]
    names = device_names or {}
    second_order = len(rows) and (rows["quantity"] != "jacobian").all()

    def shown(field: str, value: str) -> str:
        if field == "mode" and second_order:  # the mode named "jacobian" computes the quantity alone
            return "alone" if value == "jacobian" else "train (PINN step)" if value == "train" else str(value)
        return f"{value} ({names[value]})" if field == "device" and names.get(value) else str(value)

    shared = " · ".join(shown(c, rows[c].iloc[0]) for c in fields if c not in varies and len(rows))
    out = []
    for r in rows.itertuples():
        none = r.use == NONE_VALID
        out.append({"model": r.model, **{c: shown(c, getattr(r, c)) for c in varies if c != "how"},
                    "batch": f"{r.batch_min}" if r.batch_min == r.batch_max else f"{r.batch_min}–{r.batch_max}",
                    **({"how": r.how} if "how" in varies else {}), "use": "none valid" if none else r.use,
                    "× forward": fmt_ratio(r.jf_median), "× closed form": fmt_ratio(r.vs_closed_form_median),
                    "verdict": "" if none else verdict_text(r), "code": r.code})
    return pd.DataFrame(out), shared


def verdict_text(r) -> str:
    """winner 3/4, tie 1 (b); else c 1: on how many shapes of the range the strategy wins or ties, with whom, and
    which strategies are the best elsewhere."""
    of = f"/{r.shapes}"
    parts = [f"winner {r.wins}{of}" if r.wins else "", f"tie {r.ties}{of if not r.wins else ''}" if r.ties else ""]
    text = ", ".join(p for p in parts if p)
    if r.ties and r.tied_with:
        text += f" ({', '.join(r.tied_with[:2])}{', …' if len(r.tied_with) > 2 else ''})"
    if r.otherwise:
        text += "; else " + ", ".join(o.replace(" (", " ").rstrip(")") for o in r.otherwise[:2]) + \
            (", …" if len(r.otherwise) > 2 else "")
    return text
