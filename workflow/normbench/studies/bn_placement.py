"""BN before or after the nonlinearity, with or without its affine step
(caffenet-benchmark's table), and BN letting a saturating sigmoid net train at
all (Ioffe & Szegedy 2015, MNIST)."""

from __future__ import annotations

import json

import pandas as pd

from .. import analysis as A
from .. import plots as P
from .. import references as R
from ..claims import Claim, Evidence, greater
from ..report import Report, describe
from ..study import Study

SIGMOID_ARM = "mlp"  # model_type of the Ioffe & Szegedy MNIST arm (3 fully connected sigmoid layers)


def variant(row) -> str:
    """caffenet-benchmark's row names, from what the run was (not its id)."""
    act = {"relu": "ReLU", "identity": "no activation"}.get(row["activation"], row["activation"])
    if row["norm_type"] == "none":
        return "no BN" if row["activation"] == "relu" else f"no BN, {act}"
    if row["norm_type"] != "bn":
        return f"{row['norm_type']} {row['placement']} {act}"
    where = "before" if row["placement"] == "pre" else "after"
    affine = bool(json.loads(row["norm_options"] or "{}").get("affine", True))
    return f"BN {where} {act}" + (" + scale&bias" if affine else "")


def _arms(s: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    s = s.assign(variant=s.apply(variant, axis=1))
    return s[s.model_type != SIGMOID_ARM], s[s.model_type == SIGMOID_ARM]


def _sigmoid_claim(s, m) -> Evidence:
    _, sig = _arms(s)
    sig = sig[sig.activation == "sigmoid"]
    diffs = A.paired(sig, "final_test_acc", "norm_type", "bn", "none", ["seed"])
    none = sig[sig.norm_type == "none"]
    ev = greater(diffs, "sigmoid MLP, test accuracy with BN − without", ".3f", margin=0.1)
    ev.measured += (f"; without BN {int(A.failed(none).sum())}/{len(none)} runs failed (diverged or collapsed "
                    f"to chance, accuracy {none.final_test_acc.mean():.3f})")
    return ev


def _after_vs_before(s, m) -> Evidence:
    """caffenet-benchmark's headline rows have no affine step (Caffe's BN layer has none); the
    difference with scale&bias is measured too and stated beside it, whatever its sign.  Decided on the
    test log loss, which caffenet's table reports beside accuracy: on 360 test images an accuracy
    difference moves in steps of 1/360 and its seed-to-seed spread is as large as the ~0.02 edge (a
    verdict that needed 20 seeds and still followed the seed list); the log loss reads the same
    predictions continuously (measured: the edge ~4× its spread).  The accuracy difference is beside."""
    conv, _ = _arms(s)
    ref = R.CAFFENET_PLACEMENT.values

    def diff(value, suffix, sign=1):
        d = A.paired(conv, value, "variant", f"BN before ReLU{suffix}", f"BN after ReLU{suffix}", ["seed"])
        return sign * d

    ev = greater(diff("final_test_loss", ""), f"test log loss, BN before − after ReLU (caffenet: "
                                             f"{ref['BN before ReLU'][1] - ref['BN after ReLU'][1]:+.2f})", ".4f")
    acc = greater(diff("final_test_acc", "", -1), f"test accuracy, after − before (caffenet: "
                                                  f"{ref['BN after ReLU'][0] - ref['BN before ReLU'][0]:+.3f})", ".4f")
    affine = greater(diff("final_test_loss", " + scale&bias"), "with scale&bias, log loss before − after "
                     "(caffenet: {:+.2f})".format(ref["BN before ReLU + scale&bias"][1]
                                                  - ref["BN after ReLU + scale&bias"][1]), ".4f")
    ev.measured += f"; {acc.measured}, {acc.verdict}; {affine.measured}, {affine.verdict}"
    return ev


def placement_table(conv: pd.DataFrame) -> pd.DataFrame:
    acc = A.summarize(conv, ["variant"], "final_test_acc")
    loss = A.summarize(conv, ["variant"], "final_test_loss")
    train = A.summarize(conv, ["variant"], "final_train_loss")
    refs = R.CAFFENET_PLACEMENT.values
    order = list(refs) + sorted(set(acc.variant) - set(refs))
    out = []
    for v in [v for v in order if v in set(acc.variant)]:
        a, lo, tr = (t[t.variant == v].iloc[0] for t in (acc, loss, train))
        ref = refs.get(v)
        if ref is None and v.startswith("BN after ") and v.endswith("+ scale&bias"):
            act = v[len("BN after "):-len(" + scale&bias")].lower().replace("no activation", "identity")
            ref = R.CAFFENET_ACTIVATIONS.values.get(act)
        out.append({"variant": v, "test_acc": a["mean"], "test_acc_lo": a["lo"], "test_acc_hi": a["hi"],
                    "test_loss": lo["mean"], "test_loss_lo": lo["lo"], "test_loss_hi": lo["hi"],
                    "train_loss": tr["mean"], "n": a["n"], "diverged": a["n_diverged"], "collapsed": a["n_collapsed"],
                    "ref_acc": ref[0] if ref else float("nan"), "ref_log_loss": ref[1] if ref else float("nan")})
    return pd.DataFrame(out)


def build(s: pd.DataFrame, m: pd.DataFrame) -> Report:
    r = Report(STUDY)
    conv, sig = _arms(s)
    t = placement_table(conv)
    ci = lambda a, lo, hi, d=3: [A.fmt(x, y, z, digits=d) for x, y, z in zip(t[a], t[lo], t[hi])]  # noqa: E731
    ref = lambda col, d: t[col].map(lambda v: "–" if pd.isna(v) else f"{v:.{d}f}")  # noqa: E731
    shown = pd.DataFrame({
        "variant": t.variant, "test acc": ci("test_acc", "test_acc_lo", "test_acc_hi"),
        "test log loss": ci("test_loss", "test_loss_lo", "test_loss_hi"), "train loss": t.train_loss.map("{:.3f}".format),
        "failed": [f"{d + c}/{n}" for d, c, n in zip(t.diverged, t.collapsed, t.n)],
        "caffenet acc": ref("ref_acc", 3), "caffenet log loss": ref("ref_log_loss", 2)})
    relu = t[t.variant.str.contains("ReLU") | (t.variant == "no BN")]
    best = relu.loc[relu.test_acc.idxmax()] if len(relu) else t.loc[t.test_acc.idxmax()]
    sig_acc = A.summarize(sig, ["norm_type"], "final_test_acc").set_index("norm_type")
    r.finding = (f"best ReLU variant here: {best.variant} (test acc {best.test_acc:.3f}); caffenet-benchmark's best: "
                 f"BN after ReLU ({R.CAFFENET_PLACEMENT.values['BN after ReLU'][0]:.3f}). Sigmoid MLP: "
                 + ", ".join(f"{k} {A.fmt_row(v)}" for k, v in sig_acc.iterrows()) + ".")
    r.notes = [f"Placement arm: {describe(conv)}, a fixed short budget, so that no variant sits at the digits "
               f"ceiling: the table shows how far each variant gets in the same steps, as caffenet-benchmark's fixed "
               f"320k iterations did on ImageNet. Reference: {R.CAFFENET_PLACEMENT.setting} "
               f"({R.CAFFENET_PLACEMENT.cite()}); compare orderings, not absolute numbers.",
               f"Sigmoid arm: {describe(sig)}, after {R.BN_PAPER_MNIST.cite()}: {R.BN_PAPER_MNIST.setting}."]
    r.table("placement", t, f"BN before vs after the activation: test accuracy and log loss over "
                            f"{int(t.n.max())} seeds; best here {best.variant}.", shown)
    sig_t = A.summarize(sig, ["norm_type", "activation"], "final_test_acc")
    r.table("sigmoid", sig_t, "Sigmoid MLP with and without BN: final test accuracy, failed runs counted.",
            sig_t.assign(acc=sig_t.apply(A.fmt_row, axis=1))[["norm_type", "activation", "acc", "n"]])
    keys = ["norm", "placement", "activation", "seed", "model"]
    mm = m.merge(s[keys + ["norm_type", "norm_options", "model_type"]], on=keys)
    mm["variant"] = mm.apply(variant, axis=1)
    acc = mm[(mm.split == "test") & (mm.metric == "acc")]
    r.figure("curves", P.curves(acc[acc.model_type != SIGMOID_ARM], "test", "acc", hue="variant", by=None, log=False),
             f"Test accuracy over training per variant (mean, t 95% band, seeds); final best: {best.variant}.")
    r.figure("sigmoid", P.curves(acc[acc.model_type == SIGMOID_ARM], "test", "acc", hue="variant", by=None, log=False),
             "Sigmoid MLP: test accuracy over training with and without BN (mean, t 95% band, seeds).")
    return r


CLAIMS = (
    Claim("sigmoid_trains", "BN lets a sigmoid net with small Gaussian init train where the same net without BN "
          "does not", "Ioffe & Szegedy 2015, §4.1, Fig. 1(a)", _sigmoid_claim,
          arm=lambda s: (s.model_type == SIGMOID_ARM) & (s.activation == "sigmoid")),
    Claim("after_relu", "BN after ReLU beats BN before ReLU: a lower test log loss (caffenet-benchmark's table: "
          "no affine step, as Caffe's BN layer; accuracy and the difference with scale&bias stated beside it)",
          "caffenet-benchmark, batchnorm.md (log loss 2.21 vs 2.35, accuracy 0.499 vs 0.474; with scale&bias "
          "2.24 vs 2.33)", _after_vs_before,
          arm=lambda s: (s.model_type != SIGMOID_ARM) & (s.norm_type == "bn") & (s.activation == "relu")),
)
STUDY = Study("bn_placement", "BN before vs after the nonlinearity", "ducha-aiki/caffenet-benchmark; Ioffe & Szegedy 2015", build, claims=CLAIMS,
              question="Does BN work better before or after the activation, with or without its affine parameters, and does "
                       "it let a sigmoid net train?",
              tables={"placement": "variant", "sigmoid": "norm"},
              figures={"curves": "variant", "sigmoid": "norm"})
