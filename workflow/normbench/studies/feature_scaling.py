"""Input feature scaling and the error surface of a linear model (LeCun et al.
1998, "Efficient BackProp", §4.3): two features three orders of magnitude apart
make the least-squares Hessian ill-conditioned; gradient descent must step
below 2/λmax and then crawls along the flat direction."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import analysis as A
from .. import plots as P
from .. import references as R
from ..claims import Claim, Evidence, every, exact, greater
from ..intervals import SIGN
from ..report import Report
from ..runners.linear_gd import design, loss
from ..study import Study


def error_surface(scaling: str, dataset: str = "two_scale", grid: int = 121, half: float = 3.0):
    """Loss over the two feature weights (bias at its optimum for each point) on a
    square window of ±``half`` around the optimum -- the same span on both axes, so
    an ill-conditioned surface shows as elongated: (w1 grid, w2 grid, loss, optimum)."""
    A_, y, _, _ = design(scaling, dataset)
    w_star = np.linalg.lstsq(A_, y, rcond=None)[0]
    w1 = np.linspace(w_star[0] - half, w_star[0] + half, grid)
    w2 = np.linspace(w_star[1] - half, w_star[1] + half, grid)
    W1, W2 = np.meshgrid(w1, w2)
    b = (y[None, None, :] - W1[..., None] * A_[:, 0] - W2[..., None] * A_[:, 1]).mean(-1)  # optimal bias
    return W1, W2, loss(A_, y, np.stack([W1, W2, b], -1)), w_star


RAW, STD = "raw", "standardize"  # the input scalings compared (their norm_type)


def _conditions(s: pd.DataFrame, m: pd.DataFrame) -> pd.Series:
    """Hessian condition number per input scaling (norm_type)."""
    m = A.with_runs(m[m.metric == "hessian_cond"], s, ["norm_type"])
    return m.groupby("norm_type").value.first()


def _cond_claim(s, m) -> Evidence:
    cond = _conditions(s, m)
    parts = [exact(cond[RAW] > 10 * cond[STD], f"Hessian condition number raw {cond[RAW]:.3g} vs standardized "
                                               f"{cond[STD]:.3g}", float(np.log10(cond[RAW] / cond[STD])))]
    for lr, g in s.groupby("lr"):
        budget = g.steps.max()
        conv = g.assign(to=g.steps_to_target.fillna(np.inf))  # never converged: censored at the budget
        parts.append(greater(A.paired(conv, "to", "norm_type", RAW, STD, ["seed"]),
                             f"step {lr:g}×2/λmax: GD steps to converge, raw − standardized (∞: not converged in "
                             f"its {int(budget)}-step budget)", ".0f", test=SIGN))
    return every(parts)


def build(s: pd.DataFrame, m: pd.DataFrame) -> Report:
    r = Report(STUDY)
    cond = _conditions(s, m)
    rows = []
    for (n, lr), g in s.groupby(["norm_type", "lr"]):
        conv = g.steps_to_target
        mean, lo, hi = A.t_interval(conv.dropna())
        rows.append({"scaling": n, "step (× 2/λmax)": lr, "Hessian condition number": cond.get(n, np.nan),
                     "steps to converge": A.fmt(mean, lo, hi, digits=0) if conv.notna().all()
                     else f"not in {int(g.steps.max())} steps ({int(conv.isna().sum())}/{len(g)})",
                     "diverged": f"{int(g.diverged.sum())}/{len(g)}"})
    table = pd.DataFrame(rows)
    raw, std = RAW, STD
    top = s[s.lr == s.lr.max()]
    r.finding = (f"standardizing the inputs cuts the Hessian condition number from {cond.get(raw, np.nan):.3g} (raw) "
                 f"to {cond.get(std, np.nan):.3g}; gradient descent converges in " + ", ".join(
                     f"{n} {g.steps_to_target.mean():.0f}" if g.steps_to_target.notna().all()
                     else f"{n} >{int(g.steps.max())}" for n, g in top.groupby("norm_type")) + " steps.")
    r.notes = [f"Ours: a linear model on two features three orders of magnitude apart, full-batch gradient descent "
               f"at a step that is a fixed fraction of 2/λmax, {s.seed.nunique()} random starts. After "
               f"{R.LECUN_SCALING.cite()}: {R.LECUN_SCALING.setting}."]
    r.table("convergence", table, f"Steps to converge (loss gap below 1e-6 of the initial gap) per input scaling; "
                                  f"{r.finding}")
    surf, paths = {}, {}
    lr = s.lr.max()
    mm = A.with_runs(m[m.metric.isin(["w1", "w2"])], s, ["norm_type"])
    for n in sorted(set(s.norm_type)):
        surf[n] = error_surface(n, s.dataset.iloc[0])
        p = mm[(mm.norm_type == n) & (mm.lr == lr) & (mm.seed == s.seed.min())]
        paths[n] = p.pivot_table(index="step", columns="metric", values="value").reset_index()
    r.figure("contours", P.contours(surf, paths),
             f"Error-surface contours over the two feature weights with the GD path (step {lr:g}×2/λmax): "
             f"elongated for raw features (condition number {cond.get(raw, np.nan):.3g}), round when standardized "
             f"({cond.get(std, np.nan):.3g}).")
    return r


CLAIMS = (Claim("standardize_conditions", "Standardizing the inputs cuts the Hessian's condition number and the "
                  "gradient-descent steps to converge", "LeCun et al. 1998, §4.3", _cond_claim),)
STUDY = Study("feature_scaling", "Input feature scaling", "LeCun et al. 1998 (Efficient BackProp)", build, claims=CLAIMS, runner="linear_gd",
              question="How does rescaling two features reshape a linear model's error surface and gradient descent?",
              tables={"convergence": "scaling × step"},
              figures={"contours": "scaling"})
