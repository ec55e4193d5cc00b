"""Learning rate × batch size: how large a learning rate each normalizer
tolerates, and how fast it reaches a target accuracy (Ioffe & Szegedy 2015)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import analysis as A
from .. import plots as P
from .. import references as R
from ..claims import Claim, Evidence, every, greater
from ..intervals import SIGN
from ..report import Report, describe
from ..scoring import CardArm, Measure, grids, train_of
from ..study import Study


def largest_trained_lr(s: pd.DataFrame) -> pd.DataFrame:
    """Per norm type, batch size and seed: the largest lr at which that seed trained (neither diverged
    nor collapsed to chance); 0 for a seed that trained at no lr (censored: below the grid, by how much
    is unknown -- the sign test reads it by its rank, never as a number)."""
    top = s[~A.failed(s)].groupby(["norm_type", "batch_size", "seed"]).lr.max()
    runs = s.groupby(["norm_type", "batch_size", "seed"]).size().index
    return top.reindex(runs, fill_value=0.0).rename("largest_trained_lr").reset_index()


def _bn_trains_where_none_fails(s: pd.DataFrame, m: pd.DataFrame) -> Evidence:
    """Per seed, the largest lr at which BN trained against the largest at which the same net without
    normalization trained: log2 of their ratio, paired by seed, an ordinal value on the lr grid (censored
    where a net trained at no lr), so decided by the sign test -- one seed at an edge moves one sign, not
    the estimate.  The net is He-initialized, so that without normalization it trains at the small lrs
    (with PyTorch's default init it sat on its initial plateau at 0.05 and the claim measured the budget);
    its failure at the large ones is then the lr's: there its loss overflows, as the paper's did."""
    top = largest_trained_lr(s)
    parts = []
    for bs, g in top.groupby("batch_size"):
        with np.errstate(divide="ignore"):  # trained at no lr: log2 0 = −inf, censored below the grid
            g = g.assign(log2_lr=np.log2(g.largest_trained_lr))
        ev = greater(A.paired(g, "log2_lr", "norm_type", "bn", "none", ["seed"]),
                     f"batch {bs}: log2(largest lr at which a seed trained: BN / no norm)", ".2f", test=SIGN)
        per = g.groupby("norm_type").largest_trained_lr.agg(lambda v: "/".join(f"{x:g}" if x else "none" for x in v))
        ev.measured += f" (per seed: BN {per.get('bn', '–')}, no norm {per.get('none', '–')})"
        bn_top = g[g.norm_type == "bn"].largest_trained_lr.median()
        at = s[(s.batch_size == bs) & (s.norm_type == "none") & (s.lr == bn_top)]
        if len(at):
            ev.measured += (f"; at lr {bn_top:g}, where BN trains, no norm diverged (non-finite or exploding loss) in "
                            f"{int(at.diverged.sum())}/{len(at)} seeds and collapsed to chance in "
                            f"{int((at.collapsed.fillna(False) & ~at.diverged).sum())}")
        parts.append(ev)
    return every(parts)


def build(s: pd.DataFrame, m: pd.DataFrame) -> Report:
    r = Report(STUDY)
    grid = A.summarize(s, ["norm", "batch_size", "lr"], "final_test_acc")
    msl = A.max_stable_lr(s)
    stt = A.steps_to_target(s)
    target = s.target_acc.dropna().iloc[0] if s.target_acc.notna().any() else np.nan
    fmt_lr = lambda v: ", ".join(f"{n} {x:g}" if pd.notna(x) else f"{n} none" for n, x in v.items())  # noqa: E731
    r.finding = (f"largest lr at which every seed trained (worst batch size): "
                 f"{fmt_lr(msl.groupby('norm').max_trained_lr.min())}; with no diverged seed (finite loss, "
                 f"collapsed to chance included): "
                 f"{fmt_lr(msl.groupby('norm').max_stable_lr.min())}.")
    r.figure("heatmaps", P.heatmaps(grid, "final test accuracy (mean over seeds)"),
             f"Final test accuracy (mean over seeds) over lr × batch size; 'div' marks diverged seeds, 'col' seeds "
             f"that collapsed to chance. {r.finding}")
    r.table("max_stable_lr", msl, f"Largest learning rate at which no seed diverged (non-finite or exploding "
                                  f"loss), and at which every seed trained (neither diverged nor collapsed to "
                                  f"chance); {r.finding}")
    shown = stt.assign(steps=[A.fmt(a, b, c, digits=0) for a, b, c in zip(stt.steps, stt.steps_lo, stt.steps_hi)],
                       speedup=stt.speedup.map(lambda v: "–" if pd.isna(v) else f"{v:.1f}×"))
    shown = shown[["norm", "batch_size", "best_lr", "steps", "examples", "speedup", "n"]]
    fastest = stt.dropna(subset=["steps"]).sort_values("steps").head(1)
    note = (f"fastest: {fastest.norm.iloc[0]} at batch {fastest.batch_size.iloc[0]}, lr {fastest.best_lr.iloc[0]:g} "
            f"({fastest.steps.iloc[0]:.0f} steps)") if len(fastest) else "no setting reached the target"
    pct = "–" if pd.isna(target) else f"{100 * target:.0f}%"
    r.table("steps_to_target", stt, f"Steps (and examples) to {pct} test accuracy at each norm's best lr, "
                                    f"speed-up over no normalization (as the BN paper's steps-to-72.2% table); "
                                    f"{note}.", shown)
    paper = ", ".join(f"{k} {v[0] / 1e6:g}M steps" for k, v in R.BN_PAPER_STEPS.values.items() if v[0])
    r.notes = [f"{R.BN_PAPER_STEPS.cite()}: {R.BN_PAPER_STEPS.setting}: {paper}. Ours: {describe(s)}; "
               f"compare orderings and ratios, not absolute numbers."]
    r.figure("curves_test_acc", P.curves(m, "test", "acc"), "Test accuracy vs step per norm (mean, t 95% band, "
                                                            "seeds).")
    r.figure("curves_train_loss", P.curves(m, "train", "loss"),
             "Training loss vs step per norm (mean, t 95% band, seeds); diverged runs end early.")
    return r


CLAIMS = (Claim("bn_larger_lr", "BN trains at learning rates where the same net without normalization diverges "
                  "or collapses", "Ioffe & Szegedy 2015, §3.3 and §4.2.2 (BN-x30; without BN, 5× lr 'reached "
                  "machine infinity')", _bn_trains_where_none_fails,
                  arm=lambda s: s.norm_type.isin(["bn", "none"])),)
# -- the report card's arm (normbench evaluate): the sweep's CNN over its lr grid at its batch sizes -----


def _card_block(block: dict, config: dict) -> dict:
    g = grids(block)[0]
    return {"grid": {"model": g["model"][:1], "dataset": g["dataset"][:1], "batch_size": g["batch_size"],
                     "lr": g["lr"], "seed": g["seed"]},
            "train": train_of(block, g)}


def lr_rank(s: pd.DataFrame, m: pd.DataFrame) -> pd.DataFrame:
    """Per batch size and seed: how many steps up the lr grid the seed's largest lr that trained
    (neither diverged nor collapsed) is; 0 if it trained at none."""
    rows = []
    for bs, g in s.groupby("batch_size"):
        grid = sorted(g.lr.unique())
        ok = g.assign(ok=~A.failed(g))
        for (norm, seed), h in ok.groupby(["norm", "seed"]):
            top = [grid.index(lr) + 1 for lr in h.lr[h.ok]]
            rows.append({"norm": norm, "batch_size": bs, "seed": seed, "value": float(max(top, default=0))})
    return pd.DataFrame(rows, columns=["norm", "batch_size", "seed", "value"])


def every_seed_lr(s: pd.DataFrame, m: pd.DataFrame) -> pd.DataFrame:
    """Per batch size: the largest lr at which every seed trained (``analysis.max_stable_lr``)."""
    t = A.max_stable_lr(s)
    return t.assign(value=t.max_trained_lr)[["norm", "batch_size", "value"]]


def _per_batch(rows: pd.DataFrame) -> str:
    return ", ".join(f"{v:g} at batch {b}" if np.isfinite(v) else f"none at batch {b}"
                     for b, v in zip(rows.batch_size, rows.value)) or "–"


CARD = CardArm(
    "learning-rate robustness", _card_block, order=10,
    one_lr="the lr grid is what this axis measures: every normalizer runs the whole grid",
    trim={"seeds": 3, "train": {"steps": 150, "eval_every": 50}},  # 250 → 150 steps: divergence shows early
    measures=(
        Measure("largest lr at which every seed trained", "every seed", every_seed_lr, "higher", 0.0, "",
                keys=("batch_size",), judged=False, cell=_per_batch),
        Measure("largest lr that trained (steps up the lr grid, per batch size and seed)", "lr", lr_rank, "higher",
                0.5, "half a grid step", keys=("batch_size", "seed")),
    ))
STUDY = Study("lr_bs_sweep", "Learning rate × batch size", "Ioffe & Szegedy 2015", build, claims=CLAIMS, card=CARD,
              question="How large a learning rate does each normalizer tolerate, and how fast does it reach a target accuracy?",
              tables={"max_stable_lr": "norm × batch size", "steps_to_target": "norm × batch size"},
              figures={"heatmaps": "norm × lr × batch size", "curves_test_acc": "norm × lr × batch size",
                      "curves_train_loss": "norm × lr × batch size"})
