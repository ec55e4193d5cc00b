"""One training run: config in, metric rows and a summary out.

The loop is lean: data resident on the device, batches are index slices, no
host synchronisation per step (divergence is tracked on the device and read at
eval points), ``zero_grad(set_to_none=True)``, foreach optimizers.  Probes
(``probes.py``) run on the current batch without changing training.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F

from . import __version__, probes
from .config import RunConfig
from .data import BatchSchedule, Dataset, load_dataset
from .devices import resolve_device
from .models import NormAct, build_model, count_params
from .norms import noise_modules, seed_noise
from .store import METRICS_SCHEMA, SUMMARY_SCHEMA, atomic_path, write_parquet


class Preempted(RuntimeError):
    """SIGTERM arrived; a checkpoint was written and the run can resume."""


def make_optimizer(cfg: RunConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    momentum = cfg.momentum if cfg.optimizer == "momentum" else 0.0
    return torch.optim.SGD(params, lr=cfg.lr, momentum=momentum, weight_decay=cfg.weight_decay, foreach=True)


def make_schedule(cfg: RunConfig, opt, total_steps: int):
    if cfg.schedule == "step":
        every = cfg.schedule_step_every or max(1, total_steps // 3)
        return torch.optim.lr_scheduler.StepLR(opt, every, cfg.schedule_gamma)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, total_steps)
    return None


def criterion_for(task: str):
    return F.mse_loss if task == "regression" else F.cross_entropy


def total_steps(cfg: RunConfig, n_train: int) -> int:
    if cfg.epochs is not None:
        return max(1, math.ceil(cfg.epochs * (n_train // cfg.batch_size)))
    return cfg.steps


@functools.lru_cache(maxsize=1)
def git_revision() -> str:
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


@dataclass
class RunResult:
    metrics: pd.DataFrame
    summary: dict
    diverged: bool = False

    def write(self, out_dir: str | Path) -> None:
        out = Path(out_dir)
        write_parquet(self.metrics, out / "metrics.parquet", METRICS_SCHEMA)
        # summary last: its presence marks the run complete
        write_parquet(pd.DataFrame([self.summary]), out / "summary.parquet", SUMMARY_SCHEMA)


@dataclass
class _Sigterm:
    """Turns SIGTERM (what SLURM sends before a kill) into a checkpoint and a clean exit."""

    hit: bool = False
    _old: object = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._old = None
        return self

    def _handle(self, *_):
        self.hit = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


@dataclass
class Recorder:
    """One run's metric rows and running summary; shared by solo and vectorized training."""

    cfg: RunConfig
    per_epoch: int
    classification: bool
    rows: list = field(default_factory=list)
    best_acc: float = float("nan")
    steps_to_target: int | None = None
    elapsed: float = 0.0  # wall time of earlier attempts (resume)
    probe_time: float = 0.0
    t0: float = field(default_factory=time.perf_counter)

    def row(self, step, split, metric, value, layer=None, step_size=None):
        self.rows.append({
            "step": step, "epoch": step / self.per_epoch, "examples": step * self.cfg.batch_size,
            "split": split, "metric": metric, "layer": layer, "step_size": step_size,
            "value": float(value), "wall_time_s": self.wall(),
        })

    def wall(self) -> float:
        return self.elapsed + time.perf_counter() - self.t0

    def eval_point(self, step, seen: int, train_loss_sum: float, train_correct: float,
                   test_loss: float, test_acc: float | None) -> None:
        """Train metrics since the last eval point, then test metrics."""
        if seen:
            self.row(step, "train", "loss", train_loss_sum / seen)
            if self.classification:
                self.row(step, "train", "acc", train_correct / (seen * self.cfg.batch_size))
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
        summary = {
            **identity, **cfg.provenance(),
            "final_test_acc": pick("test", "acc"), "final_test_loss": pick("test", "loss"),
            "best_test_acc": self.best_acc, "final_train_loss": pick("train", "loss"),
            "diverged": first_bad >= 0, "diverged_step": first_bad if first_bad >= 0 else None,
            "steps": steps, "examples": steps * cfg.batch_size, "target_acc": cfg.target_acc,
            "steps_to_target": self.steps_to_target,
            "examples_to_target": None if self.steps_to_target is None else self.steps_to_target * cfg.batch_size,
            "wall_time_s": wall, "train_time_s": wall - self.probe_time, "probe_time_s": self.probe_time,
            "num_params": num_params, "device": str(device), "torch_version": torch.__version__,
            "normbench_version": __version__, "git_rev": git_revision(),
        }
        return RunResult(metrics, summary, first_bad >= 0)

    def state(self) -> dict:
        return {"rows": self.rows, "best_acc": self.best_acc, "steps_to_target": self.steps_to_target,
                "elapsed": self.wall(), "probe_time": self.probe_time}

    def load_state(self, s: dict) -> None:
        self.rows, self.best_acc, self.steps_to_target = s["rows"], s["best_acc"], s["steps_to_target"]
        self.elapsed, self.probe_time, self.t0 = s["elapsed"], s["probe_time"], time.perf_counter()


