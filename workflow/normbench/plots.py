"""Figures: DataFrame in, Figure out, no paths inside (``save`` writes them).

Paper-ready: every curve is the mean over seeds with its Student-t 95% band
and each seed drawn beside it; legends sit outside the data; published numbers
get a panel of their own (never our axis); colorbars are labelled.  Saved as
SVG and as PNG at 200 dpi.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: reports are built on clusters and in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .analysis import layer_index, t_interval  # noqa: E402
from .store import atomic_path  # noqa: E402

sns.set_theme(style="whitegrid", context="paper")
DPI = 200


def fig_grid(ncols=1, nrows=1, w=3.6, h=2.8, **kw):
    return plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False, **kw)


def palette(values) -> dict:
    values = list(dict.fromkeys(values))
    return dict(zip(values, sns.color_palette("colorblind", n_colors=max(1, len(values)))))


def legend_outside(fig, axes, title: str | None = None) -> None:
    """One legend for the figure, right of the panels (never over the data)."""
    handles, labels = {}, []
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles and not lab.startswith("_"):
                handles[lab] = h
                labels.append(lab)
        if ax.get_legend():
            ax.get_legend().remove()
    if handles:
        fig.legend([handles[lab] for lab in labels], labels, title=title, loc="center left",
                   bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=7, title_fontsize=7)
    fig.tight_layout()


def lineci(data: pd.DataFrame, x: str, y: str, hue: str, ax, colors: dict | None = None, marker=None,
           seeds: bool = True, label_prefix: str = "") -> None:
    """Mean line with a t 95% band over seeds per hue, each seed's points beside it."""
    colors = colors or palette(sorted(data[hue].unique(), key=str))
    for h, g in data.groupby(hue, sort=False):
        stats = [(xv, *t_interval(v[y].values)) for xv, v in g.groupby(x)]
        if not stats:
            continue
        xs, mean, lo, hi = map(np.array, zip(*stats))
        ax.plot(xs, mean, color=colors[h], label=f"{label_prefix}{h}", marker=marker, ms=3, lw=1.4)
        ok = np.isfinite(lo)
        if ok.any():
            ax.fill_between(xs[ok], lo[ok], hi[ok], color=colors[h], alpha=0.18, lw=0)
        if seeds and "seed" in g:
            ax.scatter(g[x], g[y], color=colors[h], s=5, alpha=0.45, lw=0, label="_seed")
    ax.set_xlabel(x)


def points(summary: pd.DataFrame, x: str, y: str, hue: str, ax, colors: dict | None = None) -> None:
    """Per x and hue: the mean with its t 95% interval as an error bar, each seed as a dot beside it."""
    colors = colors or palette(sorted(summary[hue].unique(), key=str))
    xs = list(dict.fromkeys(summary[x]))
    hues = list(colors)
    width = 0.8 / max(1, len(hues))
    for j, h in enumerate(hues):
        for i, xv in enumerate(xs):
            v = summary[(summary[x] == xv) & (summary[hue] == h)][y].astype(float)
            if v.empty:
                continue
            pos = i - 0.4 + width * (j + 0.5)
            mean, lo, hi = t_interval(v.values)
            err = None if not np.isfinite(lo) else [[mean - lo], [hi - mean]]
            ax.errorbar([pos], [mean], yerr=err, fmt="o", color=colors[h], ms=4, capsize=2,
                        label=str(h) if i == 0 else "_")
            ax.scatter(np.full(len(v), pos + width * 0.3), v, color=colors[h], s=6, alpha=0.5, lw=0)
    ax.set_xticks(range(len(xs)), [str(v) for v in xs])
    ax.set_xlabel(x)


