"""How does BN help optimization? (Santurkar et al. 2018): not by reducing
internal covariate shift, but by smoothing the loss landscape."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from .. import analysis as A
from .. import plots as P
from .. import references as R
from ..claims import REPRODUCED, Claim, Evidence, every, greater, within
from ..report import Report, describe
from ..scoring import CardArm, Measure, grids, train_of
from ..study import Study

LINEAR_ARM = "dln"  # model_type of the deep linear network arm (Santurkar §C)
SAME = 0.02  # test accuracy: "trains as well as" within two points (seven digits test images)
PLATEAU = 0.9  # a net is still on its initial plateau while its training loss is above 90% of its first logged value
MATCH_BINS = 4  # loss bins per decade in the matched-loss view
NOT_REDUCED = np.log10(2)  # "does not reduce ICS": BN's is not below half the standard net's (a non-inferiority margin)


def _label(row) -> str:
    """A norm as the paper names it, from the run's data."""
    if row["norm_type"] == "lp_bn":
        return f"ℓ{json.loads(row['norm_options']).get('p', 2)} BN"
    return {"none": "standard", "bn": "BN", "noisy_bn": "noisy BN"}.get(row["norm_type"], row["norm_type"])


def _arms(s: pd.DataFrame, m: pd.DataFrame):
    s = s.assign(label=s.apply(_label, axis=1))
    if "probe_every" not in s:  # results written before the column existed: every probe counts as regular
        s = s.assign(probe_every=0)
    m = A.with_runs(m, s, ["norm_type", "model_type", "label", "probe_every"])
    # probes on the run's regular schedule (the paper's same-step view); the extra early ones (probe_at)
    # serve the matched-loss view and would otherwise weigh the run's median towards its first steps
    every = m.probe_every.fillna(0).astype(int)
    m["regular"] = (m.split != "probe") | (every == 0) | (m.step % every.clip(lower=1) == 0)
    conv, lin = s.model_type != LINEAR_ARM, s.model_type == LINEAR_ARM
    return s[conv], m[m.model_type != LINEAR_ARM], s[lin], m[m.model_type == LINEAR_ARM]


def _steps_to_loss(m: pd.DataFrame, level: float) -> pd.Series:
    """Per norm label: the median over seeds of the first step whose training loss is below ``level``."""
    tl = m[(m.split == "train") & (m.metric == "loss")]
    first = tl[tl.value < level].groupby(["label", "seed"]).step.min()
    return first.reindex(tl.groupby(["label", "seed"]).size().index).groupby("label").median()