def _last(metrics: pd.DataFrame, split: str, metric: str) -> float:
    v = metrics.loc[(metrics.split == split) & (metrics.metric == metric), "value"]
    return float(v.iloc[-1]) if len(v) else float("nan")


@torch.no_grad()
def evaluate_model(forward, data: Dataset, criterion, members: bool = False, chunk: int = 1024):
    """(mean test loss, accuracy) of ``forward(x)`` over the test set.  With
    ``members`` the outputs carry a leading member dim (a vectorized pack) and
    both results are per member.  Regression: loss per output, accuracy 0."""
    n, regression = len(data.x_test), data.task == "regression"
    loss_sum = correct = 0
    for i in range(0, n, chunk):
        x, y = data.x_test[i:i + chunk], data.y_test[i:i + chunk]
        out = forward(x)
        if not members:
            out = out.unsqueeze(0)
        per = criterion(out.flatten(0, 1), y.repeat(out.shape[0], *([1] * (y.dim() - 1))), reduction="none")
        per = per.reshape(out.shape[0], -1).sum(1)
        loss_sum = loss_sum + (per / out.shape[-1] if regression else per)
        if not regression:
            correct = correct + (out.argmax(-1) == y).sum(-1)
    loss, acc = loss_sum / n, torch.as_tensor(correct, dtype=torch.float64) / n
    return (loss, acc) if members else (loss[0], acc.reshape(-1)[0])


