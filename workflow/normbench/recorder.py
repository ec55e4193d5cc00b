"""One run's metric rows and summary, shared by every runner."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from . import __version__
from .provenance import environment, git_revision
from .settings import RunConfig
from .store import METRICS_SCHEMA, SUMMARY_SCHEMA, write_parquet

FINGERPRINT_KEY = "normbench.settings"  # the summary footer's record of RunConfig.fingerprint()


def collapse_level(chance: float, n_test: int) -> float:
    """Test accuracy at or below which a finite run counts as collapsed: chance plus
    three binomial standard errors of a test set of ``n_test`` (a guess cannot beat it)."""
    return chance + 3 * math.sqrt(chance * (1 - chance) / max(n_test, 1))


@dataclass
class RunResult:
    metrics: pd.DataFrame
    summary: dict
    diverged: bool = False

    def write(self, files: dict[str, Path], fingerprint: str | None = None) -> None:
        write_parquet(self.metrics, files["metrics"], METRICS_SCHEMA)
        # summary last: its presence (with the settings' fingerprint in its footer) marks the run complete
        write_parquet(pd.DataFrame([self.summary]), files["summary"], SUMMARY_SCHEMA,
                      {FINGERPRINT_KEY: fingerprint} if fingerprint else None)


@dataclass
class Recorder:
    cfg: RunConfig
    per_epoch: int
    classification: bool
    chance: float = float("nan")
    collapse_at: float = float("nan")
    rows: list = field(default_factory=list)
    best_acc: float = float("nan")
    steps_to_target: int | None = None
    elapsed: float = 0.0  # wall time of earlier attempts (resume)
    probe_time: float = 0.0
    t0: float = field(default_factory=time.perf_counter)
    compute_elapsed: float = 0.0  # CPU time of earlier attempts (resume)
    c0: float = field(default_factory=time.process_time)

    def start(self, t0: float, c0: float) -> None:
        """The run's clocks start (wall and this process's CPU time)."""
        self.t0, self.c0 = t0, c0

    def share(self, members: int) -> None:
        """A pack's member: its share of the time the pack took (the runs trained together)."""
        self.elapsed, self.compute_elapsed = self.wall() / members, self.compute() / members
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def row(self, step, split, metric, value, layer=None, step_size=None):
        self.rows.append({
            "step": step, "epoch": step / self.per_epoch,
            "examples": step * self.cfg.batch_size * self.cfg.workers,
            "split": split, "metric": metric, "layer": layer, "step_size": step_size,
            "value": float(value), "wall_time_s": self.wall(),
        })

    def wall(self) -> float:
        return self.elapsed + time.perf_counter() - self.t0

    def compute(self) -> float:
        """CPU seconds this process spent (all its threads) since the run started: work, not waiting,
        so the pipeline's useful-compute fraction cannot exceed 1."""
        return self.compute_elapsed + time.process_time() - self.c0

    def eval_point(self, step, seen: int, train_loss_sum: float, train_correct: float,
                   test_loss: float, test_acc: float | None) -> None:
        """Train metrics since the last eval point, then test metrics."""
        if seen:
            self.row(step, "train", "loss", train_loss_sum / seen)
            if self.classification:
                self.row(step, "train", "acc", train_correct / (seen * self.cfg.batch_size * self.cfg.workers))
        self.row(step, "test", "loss", test_loss)
        if self.classification:
            self.row(step, "test", "acc", test_acc)
            self.best_acc = test_acc if math.isnan(self.best_acc) else max(self.best_acc, test_acc)
            if self.cfg.target_acc is not None and self.steps_to_target is None and test_acc >= self.cfg.target_acc:
                self.steps_to_target = step

    def result(self, steps: int, first_bad: int, num_params: int, device) -> RunResult:
        cfg, identity = self.cfg, self.cfg.identity()
        wall = self.wall()
        metrics = pd.DataFrame(self.rows, columns=[f.name for f in METRICS_SCHEMA if f.name not in identity])
        for k, v in identity.items():
            metrics[k] = v
        pick = lambda split, metric: _last(metrics, split, metric)  # noqa: E731
        diverged, acc = first_bad >= 0, pick("test", "acc")
        examples = cfg.batch_size * cfg.workers
        summary = {
            **identity, **cfg.provenance(),
            "final_test_acc": acc, "final_test_loss": pick("test", "loss"),
            "best_test_acc": self.best_acc, "final_train_loss": pick("train", "loss"),
            "final_train_acc": pick("train", "acc"),
            "diverged": diverged, "diverged_step": first_bad if diverged else None,
            "collapsed": bool(self.classification and not diverged and acc <= self.collapse_at),
            "chance_acc": self.chance,
            "steps": steps, "examples": steps * examples, "workers": cfg.workers, "target_acc": cfg.target_acc,
            "steps_to_target": self.steps_to_target,
            "examples_to_target": None if self.steps_to_target is None else self.steps_to_target * examples,
            "wall_time_s": wall, "train_time_s": wall - self.probe_time, "probe_time_s": self.probe_time,
            "probe_every": cfg.probe_every,
            "compute_time_s": self.compute(),
            "num_params": num_params, "device": str(device), "torch_version": torch.__version__,
            "normbench_version": __version__, "git_rev": git_revision(),
            **environment(cfg.to_dict(), device),
        }
        return RunResult(metrics, summary, diverged)

    def state(self) -> dict:
        return {"rows": self.rows, "best_acc": self.best_acc, "steps_to_target": self.steps_to_target,
                "elapsed": self.wall(), "probe_time": self.probe_time, "compute": self.compute()}

    def load_state(self, s: dict) -> None:
        self.rows, self.best_acc, self.steps_to_target = s["rows"], s["best_acc"], s["steps_to_target"]
        self.elapsed, self.probe_time, self.t0 = s["elapsed"], s["probe_time"], time.perf_counter()
        self.compute_elapsed, self.c0 = s.get("compute", 0.0), time.process_time()  # older checkpoints: none


def _last(metrics: pd.DataFrame, split: str, metric: str) -> float:
    v = metrics.loc[(metrics.split == split) & (metrics.metric == metric), "value"]
    return float(v.iloc[-1]) if len(v) else float("nan")
