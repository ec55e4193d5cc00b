"""Group Norm at small batches (Wu & He 2018, Fig. 1): BN's error grows as the
per-worker batch shrinks, GN's does not."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from .. import analysis as A
from .. import plots as P
from .. import references as R
from ..claims import Claim, Evidence, at_most, every, greater
from ..report import Report, describe
from ..scoring import CardArm, Measure, Tune, final_error, grids, train_of
from ..study import Study

FLAT = 1.5  # percentage points of test error: "flat" (about five digits test images); Wu & He's GN moves 0.2


def _errors(s: pd.DataFrame) -> pd.DataFrame:
    return s.assign(test_err=100 * (1 - s.final_test_acc))


def label(row) -> str:
    """A norm as the papers name it, from the run's data: Weight Standardization is a model option."""
    ws = bool(json.loads(row["model_options"] or "{}").get("weight_std", False))
    return {"gn": "GN+WS"}.get(row["norm_type"], row["norm_type"] + "+WS") if ws else row["norm_type"]


def primary(s: pd.DataFrame) -> pd.DataFrame:
    """The runs of Wu & He's table: the model trained at the most batch sizes (then with the most runs).
    Other models are side arms (in the default: a conv net at the largest and smallest batch, where the
    batch-independent normalizers' claims are checked)."""
    if s.empty:
        return s
    size = s.groupby("model").agg(batches=("batch_size", "nunique"), runs=("seed", "size"))
    main = size.sort_values(["batches", "runs"], ascending=False).index[0]
    return s[s.model == main]


def _ends(s: pd.DataFrame) -> tuple[int, int]:
    return int(s.batch_size.min()), int(s.batch_size.max())


def _change(norm: str, s: pd.DataFrame, by: str = "norm_type") -> pd.Series:
    """Per seed: test error at the smallest batch minus at the largest, for one norm (type or label)."""
    e = _errors(s[s[by] == norm])
    small, large = _ends(s)
    return A.paired(e, "test_err", "batch_size", small, large, ["seed"])


def _bn_rises(s, m) -> Evidence:
    s = primary(s)
    small, large = _ends(s)
    return greater(_change("bn", s), f"BN test error (points), batch {small} − batch {large}", ".2f")


def _does_not_rise(norm: str, name: str):
    """A batch-independent normalizer holds its accuracy as the batch shrinks: its error at the smallest
    batch per worker is not above its error at the largest by more than FLAT points, in every model that
    trains it at both.  One-sided: under the fixed-epoch protocol a smaller batch takes more steps, so an
    unchanged normalizer may end better there (the two-sided change is in the measured text)."""
    def check(s, m) -> Evidence:
        s = _with_labels(s)
        parts = []
        for model, g in s[s.label == norm].groupby("model"):
            if g.batch_size.nunique() < 2:
                continue
            small, large = _ends(g)
            parts.append(at_most(_change(norm, g, "label"), FLAT, f"{model}: {name} test error (points), batch "
                                                                   f"{small} − batch {large}", ".2f"))
        return every(parts)
    return check


def _gn_beats_bn(s, m) -> Evidence:
    s = primary(s)
    small, _ = _ends(s)
    e = _errors(s[s.batch_size == small])
    return greater(A.paired(e, "test_err", "norm_type", "bn", "gn", ["seed"]),
                   f"test error (points) at batch {small}, BN − GN", ".2f")


def _with_labels(s: pd.DataFrame) -> pd.DataFrame:
    return s.assign(label=s.apply(label, axis=1)) if len(s) else s.assign(label=[])


def _large_batch_twins(s: pd.DataFrame, norm: str) -> list[tuple[str, pd.DataFrame, pd.DataFrame]]:
    """Per model that trains ``norm``: (model, its runs at its smallest batch, BN's runs at BN's largest
    batch on the same net, Weight Standardization aside)."""
    s = _with_labels(s)
    out = []
    for model, g in s[s.label == norm].groupby("model"):
        small, _ = _ends(g)
        opts = {k: v for k, v in json.loads(g.model_options.iloc[0]).items() if k != "weight_std"}
        twin = s[(s.model_type == g.model_type.iloc[0]) & (s.label == "bn") & s.model_options.map(
            lambda o: {k: v for k, v in json.loads(o).items() if k != "weight_std"} == opts)]
        if not twin.empty:
            out.append((model, g[g.batch_size == small], twin[twin.batch_size == twin.batch_size.max()]))
    return out


