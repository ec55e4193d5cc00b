"""Probes inside a solo run's training step (Santurkar 2018, Bjorck 2018).

The real optimizer step on B_t -- its gradient is the probes' g -- then the
measurements on the same batch, from copies of W_t and W_{t+1}, with the RNG
and BN statistics as they were at step t: training is left bit-identical."""

from __future__ import annotations

import time

import torch

from . import probes


class Probing:
    """A solo trainer's probes; it holds no reference to the trainer (which holds it), so that a finished
    run is freed as soon as it is dropped."""

    def __init__(self, trainer):
        if len(trainer.cfgs) != 1 or trainer.cfg.workers != 1:
            raise ValueError("probes measure one run's own training step: train probed runs solo")
        self.cfg, self.model = trainer.cfg, trainer.models[0]
        self.rec = trainer.recs[0]
        self.layer_names, self.layer_groups = probes.layer_groups(self.model, self.cfg.probe_layers)
        self.param_order = list(probes.model_params(self.model))

    def periodic(self, step: int) -> bool:
        return (bool(self.cfg.probe_every) and step % self.cfg.probe_every == 0) or step in self.cfg.probe_at

    def early(self, step: int) -> bool:
        return "rel_loss" in self.cfg.probes and step < self.cfg.rel_loss_steps

    def due(self, step: int) -> bool:
        return self.periodic(step) or self.early(step)

    def _row(self, step, metric, value, layer=None, step_size=None):
        self.rec.row(step, "probe", metric, value, layer, step_size)

    def step(self, t, x, y) -> None:
        """Trainer ``t``'s training step on (x, y), probed."""
        cfg, probed = self.cfg, self.cfg.probes
        loss_fn = probes.FunctionalLoss(self.model, t.criterion, x[0], y[0])  # state at step t
        before = loss_fn.params()
        exact = not (cfg.bf16 or cfg.compile)  # else the step's gradient is not the fp32 eager one
        g = t.train_step(x, y, keep_grad=exact)
        t0 = time.perf_counter()
        step, periodic = t.step, self.periodic(t.step)
        with torch.enable_grad():
            if g is None:
                _, g = probes.grad(loss_fn, before)
            if periodic and ("landscape" in probed or "ics" in probed):
                # L(W_t; B_t): where the net stands when probed, to compare nets at equal loss
                with torch.no_grad():
                    self._row(step, "probe_loss", loss_fn(before))
            if periodic and "landscape" in probed:
                ls = probes.line_search(loss_fn, before, [e * cfg.lr for e in cfg.landscape_etas], g)
                for name, v in (("landscape_min", min(ls.losses)), ("landscape_max", max(ls.losses)),
                                ("grad_pred_min", min(ls.grad_diffs)), ("grad_pred_max", max(ls.grad_diffs)),
                                ("beta_eff", ls.beta_eff)):
                    self._row(step, name, v)
            if periodic and "ics" in probed:
                after = {k: v.detach() for k, v in probes.model_params(self.model).items()}
                res = probes.ics(loss_fn, before, after, self.layer_groups, self.param_order, g)
                for i, (l2, cos) in res.items():
                    self._row(step, "ics_l2", l2, layer=self.layer_names[i])
                    self._row(step, "ics_cos", cos, layer=self.layer_names[i])
        if periodic and "grad_norm" in probed:
            for layer, v in probes.grad_norms(self.model, g).items():
                self._row(step, "grad_norm", v, layer=layer)
        if self.early(step):
            for a, v in zip(cfg.rel_loss_alphas, probes.relative_loss(loss_fn, before, cfg.rel_loss_alphas, g)):
                self._row(step, "rel_loss", v, step_size=a)
        if periodic and "act_stats" in probed:
            for layer, (m, s) in probes.activation_stats(loss_fn, before).items():
                self._row(step, "act_mean", m, layer=layer)
                self._row(step, "act_std", s, layer=layer)
        self.rec.probe_time += time.perf_counter() - t0
