"""The stack-depth table: ratios per depth with intervals, and the one line a report or explain() says about it."""

from __future__ import annotations

from bench import stack_depth
from bench.schema import Sizes


def _table(deep: float, noise: float = 0.01) -> dict:
    shallow = [1e-3 * (1 + noise * ((i % 3) - 1)) for i in range(21)]
    rows = [stack_depth.row("linearize_batched", Sizes(32, 64, 8, 8),
                            {5: shallow, 40: [t * (1 + (deep - 1) / 2) for t in shallow], 80: [t * deep for t in
                                                                                              shallow]}),
            stack_depth.row("grad_batched", Sizes(32, 64, 8, 8), {5: shallow, 40: shallow, 80: shallow})]
    return {"depths": [5, 40, 80], "rounds": 21, "measured": "2026-12-05", "rows": rows,
            "machine": {"cpu_model": "Test CPU", "torch": "2.14.1", "threads": 2}}


def test_each_depth_is_a_ratio_to_the_shallowest_with_its_interval():
    row = _table(1.3)["rows"][0]
    ratio, low, high = row["ratio"]["80"]
    assert abs(ratio - 1.3) < 1e-9 and low <= ratio <= high
    assert set(row["ratio"]) == {"40", "80"} and set(row["median_s"]) == {"5", "40", "80"}


def test_only_a_strategy_that_surely_slows_down_gets_advice():
    table = _table(1.3)
    assert set(stack_depth.costly(table)) == {"linearize_batched"}
    text = stack_depth.advice_for("linearize_batched", table)
    assert "1.3× its time when called 80 frames deep" in text and "traceback.extract_stack" in text
    assert stack_depth.advice_for("grad_batched", table) == ""
    assert stack_depth.costly(_table(1.02)) == {}  # within 5%: nothing to say
    assert stack_depth.advice_for("linearize_batched", {}) == ""  # no reference table: nothing either


def test_each_strategy_gets_its_own_mechanism_and_an_unprofiled_one_says_so():
    table = _table(1.8)
    for name in ("vmap_jacfwd", "jvp_loop"):
        table["rows"].append({**table["rows"][0], "strategy": name})
    assert "chunk boundaries" in stack_depth.advice_for("vmap_jacfwd", table)
    assert "jvp_batched: the same forward mode" in stack_depth.advice_for("linearize_batched", table)
    assert "not profiled" in stack_depth.advice_for("jvp_loop", table)


def test_the_markdown_table_has_a_row_per_strategy_and_shape():
    md = stack_depth.markdown(_table(1.3))
    assert "| `linearize_batched` | B32-H64-in8-out8 |" in md and "Test CPU" in md
    assert md.count("\n| `") == 2