@dataclass
class Trainer:
    """One run's state.  ``run()`` trains to the end (or divergence)."""

    cfg: RunConfig
    data: Dataset
    checkpoint_path: Path | None = None
    progress: Callable[[str], None] | None = None

    def __post_init__(self):
        cfg = self.cfg
        self.device = self.data.x_train.device
        torch.manual_seed(cfg.seed)
        na = NormAct(cfg.norm_kind, cfg.norm_options, cfg.activation, cfg.placement, cfg.init)
        self.model = build_model(cfg.model_kind, self.data.input_shape, self.data.num_outputs, na,
                                 cfg.model_options).to(self.device)
        seed_noise(self.model, cfg.seed)
        if cfg.channels_last and len(self.data.input_shape) == 3:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.data = _channels_last(self.data)
        # the training forward; probes and evaluation call the plain module
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
        self.total = total_steps(cfg, len(self.data.x_train))
        self.opt = make_optimizer(cfg, self.model.parameters())
        self.sched = make_schedule(cfg, self.opt, self.total)
        self.criterion = criterion_for(self.data.task)
        self.batches = BatchSchedule(len(self.data.x_train), cfg.batch_size, cfg.seed, self.device)
        self.rec = Recorder(cfg, self.batches.per_epoch, self.data.task == "classification")
        self.step = 0
        self.first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        self._reset_accumulators()
        self.probe_names, self.probe_groups = probes.layer_groups(self.model, cfg.probe_layers)
        self.param_order = list(probes.model_params(self.model))
        if self.checkpoint_path and Path(self.checkpoint_path).exists():
            self._load_checkpoint()

    # -- bookkeeping ---------------------------------------------------------

    def _reset_accumulators(self):
        self.loss_sum = torch.zeros((), device=self.device)
        self.correct = torch.zeros((), device=self.device, dtype=torch.long)
        self.seen = 0

    def _row(self, split, metric, value, layer=None, step_size=None):
        self.rec.row(self.step, split, metric, value, layer, step_size)

    def _say(self, msg: str):
        if self.progress:
            self.progress(msg)

    # -- the loop --------------------------------------------------------------

    def run(self) -> RunResult:
        cfg = self.cfg
        self.rec.t0 = time.perf_counter()
        last_ckpt = time.monotonic()
        if self.step == 0:
            self.evaluate()
        with _Sigterm() as term:
            while self.step < self.total:
                epoch, idx = self.batches(self.step)
                x, y = self.data.x_train[idx], self.data.y_train[idx]
                if self._probe_due():
                    self.train_step_with_probes(x, y)
                else:
                    self.train_step(x, y)
                self.step += 1
                if self.step % cfg.eval_every == 0 or self.step == self.total:
                    if self.evaluate():
                        break
                if term.hit:
                    self.save_checkpoint()
                    raise Preempted(f"SIGTERM at step {self.step}; checkpoint {self.checkpoint_path}")
                if self.checkpoint_path and (
                        (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0)
                        or time.monotonic() - last_ckpt > 60 * cfg.checkpoint_minutes):
                    self.save_checkpoint()
                    last_ckpt = time.monotonic()
        return self.result()

    def train_step(self, x, y, keep_grad: bool = False):
        """One optimizer step; with ``keep_grad`` return g = ∇L(W_t; B_t) by name."""
        if not self.model.training:  # train() walks every module: only switch back after an eval
            self.model.train()
        with self.autocast:
            out = self.forward(x)
        loss = self.criterion(out.float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        g = None
        if keep_grad:
            g = {k: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
                 for k, p in self.model.named_parameters()}
        self.opt.step()
        if self.sched is not None:
            self.sched.step()
        loss = loss.detach()
        bad = ~torch.isfinite(loss) | (loss > self.cfg.diverge_loss)
        self.first_bad = torch.where(bad & (self.first_bad < 0), self.step, self.first_bad)
        self.loss_sum += loss
        if self.data.task == "classification":
            self.correct += (out.detach().argmax(1) == y).sum()
        self.seen += 1
        return g

    # -- probes ----------------------------------------------------------------

    def _probe_due(self) -> bool:
        cfg = self.cfg
        if not cfg.probes:
            return False
        if "rel_loss" in cfg.probes and self.step < cfg.rel_loss_steps:
            return True
        return bool(cfg.probe_every) and self.step % cfg.probe_every == 0

    def train_step_with_probes(self, x, y):
        """The real step on B_t -- its gradient is the probes' g -- then the
        measurements on the same batch, from copies of W_t and W_{t+1}, with the
        RNG and BN statistics as they were at step t."""
        cfg = self.cfg
        loss_fn = probes.FunctionalLoss(self.model, self.criterion, x, y)  # state at step t
        before = loss_fn.params()
        exact = not (cfg.bf16 or cfg.compile)  # else the step's gradient is not the fp32 eager one
        g = self.train_step(x, y, keep_grad=exact)
        t = time.perf_counter()
        periodic = bool(cfg.probe_every) and self.step % cfg.probe_every == 0
        with torch.enable_grad():
            if g is None:
                _, g = probes.grad(loss_fn, before)
            if periodic and "landscape" in cfg.probes:
                ls = probes.line_search(loss_fn, before, [e * cfg.lr for e in cfg.landscape_etas], g)
                for name, v in (("landscape_min", min(ls.losses)), ("landscape_max", max(ls.losses)),
                                ("grad_pred_min", min(ls.grad_diffs)), ("grad_pred_max", max(ls.grad_diffs)),
                                ("beta_eff", ls.beta_eff)):
                    self._row("probe", name, v)
            if periodic and "ics" in cfg.probes:
                after = {k: v.detach() for k, v in probes.model_params(self.model).items()}
                res = probes.ics(loss_fn, before, after, self.probe_groups, self.param_order, g)
                for i, (l2, cos) in res.items():
                    self._row("probe", "ics_l2", l2, layer=self.probe_names[i])
                    self._row("probe", "ics_cos", cos, layer=self.probe_names[i])
        if "rel_loss" in cfg.probes and self.step < cfg.rel_loss_steps:
            for a, v in zip(cfg.rel_loss_alphas, probes.relative_loss(loss_fn, before, cfg.rel_loss_alphas, g)):
                self._row("probe", "rel_loss", v, step_size=a)
        if periodic and "act_stats" in cfg.probes:
            for layer, (m, s) in probes.activation_stats(loss_fn, before).items():
                self._row("probe", "act_mean", m, layer=layer)
                self._row("probe", "act_std", s, layer=layer)
        self.rec.probe_time += time.perf_counter() - t

    # -- evaluation --------------------------------------------------------------

    def evaluate(self) -> bool:
        """Log train/test metrics; True if the run has diverged (ends it)."""
        self.model.eval()
        loss, acc = evaluate_model(self.model, self.data, self.criterion)
        classification = self.data.task == "classification"
        self.rec.eval_point(self.step, self.seen, float(self.loss_sum), float(self.correct), float(loss),
                            float(acc) if classification else None)
        self._reset_accumulators()
        diverged = int(self.first_bad) >= 0
        self._say(f"step {self.step:>6}/{self.total}  test loss {float(loss):.4g}"
                  + (f"  acc {float(acc):.3f}" if classification else "") + ("  DIVERGED" if diverged else ""))
        return diverged

    def result(self) -> RunResult:
        return self.rec.result(self.step, int(self.first_bad), count_params(self.model), self.device)

    # -- checkpoints -------------------------------------------------------------

    def save_checkpoint(self) -> None:
        if not self.checkpoint_path:
            return
        state = {
            "step": self.step,
            "recorder": self.rec.state(),
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict() if self.sched else None,
            "rng": probes.rng_state(self.model),
            "first_bad": self.first_bad.cpu(),
            "loss_sum": self.loss_sum.cpu(), "correct": self.correct.cpu(), "seen": self.seen,
        }
        with atomic_path(self.checkpoint_path) as tmp:
            torch.save(state, tmp)

    def _load_checkpoint(self) -> None:
        s = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(s["model"])
        self.opt.load_state_dict(s["opt"])
        if self.sched and s["sched"]:
            self.sched.load_state_dict(s["sched"])
        # noise layers draw lazily: make their generators exist before restoring state
        for m in noise_modules(self.model):
            m._gen(self.device)
        rng = s["rng"]
        rng["cpu"] = rng["cpu"].cpu()
        probes.set_rng_state(self.model, {**rng, "noise": [None if n is None else n.cpu() for n in rng["noise"]]})
        self.step = s["step"]
        self.rec.load_state(s["recorder"])
        self.first_bad = s["first_bad"].to(self.device)
        self.loss_sum, self.correct, self.seen = s["loss_sum"].to(self.device), s["correct"].to(self.device), s["seen"]
        self._say(f"resumed from {self.checkpoint_path} at step {self.step}")


def _channels_last(d: Dataset) -> Dataset:
    cl = lambda t: t.contiguous(memory_format=torch.channels_last)  # noqa: E731
    return Dataset(d.name, cl(d.x_train), d.y_train, cl(d.x_test), d.y_test, d.task, d.num_outputs)


_DATA_CACHE: dict = {}


def get_data(cfg: RunConfig, device) -> Dataset:
    """Load a dataset once per process (a pack's runs share it)."""
    key = (cfg.dataset, str(cfg.data_dir), str(device))
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = load_dataset(cfg.dataset, cfg.data_dir, device)
    return _DATA_CACHE[key]


def train(cfg: RunConfig, out_dir: str | Path | None = None, checkpoint_path: str | Path | None = None,
          progress: Callable[[str], None] | None = None) -> RunResult:
    """Train one run; write ``metrics.parquet`` and ``summary.parquet`` into ``out_dir``."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.runner == "linear_gd":
        from .feature_scaling import train as train_linear_gd

        result = train_linear_gd(cfg, progress)
    else:
        device = resolve_device(cfg.device)
        trainer = Trainer(cfg, get_data(cfg, device), Path(checkpoint_path) if checkpoint_path else None, progress)
        result = trainer.run()
    if out_dir is not None:
        result.write(out_dir)
    if checkpoint_path and Path(checkpoint_path).exists():
        os.unlink(checkpoint_path)
    return result