def _matches_large_batch_bn(norm: str, name: str):
    """A batch-independent normalizer trained with the smallest batch per worker matches (or beats) BN
    trained with the largest, on the same net (WS aside): per seed, its error at the smallest batch
    minus BN's at the largest is at most FLAT points.  Against BN's large-batch run rather than its own:
    a normalizer that is unstable at the large batch's lr (EvoNorm-S0 was, in 2 of 5 seeds) would
    otherwise pass or fail on that instability, not on how it holds up at small batches."""
    def check(s, m) -> Evidence:
        parts = []
        for model, ours, bn in _large_batch_twins(s, norm):
            ours_err, bn_err = _errors(ours).set_index("seed").test_err, _errors(bn).set_index("seed").test_err
            parts.append(at_most((ours_err - bn_err).dropna(), FLAT, f"{model}: test error (points), {name} at batch "
                                                                     f"{int(ours.batch_size.iloc[0])} − BN at batch "
                                                                     f"{int(bn.batch_size.iloc[0])}", ".2f"))
        return every(parts)
    return check


def _twins_arm(norm: str):
    def arm(s: pd.DataFrame) -> pd.Series:
        rows = [i for _, ours, bn in _large_batch_twins(s, norm) for i in (*ours.index, *bn.index)]
        return pd.Series(s.index.isin(rows), index=s.index)
    return arm


def _primary_arm(norms: tuple[str, ...], smallest: bool = False):
    """The main table's runs of these norm types (at its smallest batch only, with ``smallest``)."""
    def arm(s: pd.DataFrame) -> pd.Series:
        main = primary(s)
        main = main[main.norm_type.isin(norms)]
        if smallest and len(main):
            main = main[main.batch_size == main.batch_size.min()]
        return pd.Series(s.index.isin(main.index), index=s.index)
    return arm


def error_table(s: pd.DataFrame) -> pd.DataFrame:
    """Long form: norm type, batch size, test error % (mean, t interval, failed runs); Δ(GN−BN) rows
    paired by seed where both trained; Wu & He's numbers beside."""
    err = _errors(s)
    t = A.summarize(err, ["norm_type", "batch_size"], "test_err")
    rows = []
    for bs, g in err[~A.failed(err)].groupby("batch_size"):
        diff = A.paired(g, "test_err", "norm_type", "gn", "bn", ["seed"])
        if len(diff):
            m, lo, hi = A.t_interval(diff)
            rows.append({"norm_type": "Δ(GN−BN)", "batch_size": bs, "n": len(diff), "n_diverged": 0, "n_collapsed": 0,
                         "mean": m, "lo": lo, "hi": hi})
    t = pd.concat([t, pd.DataFrame(rows)], ignore_index=True)
    ref = R.GN_WU_HE.values
    t["ref_err"] = [(ref["gn"][b] - ref["bn"][b]) if (n == "Δ(GN−BN)" and b in ref["bn"])
                    else ref.get(n, {}).get(b, np.nan) for n, b in zip(t.norm_type, t.batch_size)]
    return t


def side_table(s: pd.DataFrame) -> pd.DataFrame:
    """The other arms (models besides the main table's): test error and final training loss by norm (WS
    marked) and batch size -- the conv measurement beside the main table, and the batch-independent
    normalizers' own claims."""
    if s.empty:
        return pd.DataFrame(columns=["model", "norm", "batch_size", "n", "n_diverged", "n_collapsed", "mean", "lo",
                                     "hi", "train_loss"])
    e = _errors(s).assign(norm=lambda d: d.apply(label, axis=1))
    t = A.summarize(e, ["model", "norm", "batch_size"], "test_err")
    loss = e.groupby(["model", "norm", "batch_size"]).final_train_loss.median().rename("train_loss")
    return t.merge(loss.reset_index(), on=["model", "norm", "batch_size"])


