"""Activation statistics through a 100-layer MLP at initialization: default init
vanishes, Kaiming (He et al. 2015) holds the scale, BN fixes it at every depth."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import analysis as A
from .. import plots as P
from .. import references as R
from ..claims import Claim, Evidence, at_most, inside
from ..report import Report, describe
from ..study import Study


def _setting(row) -> str:
    """What a run was, from its data (never its id)."""
    if row["norm_type"] == "none":
        return f"no norm, {row['init']} init"
    where = "before" if row["placement"] == "pre" else "after"
    return f"{row['norm_type']} {where} {row['activation']}, {row['init']} init"


def _init_stds(s: pd.DataFrame, m: pd.DataFrame) -> pd.DataFrame:
    """Activation std per layer at the first probe (initialization), with each run's setting."""
    s = s.assign(setting=s.apply(_setting, axis=1))
    m = A.with_runs(m[m.metric == "act_std"], s, ["norm_type", "init", "setting"])
    m = A.layer_index(m)
    return m[m.step == m.step.min()]


def _bounded(values, lo: float, hi: float, what: str) -> Evidence:
    """The seeds' values inside [lo, hi], judged by their interval (``claims.inside``)."""
    return inside(values, lo, hi, what, ".3g", min_n=2)


def _bn_relu_std(s, m) -> Evidence:
    """Worst relative deviation from √(½ − 1/2π) over all layers, per seed: below 10%."""
    target = R.DEPTH_STD.values["bn_relu_std"]
    d = _init_stds(s, m)
    d = d[(d.norm_type == "bn") & (d.placement == "pre") & (d.activation == "relu")]
    worst = d.assign(dev=(d.value / target - 1).abs()).groupby("seed").dev.max()
    return at_most(worst.values, 0.1, f"largest |std/{target:.3f} − 1| over {d.depth.nunique()} layers", ".3g",
                   min_n=2)


def _depth_ratio(s, m, init: str) -> pd.Series:
    """Per seed: log10 of (activation std at the last layer / at the first), no norm, ``init``."""
    d = _init_stds(s, m)
    d = d[(d.norm_type == "none") & (d.init == init)]
    first, last = d[d.depth == d.depth.min()], d[d.depth == d.depth.max()]
    return np.log10(last.set_index("seed").value / first.set_index("seed").value).dropna()


def _default_vanishes(s, m) -> Evidence:
    return _bounded(_depth_ratio(s, m, "default").values, -np.inf, -1.0,
                    "default init, log10(std last layer / std first layer)")


def _kaiming_holds(s, m) -> Evidence:
    return _bounded(_depth_ratio(s, m, "kaiming").values, -1.0, 1.0,
                    "Kaiming init, log10(std last layer / std first layer)")


def build(s: pd.DataFrame, m: pd.DataFrame) -> Report:
    r = Report(STUDY)
    init = _init_stds(s, m)
    first, last = init.depth.min(), init.depth.max()
    tab = init.groupby(["setting", "depth"]).value.mean().unstack("depth")
    mid = tab.columns[len(tab.columns) // 2]
    table = pd.DataFrame({"setting": tab.index, "std layer 1": tab[first].values,
                          f"std layer {mid + 1}": tab[mid].values, f"std layer {last + 1}": tab[last].values})
    target = R.DEPTH_STD.values["bn_relu_std"]
    r.finding = (f"activation std at layer {last + 1} of {last + 1} at init: "
                 + ", ".join(f"{k} {v:.3g}" for k, v in table.set_index("setting").iloc[:, -1].items())
                 + f" (BN before ReLU should give √(½ − 1/2π) = {target:.3f} at every depth).")
    r.notes = [f"Ours: {describe(s)}. Expected value: {R.DEPTH_STD.setting} ({R.DEPTH_STD.cite()})."]
    r.figure("act_std_by_depth", P.activations_by_depth(A.with_runs(m, s.assign(setting=s.apply(_setting, axis=1)),
                                                                    ["setting"]), "act_std", hue="setting"),
             f"Activation std per layer of the MLP at init and after the last probed step (mean, t 95% band, seeds); "
             f"{r.finding}")
    r.table("act_std", table, f"Mean activation std at init at the first, middle and last layer; {r.finding}",
            table.round(4))
    return r


CLAIMS = (
    Claim("bn_relu_std", "With BN before ReLU the activation std is √(½ − 1/2π) ≈ 0.584 at every depth",
          "Ioffe & Szegedy 2015, §3 (normalized pre-activations)", _bn_relu_std,
          arm=lambda s: (s.norm_type == "bn") & (s.placement == "pre")),
    Claim("default_vanishes", "Without normalization, default (PyTorch) init makes the activations vanish "
          "with depth", "He et al. 2015, §2.2", _default_vanishes,
          arm=lambda s: (s.norm_type == "none") & (s.init == "default")),
    Claim("kaiming_holds", "Kaiming init keeps the activation scale through depth (within 10× over 100 layers)",
          "He et al. 2015, §2.2, Fig. 2", _kaiming_holds, arm=lambda s: (s.norm_type == "none") & (s.init == "kaiming")),
)
STUDY = Study("depth_stats", "Activations through depth", "He et al. 2015; Ioffe & Szegedy 2015", build, claims=CLAIMS,
              question="How does the activation scale change through a 100-layer MLP: default init, Kaiming init, "
                       "BN before and after ReLU?",
              tables={"act_std": "setting × layer"},
              figures={"act_std_by_depth": "setting × layer"})
