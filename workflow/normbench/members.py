"""How a pack's members compute: one eager model, or R models vectorized with
torch.func.  The training loop (``train.Trainer``) is the same for both; only the
forward pass and where buffers live differ.

Vectorized: each member's parameters stay its own leaf tensors (so one
torch.optim optimizer with a parameter group per member applies each member's
learning rate) and are stacked for the forward pass; buffers (BN running
statistics, per member) live stacked here; ``noisy_bn`` noise is drawn from each
member's own generators in the solo order and passed in.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from .layers import noise_modules


class Eager:
    """One model, called as it is (a solo run; probes need this path)."""

    vectorized = False

    def __init__(self, model: nn.Module, forward=None):
        self.models = [model]
        self.forward = forward or model  # the training forward (possibly compiled)

    def train_forward(self, x: torch.Tensor) -> torch.Tensor:
        model = self.models[0]
        if not model.training:  # train() walks every module: only switch back after an eval
            model.train()
        return self.forward(x[0]).unsqueeze(0)

    def eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.models[0](x).unsqueeze(0)

    def eval(self) -> None:
        self.models[0].eval()

    def state(self) -> dict:
        return {}

    def load_state(self, s: dict) -> None:
        pass

    def sync(self) -> None:
        pass


class Vectorized:
    vectorized = True

    def __init__(self, models: list[nn.Module]):
        self.models = models
        self.base = copy.deepcopy(models[0]).to("meta")
        self.names = [n for n, _ in models[0].named_parameters()]
        self.plist = [list(m.parameters()) for m in models]
        self.buffers = stack_module_state(models)[1]
        self.noise = [noise_modules(m) for m in models]
        self.noise_names = [n for n, mod in models[0].named_modules() if mod in set(self.noise[0])]

    def params(self) -> dict[str, torch.Tensor]:
        return {k: torch.stack(ps) for k, ps in zip(self.names, zip(*self.plist))}

    def _noise(self, n: int, like: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each member's noise for this step, drawn from its own generators in solo order."""
        out = {}
        for j, name in enumerate(self.noise_names):
            draws = [self.noise[r][j].sample(n, like.device, like.dtype) for r in range(len(self.models))]
            out[f"{name}.ext_s"] = torch.stack([d[0] for d in draws])
            out[f"{name}.ext_m"] = torch.stack([d[1] for d in draws])
        return out

    def _call(self, p, b, x):
        return functional_call(self.base, (p, b), (x,))

    def train_forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (R, B, ...) -> outputs (R, B, ...)."""
        if not self.base.training:
            self.base.train()
        buffers = {**self.buffers, **self._noise(x.shape[1], x)} if self.noise_names else self.buffers
        return vmap(self._call)(self.params(), buffers, x)

    def eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return vmap(self._call, in_dims=(0, 0, None))(self.params(), self.buffers, x)

    def eval(self) -> None:
        self.base.eval()

    def sync(self) -> None:
        """Copy each member's buffers into its model."""
        with torch.no_grad():
            for r, m in enumerate(self.models):
                for k, v in m.named_buffers():
                    if k in self.buffers:
                        v.copy_(self.buffers[k][r])

    def state(self) -> dict:
        return {"buffers": self.buffers}

    def load_state(self, s: dict) -> None:
        with torch.no_grad():
            for k, v in s["buffers"].items():
                self.buffers[k].copy_(v)