def build(s: pd.DataFrame, m: pd.DataFrame) -> Report:
    r = Report(STUDY)
    main = primary(s)
    side = s[~s.index.isin(main.index)]
    t = error_table(main)
    t["cell"] = t.apply(lambda row: A.fmt_row(row, 1), axis=1)
    wide = t.pivot(index="norm_type", columns="batch_size", values="cell")
    ref = t.pivot(index="norm_type", columns="batch_size", values="ref_err")
    bss = sorted(t.batch_size.unique(), reverse=True)
    shown = pd.DataFrame({"norm": wide.index})
    for b in bss:
        shown[f"batch {b}"] = [("–" if pd.isna(wide.loc[n, b]) else wide.loc[n, b])
                               + ("" if pd.isna(ref.loc[n, b]) else f" (W&H {ref.loc[n, b]:.1f})") for n in wide.index]
    order = [n for n in ["bn", "gn", "ln", "in", "brn", "Δ(GN−BN)"] if n in set(shown.norm)]
    shown = shown.set_index("norm").loc[order + sorted(set(shown.norm) - set(order))].reset_index()
    g = t.set_index(["norm_type", "batch_size"])["mean"]
    small, large = _ends(main)
    wh = R.GN_WU_HE.values
    parts = [f"{n.upper()} {g.get((n, large), np.nan):.1f}% → {g.get((n, small), np.nan):.1f}%"
             for n in ("bn", "gn", "brn") if (n, small) in g.index]
    r.finding = (f"test error from batch {large} to {small} per worker: " + "; ".join(parts)
                 + f" (Wu & He: BN {wh['bn'][32]} → {wh['bn'][2]}, GN {wh['gn'][32]} → {wh['gn'][2]}).")
    workers = int(main.workers.iloc[0])
    mlp = (main.model_type == "mlp").all()
    scale = ("our fully connected net normalizes each feature over N values only, so the same mechanism -- "
             "statistics from too few values -- acts at a smaller scale, and at N = 2 in the extreme (each BN "
             "output is then ±1)" if mlp else "ours normalizes each channel over N×H×W values")
    r.notes = [f"Ours: {describe(main)}: each of the {workers} data-parallel workers normalizes its own {small}–{large} "
               f"images (unsynchronized BN, as on Wu & He's 8 GPUs), lr = 0.1·N/32, the same epochs at every batch, "
               f"BN evaluated with running averages. Reference: {R.GN_WU_HE.setting} ({R.GN_WU_HE.cite()}). "
               f"Wu & He's ResNet-50 normalizes each channel over N×7×7 values or more; {scale}. Compare the trend "
               f"with batch size, not the levels. Δ(GN−BN) is paired by seed."]
    loss = main.groupby(["norm_type", "batch_size"]).final_train_loss.median()
    if ("gn", large) in loss.index and ("gn", small) in loss.index:
        r.notes.append(f"The same epochs at every batch give the smallest batch {large // small}× the steps of the "
                       f"largest: GN's final training loss is {loss['gn', large]:.3g} at batch {large} and "
                       f"{loss['gn', small]:.3g} at batch {small} (medians over seeds), so a batch-independent "
                       f"normalizer may end better at the small batch. Wu & He train every batch size to "
                       f"convergence (100 ImageNet epochs); the claims that a normalizer holds its accuracy are "
                       f"one-sided for this reason: its error must not rise by more than {FLAT} points.")
    st = side_table(side)
    if len(st):
        sg = st.set_index(["model", "norm", "batch_size"])["mean"]
        conv = {}  # (model, norm) -> its error from the largest batch to the smallest
        for (model, norm), h in st.groupby(["model", "norm"]):
            lo_b, hi_b = int(h.batch_size.min()), int(h.batch_size.max())
            if lo_b != hi_b:
                conv[model, norm] = f"{model} {norm} {sg[model, norm, hi_b]:.1f}% → {sg[model, norm, lo_b]:.1f}%"
        bn = [v for (model, norm), v in conv.items() if norm == "bn"]
        why = ("With a conv net on these 8×8 digits BN's error hardly moves (" + "; ".join(bn) + "): spatial "
               "positions pool the statistics (N×H×W values per channel) and digits sits near its ceiling, so the "
               "default's main table uses the fully connected net, where the same mechanism acts; the real-data "
               "tier (config/experiments/realdata_fashion_mnist.yaml) holds the faithful version, a ResNet with "
               "per-worker BN on Fashion-MNIST." if mlp and bn else "")
        r.notes.append(f"Side arms (other models): {describe(side)}; test error from the largest to the smallest batch: "
                       + "; ".join(conv.values()) + ". " + why + f" The batch-independent normalizers' claims come from their "
                       f"papers: {R.FRN.cite()}: {R.FRN.setting}; {R.EVONORM.cite()}: {R.EVONORM.setting}; "
                       f"{R.WS_GN.cite()}: {R.WS_GN.setting}.")
        st_shown = st.assign(error=st.apply(lambda row: A.fmt_row(row, 1), axis=1),
                             train_loss=st.train_loss.map("{:.3g}".format))[["model", "norm", "batch_size", "error",
                                                                               "train_loss", "n"]]
    else:
        st_shown = st
    r.table("error_by_batch", t.drop(columns="cell"),
            f"Test error (%) by batch size per worker, {A.INTERVAL}, Wu & He beside ours; {r.finding}", shown)
    r.table("side_arms", st, f"Side arms: test error (%) ({A.INTERVAL}) and median final training loss by model, "
                             f"norm (+WS: Weight Standardization) and batch size per worker.", st_shown)
    ours = _errors(main[~A.failed(main)]).rename(columns={"norm_type": "norm type"})
    r.figure("error_vs_batch", P.with_reference(ours, "batch_size", "test_err", "norm type", "test error (%)",
                                                {k: v for k, v in wh.items()}, "Wu & He 2018 (ResNet-50, ImageNet)",
                                                "top-1 error (%)", "images per worker"),
             f"Test error vs batch size per worker: ours (mean, t 95% band, seeds) and Wu & He's published numbers "
             f"in their own panel; {r.finding}")
    return r


