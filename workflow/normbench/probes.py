"""Optimization-landscape measurements (Santurkar et al. 2018; Bjorck et al. 2018).

Definitions, on a fixed batch B_t with g = ∇L(W_t; B_t):

* landscape:   L(W_t − η g; B_t) for η on a grid (× lr); min and max over η.
* grad_pred:   ‖∇L(W_t − η g; B_t) − g‖₂ over the same grid; min and max.
* beta_eff:    max_η ‖∇L(W_t − η g) − g‖₂ / (η ‖g‖₂)   (divided by the step!).
* ICS, layer i: G = ∇_{W_i} L(W^t), G' = ∇_{W_i} L(W^{t+1}_{<i}, W^t_{≥i}), both on
  B_t, W^{t+1} the parameters after the *actual* optimizer update; ‖G − G'‖₂ and
  cos(G, G').
* rel_loss:    L(W − α g; B) / L(W; B) for α on a log grid.
* grad_norm:   ‖∂L/∂W‖₂ of each conv/linear layer's weight for g itself (Xiong et al.
  2020, Fig. 3: by layer index, at initialization and early in training).

The pure functions take ``loss_fn(params) -> scalar`` over a dict of named
tensors, so they apply equally to a network (via ``FunctionalLoss``) and to an
analytic quadratic.  ``FunctionalLoss`` evaluates the network without touching
its state: parameters are passed, not assigned; BN running statistics are
evaluated on copies; every RNG (torch's and the noise layers') is rewound to the
same state before each evaluation so all points of a line search see the same
noise, and restored afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.func import functional_call

from .layers import noise_modules
from .models import block_outputs, probe_layers

Params = dict[str, torch.Tensor]
LossFn = Callable[[Params], torch.Tensor]


# ----------------------------------------------------------------------------
# Pure functions
# ----------------------------------------------------------------------------


def grad(loss_fn: LossFn, params: Params) -> tuple[torch.Tensor, Params]:
    p = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    loss = loss_fn(p)
    gs = torch.autograd.grad(loss, list(p.values()), allow_unused=True)
    return loss.detach(), {k: (torch.zeros_like(v) if g is None else g) for (k, v), g in zip(p.items(), gs)}


# foreach kernels: one call per parameter list, not per tensor (per-tensor ops
# made this bookkeeping a quarter of a line search's time on the default VGG)
def _norm(d: Params) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(list(d.values()))).double())


def _sub(a: Params, b: Params) -> Params:
    return dict(zip(a, torch._foreach_sub([a[k] for k in a], [b[k] for k in a])))


def _step(params: Params, g: Params, eta: float) -> Params:
    return dict(zip(params, torch._foreach_add([v.detach() for v in params.values()], [g[k] for k in params],
                                               alpha=-eta)))


@dataclass
class LineSearch:
    etas: list[float]
    losses: list[float]  # L(W − η g)
    grad_diffs: list[float]  # ‖∇L(W − η g) − g‖
    grad_norm: float  # ‖g‖

    @property
    def beta_eff(self) -> float:
        """max_η ‖∇L(W − ηg) − g‖ / (η ‖g‖): the smoothness seen along the step."""
        if self.grad_norm == 0:
            return 0.0
        return max(d / (eta * self.grad_norm) for eta, d in zip(self.etas, self.grad_diffs))


def line_search(loss_fn: LossFn, params: Params, etas: Sequence[float],
                g: Params | None = None) -> LineSearch:
    """Loss and gradient change along −g at each η (g computed here unless given)."""
    if g is None:
        _, g = grad(loss_fn, params)
    losses, diffs = [], []
    for eta in etas:
        loss, g_eta = grad(loss_fn, _step(params, g, eta))
        losses.append(float(loss))
        diffs.append(float(_norm(_sub(g_eta, g))))
    return LineSearch(list(map(float, etas)), losses, diffs, float(_norm(g)))


def grad_norms(model: nn.Module, g: Params) -> dict[str, float]:
    """‖g‖₂ of each conv/linear layer's weight (biases aside), by layer name in forward order."""
    out = {}
    for lname, mod in probe_layers(model).items():
        names = [f"{lname}.{n}" for n, _ in mod.named_parameters() if not n.endswith("bias")]
        if names:
            out[lname] = float(_norm({n: g[n] for n in names}))
    return out


def relative_loss(loss_fn: LossFn, params: Params, alphas: Iterable[float],
                  g: Params | None = None) -> list[float]:
    """Bjorck et al.: L(W − α g) / L(W) for each α (g computed here unless given)."""
    if g is None:
        with torch.enable_grad():
            _, g = grad(loss_fn, params)
    with torch.no_grad():
        base = loss_fn({k: v.detach() for k, v in params.items()})
        return [float(loss_fn(_step(params, g, a)) / base) for a in alphas]


