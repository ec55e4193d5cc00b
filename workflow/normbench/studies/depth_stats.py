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
from ..scoring import CardArm, Measure, Tune, final_acc, grids, train_of
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
# -- the report card's arm (normbench evaluate): plain conv nets (conv-only normalizers enter too) -------
# The activation scale through 100 layers at initialization (one probed step), and whether a plain net
# of 20 layers trains in a fixed budget at each normalizer's best lr.  At 100 layers no baseline trained
# in 200 momentum steps (BN at chance: a plain net that deep is BN's own failure, Yang et al. 2019), so
# the training reading uses the depth where the baselines can be told apart (measured: BN ~0.85, GN ~0.37,
# LN ~0.3, no normalization at chance after 300 steps).  8 channels keep both CPU-sized.

CARD_INIT, CARD_TRAINED = "evaluate_plain_conv100", "evaluate_plain_conv20"
CARD_WIDTH, CARD_INIT_DEPTH, CARD_DEPTH = 8, 100, 20


def _card_block(block: dict, config: dict) -> dict:
    g = grids(block)[0]
    train = train_of(block, g)
    lr = g["lr"][0]
    common = {"dataset": g["dataset"][:1], "batch_size": g["batch_size"][:1], "seed": g["seed"]}
    models = {CARD_INIT: {"type": "vgg", "options": {"layers": [CARD_WIDTH] * CARD_INIT_DEPTH}},
              CARD_TRAINED: {"type": "vgg", "options": {"layers": [CARD_WIDTH] * CARD_DEPTH}}}
    at_init = {**train, "steps": 1, "eval_every": 1, "probes": ["act_stats"], "probe_every": 1}
    trained = {**train, "probes": [], "probe_every": 0, **CARD_BUDGET}
    return {"models": models, "card": {"shared_lr": lr},
            "grid": [{"model": [CARD_INIT], "lr": [lr], **common, "train": at_init},
                     {"model": [CARD_TRAINED], "lr": [f * lr for f in CARD_TUNE.factors], **common,
                      "train": trained}]}


LOG_CLIP = 45.0  # |log10| of an activation ratio: float32 has no smaller positive number than ~1e-45


def activation_scale(s: pd.DataFrame, m: pd.DataFrame) -> pd.DataFrame:
    """|log10(activation std at the last layer / at the first)| at initialization (the first probe)."""
    a = m[(m.metric == "act_std") & (m.step == m[m.metric == "act_std"].step.min())]
    rows = []
    for (norm, seed), g in a.groupby(["norm", "seed"]):
        g = A.layer_index(g)
        first, last = g[g.depth == g.depth.min()].value.iloc[0], g[g.depth == g.depth.max()].value.iloc[0]
        with np.errstate(divide="ignore", invalid="ignore"):
            r = float(np.log10(np.float64(last) / np.float64(first)))
        r = LOG_CLIP if np.isnan(r) else float(np.clip(r, -LOG_CLIP, LOG_CLIP))  # nan: inf / inf, exploded
        rows.append({"norm": norm, "seed": seed, "value": abs(r)})
    return pd.DataFrame(rows, columns=["norm", "seed", "value"])


def _trained(d: pd.DataFrame) -> pd.Series:
    return d.model == CARD_TRAINED


def _trained_acc(s: pd.DataFrame, m: pd.DataFrame) -> pd.DataFrame:
    return final_acc(s[_trained(s)], m)


CARD_BUDGET = {"steps": 300, "eval_every": 300, "optimizer": "momentum"}
# the study's lr (SGD, 20 probed steps) and up: with momentum over 300 steps BN trained best at 0.05–0.1
CARD_TUNE = Tune((1.0, 3.0, 10.0), _trained_acc, "higher")
CARD = CardArm(
    "depth", _card_block, order=30, tune=CARD_TUNE, trim={"seeds": 5},
    measures=(
        Measure(f"|log10(activation std, last / first layer)| at init, {CARD_INIT_DEPTH} plain conv layers",
                "activation scale", activation_scale, "lower", np.log10(2), "a factor of 2", tuned=False,
                trains=False, runs=lambda d: d.model == CARD_INIT),
        Measure(f"test accuracy of a {CARD_DEPTH}-layer plain conv net after {CARD_BUDGET['steps']} steps",
                "training", _trained_acc, "higher", 0.05, "5 points", runs=_trained),
    ))
STUDY = Study("depth_stats", "Activations through depth", "He et al. 2015; Ioffe & Szegedy 2015", build, claims=CLAIMS, card=CARD,
              question="How does the activation scale change through a 100-layer MLP: default init, Kaiming init, "
                       "BN before and after ReLU?",
              tables={"act_std": "setting × layer"},
              figures={"act_std_by_depth": "setting × layer"})
