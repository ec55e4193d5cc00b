"""Probes inside a solo run's training step (Santurkar 2018, Bjorck 2018).

The real optimizer step on B_t -- its gradient is the probes' g -- then the
measurements on the same batch, from copies of W_t and W_{t+1}, with the RNG
and BN statistics as they were at step t: training is left bit-identical."""

from __future__ import annotations

import time

import torch

from . import probes


class Probing:
    def __init__(self, trainer):
        if len(trainer.cfgs) != 1 or trainer.cfg.workers != 1:
            raise ValueError("probes measure one run's own training step: train probed runs solo")
        self.t, self.cfg, self.model = trainer, trainer.cfg, trainer.models[0]
        self.rec = trainer.recs[0]
        self.layer_names, self.layer_groups = probes.layer_groups(self.model, self.cfg.probe_layers)
        self.param_order = list(probes.model_params(self.model))

    def periodic(self, step: int) -> bool:
        return (bool(self.cfg.probe_every) and step % self.cfg.probe_every == 0) or step in self.cfg.probe_at

    def early(self, step: int) -> bool:
        return "rel_loss" in self.cfg.probes and step < self.cfg.rel_loss_steps

    def due(self, step: int) -> bool:
        return self.periodic(step) or self.early(step)

    def _row(self, metric, value, layer=None, step_size=None):
        self.rec.row(self.t.step, "probe", metric, value, layer, step_size)

    def step(self, x, y) -> None:
        cfg, probed = self.cfg, self.cfg.probes
        loss_fn = probes.FunctionalLoss(self.model, self.t.criterion, x[0], y[0])  # state at step t
        before = loss_fn.params()
        exact = not (cfg.bf16 or cfg.compile)  # else the step's gradient is not the fp32 eager one
        g = self.t.train_step(x, y, keep_grad=exact)
        t0 = time.perf_counter()
        step, periodic = self.t.step, self.periodic(self.t.step)
        with torch.enable_grad():
            if g is None:
                _, g = probes.grad(loss_fn, before)
            if periodic and ("landscape" in probed or "ics" in probed):
                # L(W_t; B_t): where the net stands when probed, to compare nets at equal loss
                with torch.no_grad():
                    self._row("probe_loss", loss_fn(before))
            if periodic and "landscape" in probed:
                ls = probes.line_search(loss_fn, before, [e * cfg.lr for e in cfg.landscape_etas], g)
                for name, v in (("landscape_min", min(ls.losses)), ("landscape_max", max(ls.losses)),
                                ("grad_pred_min", min(ls.grad_diffs)), ("grad_pred_max", max(ls.grad_diffs)),
                                ("beta_eff", ls.beta_eff)):
                    self._row(name, v)
            if periodic and "ics" in probed:
                after = {k: v.detach() for k, v in probes.model_params(self.model).items()}
                res = probes.ics(loss_fn, before, after, self.layer_groups, self.param_order, g)
                for i, (l2, cos) in res.items():
                    self._row("ics_l2", l2, layer=self.layer_names[i])
                    self._row("ics_cos", cos, layer=self.layer_names[i])
        if periodic and "grad_norm" in probed:
            for layer, v in probes.grad_norms(self.model, g).items():
                self._row("grad_norm", v, layer=layer)
        if self.early(step):
            for a, v in zip(cfg.rel_loss_alphas, probes.relative_loss(loss_fn, before, cfg.rel_loss_alphas, g)):
                self._row("rel_loss", v, step_size=a)
        if periodic and "act_stats" in probed:
            for layer, (m, s) in probes.activation_stats(loss_fn, before).items():
                self._row("act_mean", m, layer=layer)
                self._row("act_std", s, layer=layer)
        self.rec.probe_time += time.perf_counter() - t0
