"""Per-study reports from aggregated Parquet alone (no training, no config).

Each study's builder returns a ``Report``: Markdown + CSV tables, PNG figures,
a caption for each (the finding computed from the data, not written in
advance) and a one-line finding for the index.  ``write`` puts them under
``reports/<study>/`` atomically; ``build_all`` also writes ``reports/index.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from . import analysis as A
from . import plots as P
from . import references as R
from .store import METRICS_SCHEMA, SUMMARY_SCHEMA, read_parquet, write_text
from .studies import STUDIES


@dataclass
class Report:
    study: str
    finding: str = ""
    notes: list[str] = field(default_factory=list)
    tables: dict[str, tuple[pd.DataFrame, pd.DataFrame, str]] = field(default_factory=dict)  # csv, shown, caption
    figures: dict[str, tuple[object, str]] = field(default_factory=dict)  # figure, caption

    def table(self, name, data: pd.DataFrame, caption: str, shown: pd.DataFrame | None = None):
        self.tables[name] = (data, data if shown is None else shown, caption)

    def figure(self, name, fig, caption: str):
        self.figures[name] = (fig, caption)

    def write(self, out_dir: str | Path) -> list[Path]:
        want = ARTIFACTS[self.study]
        if set(self.tables) != set(want["tables"]) or set(self.figures) != set(want["figures"]):
            raise RuntimeError(f"{self.study}: report built {sorted(self.tables)} + {sorted(self.figures)}, "
                               f"declared {sorted(want['tables'])} + {sorted(want['figures'])}")
        out = Path(out_dir)
        st = STUDIES[self.study]
        md = [f"# {st.title}", "", f"*{st.question}*" + (f" — after {st.source}." if st.source else ""), "",
              f"**Finding:** {self.finding}", ""]
        md += [f"> {n}" for n in self.notes] + ([""] if self.notes else [])
        files = []
        for name, (data, shown, caption) in self.tables.items():
            write_text(data.to_csv(index=False), out / f"{name}.csv")
            write_text(_html_table(shown, caption), out / f"{name}.html")  # for the Snakemake report
            write_text(caption + "\n", out / "captions" / f"{name}.rst")
            md += [f"## {caption}", "", shown.to_markdown(index=False), "", f"[CSV]({name}.csv)", ""]
            files += [out / f"{name}.csv", out / f"{name}.html"]
        for name, (fig, caption) in self.figures.items():
            P.save(fig, out / f"{name}.png")
            write_text(caption + "\n", out / "captions" / f"{name}.rst")
            md += [f"![{name}]({name}.png)", "", f"*{caption}*", ""]
            files.append(out / f"{name}.png")
        write_text("\n".join(md), out / "README.md")
        return [out / "README.md"] + files


def _html_table(df: pd.DataFrame, caption: str) -> str:
    body = df.to_html(index=False, na_rep="–", border=0, escape=True)
    return (f"<!doctype html><html><head><meta charset='utf-8'><style>table{{border-collapse:collapse;"
            f"font-family:sans-serif;font-size:13px}}td,th{{padding:3px 8px;border-bottom:1px solid #ddd}}"
            f"</style></head><body><p>{caption}</p>{body}</body></html>")


def _ci(t: pd.DataFrame, digits=3) -> pd.Series:
    return t.apply(lambda r: A.fmt_row(r, digits), axis=1)


def _pct(x) -> str:
    return "–" if pd.isna(x) else f"{100 * x:.1f}%"


# ----------------------------------------------------------------------------
# Studies
# ----------------------------------------------------------------------------


def report_bn_placement(s: pd.DataFrame, m: pd.DataFrame) -> Report:
    r = Report("bn_placement")
    t = A.bn_placement_table(s)
    ci = lambda a, lo, hi, d=3: [A.fmt(x, y, z, digits=d) for x, y, z in zip(t[a], t[lo], t[hi])]  # noqa: E731
    shown = pd.DataFrame({
        "variant": t.variant, "test acc (mean [95% CI])": ci("test_acc", "test_acc_lo", "test_acc_hi"),
        "test log loss": ci("test_loss", "test_loss_lo", "test_loss_hi"),
        "train loss": t.train_loss.map(lambda v: f"{v:.3f}"),
        "diverged": [f"{d}/{n}" for d, n in zip(t.diverged, t.n)],
        "caffenet acc": t.ref_acc.map(lambda v: "–" if pd.isna(v) else f"{v:.3f}"),
        "caffenet log loss": t.ref_log_loss.map(lambda v: "–" if pd.isna(v) else f"{v:.2f}"),
    })
    setting = _setting(s)
    relu = t[t.variant.str.contains("ReLU") | (t.variant == "no BN")]
    best = relu.loc[relu.test_acc.idxmax()] if len(relu) else t.loc[t.test_acc.idxmax()]
    r.finding = (f"best ReLU variant here: {best.variant} (test acc {best.test_acc:.3f}); "
                 f"caffenet-benchmark's best: BN after ReLU (0.499).")
    r.notes = [f"Ours: {setting}. Reference: {R.CAFFENET_PLACEMENT.setting} "
               f"({R.CAFFENET_PLACEMENT.cite()}). Compare orderings, not absolute numbers."]
    r.table("placement", t, f"BN before vs after the activation: test accuracy and log loss over "
                            f"{int(t.n.max())} seeds; best here {best.variant}.", shown)
    m2 = m.merge(s[["norm", "placement", "activation", "seed", "norm_type", "norm_options"]].drop_duplicates(),
                 on=["norm", "placement", "activation", "seed"])
    m2["variant"] = m2.apply(A.placement_variant, axis=1)
    r.figure("curves", _curves_by(m2, "variant"),
             f"Test accuracy over training per variant (95% CI over seeds); final best: {best.variant}.")
    return r


def _curves_by(m: pd.DataFrame, hue: str):
    d = m[(m.split == "test") & (m.metric == "acc")]
    fig, axes = P._fig(w=6, h=3.4)
    P.lineci(d, "step", "value", hue, axes[0][0])
    axes[0][0].set_ylabel("test accuracy")
    fig.tight_layout()
    return fig


def report_gn_small_batch(s: pd.DataFrame, m: pd.DataFrame) -> Report:
    r = Report("gn_small_batch")
    t = A.gn_table(s)
    t["cell"] = _ci(t, 1)
    wide = t.pivot(index="norm_type", columns="batch_size", values="cell")
    ref = t.pivot(index="norm_type", columns="batch_size", values="ref_err")
    bss = sorted(t.batch_size.unique(), reverse=True)
    shown = pd.DataFrame({"norm": wide.index})
    for b in bss:
        shown[f"batch {b}"] = [f"{wide.loc[n, b]}" + ("" if pd.isna(ref.loc[n, b]) else f" (W&H {ref.loc[n, b]:.1f})")
                               for n in wide.index]
    order = [n for n in ["bn", "gn", "ln", "in", "brn", "Δ(GN−BN)"] if n in set(shown.norm)]
    shown = shown.set_index("norm").loc[order + sorted(set(shown.norm) - set(order))].reset_index()
    g = t.set_index(["norm_type", "batch_size"])["mean"]
    lo_b, hi_b = min(bss), max(bss)
    parts = [f"{n.upper()} {g.get((n, hi_b), np.nan):.1f}% → {g.get((n, lo_b), np.nan):.1f}%"
             for n in ("bn", "gn") if (n, lo_b) in g.index]
    r.finding = f"test error from batch {hi_b} to {lo_b}: " + "; ".join(parts) + " (Wu & He: BN 23.6 → 34.7, GN 24.1 → 24.1)."
    r.notes = [f"Ours: {_setting(s)}, lr = 0.1·N/32. Reference: {R.GN_WU_HE.setting} ({R.GN_WU_HE.cite()}). "
               f"Δ(GN−BN) is paired by seed. Compare the trend with batch size, not the levels."]
    r.table("error_by_batch", t.drop(columns="cell"),
            f"Test error (%) by batch size, mean [95% CI] over seeds, Wu & He beside ours; {r.finding}", shown)
    r.figure("error_vs_batch", P.error_vs_batch(t, R.GN_WU_HE.values),
             f"Test error vs batch size (bands: 95% CI over seeds; dashed: Wu & He); {r.finding}")
    return r


def report_lr_bs_sweep(s: pd.DataFrame, m: pd.DataFrame) -> Report:
    r = Report("lr_bs_sweep")
    grid = A.accuracy_grid(s)
    msl = A.max_stable_lr(s)
    stt = A.steps_to_target(s)
    target = s.target_acc.dropna().iloc[0] if s.target_acc.notna().any() else np.nan
    fmt_lr = lambda s: ", ".join(f"{n} {v:g}" if pd.notna(v) else f"{n} none" for n, v in s.items())  # noqa: E731
    r.finding = (f"largest lr at which every seed trained (worst batch size): "
                 f"{fmt_lr(msl.groupby('norm').max_trained_lr.min())}; with no diverged seed: "
                 f"{fmt_lr(msl.groupby('norm').max_stable_lr.min())}.")
    r.figure("heatmaps", P.heatmaps(grid),
             f"Final test accuracy (mean over seeds) over lr × batch size; 'div' marks diverged seeds. {r.finding}")
    r.table("max_stable_lr", msl, f"Largest learning rate at which no seed diverged (non-finite or exploding "
                                  f"loss), and at which every seed trained (test accuracy ≥ 2× chance); {r.finding}")
    shown = stt.assign(steps=[A.fmt(a, b, c, digits=0) for a, b, c in zip(stt.steps, stt.steps_lo, stt.steps_hi)],
                       speedup=stt.speedup.map(lambda v: "–" if pd.isna(v) else f"{v:.1f}×"))
    shown = shown[["norm", "batch_size", "best_lr", "steps", "examples", "speedup", "n"]]
    fastest = stt.dropna(subset=["steps"]).sort_values("steps").head(1)
    note = (f"fastest: {fastest.norm.iloc[0]} at batch {fastest.batch_size.iloc[0]}, lr {fastest.best_lr.iloc[0]:g} "
            f"({fastest.steps.iloc[0]:.0f} steps)") if len(fastest) else "no setting reached the target"
    r.table("steps_to_target", stt, f"Steps (and examples) to {_pct(target)} test accuracy at each norm's best lr, "
                                    f"speed-up over no norm (as the BN paper's steps-to-72.2% table); {note}.", shown)
    r.notes = [f"BN paper (Inception, ImageNet): {', '.join(f'{k} {v[0] / 1e6:g}M steps' for k, v in R.BN_PAPER_STEPS.values.items() if v[0])} "
               f"to 72.2% ({R.BN_PAPER_STEPS.cite()}). Ours: {_setting(s)}."]
    r.figure("curves_test_acc", P.curves(m, "test", "acc"), "Test accuracy vs step per norm (95% CI over seeds).")
    r.figure("curves_train_loss", P.curves(m, "train", "loss"),
             "Training loss vs step per norm (95% CI over seeds); diverged runs end early.")
    return r


def _median(m, metric, **sel) -> float:
    d = m[m.metric == metric]
    for k, v in sel.items():
        d = d[d[k] == v]
    return float(d.value.median()) if len(d) else float("nan")


def report_santurkar(s: pd.DataFrame, m: pd.DataFrame) -> Report:
    r = Report("santurkar")
    vgg_models = set(s[s.model_type != "dln"].model)
    mv, md = m[m.model.isin(vgg_models)], m[~m.model.isin(vgg_models)]
    sv = s[s.model.isin(vgg_models)]
    base = "none"
    ics_bn, ics_none = _median(mv, "ics_l2", norm="bn"), _median(mv, "ics_l2", norm=base)
    verdict = "does not reduce" if ics_bn >= ics_none else "reduces"
    ics_sentence = f"BN {verdict} ICS here: median ℓ2 {ics_bn:.3g} (BN) vs {ics_none:.3g} (standard)"
    cos_bn, cos_none = _median(mv, "ics_cos", norm="bn"), _median(mv, "ics_cos", norm=base)
    beta_bn, beta_none = _median(mv, "beta_eff", norm="bn"), _median(mv, "beta_eff", norm=base)
    early = mv[mv.step <= mv.step.max() / 3] if len(mv) else mv
    gp_bn, gp_none = _median(early, "grad_pred_max", norm="bn"), _median(early, "grad_pred_max", norm=base)
    band = lambda d, n: _median(d, "landscape_max", norm=n) - _median(d, "landscape_min", norm=n)  # noqa: E731
    band_bn, band_none = band(mv, "bn"), band(mv, base)
    acc = A.summarize(sv, ["norm", "lr"], "final_test_acc")
    acc_n = acc.groupby("norm")["mean"].max()
    r.finding = (f"{ics_sentence}; effective β {beta_bn:.3g} (BN) vs {beta_none:.3g}; best accuracy "
                 + ", ".join(f"{n} {v:.3f}" for n, v in acc_n.items()) + ".")
    r.notes = [f"Ours: {_setting(sv)}. Reference: {R.SANTURKAR.setting} ({R.SANTURKAR.cite()}): 83% with BN, "
               f"80% without; effective β about 5–45 on VGG ({R.SANTURKAR_BETA.cite()}). Probes follow the paper's "
               f"definitions: a line search along −g on the fixed batch B_t, β divided by the step, G' after the "
               f"earlier layers' actual update, BN statistics and noise untouched."]
    r.figure("ics_l2", P.probe_over_training(mv, "ics_l2", "ICS ‖G − G′‖₂"), f"{ics_sentence} (VGG).")
    r.figure("ics_cos", P.probe_over_training(mv, "ics_cos", "ICS cos(G, G′)", log=False),
             f"ICS cosine similarity (1 = no shift): median {cos_bn:.3f} (BN) vs {cos_none:.3f} (standard).")
    if len(md):
        d_bn, d_none = _median(md, "ics_l2", norm="bn"), _median(md, "ics_l2", norm=base)
        r.figure("ics_dln", P.probe_over_training(md, "ics_l2", "ICS ‖G − G′‖₂"),
                 f"Deep linear net (25 × 10×10, full-batch GD): median ICS ℓ2 {d_bn:.3g} with BN vs {d_none:.3g} "
                 f"without — BN {'does not reduce' if d_bn >= d_none else 'reduces'} ICS here.")
    else:
        r.figure("ics_dln", P.empty("no deep-linear-net runs in this config"),
                 "Deep linear net: not part of this configuration.")
    r.figure("landscape", P.band_over_training(mv, "landscape_min", "landscape_max", "L(W − ηg)"),
             f"Loss-landscape band over η ∈ [0.5, 4]×lr: median width {band_bn:.3g} (BN) vs {band_none:.3g} (standard)"
             f" — {'narrower' if band_bn < band_none else 'not narrower'} with BN.")
    r.figure("grad_pred", P.band_over_training(mv, "grad_pred_min", "grad_pred_max", "‖∇L(W − ηg) − g‖"),
             f"Gradient predictiveness band: early in training the max change is {gp_bn:.3g} (BN) vs {gp_none:.3g} "
             f"(standard), a ratio of {gp_none / gp_bn if gp_bn else float('nan'):.1f}×.")
    r.figure("beta_eff", P.probe_over_training(mv, "beta_eff", "effective β"),
             f"Effective β-smoothness (max over η of gradient change / (η‖g‖)): median {beta_bn:.3g} with BN vs "
             f"{beta_none:.3g} without (paper, approx.: 5–45 on VGG).")
    noisy = acc_n.get("noisy_bn", np.nan)
    r.figure("accuracy", P.accuracy_bars(sv),
             f"Final test accuracy by norm and lr (95% CI over seeds): noisy BN {noisy:.3f} vs BN "
             f"{acc_n.get('bn', np.nan):.3f} vs standard {acc_n.get(base, np.nan):.3f} at each one's best lr; "
             f"ℓp variants: " + ", ".join(f"{n} {v:.3f}" for n, v in acc_n.items() if n.startswith("lp")) + ".")
    probe = pd.DataFrame([{
        "norm": n, "lr": lr,
        **{k: _median(mv, k, norm=n, lr=lr) for k in ("ics_l2", "ics_cos", "beta_eff", "grad_pred_max")},
        "landscape_width": _median(mv, "landscape_max", norm=n, lr=lr) - _median(mv, "landscape_min", norm=n, lr=lr),
    } for n, lr in sorted(set(zip(mv.norm, mv.lr)))])
    r.table("probes", probe, f"Median probe values over layers, steps and seeds; {ics_sentence}.",
            probe.round(4))
    shown = acc.assign(acc=_ci(acc))[["norm", "lr", "acc", "n"]]
    r.table("accuracy", acc, "Final test accuracy, mean [95% CI] over seeds, per norm and lr.", shown)
    return r


def report_bjorck(s: pd.DataFrame, m: pd.DataFrame) -> Report:
    r = Report("bjorck")
    rl = m[m.metric == "rel_loss"]
    big = rl[rl.step_size >= 3e-3]
    worst = big.groupby("norm").value.max()
    r.finding = ("largest relative loss for steps α ≥ 3e-3 along the gradient at the first mini-batches: "
                 + ", ".join(f"{n} {v:.3g}" for n, v in worst.items())
                 + f" (Bjorck, approx.: {R.BJORCK.values['rel_loss']}).")
    r.notes = [f"Ours: {_setting(s)}. Reference: {R.BJORCK.setting} ({R.BJORCK.cite()})."]
    r.figure("rel_loss", P.rel_loss(m), f"Relative loss L(W − αg)/L(W) at the first mini-batches; {r.finding}")
    std = A.layer_index(m[m.metric == "act_std"])
    last = std[std.step == std.step.max()] if len(std) else std
    deep = last[last.depth == last.depth.max()].groupby("norm").value.median() if len(last) else pd.Series(dtype=float)
    r.figure("act_std_by_depth", P.activations_by_depth(m, "act_std"),
             "Activation std by depth at the first and last probe; deepest layer at the end: "
             + ", ".join(f"{n} {v:.3g}" for n, v in deep.items()) + ".")
    r.figure("act_mean_by_depth", P.activations_by_depth(m, "act_mean"),
             "Activation mean by depth at the first and last probe (95% CI over seeds).")
    table = rl.groupby(["norm", "lr", "step_size"]).value.median().unstack("step_size").reset_index()
    r.table("rel_loss", table, "Median relative loss L(W − αg)/L(W) over the first mini-batches and seeds, per α.",
            table.round(4))
    acc = A.summarize(s, ["norm", "lr"], "final_test_acc")
    r.table("accuracy", acc, "Final test accuracy per norm and lr, mean [95% CI] over seeds.",
            acc.assign(acc=_ci(acc))[["norm", "lr", "acc", "n", "n_diverged"]])
    return r


def _setting_label(row) -> str:
    if row["norm_type"] == "none":
        return f"no norm, {row['init']} init"
    return f"{row['norm']} {'before' if row['placement'] == 'pre' else 'after'} {row['activation']}"


def report_depth_stats(s: pd.DataFrame, m: pd.DataFrame) -> Report:
    r = Report("depth_stats")
    key = ["model", "norm", "placement", "activation", "seed"]
    s = s.assign(setting=s.apply(_setting_label, axis=1))
    mm = m.merge(s[key + ["setting"]], on=key)
    std = A.layer_index(mm[mm.metric == "act_std"])
    init = std[std.step == std.step.min()]
    first, last = init.depth.min(), init.depth.max()
    tab = init.groupby(["setting", "depth"]).value.median().unstack("depth")
    table = pd.DataFrame({"setting": tab.index, "std layer 1": tab[first].values,
                          f"std layer {len(tab.columns) // 2}": tab[tab.columns[len(tab.columns) // 2]].values,
                          f"std layer {last + 1}": tab[last].values})
    collapse = table.set_index("setting").iloc[:, -1]
    r.finding = "activation std at the last of {} layers at init: ".format(last + 1) + ", ".join(
        f"{k} {v:.3g}" for k, v in collapse.items()) + "."
    r.figure("act_std_by_depth", P.activations_by_depth(mm, "act_std", hue="setting"),
             f"Activation std per layer of the 100-layer MLP at init and after training steps; {r.finding}")
    r.table("act_std", table, f"Median activation std at init at the first, middle and last layer; {r.finding}",
            table.round(4))
    return r


def report_feature_scaling(s: pd.DataFrame, m: pd.DataFrame) -> Report:
    from .feature_scaling import error_surface

    r = Report("feature_scaling")
    cond = m[m.metric == "hessian_cond"].groupby("norm").value.first()
    s = s.assign(cond=s.norm.map(cond))
    rows = []
    for (n, lr), g in s.groupby(["norm", "lr"]):
        conv = g.steps_to_target
        mean, lo, hi = A.bootstrap_ci(conv.dropna())
        rows.append({"scaling": n, "step (× 2/λmax)": lr, "Hessian condition number": cond.get(n, np.nan),
                     "steps to converge": A.fmt(mean, lo, hi, digits=0) if conv.notna().all()
                     else f"not in {int(g.steps.max())} steps ({int(conv.isna().sum())}/{len(g)})",
                     "diverged": f"{int(g.diverged.sum())}/{len(g)}"})
    table = pd.DataFrame(rows)
    raw, std = cond.get("raw", np.nan), cond.get("standardize", np.nan)
    r.finding = (f"standardizing the inputs cuts the Hessian condition number from {raw:.3g} (raw) to {std:.3g}; "
                 f"gradient descent converges in " + ", ".join(
                     f"{n} {g.steps_to_target.mean():.0f}" if g.steps_to_target.notna().all() else f"{n} >{int(g.steps.max())}"
                     for n, g in s[s.lr == s.lr.max()].groupby("norm")) + " steps.")
    r.table("convergence", table, f"Steps to converge (loss gap below 1e-6 of the initial gap) per input scaling; "
                                  f"{r.finding}")
    surf, paths = {}, {}
    lr = s.lr.max()
    for n in [x for x in ("raw", "minmax", "mean_norm", "standardize") if x in set(s.norm)]:
        surf[n] = error_surface(n)
        p = m[(m.norm == n) & (m.lr == lr) & (m.seed == s.seed.min()) & m.metric.isin(["w1", "w2"])]
        paths[n] = p.pivot_table(index="step", columns="metric", values="value").reset_index()
    r.figure("contours", P.contours(surf, paths),
             f"Error-surface contours over the two feature weights with the GD path (step {lr:g}×2/λmax): "
             f"elongated for raw features (condition number {raw:.3g}), round when standardized ({std:.3g}).")
    return r


# What each study's report contains: name -> what it compares (a report label).
# The Snakemake rules declare these files; Report.write checks it wrote exactly these.
ARTIFACTS: dict[str, dict[str, dict[str, str]]] = {
    "lr_bs_sweep": {"tables": {"max_stable_lr": "norm × batch size", "steps_to_target": "norm × batch size"},
                    "figures": {"heatmaps": "norm × lr × batch size", "curves_test_acc": "norm × lr × batch size",
                                "curves_train_loss": "norm × lr × batch size"}},
    "bn_placement": {"tables": {"placement": "variant"}, "figures": {"curves": "variant"}},
    "gn_small_batch": {"tables": {"error_by_batch": "norm × batch size"},
                       "figures": {"error_vs_batch": "norm × batch size"}},
    "santurkar": {"tables": {"probes": "norm × lr", "accuracy": "norm × lr"},
                  "figures": {"ics_l2": "norm × lr", "ics_cos": "norm × lr", "ics_dln": "norm × lr",
                              "landscape": "norm × lr", "grad_pred": "norm × lr", "beta_eff": "norm × lr",
                              "accuracy": "norm × lr"}},
    "bjorck": {"tables": {"rel_loss": "norm × lr × step size", "accuracy": "norm × lr"},
               "figures": {"rel_loss": "norm × lr", "act_std_by_depth": "norm × layer",
                           "act_mean_by_depth": "norm × layer"}},
    "depth_stats": {"tables": {"act_std": "setting × layer"}, "figures": {"act_std_by_depth": "setting × layer"}},
    "feature_scaling": {"tables": {"convergence": "scaling × step"}, "figures": {"contours": "scaling"}},
}

REPORTS: dict[str, Callable[[pd.DataFrame, pd.DataFrame], Report]] = {
    "lr_bs_sweep": report_lr_bs_sweep,
    "bn_placement": report_bn_placement,
    "gn_small_batch": report_gn_small_batch,
    "santurkar": report_santurkar,
    "bjorck": report_bjorck,
    "depth_stats": report_depth_stats,
    "feature_scaling": report_feature_scaling,
}


def _setting(s: pd.DataFrame) -> str:
    first = s.iloc[0]
    models = ", ".join(sorted(set(s.model_type)))
    data = ", ".join(sorted(set(s.dataset)))
    return (f"{models} on {data}, {first.optimizer}, {int(s.steps.max())} steps max, "
            f"{s.seed.nunique()} seeds")


def build_study(study: str, summary_path, metrics_path, out_dir) -> Report:
    s = read_parquet(summary_path, SUMMARY_SCHEMA)
    m = read_parquet(metrics_path, METRICS_SCHEMA)
    if s.empty:
        raise ValueError(f"{summary_path} holds no runs")
    rep = REPORTS[study](s, m)
    rep.write(out_dir)
    write_text(json.dumps({"study": study, "finding": rep.finding}), Path(out_dir) / "finding.json")
    return rep


def write_index(out_dir, studies: list[str]) -> Path:
    out = Path(out_dir)
    lines = ["# normbench reports", "", "One folder per study: Markdown + CSV tables, PNG figures. "
             "Numbers are means with bootstrap 95% intervals over seeds; diverged runs are counted, never dropped.",
             ""]
    for st in studies:
        f = out / st / "finding.json"
        finding = json.loads(f.read_text())["finding"] if f.exists() else "(not built)"
        lines.append(f"- [{STUDIES[st].title}]({st}/README.md) — {finding}")
    write_text("\n".join(lines) + "\n", out / "index.md")
    return out / "index.md"


def build_all(results="results", out="reports", studies=None) -> list[Path]:
    """Rebuild every study's report found under ``results`` (no training)."""
    studies = studies or [s for s in STUDIES if (Path(results) / s / "summary.parquet").exists()]
    done = []
    for st in studies:
        build_study(st, Path(results) / st / "summary.parquet", Path(results) / st / "metrics.parquet",
                    Path(out) / st)
        done.append(Path(out) / st / "README.md")
    done.append(write_index(out, studies))
    return done