CLAIMS = (
    Claim("bn_rises", "BN's error rises as the batch per worker shrinks", "Wu & He 2018, Fig. 1 / Table 2",
          _bn_rises, arm=_primary_arm(("bn",))),
    Claim("gn_flat", f"GN's error does not rise as the batch shrinks (by at most {FLAT} points; one-sided: the "
          f"smaller batch takes more steps in the same epochs)", "Wu & He 2018, Fig. 1 / Table 2",
          _does_not_rise("gn", "GN"), arm=lambda s: _with_labels(s).label == "gn"),
    Claim("gn_beats_bn", "GN beats BN at the smallest batch", "Wu & He 2018, Fig. 1 (batch 2: 24.1 vs 34.7)",
          _gn_beats_bn, arm=_primary_arm(("bn", "gn"), smallest=True)),
    Claim("frn_holds", f"FRN at the smallest batch per worker matches BN at the largest (error at most {FLAT} "
          f"points above BN's)", "Singh & Krishnan 2020, abstract, Fig. 1 (FRN beats BN at every batch size)",
          _matches_large_batch_bn("frn", "FRN"), arm=_twins_arm("frn")),
    Claim("evonorm_s0_holds", f"EvoNorm-S0 at the smallest batch per worker matches BN at the largest (error at "
          f"most {FLAT} points above BN's)", "Liu et al. 2020, abstract",
          _matches_large_batch_bn("evonorm_s0", "EvoNorm-S0"), arm=_twins_arm("evonorm_s0")),
    Claim("ws_gn_matches_bn", f"GN with Weight Standardization at the smallest batch per worker matches BN at "
          f"the largest (error at most {FLAT} points above BN's)", "Qiao et al. 2019, abstract",
          _matches_large_batch_bn("GN+WS", "GN+WS"), arm=_twins_arm("GN+WS")),
)
# -- the report card's arm (normbench evaluate): a conv net at the study's largest and smallest batch ---
# per worker, 2 workers, the same epochs (as the study's conv side arm: the large batch gets ~220 steps
# and trains); the net pools down to 1×1 maps before its last conv, as a ResNet's last stage works on
# small maps, so that batch statistics there come from the batch alone (N values per channel) -- the
# regime where Wu & He see BN fail; on the side arm's net (2×2 maps) BN at 2 images held 98%, measured