def _per_run(m: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Median of a probe metric over each run's probes and layers."""
    return A.per_run(m, metric)


def _log_ratio(m: pd.DataFrame, metric: str, a: str, b: str) -> pd.Series:
    """Per seed and lr: log10(median metric of norm type a / of b)."""
    d = _per_run(m, metric)
    d = d[d.value > 0].assign(value=lambda x: np.log10(x.value))
    return A.paired(d, "value", "norm_type", a, b, ["lr", "seed"])


def _plateau_log(m: pd.DataFrame) -> pd.DataFrame:
    """The standard net's logged training losses per (lr, seed, step), each marked whether the net was
    still on its initial plateau."""
    loss = m[(m.norm_type == "none") & (m.split == "train") & (m.metric == "loss")]
    loss = loss.groupby(["lr", "seed", "step"]).value.mean().reset_index()
    return loss.assign(plateau=loss.value > PLATEAU * loss.groupby(["lr", "seed"]).value.transform("first"))


def on_plateau(m: pd.DataFrame) -> pd.Series:
    """Per (lr, seed, step) of the standard net's probes: whether it was still on its initial plateau,
    judged by its training loss logged at or next after the probe's step."""
    loss = _plateau_log(m)
    probes = m[(m.norm_type == "none") & (m.split == "probe")][["lr", "seed", "step"]].drop_duplicates()
    at = pd.merge_asof(probes.sort_values("step"), loss.sort_values("step"), on="step", by=["lr", "seed"],
                       direction="forward")
    return at.set_index(["lr", "seed", "step"]).plateau.fillna(False).astype(bool).sort_index()


def after_plateau(m: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``m`` at steps where the standard net of the same lr and seed had left its initial
    plateau (both nets learning); ``m`` holds the standard net's logged training losses."""
    flat = on_plateau(m)
    at = pd.MultiIndex.from_frame(m[["lr", "seed", "step"]])
    return m[~flat.reindex(at, fill_value=False).to_numpy()]


def by_phase(values: pd.DataFrame, m: pd.DataFrame, metric: str) -> str:
    """How often BN's probe value is below the standard net's, probe by probe (same lr, seed and
    step), split by whether the standard net was still on its initial plateau."""
    d = values[values.metric == metric].groupby(["norm_type", "lr", "seed", "step"]).value.median()
    d = d.unstack("norm_type").reindex(columns=["bn", "none"]).dropna()
    lower = d.bn < d.none
    flat = on_plateau(m).reindex(d.index, fill_value=False)
    return (f"BN's below the standard net's at {lower[flat].sum()} of {flat.sum()} probes while the standard net "
            f"was on its initial plateau (training loss above {PLATEAU:.0%} of its first) and at "
            f"{lower[~flat].sum()} of {(~flat).sum()} after")


def probe_values(values: pd.DataFrame, m: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per probe of ``metric`` (median over layers) with the loss L(W_t; B_t) the net stood at
    when probed and its loss bin (``MATCH_BINS`` per decade)."""
    keys = ["norm_type", "label", "lr", "seed", "step"]
    v = values[values.metric == metric].groupby(keys).value.median()
    loss = m[m.metric == "probe_loss"].groupby(keys).value.first().rename("loss")
    d = pd.concat([v, loss], axis=1, join="inner").reset_index()
    d = d[(d.loss > 0) & (d.value > 0)]
    return d.assign(metric=metric, bin=np.floor(np.log10(d.loss) * MATCH_BINS).astype(int))


def matched_loss(values: pd.DataFrame, m: pd.DataFrame, metric: str, a: str = "bn", b: str = "none") -> pd.DataFrame:
    """The nets compared at equal training loss instead of equal step: per (lr, seed), over the loss
    bins both visited, the median of log10(median of a's probes in the bin / median of b's), and how many
    bins they shared.  The median, not the mean: one shared bin sits at the chance loss, where BN's
    first step meets the standard net's plateau (there BN's ICS is ~1000× larger), and it would
    otherwise decide the comparison of the bins where both nets learn."""
    d = probe_values(values, m, metric)
    med = d.groupby(["norm_type", "lr", "seed", "bin"]).value.median().unstack("norm_type")
    med = med.reindex(columns=[a, b]).dropna()
    r = np.log10(med[a] / med[b]).rename("log_ratio").reset_index()
    return r.groupby(["lr", "seed"]).agg(log_ratio=("log_ratio", "median"), bins=("bin", "size")).reset_index()


def _matched_text(values: pd.DataFrame, m: pd.DataFrame, metric: str, what: str) -> str:
    """The matched-loss reading of a probe, for a claim's measured text."""
    r = matched_loss(values, m, metric)
    if r.empty:
        return f"at equal training loss: no loss bin visited by both nets ({what})"
    mean, lo, hi = A.t_interval(r.log_ratio)
    ci = f" [{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) else ""
    return (f"at equal training loss (probes binned by L(W_t; B_t), {MATCH_BINS} bins per decade, "
            f"{int(r.bins.median())} shared bins per seed): log10({what}: BN / standard) {mean:.2f}{ci} over "
            f"{len(r)} seeds")


def _with_phases(ev: Evidence, phases: str) -> Evidence:
    """The probe-by-probe split goes beside the estimate; where the claim did not reproduce, it is the reason."""
    if ev.verdict == REPRODUCED:
        ev.measured += f"; {phases}"
    else:
        ev.note = f"{phases}; {ev.note}" if ev.note else phases
    return ev


def _smoother(metric: str, what: str):
    """Decided where both nets learn -- on the probes after the standard net left its initial plateau, as
    the VGG ICS claim: on the plateau the standard net's loss is flat along −g, so its landscape looks
    smooth for want of a gradient (a baseline on a plateau decides nothing); the median over both phases
    and the matched-loss view are beside it."""
    def check(s, m) -> Evidence:
        _, mv, _, _ = _arms(s, m)
        reg = mv[mv.regular]
        ev = greater(_log_ratio(after_plateau(reg), metric, "none", "bn"),
                     f"log10({what}: standard / BN), median over the run's regular probes after the standard net "
                     f"left its initial plateau", ".2f")
        both = A.fmt(*A.t_interval(_log_ratio(reg, metric, "none", "bn")), digits=2)
        ev.measured += f"; over every regular probe (both phases) {both}; " + _matched_text(mv, mv, metric, what)
        return _with_phases(ev, by_phase(reg, reg, metric))
    return check


def _band(m: pd.DataFrame) -> pd.DataFrame:
    """Per probe: the loss-landscape band, max − min of L(W − ηg) over the η grid."""
    keys = [c for c in m.columns if c not in ("metric", "value", "wall_time_s", "layer", "step_size")]
    hi = m[m.metric == "landscape_max"].set_index(keys).value
    lo = m[m.metric == "landscape_min"].set_index(keys).value
    return (hi - lo).rename("value").reset_index().assign(metric="band")


def _landscape_band(s, m) -> Evidence:
    """As ``_smoother``: decided after the standard net's plateau, both phases beside."""
    _, mv, _, _ = _arms(s, m)
    bands = _band(mv)
    reg = bands[bands.regular]
    logged = pd.concat([reg, mv[mv.regular & (mv.split == "train")]])  # the losses that mark the plateau
    after = after_plateau(logged)
    ev = greater(_log_ratio(after[after.metric == "band"], "band", "none", "bn"),
                 "log10(loss-landscape band max − min over η: standard / BN), median over the run's regular probes "
                 "after the standard net left its initial plateau", ".2f")
    both = A.fmt(*A.t_interval(_log_ratio(reg, "band", "none", "bn")), digits=2)
    ev.measured += f"; over every regular probe (both phases) {both}; " + _matched_text(bands, mv, "band", "loss band")
    return _with_phases(ev, by_phase(reg, mv[mv.regular], "band"))


def _ics(arm: str):
    def check(s, m) -> Evidence:
        _, mv, _, md = _arms(s, m)
        d = md if arm == LINEAR_ARM else mv
        name = "deep linear net" if arm == LINEAR_ARM else "VGG"
        parts = []
        for lr, g in d.groupby("lr"):
            allg, g = g, g[g.regular]
            # the VGG: decided where both nets learn.  On the standard net's initial plateau BN's ICS is
            # ~1000× the standard net's, once both learn ~30–100× below it; the plateau lasts 150–300 steps by
            # seed, so a run's median over both phases landed in either by its seed (measured: the verdict
            # moved with the seed list).  The plateau's probes are counted beside, as is the median over all.
            decided = g if arm == LINEAR_ARM else after_plateau(g)
            where = "probes" if arm == LINEAR_ARM else "probes after the standard net left its initial plateau"
            ev = greater(_log_ratio(decided, "ics_l2", "bn", "none"), f"{name}, lr {lr:g}: log10(ICS ‖G − G′‖₂: BN "
                         f"/ standard), median over {where} and layers; claim: above −log10 2", ".2f",
                         margin=-NOT_REDUCED)
            cos = _per_run(g, "ics_cos").groupby("norm_type").value.median()
            init = _per_run(g[g.step == g.step.min()], "ics_l2").groupby("norm_type").value.median()
            if arm != LINEAR_ARM:
                whole = A.fmt(*A.t_interval(_log_ratio(g, "ics_l2", "bn", "none")), digits=2)
                ev.measured += (f"; over every regular probe (both phases) {whole}; "
                                + _matched_text(allg, allg, "ics_l2", "ICS"))
            ev.measured += (f"; median cos(G, G′) BN {cos.get('bn', np.nan):.3f} vs standard "
                            f"{cos.get('none', np.nan):.3f}; at the first step ℓ2 BN {init.get('bn', np.nan):.3g} vs "
                            f"standard {init.get('none', np.nan):.3g}")
            # the deep linear net has no plateau to split at: its loss falls from the first step
            parts.append(ev if arm == LINEAR_ARM else _with_phases(ev, by_phase(g, g, "ics_l2")))
        return every(parts)
    return check


def at_equal_budget(sv: pd.DataFrame, mv: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The VGG runs with ``test_acc``, each run's test accuracy at the shortest run's last step (the
    accuracy-only arm may train fewer steps than the probed nets: every net is compared at the same
    budget), and ``curve_acc``, its mean over the evaluation steps up to it that every run shares; and that step."""
    budget = int(sv.groupby("norm").steps.max().min())  # per arm its length (a diverged run stops early)
    acc = mv[(mv.split == "test") & (mv.metric == "acc") & (mv.step <= budget)].sort_values("step")
    keys = ["norm", "lr", "seed"]
    shared = set.intersection(*(set(g.step) for _, g in acc.groupby(keys))) if len(acc) else set()
    both = pd.concat([acc.groupby(keys).value.last().rename("test_acc"),
                      acc[acc.step.isin(shared)].groupby(keys).value.mean().rename("curve_acc")], axis=1)
    return sv.merge(both.reset_index(), on=keys, how="left"), budget


def _noisy_bn(s, m) -> Evidence:
    sv, mv, _, _ = _arms(s, m)
    sv, budget = at_equal_budget(sv, mv)
    parts = []
    for lr, g in sv.groupby("lr"):
        parts.append(within(A.paired(g, "test_acc", "norm_type", "noisy_bn", "bn", ["seed"]), SAME,
                            f"lr {lr:g}: test accuracy at step {budget}, noisy BN − BN", ".3f"))
        # "trains better than the standard net" read from the training curve (its mean over the evaluations
        # up to the budget), not its end: the standard net leaves its plateau between steps ~150 and 400
        # by seed, so at step 400 the gap was 0 for some seeds and 0.9 for others and the verdict followed
        # the seed list (measured); the curve is ahead on every seed
        parts.append(greater(A.paired(g, "curve_acc", "norm_type", "noisy_bn", "none", ["seed"]),
                             f"lr {lr:g}: mean test accuracy over the evaluations up to step {budget}, noisy BN − "
                             f"standard", ".3f"))
    return every(parts)


def _lp_bn(s, m) -> Evidence:
    sv, mv, _, _ = _arms(s, m)
    sv, budget = at_equal_budget(sv, mv)
    parts = []
    for (lr, label), g in sv[sv.norm_type == "lp_bn"].groupby(["lr", "label"]):
        pair = pd.concat([g, sv[(sv.lr == lr) & (sv.norm_type == "bn")]])
        parts.append(within(A.paired(pair, "test_acc", "label", label, "BN", ["seed"]), SAME,
                            f"lr {lr:g}: test accuracy at step {budget}, {label} − BN", ".3f"))
    return every(parts)


def build(s: pd.DataFrame, m: pd.DataFrame) -> Report:
    r = Report(STUDY)
    sv, mv, sd, md = _arms(s, m)
    med = lambda d, metric: _per_run(d, metric).groupby("label").value.median() if len(d) else pd.Series(dtype=float)  # noqa: E731
    reg = mv[mv.regular]  # the same-step view: the regular probes only
    ics, cos, beta, gp = (med(reg, k) for k in ("ics_l2", "ics_cos", "beta_eff", "grad_pred_max"))
    acc = A.summarize(sv, ["label", "lr"], "final_test_acc", drop_failed="failed")
    best = acc.groupby("label")["mean"].max()
    r.finding = (f"median ICS ℓ2 BN {ics.get('BN', np.nan):.3g} vs standard {ics.get('standard', np.nan):.3g}; "
                 f"effective β BN {beta.get('BN', np.nan):.3g} vs standard {beta.get('standard', np.nan):.3g}; "
                 f"best test accuracy " + ", ".join(f"{n} {v:.3f}" for n, v in best.items()) + ".")
    ref = R.SANTURKAR.values["test_acc"]
    r.notes = [f"Ours: {describe(sv)}; deep linear net: {describe(sd)}. Reference: {R.SANTURKAR.setting} "
               f"({R.SANTURKAR.cite()}): test accuracy {ref['bn']:.0%} with BN, {ref['none']:.0%} without; effective "
               f"β about {R.SANTURKAR_BETA.values['range'][0]}–{R.SANTURKAR_BETA.values['range'][1]} on VGG "
               f"({R.SANTURKAR_BETA.cite()}).",
               "Probes follow the paper's definitions: a line search along −g on the fixed batch B_t over the paper's "
               "step grid, β divided by the step, G′ after the earlier layers' actual update, BN statistics and noise "
               "untouched. Noisy BN is evaluated with the noise's expected value (the paper does not say); its "
               "training accuracy is shown beside the test accuracy."]
    reach = _steps_to_loss(mv, 0.05)
    first = _per_run(mv[mv.step == mv.step.min()], "ics_l2").groupby("label").value.median()
    log = _plateau_log(mv)
    left = log[~log.plateau].groupby(["lr", "seed"]).step.min().reindex(log.groupby(["lr", "seed"]).size().index)
    train_loss = mv[(mv.split == "train") & (mv.metric == "loss")]
    at_left = train_loss[train_loss.step == train_loss.step[train_loss.step >= left.median()].min()]
    at_left = at_left.groupby("label").value.median()
    r.notes.append(
        f"How fast each net converges shapes the probes measured over the run: the median step at which the "
        f"training loss first falls below 0.05 is {reach.get('BN', np.nan):.0f} with BN and "
        f"{reach.get('standard', np.nan):.0f} without (NaN: never). ICS ‖G − G′‖ scales with the gradient, "
        f"so it shrinks once a net has converged; at the first step, where both nets stand at the same loss, "
        f"BN's ICS is {first.get('BN', np.nan):.3g} against {first.get('standard', np.nan):.3g}. Without BN "
        f"the net first sits on a plateau: its training loss stays above {PLATEAU:.0%} of its first value until "
        f"step {left.median():.0f} (median over seeds; NaN: never leaves), when BN's training loss is already "
        f"{at_left.get('BN', np.nan):.3g} against its {at_left.get('standard', np.nan):.3g}. On the plateau the "
        f"loss is flat along −g, so its gradient barely changes and its loss band is narrow; after it BN has "
        f"converged and its gradient is small. The probes favour the standard net on the plateau and BN after "
        f"it. The smoothness claims (landscape, predictiveness, β) count the probes of both phases; the VGG "
        f"ICS claim is decided on the probes after the plateau, where both nets learn: across the two phases "
        f"BN's ICS swings from ~1000× the standard net's to ~1/100 of it, and the plateau's length varies by "
        f"seed, so a median over both phases followed the seed list (its value is shown beside). ICS in ℓ2 "
        f"scales with the gradient; the cosine, which does not, is given beside it. Noisy BN's edge over the "
        f"standard net is read from the test-accuracy curve up to the shared budget, not its last point (which "
        f"falls before or after the standard net's plateau exit by seed). Where a claim is inconclusive, its "
        f"note gives the seeds its measured spread would need; the full-scale config (CIFAR-10, 15k steps) keeps "
        f"both nets learning through the run, as in the paper.")
    r.figure("ics_l2", P.probe_over_training(mv, "ics_l2", "ICS ‖G − G′‖₂", hue="label"),
             f"VGG: ICS ℓ2 over training (median over layers; mean, t 95% band, seeds): median BN "
             f"{ics.get('BN', np.nan):.3g} vs standard {ics.get('standard', np.nan):.3g}.")
    r.figure("ics_cos", P.probe_over_training(mv, "ics_cos", "ICS cos(G, G′)", log=False, hue="label"),
             f"VGG: ICS cosine (1 = no shift): median BN {cos.get('BN', np.nan):.3f} vs standard "
             f"{cos.get('standard', np.nan):.3f}.")
    if len(md):
        dics = med(md, "ics_l2")
        r.figure("ics_dln", P.probe_over_training(md, "ics_l2", "ICS ‖G − G′‖₂", hue="label"),
                 f"Deep linear net: ICS ℓ2 over training: median BN {dics.get('BN', np.nan):.3g} vs standard "
                 f"{dics.get('standard', np.nan):.3g}.")
    else:
        r.figure("ics_dln", P.empty("no deep-linear-net runs in this config"), "Deep linear net: not run.")
    etas = "the run's η grid (× lr)"
    r.figure("landscape", P.band_over_training(mv, "landscape_min", "landscape_max", "L(W − ηg)", hue="label"),
             f"Loss landscape along −g over {etas}: per norm the band between the seed means of the minimum and the "
             f"maximum, with its centre line.")
    r.figure("grad_pred", P.band_over_training(mv, "grad_pred_min", "grad_pred_max", "‖∇L(W − ηg) − g‖", hue="label"),
             f"Gradient predictiveness over {etas}: median of the maximum change BN {gp.get('BN', np.nan):.3g} vs "
             f"standard {gp.get('standard', np.nan):.3g}.")
    r.figure("beta_eff", P.probe_over_training(mv, "beta_eff", "effective β", hue="label"),
             f"Effective β-smoothness (max over η of gradient change / (η‖g‖)): median BN {beta.get('BN', np.nan):.3g} "
             f"vs standard {beta.get('standard', np.nan):.3g}.")
    fig, axes = P.fig_grid(2, w=4.2, h=2.8)
    P.points(sv, "label", "final_test_acc", "lr", axes[0][0])
    P.points(sv, "label", "final_train_acc", "lr", axes[0][1])
    axes[0][0].set_ylabel("final test accuracy")
    axes[0][1].set_ylabel("final training accuracy")
    P.legend_outside(fig, axes, "lr")
    r.figure("accuracy", fig, "Final test and training accuracy per norm and lr (mean, t 95% interval, each seed).")
    rows = []
    bands = _band(mv)
    for (label, lr), g in reg.groupby(["label", "lr"]):
        band = bands[(bands.label == label) & (bands.lr == lr) & bands.regular].value.median()
        rows.append({"norm": label, "lr": lr, **{k: g[g.metric == k].value.median()
                                                 for k in ("ics_l2", "ics_cos", "beta_eff", "grad_pred_max")},
                     "landscape_band": band})
    probe = pd.DataFrame(rows)
    r.table("probes", probe, "Median probe values over layers, regular probe steps and seeds (VGG).", probe.round(4))
    matched, views = [], []
    for metric, what, values in (("ics_l2", "ICS ‖G − G′‖₂", mv), ("beta_eff", "effective β", mv),
                                 ("grad_pred_max", "max gradient change", mv), ("band", "loss band", bands)):
        mr = matched_loss(values, mv, metric)
        same = _log_ratio(values[values.regular], metric, "bn", "none")
        mm, ml, mh = A.t_interval(mr.log_ratio) if len(mr) else (np.nan,) * 3
        sm, sl, sh = A.t_interval(same)
        matched.append({"probe": what, "metric": metric, "seeds": len(mr),
                        "shared_bins": float(mr.bins.median()) if len(mr) else np.nan,
                        "matched_log_ratio": mm, "matched_lo": ml, "matched_hi": mh,
                        "same_step_log_ratio": sm, "same_step_lo": sl, "same_step_hi": sh})
        views.append(probe_values(values, mv, metric))
    mt = pd.DataFrame(matched)
    r.table("matched_loss", mt,
            f"BN vs standard at equal training loss (probes binned by the loss L(W_t; B_t) the net stood at, "
            f"{MATCH_BINS} bins per decade; per seed the median over the bins both nets visited, so the one bin at "
            f"the chance loss -- BN's first step against the standard net's plateau -- does not decide it; the "
            f"figure shows every bin) beside the same-step "
            f"comparison of the claims: log10(BN / standard), {A.INTERVAL}. Positive: BN's value is larger.",
            mt.assign(**{"at equal loss": [A.fmt(a, b, c, digits=2) for a, b, c in zip(mt.matched_log_ratio,
                                                                                        mt.matched_lo, mt.matched_hi)],
                         "at equal step": [A.fmt(a, b, c, digits=2) for a, b, c in zip(mt.same_step_log_ratio,
                                                                                        mt.same_step_lo,
                                                                                        mt.same_step_hi)]})[
                ["probe", "at equal loss", "shared_bins", "seeds", "at equal step"]])
    pv = pd.concat(views, ignore_index=True) if views else pd.DataFrame(columns=["metric", "value", "loss", "bin"])
    r.figure("matched_loss", P.probe_vs_loss(pv, [("ics_l2", "ICS ‖G − G′‖₂"), ("beta_eff", "effective β"),
                                                  ("grad_pred_max", "max ‖∇L(W − ηg) − g‖"),
                                                  ("band", "loss band max − min")]),
             "Each probe against the training loss the net stood at when probed (log-log), the median per loss bin "
             "as a line: the nets compared at equal loss, not at equal step (BN reaches low loss in far fewer "
             "steps, so at equal step its probes are taken where the standard net has not yet been).")
    tr = A.summarize(sv, ["label", "lr"], "final_train_acc")
    shown = acc.assign(test=acc.apply(A.fmt_row, axis=1), train=tr.apply(A.fmt_row, axis=1))[
        ["label", "lr", "test", "train", "n"]]
    r.table("accuracy", acc, f"Final test and training accuracy, {A.INTERVAL}, per norm and lr.", shown)
    return r


def _vgg(*norm_types: str):
    """A claim's arm: the VGG's runs of these norm types."""
    return lambda s: (s.model_type != LINEAR_ARM) & s.norm_type.isin(norm_types)


CLAIMS = (
    Claim("noisy_bn", f"Noisy BN trains about as well as BN (within {SAME:.0%}) and better than no BN",
          "Santurkar et al. 2018, Fig. 2", _noisy_bn, arm=_vgg("noisy_bn", "bn", "none")),
    Claim("ics_vgg", "BN does not reduce internal covariate shift (VGG): its ICS is similar or larger (not below "
          "half the standard net's)",
          "Santurkar et al. 2018, Fig. 3", _ics("vgg"), arm=_vgg("bn", "none")),
    Claim("ics_dln", "BN does not reduce internal covariate shift in the deep linear net either (not below half)",
          "Santurkar et al. 2018, Fig. 3 / §C", _ics(LINEAR_ARM), arm=lambda s: s.model_type == LINEAR_ARM),
    Claim("landscape", "BN narrows the band of losses along the gradient (a smoother landscape)",
          "Santurkar et al. 2018, Fig. 4(a)", _landscape_band, arm=_vgg("bn", "none")),
    Claim("grad_pred", "BN makes the gradient more predictive (smaller change along the step)",
          "Santurkar et al. 2018, Fig. 4(b)", _smoother("grad_pred_max", "max gradient change"), arm=_vgg("bn", "none")),
    Claim("beta_eff", "BN lowers the effective β-smoothness", "Santurkar et al. 2018, Fig. 4(c)",
          _smoother("beta_eff", "effective β"), arm=_vgg("bn", "none")),
    Claim("lp_bn", f"ℓp BN (p = 1, 2, ∞) trains as well as BN (within {SAME:.0%})", "Santurkar et al. 2018, §3.3",
          _lp_bn, arm=_vgg("lp_bn", "bn")),
)
# -- the report card's arm (normbench evaluate): the probed VGG, read where the nets learn ---------------
# On the standard net's initial plateau tiny gradients make any landscape look smooth, and a net that
# has not started learning looks smoothest of all; so, by this study's plateau rule, a run's probes
# count where both it and the standard net of its seed have left their initial plateaus.


def _card_block(block: dict, config: dict) -> dict:
    g = next(x for x in grids(block) if "landscape" in train_of(block, x).get("probes", []))
    train = {**train_of(block, g), "probes": ["landscape"], "probe_at": []}
    return {"grid": {"model": g["model"][:1], "dataset": g["dataset"][:1], "batch_size": g["batch_size"][:1],
                     "lr": g["lr"][:1], "seed": g["seed"]},
            "train": train}


def learning_probes(s: pd.DataFrame, m: pd.DataFrame) -> pd.DataFrame:
    """The probe rows of ``m`` at steps where both the run and the standard net (norm type none) of
    the same lr and seed have left their initial plateaus (``after_plateau``, applied to each)."""
    m = A.with_runs(m, s, ["norm_type"]).reset_index(drop=True)
    if m.empty:
        return m
    standard_learns = after_plateau(m).index
    own = [after_plateau(g.assign(norm_type="none")).index for _, g in m.groupby("norm")]
    keep = standard_learns.intersection(own[0].append(own[1:]) if own else own)
    d = m.loc[keep]
    return d[d.split == "probe"]


def _learning_log(metric: str):
    def values(s: pd.DataFrame, m: pd.DataFrame) -> pd.DataFrame:
        """log10 of the run's median ``metric`` over its probes where it and the standard net learn."""
        d = learning_probes(s, m)
        d = d[d.metric == metric].groupby(["norm", "seed"]).value.median()
        return np.log10(d.clip(lower=1e-30)).rename("value").reset_index()
    return values


def _on_plateau(s: pd.DataFrame, m: pd.DataFrame) -> dict[str, str]:
    """norm -> why none of its probes can be read: it (or the standard net) never left the plateau."""
    read = set(learning_probes(s, m).norm)
    standard = set(s[s.norm_type == "none"].norm)
    if standard and not standard & read:
        why = (f"the standard net never left its initial plateau (training loss above {PLATEAU:.0%} of its "
               f"first) within the budget: no probe here is taken where it learns")
        return {n: why for n in s.norm.unique()}
    return {n: f"no probe of {n} is taken after it left its initial plateau (training loss above "
               f"{PLATEAU:.0%} of its first) while the standard net learns" for n in s.norm.unique() if n not in read}


CARD = CardArm(
    "landscape smoothness", _card_block, order=40,
    one_lr="the probes step along −g by η × lr, so at another lr they would measure other steps: every "
           "normalizer is probed at the study's lr",
    # 900 → 500 steps: the standard net leaves its plateau at ~150–300; eval every 25 steps to place it
    trim={"seeds": 5, "train": {"steps": 500, "eval_every": 25, "probe_every": 25}},
    measures=tuple(
        Measure(f"{what} (per run the median over its probes after the initial plateau; geometric mean over "
                f"seeds)", short,
                _learning_log(metric), "lower", np.log10(2), "a factor of 2", show=lambda v: f"{10 ** v:.3g}",
                untrained=_on_plateau)
        for metric, what, short in (("beta_eff", "effective β-smoothness", "β_eff"),
                                    ("grad_pred_max", "gradient predictiveness, max ‖∇L(W − ηg) − g‖",
                                     "gradient predictiveness"))))
STUDY = Study("santurkar", "How does BN help optimization?", "Santurkar et al. 2018", build, claims=CLAIMS, card=CARD,
              question="Does BN reduce internal covariate shift, or smooth the loss landscape? Noisy BN and ℓp BN.",
              tables={"probes": "norm × lr", "accuracy": "norm × lr", "matched_loss": "probe"},
              figures={"ics_l2": "norm × lr", "ics_cos": "norm × lr", "ics_dln": "norm × lr", "landscape": "norm × lr",
                      "grad_pred": "norm × lr", "beta_eff": "norm × lr", "accuracy": "norm × lr",
                      "matched_loss": "probe × training loss"})
