"""A results folder for the tools researchers already watch: TensorBoard.

``tensorboard(out, results)`` writes, from the Parquet alone (no training), one TensorBoard run per
finished run under ``OUT/<study>/<run path>`` (the grid point: ``model~cnn/…/lr~0.1/seed~0``) holding
its metric rows as scalars -- tag ``split/metric`` (``/layer`` for per-layer probes, ``/step_size=α``
for the relative loss), at its step, with its wall time since the run started -- stored in double
precision, so they read back equal to the Parquet.  The grid is written as HParams: the experiment
(every grid column, with the values the sweep took, and the final metrics) once at the top of OUT,
each run's own values and final metrics (``final/…``) in its folder, so that TensorBoard's HParams
table and parallel-coordinates view show the sweep.  Events are written with torch's
``SummaryWriter`` (it needs the ``tensorboard`` package: ``pip install normbench[tensorboard]``).

OUT appears whole or not at all: it is written beside, then moved into place (replacing an earlier
export, never a folder of something else).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from .errors import ConfigError
from .runstate import read_finished, read_plan
from .store import PARAM_COLUMNS

HPARAMS = [c for c in PARAM_COLUMNS]  # the grid: study and every identity column
FINAL = ["final_test_acc", "final_test_loss", "best_test_acc", "final_train_loss", "final_train_acc", "diverged",
         "collapsed", "steps_to_target"]  # a run's final metrics, as HParams metrics (tag final/<name>)
MARKER = ".normbench-tensorboard"  # says a folder is an export of ours (so that a new export may replace it)


def _writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # torch imports the tensorboard package lazily, here
        raise ConfigError("the tensorboard export needs the tensorboard package: pip install 'normbench[tensorboard]' "
                          f"(or pip install tensorboard) ({e})") from None
    return SummaryWriter


def tag(split: str, metric: str, layer, step_size) -> str:
    """A metric row's scalar tag: split/metric, then its layer or its step size if it has one."""
    t = f"{split}/{metric}"
    if isinstance(layer, str):
        t += f"/{layer}"
    if step_size is not None and not (isinstance(step_size, float) and math.isnan(step_size)):
        t += f"/step_size={step_size:g}"
    return t


def _plain(v):
    """numpy scalars as Python's (HParams accept bool, int, float and str)."""
    return v.item() if hasattr(v, "item") else v


def run_paths(summary: pd.DataFrame) -> list[str]:
    """Each run's grid point as the pipeline names its folder (Snakemake's Paramspace, ``~``)."""
    from snakemake.utils import Paramspace

    from .pipeline import GRID_COLUMNS, PARAM_SEP

    return list(Paramspace(summary[GRID_COLUMNS].reset_index(drop=True), param_sep=PARAM_SEP).instance_patterns)


def _final(row: pd.Series) -> dict[str, float]:
    out = {}
    for name in FINAL:
        v = row.get(name)
        if v is not None and not pd.isna(v):
            out[f"final/{name}"] = float(v)
    return out


def _write_study(SummaryWriter, hparams_of, out: Path, summary: pd.DataFrame, metrics: pd.DataFrame) -> int:
    groups = dict(iter(metrics.groupby(PARAM_COLUMNS, sort=False, dropna=False)))
    for path, (_, row) in zip(run_paths(summary), summary.iterrows()):
        key = tuple(_plain(row[c]) for c in PARAM_COLUMNS)
        rows = groups.get(key, metrics.iloc[:0])
        with SummaryWriter(log_dir=str(out / row.study / path), max_queue=10_000, flush_secs=3600) as w:
            for r in rows.itertuples(index=False):
                w.add_scalar(tag(r.split, r.metric, r.layer, r.step_size), float(r.value), int(r.step),
                             walltime=float(r.wall_time_s), new_style=True, double_precision=True)
            final, last = _final(row), int(row.steps)
            for t, v in final.items():
                w.add_scalar(t, v, last, walltime=float(row.wall_time_s), new_style=True, double_precision=True)
            _, ssi, sei = hparams_of({c: _plain(row[c]) for c in HPARAMS}, final)
            w.file_writer.add_summary(ssi)
            w.file_writer.add_summary(sei)
    return len(summary)


def tensorboard(out: str | Path, results: str | Path = "results") -> list[Path]:
    """Every finished run of ``results`` as TensorBoard events under ``out``; the folders written."""
    SummaryWriter = _writer()
    from torch.utils.tensorboard.summary import hparams

    from .publish import found_studies

    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).exists())):
        raise ConfigError(f"{out} exists and is not an earlier TensorBoard export of normbench: choose a new folder")
    plan = read_plan(results)
    studies = {}
    for st in found_studies(results, plan):
        runs = read_finished(results, st, plan)
        if runs.done:
            studies[st] = runs
    if not studies:
        raise ConfigError(f"{results}: no finished runs to export")
    everything = pd.concat([r.summary for r in studies.values()], ignore_index=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)  # mkdtemp's 0700 would hide the export from colleagues
    try:
        # the experiment: every grid column with the values the sweep took, and the final metrics
        domains = {c: sorted({_plain(v) for v in everything[c]}) for c in HPARAMS}
        example = {c: domains[c][0] for c in HPARAMS}
        metrics = {f"final/{n}": 0.0 for n in FINAL if everything[n].notna().any()}
        exp, _, _ = hparams(example, metrics, domains)
        with SummaryWriter(log_dir=str(tmp)) as w:
            w.file_writer.add_summary(exp)
        for st, runs in studies.items():
            _write_study(SummaryWriter, hparams, tmp, runs.summary, runs.metrics)
        (tmp / MARKER).write_text(f"exported from {results}\n")
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{tmp.name}"
            out.rename(old)
        tmp.rename(out)
        if old:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [out / st for st in studies]
