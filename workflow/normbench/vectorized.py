"""Runs of identical structure trained as one vectorized model (torch.func).

Members differ in learning rate and seed.  Each is initialised exactly as its
solo twin (same seed, same builder), then their parameters and buffers are
stacked (``stack_module_state``) and one ``vmap``-ed ``functional_call``
trains all at once: per-member batches (their own seeded order), per-member
learning rates, per-member BN running statistics (batched buffers updated in
place), per-member ``noisy_bn`` noise (drawn from each member's own generators
in the solo order and passed in), per-member divergence (a diverged member is
frozen and stops recording at the eval point where a solo run would stop).

Results equal the solo runs up to floating-point reassociation in the batched
kernels: see ``PACK_TOLERANCE`` and tests/test_vectorized.py.
"""

from __future__ import annotations

import copy
import time
from typing import Callable

import torch
from torch.func import functional_call, stack_module_state, vmap

from .config import RunConfig
from .data import BatchSchedule, Dataset
from .models import NormAct, build_model, count_params
from .norms import noise_modules, norm_spec, seed_noise
from .train import (RunResult, Recorder, _Sigterm, Preempted, criterion_for, evaluate_model, make_schedule,
                    total_steps)

# Documented agreement with solo runs (float32, CPU), checked by the tests: over
# the first 20 steps every logged loss and accuracy and the BN running statistics
# agree within this tolerance.  Bitwise equality is not promised: batched kernels
# sum in another order, and -- exactly as when a solo run changes its thread
# count -- rounding differences then grow with training at large learning rates.
PACK_TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}

# Settings that must agree for runs to share one vectorized model.
STRUCTURE = ("model_kind", "model_options", "dataset", "norm_kind", "norm_options", "placement", "activation",
             "init", "batch_size", "optimizer", "momentum", "weight_decay", "schedule", "schedule_step_every",
             "schedule_gamma", "steps", "epochs", "eval_every", "diverge_loss", "device", "data_dir", "runner")


def structure_key(cfg: RunConfig) -> tuple:
    return tuple(repr(getattr(cfg, k)) for k in STRUCTURE)


def vectorizable(cfg: RunConfig) -> bool:
    """Probes need the solo loop (they reach into one model); Adam's state, the
    speed options (channels_last, bf16, compile) and norms vmap cannot batch
    (spectral norm) are not vectorized here."""
    return (cfg.runner == "network" and not cfg.probes and cfg.optimizer in ("sgd", "momentum")
            and not (cfg.channels_last or cfg.bf16 or cfg.compile) and norm_spec(cfg.norm_kind).vmappable)


