"""The one training loop: R ≥ 1 runs of identical structure trained together
(a solo run is a pack of one), nanoGPT-style: readable, lean, resumable.

Lean: data resident on the device, batches are index slices, no host
synchronisation per step (divergence is tracked on the device and read at eval
points), ``zero_grad(set_to_none=True)``, foreach torch.optim optimizers with a
parameter group per member (each member's own learning rate); on CUDA each
step replays one captured CUDA graph where the run allows it (graphstep.py).  Probes
(``probing.py``) run on a solo run's current batch without changing training.
Checkpoints hold every member's state; SIGTERM (what SLURM sends before a kill)
writes one and ends the job, and the next attempt resumes bit for bit.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from . import probes
from .data import BatchSchedule, Dataset
from .graphstep import GraphStep, set_capturable
from .layers import noise_modules, seed_noise, set_run_length, set_workers
from .members import Eager, Vectorized
from .models import build_network, count_params
from .probing import Probing
from .recorder import Recorder, RunResult, collapse_level
from .settings import PACK_TOLERANCE, RunConfig  # noqa: F401 (PACK_TOLERANCE: the tests read it here)
from .store import atomic_path



class Preempted(RuntimeError):
    """SIGTERM arrived; a checkpoint was written and the runs can resume."""


def make_optimizer(cfg: RunConfig, groups: list[dict]) -> torch.optim.Optimizer:
    if cfg.optimizer in ("adam", "adamw"):
        adam = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        return adam(groups, lr=cfg.lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay, foreach=True)
    momentum = cfg.momentum if cfg.optimizer == "momentum" else 0.0
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=momentum, weight_decay=cfg.weight_decay, foreach=True)


def make_schedule(cfg: RunConfig, opt, total: int):
    """The lr schedule; with ``warmup_steps`` a linear warm-up (step s at (s+1)/W of the lr) first."""
    main = _main_schedule(cfg, opt, total)
    if not cfg.warmup_steps:
        return main
    warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda s, w=cfg.warmup_steps: min(1.0, (s + 1) / w))
    return warm if main is None else torch.optim.lr_scheduler.SequentialLR(opt, [warm, main], [cfg.warmup_steps])


def _main_schedule(cfg: RunConfig, opt, total: int):
    if cfg.schedule == "step":  # fractions of the run, so that runs of other lengths decay at the same point
        milestones = sorted({max(1, int(f * total)) for f in cfg.schedule_milestones})
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones, cfg.schedule_gamma)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    return None


def criterion_for(task: str, summed: bool = False):
    """The training loss: mean over the batch, or its sum (``loss_sum``); evaluation always reports the mean.
    Classification takes the classes on the last dim, so (…, T, classes) outputs with (…, T) targets
    (next-token prediction) average over every token."""
    base = F.mse_loss if task == "regression" else _cross_entropy
    if not summed:
        return base
    return lambda out, y, reduction="sum": base(out, y, reduction=reduction)


def _cross_entropy(out, y, reduction="mean"):
    return F.cross_entropy(out.flatten(0, -2), y.flatten(), reduction=reduction)


def total_steps(cfg: RunConfig, n_train: int) -> int:
    if cfg.epochs is not None:
        return max(1, math.ceil(cfg.epochs * (n_train // (cfg.batch_size * cfg.workers))))
    return cfg.steps


class _Sigterm:
    """Turns SIGTERM into a flag the loop checks after each step."""

    hit = False

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


@torch.no_grad()
def evaluate_model(forward, data: Dataset, criterion, chunk: int = 1024):
    """Per member: (mean test loss, accuracy) of ``forward(x) -> (R, n, outputs)``
    over the test set.  Regression: mean loss per output, accuracy 0.  Sequence targets
    (n, T): loss and accuracy per token."""
    n, regression = len(data.x_test), data.task == "regression"
    tokens = 1 if regression else data.y_test[0].numel()
    loss_sum = correct = 0
    for i in range(0, n, chunk):
        x, y = data.x_test[i:i + chunk], data.y_test[i:i + chunk]
        out = forward(x)
        per = criterion(out.flatten(0, 1), y.repeat(out.shape[0], *([1] * (y.dim() - 1))), reduction="none")
        per = per.reshape(out.shape[0], -1).sum(1)
        loss_sum = loss_sum + (per / out.shape[-1] if regression else per)
        if not regression:
            correct = correct + (out.argmax(-1) == y).flatten(1).sum(-1)
    return loss_sum / (n * tokens), torch.as_tensor(correct, dtype=torch.float64) / (n * tokens)


class Trainer:
    """The runs ``cfgs`` (identical but for lr and seed) trained together; ``run()``
    trains to the end, each member stopping at the eval point after it diverges."""

    def __init__(self, cfgs: list[RunConfig], data: Dataset, checkpoint: Path | None = None,
                 progress: Callable[[str], None] | None = None):
        c0 = cfgs[0]
        if any(c.structure() != c0.structure() for c in cfgs):
            raise ValueError("a pack's runs must agree in everything but lr and seed")
        self.cfgs, self.cfg, self.progress = cfgs, c0, progress
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.device = data.x_train.device
        self.models = []
        for cfg in cfgs:  # exactly the solo construction, member by member
            m = build_network(cfg, data.input_shape, data.num_outputs).to(self.device)
            seed_noise(m, cfg.seed)
            self.models.append(m)
        # bf16 convolutions are fast in NHWC only (cuDNN converts NCHW back and forth); CPU runs keep their layout
        if (c0.channels_last or (c0.bf16 and self.device.type == "cuda")) and len(data.input_shape) == 3:
            self.models[0] = self.models[0].to(memory_format=torch.channels_last)
            cl = lambda t: t.contiguous(memory_format=torch.channels_last)  # noqa: E731
            data = Dataset(data.name, cl(data.x_train), data.y_train, cl(data.x_test), data.y_test, data.task,
                           data.num_outputs)
        if 0 < c0.eval_examples < len(data.x_test):  # a smoke check: the first k test examples
            k = c0.eval_examples
            data = Dataset(data.name, data.x_train, data.y_train, data.x_test[:k], data.y_test[:k], data.task,
                           data.num_outputs)
        self.data = data
        batch = c0.batch_size * c0.workers
        self.total = total_steps(c0, len(data.x_train))
        for m in self.models:
            set_run_length(m, self.total)
            set_workers(m, c0.workers)  # the batch is W workers × N: each worker's slice normalized on its own
        if len(cfgs) == 1:
            self.net = Eager(self.models[0], torch.compile(self.models[0]) if c0.compile else None)
        else:
            self.net = Vectorized(self.models)
        self.opt = make_optimizer(c0, [{"params": list(m.parameters()), "lr": c.lr} for m, c in zip(self.models, cfgs)])
        self.sched = make_schedule(c0, self.opt, self.total)
        self.criterion = criterion_for(data.task, c0.loss_sum)  # what training (and the probes) minimize
        self.eval_criterion = criterion_for(data.task)
        self.classification = data.task == "classification"
        self.tokens = data.y_train[0].numel() if self.classification else 1  # targets per example
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=c0.bf16)
        self.batches = [BatchSchedule(len(data.x_train), batch, c.seed, self.device) for c in cfgs]
        chance = 1.0 / data.num_outputs if self.classification else float("nan")
        self.recs = [Recorder(c, self.batches[0].per_epoch, self.classification, chance,
                              collapse_level(chance, len(data.x_test))) for c in cfgs]
        R = len(cfgs)
        self.first_bad = torch.full((R,), -1, dtype=torch.long, device=self.device)
        self.active = [True] * R  # still recording (a diverged member stops at its eval point)
        self.stopped_at: list[int | None] = [None] * R
        self.step = 0
        self._reset_accumulators()
        self.probing = Probing(self) if c0.probes else None
        if self.checkpoint and self.checkpoint.exists():
            self._load_checkpoint()
        self.graph, self.eager_reason = GraphStep.plan(self)  # None: eager steps (always on the CPU), and why
        set_capturable(self.opt, self.graph is not None)  # after the checkpoint: its device may not be ours

    def _reset_accumulators(self):
        R = len(self.cfgs)
        if getattr(self, "loss_sum", None) is not None:  # in place: a captured step adds into these tensors
            self.loss_sum.zero_()
            self.correct.zero_()
        else:
            self.loss_sum = torch.zeros(R, device=self.device, dtype=getattr(torch, self.cfg.dtype))
            self.correct = torch.zeros(R, device=self.device, dtype=torch.long)
        self.seen = 0

    def say(self, msg: str):
        if self.progress:
            self.progress(msg)

    # -- the loop --------------------------------------------------------------

    def run(self) -> list[RunResult]:
        cfg = self.cfg
        t0, c0 = time.perf_counter(), time.process_time()
        for rec in self.recs:
            rec.start(t0, c0)
        last_ckpt = time.monotonic()
        if self.step == 0:
            self.evaluate()
        with _Sigterm() as term:
            while self.step < self.total and any(self.active):
                if self.probing and self.probing.due(self.step):
                    if self.graph is not None:  # eager on the live model; the next step replays again
                        self.graph.step(self, eager=lambda: self.probing.step(self, *self.batch()))
                    else:
                        self.probing.step(self, *self.batch())
                elif self.graph is not None:
                    self.graph.step(self)
                else:
                    self.train_step(*self.batch())
                self.step += 1
                if self.step % cfg.eval_every == 0 or self.step == self.total:
                    self.evaluate()
                if term.hit:
                    self.save_checkpoint()
                    raise Preempted(f"SIGTERM at step {self.step}; checkpoint {self.checkpoint}")
                if self.checkpoint and ((cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0)
                                        or time.monotonic() - last_ckpt > 60 * cfg.checkpoint_minutes):
                    self.save_checkpoint()
                    last_ckpt = time.monotonic()
        return self.results()

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's batch of every member: (R, W·N, ...)."""
        idx = [b(self.step)[1] for b in self.batches]
        if len(idx) == 1:
            return self.data.x_train[idx[0]].unsqueeze(0), self.data.y_train[idx[0]].unsqueeze(0)
        return torch.stack([self.data.x_train[i] for i in idx]), torch.stack([self.data.y_train[i] for i in idx])

    def train_step(self, x: torch.Tensor, y: torch.Tensor, keep_grad: bool = False):
        """One optimizer step of every member; with ``keep_grad`` (a solo run) return
        g = ∇L(W_t; B_t) by parameter name."""
        g = self.learn(x, y, self.step, keep_grad)
        if self.sched is not None:
            self.sched.step()
        self.seen += 1
        return g

    def learn(self, x: torch.Tensor, y: torch.Tensor, step: int | torch.Tensor, keep_grad: bool = False):
        """Forward, backward, optimizer step, divergence and train metrics: device work only, no
        host sync, state updated in place -- what a CUDA graph captures (graphstep.py)."""
        with self.autocast:
            out = self.net.train_forward(x)
        out = out.float() if self.cfg.bf16 else out
        if self.net.vectorized:
            per = self.criterion(out.flatten(0, 1), y.flatten(0, 1), reduction="none").reshape(len(self.cfgs), -1)
            loss = per.sum(1) if self.cfg.loss_sum else per.mean(1)
        else:
            loss = self.criterion(out[0], y[0]).reshape(1)
        self.opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        g = None
        if keep_grad:
            g = {k: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
                 for k, p in self.models[0].named_parameters()}
        for r, live in enumerate(self.active):
            if not live:  # a member that diverged stays where it stopped
                for p in self.models[r].parameters():
                    p.grad = None
            elif self.cfg.grad_clip:  # each run's own gradient norm, as if it trained alone
                torch.nn.utils.clip_grad_norm_(self.models[r].parameters(), self.cfg.grad_clip, foreach=True)
        self.opt.step()
        loss = loss.detach()
        bad = ~torch.isfinite(loss) | (loss > self.cfg.diverge_loss)
        self.first_bad.copy_(torch.where(bad & (self.first_bad < 0), step, self.first_bad))
        # recorded as the mean per sample (per output in regression), whatever the training loss sums
        self.loss_sum += loss / (out[0].numel() if self.data.task == "regression" else y[0].numel()) if self.cfg.loss_sum \
            else loss
        if self.classification:
            self.correct += (out.detach().argmax(-1) == y).flatten(1).sum(1)
        return g

    # -- evaluation --------------------------------------------------------------

    def evaluate(self) -> None:
        """Log train/test metrics of every active member; a member that diverged stops here."""
        self.net.eval()
        loss, acc = evaluate_model(self.net.eval_forward, self.data, self.eval_criterion)
        first_bad = self.first_bad.tolist()
        for r, rec in enumerate(self.recs):
            if not self.active[r]:
                continue
            rec.eval_point(self.step, self.seen, float(self.loss_sum[r]), float(self.correct[r]) / self.tokens,
                           float(loss[r]), float(acc[r]) if self.classification else None)
            if first_bad[r] >= 0:  # where a solo run stops
                self.active[r], self.stopped_at[r] = False, self.step
        self._reset_accumulators()
        live = [float(v) for v, a in zip(loss, self.active) if a and math.isfinite(float(v))]
        shown = (f"  acc {float(acc[0]):.3f}" if self.classification and len(self.cfgs) == 1 else "")
        self.say(f"step {self.step:>6}/{self.total}  test loss {(sum(live) / len(live)) if live else float('nan'):.4g}"
                 + shown + (f"  ({sum(self.active)}/{len(self.cfgs)} runs live)" if len(self.cfgs) > 1 else "")
                 + ("" if any(self.active) or len(self.cfgs) > 1 else "  DIVERGED"))

    def results(self) -> list[RunResult]:
        self.net.sync()
        first_bad = self.first_bad.tolist()
        n_params = count_params(self.models[0])
        out = []
        for r, rec in enumerate(self.recs):
            if len(self.recs) > 1:  # each member's share of the pack's time
                rec.share(len(self.recs))
            steps = self.stopped_at[r] if self.stopped_at[r] is not None else self.step
            out.append(rec.result(steps, first_bad[r], n_params, self.device))
        return out

    # -- checkpoints -------------------------------------------------------------

    def save_checkpoint(self) -> None:
        if not self.checkpoint:
            return
        state = {
            "runs": [c.identity() for c in self.cfgs], "step": self.step,
            "recorders": [r.state() for r in self.recs], "models": [m.state_dict() for m in self.models],
            "net": self.net.state(), "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict() if self.sched else None,
            "rng": [probes.rng_state(m) for m in self.models],
            "first_bad": self.first_bad.cpu(), "active": self.active, "stopped_at": self.stopped_at,
            "loss_sum": self.loss_sum.cpu(), "correct": self.correct.cpu(), "seen": self.seen,
        }
        with atomic_path(self.checkpoint) as tmp:
            torch.save(state, tmp)

    def _load_checkpoint(self) -> None:
        s = torch.load(self.checkpoint, map_location=self.device, weights_only=True)
        if s["runs"] != [c.identity() for c in self.cfgs]:
            self.say(f"checkpoint {self.checkpoint} is for other runs: starting afresh")
            return
        for m, sd in zip(self.models, s["models"]):
            m.load_state_dict(sd)
        self.net.load_state(s["net"])
        self.opt.load_state_dict(s["opt"])
        if self.sched and s["sched"]:
            self.sched.load_state_dict(s["sched"])
        for m, rng in zip(self.models, s["rng"]):
            for layer in noise_modules(m):  # noise layers draw lazily: make their generators exist first
                layer.ensure_generator(self.device)
            probes.set_rng_state(m, {**rng, "cpu": rng["cpu"].cpu(),
                                     "noise": [None if n is None else n.cpu() for n in rng["noise"]]})
        self.step = s["step"]
        for rec, st in zip(self.recs, s["recorders"]):
            rec.load_state(st)
        self.first_bad = s["first_bad"].to(self.device)
        self.active, self.stopped_at = s["active"], s["stopped_at"]
        self.loss_sum, self.correct, self.seen = s["loss_sum"].to(self.device), s["correct"].to(self.device), s["seen"]
        self.say(f"resumed from {self.checkpoint} at step {self.step}")
