"""Understanding BN (Bjorck et al. 2018): without BN a deep residual net's
activations grow with depth, so one step along the gradient already blows the
loss up at small step sizes early in training; with BN it does not."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import analysis as A
from .. import plots as P
from .. import references as R
from ..claims import Claim, Evidence, greater
from ..intervals import SIGN
from ..report import Report, describe
from ..study import Study



def _log_rel_loss(s: pd.DataFrame, m: pd.DataFrame, norm_type: str, alphas) -> pd.Series:
    """Per run: log10 of the largest relative loss over the first mini-batches and the given step sizes;
    +inf where the loss overflowed (non-finite): censored above, so the claims use the sign test, which
    needs only the side of the bound each run lies on -- no stand-in number decides an interval."""
    d = A.with_runs(m[m.metric == "rel_loss"], s, ["norm_type"])
    d = d[(d.norm_type == norm_type) & d.step_size.isin(alphas)]
    with np.errstate(divide="ignore"):
        v = np.log10(d.value.where(np.isfinite(d.value), np.inf).clip(lower=0))
    return d.assign(v=v).groupby(["lr", "seed"]).v.max()


def _explodes_without_bn(s, m) -> Evidence:
    bound = R.BJORCK.values["rel_loss"]["none"]
    alpha = R.BJORCK.values["rel_loss_steps"]["none"]
    steps = [a for a in m[m.metric == "rel_loss"].step_size.dropna().unique() if a >= alpha]
    v = _log_rel_loss(s, m, "none", steps)
    return greater(v - np.log10(bound), f"no BN: log10 of the largest L(W − αg)/L(W) for α ≥ {alpha:g} over the "
                                        f"first mini-batches, minus log10 {bound:g} (overflowed: ∞)", ".3g", test=SIGN)


def _tame_with_bn(s, m) -> Evidence:
    bound = R.BJORCK.values["rel_loss"]["bn"]
    top = R.BJORCK.values["rel_loss_steps"]["bn"]
    steps = [a for a in m[m.metric == "rel_loss"].step_size.dropna().unique() if a <= top]
    v = _log_rel_loss(s, m, "bn", steps)
    return greater(np.log10(bound) - v, f"BN: log10 {bound:g} minus log10 of the largest L(W − αg)/L(W) for "
                                        f"α ≤ {top:g} over the first mini-batches (overflowed: −∞)", ".3g", test=SIGN)


def _depth_growth(s: pd.DataFrame, m: pd.DataFrame, norm_type: str) -> pd.Series:
    """Per run: log10 of activation std at the deepest block over the first, at initialization."""
    d = A.layer_index(A.with_runs(m[m.metric == "act_std"], s, ["norm_type"]))
    d = d[(d.norm_type == norm_type) & (d.step == d.step.min())]
    first = d[d.depth == d.depth.min()].set_index(["lr", "seed"]).value
    last = d[d.depth == d.depth.max()].set_index(["lr", "seed"]).value
    return np.log10(last / first).dropna()


def _activations_grow(s, m) -> Evidence:
    return greater(_depth_growth(s, m, "none"), "no BN: log10(activation std at the last block / at the first) "
                                                "at init; claim: more than one order of magnitude", ".3g", margin=1.0)


def build(s: pd.DataFrame, m: pd.DataFrame) -> Report:
    r = Report(STUDY)
    mm = A.with_runs(m, s, ["norm_type"])
    rl = mm[mm.metric == "rel_loss"]
    big = rl[rl.step_size >= R.BJORCK.values["rel_loss_steps"]["none"]]
    worst = big.groupby("norm_type").value.max()
    growth = {t: 10 ** _depth_growth(s, m, t).mean() for t in sorted(set(s.norm_type))}
    r.finding = ("largest relative loss L(W − αg)/L(W) for α ≥ {:g} at the first mini-batches: ".format(
        R.BJORCK.values["rel_loss_steps"]["none"]) + ", ".join(f"{n} {v:.3g}" for n, v in worst.items())
        + "; activation std last block / first at init: " + ", ".join(f"{n} {v:.3g}×" for n, v in growth.items())
        + ".")
    ref = R.BJORCK.values
    r.notes = [f"Ours: {describe(s)}. Reference: {R.BJORCK.setting} ({R.BJORCK.cite()}): without BN above "
               f"{ref['rel_loss']['none']:g} once α exceeds about {ref['rel_loss_steps']['none']:g}; with BN at most "
               f"about {ref['rel_loss']['bn']:g} up to α = {ref['rel_loss_steps']['bn']:g}. The blow-up needs residual "
               f"additions with He-scale branches and no normalization: each block adds a branch as large as its "
               f"input, so the scale grows geometrically with depth (a plain net of the same init does not grow)."]
    r.figure("rel_loss", P.rel_loss(mm, hue="norm_type"),
             f"Relative loss L(W − αg)/L(W) at the first mini-batches (mean, t 95% band, seeds); {r.finding}")
    r.figure("act_std_by_depth", P.activations_by_depth(mm, "act_std", hue="norm_type"),
             "Activation std by block at the first and the last probe (mean, t 95% band, seeds).")
    r.figure("act_mean_by_depth", P.activations_by_depth(mm, "act_mean", hue="norm_type"),
             "Activation mean by block at the first and the last probe (mean, t 95% band, seeds).")
    table = rl.groupby(["norm_type", "lr", "step_size"]).value.median().unstack("step_size").reset_index()
    r.table("rel_loss", table, "Median relative loss L(W − αg)/L(W) over the first mini-batches and seeds, per α.",
            table.map(lambda v: f"{v:.3g}" if isinstance(v, float) else v))
    acc = A.summarize(s, ["norm_type", "lr"], "final_test_acc")
    r.table("accuracy", acc, "Final test accuracy per norm and lr, failed runs counted.",
            acc.assign(acc=acc.apply(A.fmt_row, axis=1))[["norm_type", "lr", "acc", "n"]])
    return r


CLAIMS = (
    Claim("explodes_without_bn", "Without BN the loss explodes along the gradient at small steps early in "
          "training (relative loss above 1e6 from α ≈ 3e-3)", "Bjorck et al. 2018, relative loss in the first mini-batches",
          _explodes_without_bn, arm=lambda s: s.norm_type == "none"),
    Claim("tame_with_bn", "With BN the relative loss stays small (at most ≈ 3) for steps up to α = 0.1",
          "Bjorck et al. 2018, relative loss in the first mini-batches", _tame_with_bn, arm=lambda s: s.norm_type == "bn"),
    Claim("activations_grow", "Without BN the activations grow with depth (orders of magnitude)",
          "Bjorck et al. 2018, activations by depth without BN", _activations_grow, arm=lambda s: s.norm_type == "none"),
)
STUDY = Study("bjorck", "Understanding BN", "Bjorck et al. 2018", build, claims=CLAIMS,
              question="How far can one step along the gradient go, and how do activations grow with depth, with and without "
                       "BN?",
              tables={"rel_loss": "norm × lr × step size", "accuracy": "norm × lr"},
              figures={"rel_loss": "norm × lr", "act_std_by_depth": "norm × layer", "act_mean_by_depth": "norm × layer"})