def heatmaps(grid: pd.DataFrame, value_label: str) -> plt.Figure:
    """Per norm: a value over lr × batch size; 'div' where a seed diverged, 'col' where one collapsed."""
    norms = list(dict.fromkeys(grid.norm))
    fig, axes = fig_grid(len(norms), w=3.2, h=2.8)
    for k, (ax, norm) in enumerate(zip(axes[0], norms)):
        g = grid[grid.norm == norm]
        val = g.pivot(index="batch_size", columns="lr", values="mean")
        labels = val.map(lambda v: "" if pd.isna(v) else f"{v:.2f}").astype(object)
        for col, mark in (("n_diverged", "div"), ("n_collapsed", "col")):
            counts = g.pivot(index="batch_size", columns="lr", values=col)
            for i in range(labels.shape[0]):
                for j in range(labels.shape[1]):
                    c = counts.iat[i, j]
                    if c:
                        labels.iat[i, j] = (labels.iat[i, j] + "\n" if labels.iat[i, j] else "") + f"{int(c)} {mark}"
        last = k == len(norms) - 1
        sns.heatmap(val, annot=labels, fmt="", vmin=0, vmax=1, cmap="viridis", ax=ax, cbar=last,
                    cbar_kws={"label": value_label} if last else None, annot_kws={"fontsize": 6})
        ax.set_title(norm)
        ax.set_xlabel("learning rate")
        ax.set_ylabel("batch size")
    fig.tight_layout()
    return fig


def curves(metrics: pd.DataFrame, split: str, metric: str, hue: str = "norm", by=("batch_size", "lr"),
           log: bool | None = None) -> plt.Figure:
    """``metric`` vs step per ``hue``, one panel per value of ``by`` (rows, columns)."""
    m = metrics[(metrics.split == split) & (metrics.metric == metric)]
    rows, cols = (sorted(m[by[0]].unique()), sorted(m[by[1]].unique())) if by else ([None], [None])
    fig, axes = fig_grid(len(cols), len(rows), w=2.8, h=2.3, sharey=True)
    colors = palette(sorted(m[hue].unique(), key=str))
    for r, rv in enumerate(rows):
        for c, cv in enumerate(cols):
            ax = axes[r][c]
            d = m if by is None else m[(m[by[0]] == rv) & (m[by[1]] == cv)]
            if len(d):
                lineci(d, "step", "value", hue, ax, colors)
            if by:
                ax.set_title(f"{by[1]} {cv:g}, {by[0]} {rv}", fontsize=8)
            ax.set_ylabel(f"{split} {metric}")
            if log if log is not None else metric == "loss":
                ax.set_yscale("log")
    legend_outside(fig, axes, hue)
    return fig


def with_reference(ours: pd.DataFrame, x: str, y: str, hue: str, ylabel: str, reference: dict[str, dict],
                   ref_label: str, ref_ylabel: str, xlabel: str, log2x: bool = True) -> plt.Figure:
    """Our curves (mean, band, seeds) in one panel; the published ones in a panel of their own."""
    fig, axes = fig_grid(2, w=3.6, h=2.9)
    colors = palette(sorted(set(ours[hue]) | set(reference), key=str))
    lineci(ours, x, y, hue, axes[0][0], colors, marker="o")
    axes[0][0].set_title("ours", fontsize=8)
    axes[0][0].set_ylabel(ylabel)
    for name, vals in reference.items():
        if len(vals) > 1:
            xs = sorted(vals)
            axes[0][1].plot(xs, [vals[v] for v in xs], color=colors[name], marker="s", ms=3, ls="--", label=name)
        else:
            (xv, yv), = vals.items()
            axes[0][1].scatter([xv], [yv], color=colors[name], marker="s", s=12, label=name)
    axes[0][1].set_title(ref_label, fontsize=8)
    axes[0][1].set_ylabel(ref_ylabel)
    for ax in axes[0]:
        ax.set_xlabel(xlabel)
        if log2x:
            ax.set_xscale("log", base=2)
            ticks = sorted(set(ours[x]))
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.invert_xaxis()
    legend_outside(fig, axes, hue)
    return fig