class VectorTrainer:
    def __init__(self, cfgs: list[RunConfig], data: Dataset, progress: Callable[[str], None] | None = None):
        self.cfgs, self.data, self.progress = cfgs, data, progress
        self.device = data.x_train.device
        c0 = cfgs[0]
        models = []
        for cfg in cfgs:  # exactly the solo construction, member by member
            torch.manual_seed(cfg.seed)
            na = NormAct(cfg.norm_kind, cfg.norm_options, cfg.activation, cfg.placement, cfg.init)
            m = build_model(cfg.model_kind, data.input_shape, data.num_outputs, na, cfg.model_options).to(self.device)
            seed_noise(m, cfg.seed)
            models.append(m)
        self.noise = [noise_modules(m) for m in models]  # member -> its noise layers (own generators)
        self.noise_names = [n for n, mod in models[0].named_modules() if mod in set(self.noise[0])]
        self.num_params = count_params(models[0])
        self.base = copy.deepcopy(models[0]).to("meta")
        params, self.buffers = stack_module_state(models)
        self.params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        self.momentum_buf: dict[str, torch.Tensor] = {}
        R = len(cfgs)
        self.lr0 = torch.tensor([c.lr for c in cfgs], device=self.device)
        self.total = total_steps(c0, len(data.x_train))
        # the schedule's factor, from torch's own scheduler on a unit learning rate
        self._unit = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        self.sched = make_schedule(c0, self._unit, self.total)
        self.criterion = criterion_for(data.task)
        self.batches = [BatchSchedule(len(data.x_train), c.batch_size, c.seed, self.device) for c in cfgs]
        self.recs = [Recorder(c, self.batches[0].per_epoch, data.task == "classification") for c in cfgs]
        self.first_bad = torch.full((R,), -1, dtype=torch.long, device=self.device)
        self.active = [True] * R  # still recording (a diverged member stops at its eval point)
        self.stopped_at = [None] * R
        self.frozen = torch.zeros(R, dtype=torch.bool, device=self.device)
        self.loss_sum = torch.zeros(R, device=self.device)
        self.correct = torch.zeros(R, device=self.device, dtype=torch.long)
        self.seen = 0
        self.step = 0

    # -- vectorized forward --------------------------------------------------------

    def _forward(self, params, buffers, x, in_dims_x=0):
        def one(p, b, xx):
            return functional_call(self.base, (p, b), (xx,))

        return vmap(one, in_dims=(0, 0, in_dims_x))(params, buffers, x)

    def _noise_buffers(self, n: int) -> dict[str, torch.Tensor]:
        """Each member's noise for this step, drawn from its own generators in solo order."""
        out = {}
        for j, name in enumerate(self.noise_names):
            draws = [self.noise[r][j].sample(n, self.device, torch.float32) for r in range(len(self.cfgs))]
            out[f"{name}.ext_s"] = torch.stack([d[0] for d in draws])
            out[f"{name}.ext_m"] = torch.stack([d[1] for d in draws])
        return out

    def train_step(self):
        c0 = self.cfgs[0]
        idx = [b(self.step)[1] for b in self.batches]
        x = torch.stack([self.data.x_train[i] for i in idx])
        y = torch.stack([self.data.y_train[i] for i in idx])
        if not self.base.training:  # train() walks every module: only switch back after an eval
            self.base.train()
        buffers = {**self.buffers, **self._noise_buffers(c0.batch_size)} if self.noise_names else self.buffers
        out = self._forward(self.params, buffers, x)
        per = self.criterion(out.flatten(0, 1), y.flatten(0, 1), reduction="none")
        loss = per.reshape(len(self.cfgs), -1).mean(1)
        grads = torch.autograd.grad(loss.sum(), list(self.params.values()))
        factor = self._unit.param_groups[0]["lr"]
        with torch.no_grad():
            for (k, p), g in zip(self.params.items(), grads):
                if c0.weight_decay:
                    g = g.add(p, alpha=c0.weight_decay)
                if c0.optimizer == "momentum":
                    buf = self.momentum_buf.get(k)
                    buf = g.clone() if buf is None else buf.mul_(c0.momentum).add_(g)
                    self.momentum_buf[k] = buf
                    g = buf
                lr = (self.lr0 * factor).view(-1, *([1] * (p.dim() - 1)))
                step = torch.where(self.frozen.view(-1, *([1] * (p.dim() - 1))), 0.0, lr * g)
                p.sub_(step)
        if self.sched is not None:
            self._unit.step()  # no gradients: a no-op that keeps the scheduler's call order
            self.sched.step()
        loss = loss.detach()
        bad = ~torch.isfinite(loss) | (loss > c0.diverge_loss)
        self.first_bad = torch.where(bad & (self.first_bad < 0), self.step, self.first_bad)
        self.loss_sum += torch.where(self.frozen, 0.0, loss)
        if self.data.task == "classification":
            self.correct += (out.detach().argmax(-1) == y).sum(1)
        self.seen += 1

    def evaluate(self):
        self.base.eval()
        loss, acc = evaluate_model(lambda x: self._forward(self.params, self.buffers, x, None), self.data,
                                   self.criterion, members=True)
        classification = self.data.task == "classification"
        first_bad = self.first_bad.tolist()
        for r, rec in enumerate(self.recs):
            if not self.active[r]:
                continue
            rec.eval_point(self.step, self.seen, float(self.loss_sum[r]), float(self.correct[r]), float(loss[r]),
                           float(acc[r]) if classification else None)
            if first_bad[r] >= 0:  # where a solo run would stop
                self.active[r], self.stopped_at[r] = False, self.step
                self.frozen[r] = True
        self.loss_sum.zero_()
        self.correct.zero_()
        self.seen = 0
        if self.progress:
            live = sum(self.active)
            self.progress(f"step {self.step:>6}/{self.total}  {len(self.cfgs)} runs, {live} live, mean test loss "
                          f"{float(loss[torch.isfinite(loss)].mean()) if torch.isfinite(loss).any() else float('nan'):.4g}")

    def run(self) -> list[RunResult]:
        t0 = time.perf_counter()
        for rec in self.recs:
            rec.t0 = t0
        self.evaluate()
        with _Sigterm() as term:
            while self.step < self.total and any(self.active):
                self.train_step()
                self.step += 1
                if self.step % self.cfgs[0].eval_every == 0 or self.step == self.total:
                    self.evaluate()
                if term.hit:  # a vectorized pack restarts from scratch (deterministically) when requeued
                    raise Preempted(f"SIGTERM at step {self.step} of a vectorized pack")
        first_bad = self.first_bad.tolist()
        wall = time.perf_counter() - t0
        out = []
        for r, rec in enumerate(self.recs):
            rec.elapsed, rec.t0 = wall / len(self.recs), time.perf_counter()  # each member's share of the time
            steps = self.stopped_at[r] if self.stopped_at[r] is not None else self.step
            out.append(rec.result(steps, first_bad[r], self.num_params, self.device))
        return out
