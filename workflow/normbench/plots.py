"""Seaborn figures: DataFrame in, Figure out, no paths inside.

Bands are bootstrap 95% intervals over seeds with the fixed seed of
``analysis.BOOT_SEED``; diverged cells are marked, never blank.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: reports are built on clusters and in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .analysis import BOOT_SEED, bootstrap_ci, layer_index  # noqa: E402

sns.set_theme(style="whitegrid", context="paper")
CI = ("ci", 95)


def _fig(ncols=1, nrows=1, w=4.2, h=3.2, **kw):
    return plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False, **kw)


def lineci(data: pd.DataFrame, x: str, y: str, hue: str, ax, legend: bool = True, marker=None, palette=None):
    """Mean line with a bootstrap 95% band over seeds per hue (analysis.bootstrap_ci,
    vectorized: seaborn's per-point Python bootstrap is too slow for report jobs)."""
    hues = list(dict.fromkeys(sorted(data[hue].unique(), key=str)))
    palette = palette or dict(zip(hues, sns.color_palette(n_colors=max(1, len(hues)))))
    for h in hues:
        g = data[data[hue] == h]
        stats = [(xv, *bootstrap_ci(v[y].values)) for xv, v in g.groupby(x)]
        if not stats:
            continue
        xs, mean, lo, hi = map(np.array, zip(*stats))
        ax.plot(xs, mean, color=palette[h], label=str(h), marker=marker, ms=3)
        ax.fill_between(xs, lo, hi, color=palette[h], alpha=0.2, lw=0)
    ax.set_xlabel(x)
    if legend and hues:
        ax.legend(fontsize=7, title=hue, title_fontsize=7)


def heatmaps(grid: pd.DataFrame) -> plt.Figure:
    """Per norm: final test accuracy over lr × batch size; 'div' where a seed diverged."""
    norms = list(dict.fromkeys(grid.norm))
    fig, axes = _fig(len(norms), w=3.6, h=3.0)
    for ax, norm in zip(axes[0], norms):
        g = grid[grid.norm == norm]
        acc = g.pivot(index="batch_size", columns="lr", values="mean")
        div = g.pivot(index="batch_size", columns="lr", values="n_diverged")
        n = g.pivot(index="batch_size", columns="lr", values="n")
        labels = acc.map(lambda v: "" if pd.isna(v) else f"{v:.2f}").astype(object)
        for i in range(labels.shape[0]):
            for j in range(labels.shape[1]):
                d = div.iat[i, j]
                if d and d == n.iat[i, j]:
                    labels.iat[i, j] = "div"
                elif d:
                    labels.iat[i, j] += f"\n{int(d)} div"
        sns.heatmap(acc, annot=labels, fmt="", vmin=0, vmax=1, cmap="viridis", ax=ax, cbar=ax is axes[0][-1],
                    annot_kws={"fontsize": 7})
        ax.set_title(norm)
        ax.set_xlabel("learning rate")
        ax.set_ylabel("batch size")
    fig.tight_layout()
    return fig


def curves(metrics: pd.DataFrame, split: str, metric: str) -> plt.Figure:
    """``metric`` vs step per norm, one panel per lr (rows: batch sizes)."""
    m = metrics[(metrics.split == split) & (metrics.metric == metric)]
    lrs, bss = sorted(m.lr.unique()), sorted(m.batch_size.unique())
    fig, axes = _fig(len(lrs), len(bss), w=3.2, h=2.6, sharey=True)
    for r, bs in enumerate(bss):
        for c, lr in enumerate(lrs):
            ax = axes[r][c]
            d = m[(m.lr == lr) & (m.batch_size == bs)]
            if len(d):
                lineci(d, "step", "value", "norm", ax, legend=(r == 0 and c == len(lrs) - 1))
            ax.set_title(f"lr {lr:g}, batch {bs}")
            ax.set_xlabel("step")
            ax.set_ylabel(f"{split} {metric}")
            if metric == "loss":
                ax.set_yscale("log")
    fig.tight_layout()
    return fig


def error_vs_batch(table: pd.DataFrame, ref: dict) -> plt.Figure:
    """Test error (%) vs batch size per norm with CI bands; Wu & He dashed."""
    t = table[~table.norm_type.str.startswith("Δ")]
    fig, axes = _fig(w=5, h=3.5)
    ax = axes[0][0]
    pal = dict(zip(sorted(t.norm_type.unique()), sns.color_palette(n_colors=t.norm_type.nunique())))
    for norm, g in t.groupby("norm_type"):
        g = g.sort_values("batch_size")
        ax.plot(g.batch_size, g["mean"], marker="o", label=f"{norm} (ours)", color=pal[norm])
        ax.fill_between(g.batch_size, g.lo, g.hi, alpha=0.2, color=pal[norm])
        if norm in ref and len(ref[norm]) > 1:
            b = sorted(ref[norm])
            ax.plot(b, [ref[norm][x] for x in b], ls="--", color=pal[norm], alpha=0.7, label=f"{norm} (Wu & He)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(t.batch_size.unique()), [str(b) for b in sorted(t.batch_size.unique())])
    ax.invert_xaxis()
    ax.set_xlabel("batch size (images per worker)")
    ax.set_ylabel("test error (%)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def probe_over_training(metrics: pd.DataFrame, metric: str, ylabel: str, log: bool = True,
                        hue: str = "norm", col: str = "lr") -> plt.Figure:
    """A probe metric (median over layers per run) vs step; CI bands over seeds."""
    m = metrics[metrics.metric == metric]
    m = m.groupby([hue, col, "seed", "step"]).value.median().reset_index()
    cols = sorted(m[col].unique())
    fig, axes = _fig(max(1, len(cols)), w=3.4, h=2.8, sharey=True)
    for ax, c in zip(axes[0], cols):
        lineci(m[m[col] == c], "step", "value", hue, ax, legend=ax is axes[0][-1])
        ax.set_title(f"{col} {c:g}" if isinstance(c, float) else f"{col} {c}")
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
    fig.tight_layout()
    return fig


def band_over_training(metrics: pd.DataFrame, lo: str, hi: str, ylabel: str, log: bool = True) -> plt.Figure:
    """The [min, max] band of a line-search probe vs step (mean over seeds) per norm and lr."""
    m = metrics[metrics.metric.isin([lo, hi])]
    m = m.groupby(["norm", "lr", "step", "metric"]).value.mean().unstack("metric").reset_index()
    lrs = sorted(m.lr.unique())
    fig, axes = _fig(max(1, len(lrs)), w=3.4, h=2.8, sharey=True)
    norms = sorted(m.norm.unique())
    pal = dict(zip(norms, sns.color_palette(n_colors=len(norms))))
    for ax, lr in zip(axes[0], lrs):
        for norm in norms:
            g = m[(m.lr == lr) & (m.norm == norm)].sort_values("step")
            if len(g):
                ax.fill_between(g.step, g[lo], g[hi], alpha=0.35, color=pal[norm], label=norm)
        ax.set_title(f"lr {lr:g}")
        ax.set_ylabel(ylabel)
        ax.set_xlabel("step")
        if log:
            ax.set_yscale("log")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def accuracy_bars(summary: pd.DataFrame) -> plt.Figure:
    """Final test accuracy per norm and lr, seeds as points (diverged runs at 0, marked x)."""
    fig, axes = _fig(w=6, h=3.2)
    ax = axes[0][0]
    s = summary.assign(acc=summary.final_test_acc.where(~summary.diverged.astype(bool), 0.0))
    sns.barplot(s, x="norm", y="acc", hue="lr", errorbar=CI, seed=BOOT_SEED, ax=ax, alpha=0.8)
    div = s[s.diverged.astype(bool)]
    if len(div):
        ax.scatter([list(s.norm.unique()).index(n) for n in div.norm], [0.02] * len(div), marker="x", color="k",
                   label="diverged run")
    ax.set_ylabel("final test accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, title="lr")
    fig.tight_layout()
    return fig


def rel_loss(metrics: pd.DataFrame) -> plt.Figure:
    """Bjorck: L(W − αg)/L(W) vs α at the first mini-batches (log-log), per norm."""
    m = metrics[metrics.metric == "rel_loss"]
    lrs = sorted(m.lr.unique())
    fig, axes = _fig(max(1, len(lrs)), w=3.6, h=3.0, sharey=True)
    for ax, lr in zip(axes[0], lrs):
        d = m[m.lr == lr]
        lineci(d, "step_size", "value", "norm", ax, legend=ax is axes[0][-1], marker="o")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("step size α along −g")
        ax.set_ylabel("L(W − αg) / L(W)")
        ax.set_title(f"first steps, training lr {lr:g}")
    fig.tight_layout()
    return fig


def activations_by_depth(metrics: pd.DataFrame, stat: str = "act_std", hue: str = "norm",
                         steps: list[int] | None = None) -> plt.Figure:
    """Per-layer activation statistic vs depth, at the first and last probed step."""
    m = layer_index(metrics[metrics.metric == stat])
    steps = steps or sorted({int(m.step.min()), int(m.step.max())})
    fig, axes = _fig(len(steps), w=3.8, h=3.0, sharey=True)
    for ax, st in zip(axes[0], steps):
        lineci(m[m.step == st], "depth", "value", hue, ax, legend=ax is axes[0][-1])
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_ylabel(stat.replace("act_", "activation "))
        ax.set_title(f"step {st}")
    fig.tight_layout()
    return fig


def contours(surfaces: dict[str, tuple], paths: dict[str, pd.DataFrame]) -> plt.Figure:
    """Error-surface contours (w1, w2; bias optimal) with the GD path, one panel per scaling."""
    names = list(surfaces)
    fig, axes = _fig(len(names), w=3.4, h=3.2)
    for ax, name in zip(axes[0], names):
        W1, W2, L, w_star = surfaces[name]
        lo = L.min()
        levels = lo + (np.quantile(L, 0.95) - lo) * np.geomspace(1e-4, 1, 12)  # log-spaced above the minimum
        ax.contour(W1, W2, L, levels=levels, cmap="viridis", linewidths=0.8)
        ax.set_aspect("equal")
        p = paths.get(name)
        if p is not None and len(p):
            ax.plot(p.w1, p.w2, "-o", ms=2, lw=0.8, color="C3", label="GD path")
        ax.plot(w_star[0], w_star[1], "k*", ms=8, label="optimum")
        ax.set_xlim(W1.min(), W1.max())
        ax.set_ylim(W2.min(), W2.max())
        ax.set_title(name)
        ax.set_xlabel("w1")
        ax.set_ylabel("w2")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def empty(message: str) -> plt.Figure:
    fig, axes = _fig(w=4, h=1.5)
    axes[0][0].axis("off")
    axes[0][0].text(0.5, 0.5, message, ha="center", va="center")
    return fig


def save(fig: plt.Figure, path) -> None:
    """Write atomically (temp name + rename), then free the figure."""
    from .store import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=str(path).rsplit(".", 1)[-1])
    plt.close(fig)