def probe_over_training(metrics: pd.DataFrame, metric: str, ylabel: str, log: bool = True, hue: str = "norm",
                        col: str = "lr") -> plt.Figure:
    """A probe metric (median over layers per run) vs step: mean line, t band, seeds; a panel per ``col``."""
    m = metrics[metrics.metric == metric]
    m = m.groupby([hue, col, "seed", "step"]).value.median().reset_index()
    cols = sorted(m[col].unique())
    fig, axes = fig_grid(max(1, len(cols)), w=3.0, h=2.5, sharey=True)
    colors = palette(sorted(m[hue].unique(), key=str))
    for ax, c in zip(axes[0], cols):
        lineci(m[m[col] == c], "step", "value", hue, ax, colors)
        ax.set_title(f"{col} {c:g}" if isinstance(c, float) else f"{col} {c}", fontsize=8)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
    legend_outside(fig, axes, hue)
    return fig


def probe_vs_loss(values: pd.DataFrame, metrics: list[tuple[str, str]], hue: str = "label") -> plt.Figure:
    """Probe values against the loss where each was taken (log-log): every probe a dot, per ``hue``
    the median in each loss bin as a line -- nets compared at equal loss, not at equal step.
    ``values``: one row per probe with ``metric``, ``value``, ``loss`` and ``bin`` (its loss bin)."""
    fig, axes = fig_grid(len(metrics), w=3.0, h=2.6)
    colors = palette(sorted(values[hue].unique(), key=str))
    for ax, (metric, label) in zip(axes[0], metrics):
        v = values[(values.metric == metric) & (values.value > 0)]
        for h, g in v.groupby(hue):
            ax.scatter(g.loss, g.value, color=colors[h], s=5, alpha=0.4, lw=0, label="_probe")
            med = g.groupby("bin").agg(loss=("loss", "median"), value=("value", "median")).sort_values("loss")
            ax.plot(med.loss, med.value, color=colors[h], lw=1.4, marker="o", ms=3, label=str(h))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training loss at the probe, L(W_t; B_t)")
        ax.set_ylabel(label)
    legend_outside(fig, axes, hue)
    return fig