CARD_MODEL = "evaluate_batch_conv"
CARD_NET = {"type": "vgg", "options": {"layers": [8, 8, "M", 16, 16, "M", 32, "M", 32]}, "init": "kaiming"}
CARD_WORKERS, CARD_EPOCHS = 2, 10


def _base_lr(d: pd.DataFrame, info: dict) -> pd.Series:
    """A run's base lr under the arm's linear-scaling rule lr = base · N / reference."""
    return d.lr * info["reference_batch"] / d.batch_size


def _card_block(block: dict, config: dict) -> dict:
    gs = grids(block)
    sizes = sorted({b for g in gs for b in g["batch_size"]})
    g = next((x for x in gs if isinstance(x["lr"], dict)), gs[0])
    rule = g["lr"] if isinstance(g["lr"], dict) else {"base": g["lr"][0], "reference_batch": sizes[-1]}
    base = rule["base"][0] if isinstance(rule["base"], list) else rule["base"]
    shared = base * sizes[-1] / rule["reference_batch"]  # the study's lr at the largest batch, as the base
    return {"models": {CARD_MODEL: CARD_NET}, "card": {"shared_lr": shared, "reference_batch": sizes[-1]},
            "grid": {"model": [CARD_MODEL], "dataset": g["dataset"][:1], "batch_size": [sizes[-1], sizes[0]],
                     "lr": {"base": [f * shared for f in CARD_TUNE.factors], "reference_batch": sizes[-1]},
                     "seed": g["seed"]},
            "train": {**train_of(block, g), "workers": CARD_WORKERS, "epochs": CARD_EPOCHS}}


def small_batch_error(s: pd.DataFrame, m: pd.DataFrame) -> pd.DataFrame:
    """Test error (%) at the smallest batch per worker; a diverged run counts at chance."""
    return final_error(s[s.batch_size == s.batch_size.min()], m)[["norm", "seed", "value"]]


def error_rise(s: pd.DataFrame, m: pd.DataFrame) -> pd.DataFrame:
    """Test error (%) at the smallest batch minus at the largest, per seed."""
    e = final_error(s, m)
    small, large = e[e.batch_size == e.batch_size.min()], e[e.batch_size == e.batch_size.max()]
    d = small.set_index(["norm", "seed"]).value - large.set_index(["norm", "seed"]).value
    return d.rename("value").reset_index()


def large_batch_untrained(s: pd.DataFrame, m: pd.DataFrame) -> dict[str, str]:
    """A rise read from a large batch that did not train is the budget's, not the normalizer's."""
    large = s[s.batch_size == s.batch_size.max()]
    return {n: f"its runs at {int(large.batch_size.max())} images per worker did not train (diverged or ended "
               f"at chance)" for n, g in large.groupby("norm") if A.failed(g).any()}


CARD_TUNE = Tune((0.5, 1.0, 2.0), final_error, "lower", group=("batch_size",), setting=_base_lr, what="base lr")
CARD = CardArm(
    "batch robustness", _card_block, order=20, tune=CARD_TUNE, trim={"seeds": 5},
    measures=(
        Measure("test error (%) at the smallest batch per worker", "smallest batch", small_batch_error, "lower",
                FLAT, f"{FLAT} points (the study's 'flat')", show=lambda v: f"{v:.1f}"),
        # each batch size at its own best lr: at one shared lr the large batch of a normalizer tuned for
        # another lr is under-trained, and the rise would be the budget's (measured: −26 points for LN)
        Measure("rise in test error (points) from the largest to the smallest batch per worker", "rise",
                error_rise, "lower", FLAT, "", show=lambda v: f"{v:+.1f}", judged=False, beside=False,
                untrained=large_batch_untrained),
    ))
STUDY = Study("gn_small_batch", "Group Norm at small batches", "Wu & He 2018; FRN, EvoNorm, WS", build, claims=CLAIMS, card=CARD,
              question="BN's error grows as the batch shrinks; does GN's, and do the batch-independent normalizers "
                       "(FRN, EvoNorm-S0, GN+WS) hold theirs?",
              tables={"error_by_batch": "norm × batch size", "side_arms": "model × norm × batch size"},
              figures={"error_vs_batch": "norm × batch size"})
