"""Picks from finished runs (autotune's results=): the verdict a run measured for this model at this input shape,
validated on example_x, with nothing timed. The run's model is rebuilt from its spec and must have this model's
modules and parameter shapes; the report side (pandas) is imported only here, only when results= is given."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from bench.schema import FIXED_HIDDEN, Sizes
from bench.tuning import cache as tunecache
from bench.tuning import candidates
from bench.tuning.options import Settings
from bench.tuning.pick import Pick
from strategies import REGISTRY


def from_results(model: nn.Module, x: Tensor, out_dim: int, settings: Settings) -> tuple[Pick | None, str]:
    """The verdict a run measured for this model and input shape, validated on x; (None, why) when no run did."""
    answer, why = _answer(model, x, out_dim, settings)
    if answer is None:
        return None, why
    runs = ", ".join(map(str, settings.results))
    ref = candidates.reference_of(model, x, settings.mode, settings.quantity)
    case = candidates.case_of(x, out_dim, settings.mode, settings.quantity)
    refused: dict[str, str] = {}
    for name in answer["order"]:
        why = candidates.refusal(REGISTRY[name], out_dim, ref.coupled, settings.mode) if name in REGISTRY \
            else "not registered"
        why = why or candidates.first_call(REGISTRY[name], model, x, ref, case, settings.budget_s)
        if not why:
            return _pick(answer, name, refused, settings.budget_s), ""
        refused[name] = why
    reasons = "; ".join(f"{n}: {why}" for n, why in refused.items())
    return None, f"every strategy {runs} measured valid here fails on this model ({reasons}): tuned here instead"


def _answer(model: nn.Module, x: Tensor, out_dim: int, settings: Settings) -> tuple[dict[str, Any] | None, str]:
    """What a run measured at this shape for a model of this structure; (None, why not) when none did."""
    from bench.report.recommend import measured_at  # the reporting side (pandas), only for results=

    batch, in_dim = x.shape
    runs = ", ".join(map(str, settings.results))
    dtype = candidates.dtype_name(x)
    answers = measured_at(settings.results, str(x.device), dtype, settings.mode, batch, in_dim, out_dim,
                          settings.candidates, settings.quantity)
    if not answers:
        return None, (f"{runs} did not measure B={batch}, in={in_dim}, out={out_dim} ({dtype}, {settings.mode}, "
                      f"{x.device.type}): tuned here instead")
    mine = tunecache.structure(model, portable=True)
    same = [a for a in answers if _rebuilt(a, batch, in_dim, out_dim) == mine]
    if not same:
        others = ", ".join(dict.fromkeys(_measured_model(a) for a in answers))
        return None, (f"{runs} measured this input shape for other models ({others}; none has this model's modules "
                      "and parameter shapes): tuned here instead")
    if not same[0]["order"]:
        return None, f"{runs} measured no valid strategy for this model at this shape: tuned here instead"
    return same[0], ""


def _pick(answer: dict[str, Any], name: str, refused: dict[str, str], budget_s: float) -> Pick:
    """The run's verdict when its best is valid here, else the next fastest valid one it measured (no verdict)."""
    lead = name == answer["order"][0] and answer["verdict"]
    note = "" if lead else (f"the run's best, {answer['order'][0]}, is not valid on example_x: the next fastest "
                            "measured there, with no verdict of its own")
    return Pick(strategy=name, verdict=answer["verdict"] if lead else "winner",
                tied_with=answer["tied_with"] if lead else [], times=answer["times"], refused=refused,
                validated=len(refused) + 1, budget_s=budget_s, note=note, source="results", where=answer["run"],
                measured=(f"{_measured_model(answer)} on {answer['device']} ({answer['device_name']}), "
                          f"torch {answer['torch']}, {answer['threads']} threads"))


def _rebuilt(answer: dict[str, Any], batch: int, in_dim: int, out_dim: int) -> dict[str, list] | None:
    """The structure of the model a run measured, built again from its spec (None when it cannot be built)."""
    from bench.spec import models

    try:
        built = models.instantiate(models.resolve(answer["spec"]), Sizes(batch, answer["hidden"], in_dim, out_dim))
    except Exception:  # a model file that moved or broke: that answer cannot be checked, so it is not used
        return None
    return tunecache.structure(built, portable=True)


def _measured_model(answer: dict[str, Any]) -> str:
    """"mlp H=128"; a model of fixed sizes by its name alone (hidden is not one of its axes)."""
    return answer["model"] + ("" if answer["hidden"] == FIXED_HIDDEN else f" H={answer['hidden']}")