def band_over_training(metrics: pd.DataFrame, lo: str, hi: str, ylabel: str, hue: str = "norm",
                       log: bool = True) -> plt.Figure:
    """The [min, max] range of a line-search probe vs step: per ``hue`` a band between the
    seed means of min and max, with its mean line (the band's centre); a panel per lr."""
    m = metrics[metrics.metric.isin([lo, hi])]
    m = m.groupby([hue, "lr", "step", "metric"]).value.mean().unstack("metric").reset_index()
    lrs = sorted(m.lr.unique())
    fig, axes = fig_grid(max(1, len(lrs)), w=3.0, h=2.5, sharey=True)
    colors = palette(sorted(m[hue].unique(), key=str))
    for ax, lr in zip(axes[0], lrs):
        for h in colors:
            g = m[(m.lr == lr) & (m[hue] == h)].sort_values("step")
            if len(g):
                ax.fill_between(g.step, g[lo], g[hi], alpha=0.25, color=colors[h], lw=0)
                centre = np.sqrt(g[lo] * g[hi]) if log else (g[lo] + g[hi]) / 2
                ax.plot(g.step, centre, color=colors[h], lw=1.2, label=str(h))
        ax.set_title(f"lr {lr:g}", fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("step")
        if log:
            ax.set_yscale("log")
    legend_outside(fig, axes, hue)
    return fig


def rel_loss(metrics: pd.DataFrame, hue: str = "norm") -> plt.Figure:
    """Bjorck: L(W − αg)/L(W) vs α at the first mini-batches (log-log), a panel per training lr."""
    m = metrics[metrics.metric == "rel_loss"]
    m = m.groupby([hue, "lr", "seed", "step_size"]).value.median().reset_index()
    lrs = sorted(m.lr.unique())
    fig, axes = fig_grid(max(1, len(lrs)), w=3.0, h=2.6, sharey=True)
    colors = palette(sorted(m[hue].unique(), key=str))
    for ax, lr in zip(axes[0], lrs):
        lineci(m[m.lr == lr], "step_size", "value", hue, ax, colors, marker="o")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("step size α along −g")
        ax.set_ylabel("L(W − αg) / L(W)")
        ax.set_title(f"first steps, training lr {lr:g}", fontsize=8)
    legend_outside(fig, axes, hue)
    return fig


def activations_by_depth(metrics: pd.DataFrame, stat: str = "act_std", hue: str = "norm",
                         steps: list[int] | None = None) -> plt.Figure:
    """Per-layer activation statistic vs depth, at the first and last probed step."""
    m = layer_index(metrics[metrics.metric == stat])
    steps = steps or sorted({int(m.step.min()), int(m.step.max())})
    fig, axes = fig_grid(len(steps), w=3.2, h=2.6, sharey=True)
    colors = palette(sorted(m[hue].unique(), key=str))
    for ax, st in zip(axes[0], steps):
        lineci(m[m.step == st], "depth", "value", hue, ax, colors)
        if stat == "act_std":
            ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_ylabel(stat.replace("act_", "activation "))
        ax.set_title(f"step {st}", fontsize=8)
    legend_outside(fig, axes, hue)
    return fig


def contours(surfaces: dict[str, tuple], paths: dict[str, pd.DataFrame]) -> plt.Figure:
    """Error-surface contours (w1, w2; bias optimal) with the GD path, one panel per scaling."""
    names = list(surfaces)
    fig, axes = fig_grid(len(names), w=2.9, h=2.8)
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
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("w1")
        ax.set_ylabel("w2")
    legend_outside(fig, axes)
    return fig


def empty(message: str) -> plt.Figure:
    fig, axes = fig_grid(w=4, h=1.5)
    axes[0][0].axis("off")
    axes[0][0].text(0.5, 0.5, message, ha="center", va="center")
    return fig


def save(fig: plt.Figure, path) -> None:
    """Write atomically (temp name + rename); legends outside the axes are kept in."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format=str(path).rsplit(".", 1)[-1], bbox_inches="tight",
                    metadata={"Date": None} if str(path).endswith(".svg") else None)


def close(fig: plt.Figure) -> None:
    plt.close(fig)


def stability_map(cells: pd.DataFrame, value_label: str, vmin: float, vmax: float) -> plt.Figure:
    """Per ``panel``: a value over ``row`` × ``col`` cells (e.g. norm × lr/warm-up), each cell
    annotated with its mean and the count of failed seeds ('2/3 failed')."""
    panels = list(dict.fromkeys(cells.panel))
    fig, axes = fig_grid(len(panels), w=3.4, h=2.6)
    for k, (ax, panel) in enumerate(zip(axes[0], panels)):
        g = cells[cells.panel == panel]
        val = g.pivot(index="row", columns="col", values="mean")
        fails = g.pivot(index="row", columns="col", values="failed")
        ns = g.pivot(index="row", columns="col", values="n")
        labels = val.copy().astype(object)
        for i in range(val.shape[0]):
            for j in range(val.shape[1]):
                v, f, n = val.iat[i, j], fails.iat[i, j], ns.iat[i, j]
                labels.iat[i, j] = ("" if pd.isna(v) else f"{v:.2f}") + (f"\n{int(f)}/{int(n)} failed" if f else "")
        last = k == len(panels) - 1
        sns.heatmap(val, annot=labels, fmt="", vmin=vmin, vmax=vmax, cmap="viridis_r", ax=ax, cbar=last,
                    cbar_kws={"label": value_label} if last else None, annot_kws={"fontsize": 6})
        ax.set_title(str(panel), fontsize=8)
        ax.set_xlabel("")
        ax.set_ylabel("")
    fig.tight_layout()
    return fig


def by_layer(data: pd.DataFrame, y: str, ylabel: str, hue: str, col: str, log: bool = False) -> plt.Figure:
    """A per-layer value against the layer index (mean, t band, seeds), a panel per ``col``."""
    cols = sorted(data[col].unique())
    fig, axes = fig_grid(max(1, len(cols)), w=3.0, h=2.5, sharey=True)
    colors = palette(sorted(data[hue].unique(), key=str))
    for ax, c in zip(axes[0], cols):
        lineci(data[data[col] == c], "layer_index", y, hue, ax, colors, marker="o")
        ax.set_title(f"{col} {c}", fontsize=8)
        ax.set_xlabel("layer index (1 = nearest the input)")
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
    legend_outside(fig, axes, hue)
    return fig