def ics(loss_fn: LossFn, before: Params, after: Params, layers: Sequence[Sequence[str]],
        order: Sequence[str], g_before: Params | None = None) -> dict[int, tuple[float, float]]:
    """ICS per layer (index into ``layers``): (‖G − G'‖₂, cos(G, G')).

    ``layers[i]`` are the parameter names of layer i; ``order`` is every
    parameter name in forward order, which defines W_{<i}: all parameters that
    come before layer i's first parameter."""
    if g_before is None:
        _, g_before = grad(loss_fn, before)
    out = {}
    for i, names in enumerate(layers):
        first = min(order.index(n) for n in names)
        earlier = set(order[:first])
        mixed = {k: (after[k] if k in earlier else before[k]) for k in before}
        _, g_mixed = grad(loss_fn, mixed)
        G = torch.cat([g_before[n].flatten() for n in names]).double()
        Gp = torch.cat([g_mixed[n].flatten() for n in names]).double()
        l2 = float(torch.linalg.vector_norm(G - Gp))
        denom = float(torch.linalg.vector_norm(G) * torch.linalg.vector_norm(Gp))
        cos = float(G @ Gp) / denom if denom > 0 else float("nan")
        out[i] = (l2, cos)
    return out


# ----------------------------------------------------------------------------
# Networks, without side effects
# ----------------------------------------------------------------------------


def rng_state(model: nn.Module) -> dict:
    state = {"cpu": torch.get_rng_state(), "noise": [m.generator.get_state() if m.generator is not None else None
                                                      for m in noise_modules(model)]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(model: nn.Module, state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
    for m, s in zip(noise_modules(model), state["noise"]):
        if s is None:
            m.generator = None  # not drawn from yet: it will be re-created from its seed
        else:
            m.generator.set_state(s)


class FunctionalLoss:
    """``L(params; B)`` of a network in training mode (batch statistics, noise),
    leaving the network, its buffers and every RNG exactly as they were."""

    def __init__(self, model: nn.Module, criterion, x: torch.Tensor, y: torch.Tensor, rng: dict | None = None):
        self.model, self.criterion, self.x, self.y = model, criterion, x, y
        self.buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
        self.rng = rng if rng is not None else rng_state(model)
        self.hooks: list = []

    def params(self) -> Params:
        """A copy of W_t: the optimizer's in-place step must not move it."""
        return {k: v.detach().clone() for k, v in model_params(self.model).items()}

    def __call__(self, params: Params) -> torch.Tensor:
        after, was_training = rng_state(self.model), self.model.training
        set_rng_state(self.model, self.rng)  # every evaluation sees the same noise
        if not was_training:  # the training loss: batch statistics, noise on
            self.model.train()
        try:
            buffers = {k: v.clone() for k, v in self.buffers.items()}  # BN running stats untouched
            out = functional_call(self.model, {**params, **buffers}, (self.x,))
            return self.criterion(out, self.y)
        finally:
            if not was_training:
                self.model.eval()
            set_rng_state(self.model, after)


def model_params(model: nn.Module) -> Params:
    return dict(model.named_parameters())


def layer_groups(model: nn.Module, max_layers: int) -> tuple[list[str], list[list[str]]]:
    """(names of the probed conv/linear layers, their parameter names), at most
    ``max_layers`` spread evenly from first to last."""
    # The first layer has no earlier layers, so its ICS is zero by definition: skip it.
    layers = list(probe_layers(model).items())[1:]
    if max_layers and len(layers) > max_layers:
        idx = torch.linspace(0, len(layers) - 1, max_layers).round().long().unique().tolist()
        layers = [layers[i] for i in idx]
    names, groups = [], []
    for lname, mod in layers:
        ps = [f"{lname}.{n}" for n, _ in mod.named_parameters()]
        if ps:
            names.append(lname)
            groups.append(ps)
    return names, groups


@torch.no_grad()
def activation_stats(loss: FunctionalLoss, params: Params) -> dict[str, tuple[float, float]]:
    """Mean and std of every block's output on the probe batch."""
    stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []
    for name, m in block_outputs(loss.model).items():
        def hook(_m, _inp, out, name=name):
            stats[name] = (out.mean(), out.std())
        handles.append(m.register_forward_hook(hook))
    try:
        loss(params)
    finally:
        for h in handles:
            h.remove()
    return {k: (float(m), float(s)) for k, (m, s) in stats.items()}
