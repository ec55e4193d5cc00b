"""Normalizer registry: one constructor signature for every norm (timm-style).

``create_norm(name, num_features, dim=2, **options)`` builds the layer that
follows a conv (``dim=2``, input N×C×H×W) or a linear layer (``dim=1``, input
N×C).  Weight-reparametrizing norms (``wn``, ``sn``) build an identity here
and act on the preceding layer through ``apply_to_weight`` instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .errors import ConfigError


# ----------------------------------------------------------------------------
# Custom layers (the ones torch does not ship)
# ----------------------------------------------------------------------------


def _reduce_dims(x: torch.Tensor) -> list[int]:
    """Every dim but the channel dim (1): batch and spatial positions."""
    return [0] + list(range(2, x.dim()))


def _per_channel(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, *([1] * (x.dim() - 2)))


class _RunningNorm(nn.Module):
    """Shared state of the batch-statistics layers below: affine + running stats."""

    def __init__(self, num_features: int, eps: float, momentum: float, affine: bool):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_scale", torch.ones(num_features))

    def _affine(self, y: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            return y
        return y * _per_channel(self.weight, y) + _per_channel(self.bias, y)

    @torch.no_grad()
    def _update(self, mean: torch.Tensor, scale: torch.Tensor) -> None:
        # torch BN's update rule, spelled with ops vmap batches (it has no rule for lerp_)
        self.running_mean.mul_(1 - self.momentum).add_(mean.detach(), alpha=self.momentum)
        self.running_scale.mul_(1 - self.momentum).add_(scale.detach(), alpha=self.momentum)


class LpBatchNorm(_RunningNorm):
    """ℓp batch norm (Santurkar et al. 2018, §3.3): subtract the batch mean and
    divide by the batch-average ℓp norm, ``(mean |x - μ|^p)^(1/p)`` per channel
    (``max |x - μ|`` for p = inf).  p = 2 is BatchNorm with the biased std."""

    def __init__(self, num_features, p: float = 2.0, eps=1e-5, momentum=0.1, affine=True):
        super().__init__(num_features, eps, momentum, affine)
        self.p = float(p)

    def forward(self, x):
        if self.training:
            dims = _reduce_dims(x)
            mean = x.mean(dims)
            xc = x - _per_channel(mean, x)
            if math.isinf(self.p):
                scale = xc.abs().amax(dims)
            else:
                scale = xc.abs().pow(self.p).mean(dims).pow(1.0 / self.p)
            self._update(mean, scale)
        else:
            mean, scale = self.running_mean, self.running_scale
            xc = x - _per_channel(mean, x)
        return self._affine(xc / (_per_channel(scale, x) + self.eps))


class BatchRenorm(_RunningNorm):
    """Batch Renormalization (Ioffe 2017): BN corrected towards the running
    statistics by r = clip(σ_B/σ, 1/r_max, r_max), d = clip((μ_B-μ)/σ, ±d_max),
    both treated as constants in the backward pass."""

    def __init__(self, num_features, r_max=3.0, d_max=5.0, eps=1e-5, momentum=0.01, affine=True):
        super().__init__(num_features, eps, momentum, affine)
        self.r_max, self.d_max = float(r_max), float(d_max)

    def forward(self, x):
        if self.training:
            dims = _reduce_dims(x)
            mean = x.mean(dims)
            std = (x.var(dims, unbiased=False) + self.eps).sqrt()
            with torch.no_grad():
                r = (std / self.running_scale).clamp(1 / self.r_max, self.r_max)
                d = ((mean - self.running_mean) / self.running_scale).clamp(-self.d_max, self.d_max)
            y = (x - _per_channel(mean, x)) / _per_channel(std, x)
            y = y * _per_channel(r, x) + _per_channel(d, x)
            self._update(mean, std)
        else:
            y = (x - _per_channel(self.running_mean, x)) / _per_channel(self.running_scale, x)
        return self._affine(y)


class BatchNoise(nn.Module):
    """Santurkar et al. 2018, Algorithm 1: time-varying, non-Gaussian noise
    injected after BN.  Per unit and step μ ~ U(-0.5, 0.5), σ ~ U(1, 1.25);
    per sample m ~ U(μ-0.1, μ+0.1), s ~ N(σ, 0.1); a ← s·a + m.  Training
    mode only.  Draws from its own generator so that probes and packs can save,
    restore and separate the noise stream exactly."""

    def __init__(self, num_features: int, seed: int = 0):
        super().__init__()
        self.num_features = num_features
        self.generator: torch.Generator | None = None
        self._seed = seed
        # Noise handed in from outside (a vectorized pack draws each member's noise
        # from that member's generator and passes it through functional_call).
        self.register_buffer("ext_s", None, persistent=False)
        self.register_buffer("ext_m", None, persistent=False)

    def _gen(self, device) -> torch.Generator:
        if self.generator is None or self.generator.device != torch.device(device):
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(self._seed)
        return self.generator

    def reseed(self, seed: int) -> None:
        self._seed, self.generator = seed, None

    def sample(self, n: int, device, dtype):
        g, c = self._gen(device), self.num_features
        u = lambda *shape: torch.rand(*shape, generator=g, device=device, dtype=dtype)  # noqa: E731
        mu = u(c) - 0.5
        sigma = 1.0 + 0.25 * u(c)
        m = mu + 0.2 * u(n, c) - 0.1
        s = sigma + 0.1 * torch.randn(n, c, generator=g, device=device, dtype=dtype)
        return s, m

    def forward(self, x):
        if not self.training or x.device.type == "meta":  # meta: a shape check, nothing to draw
            return x
        if self.ext_s is not None:
            s, m = self.ext_s, self.ext_m
        else:
            s, m = self.sample(x.shape[0], x.device, x.dtype)
        shape = (x.shape[0], self.num_features) + (1,) * (x.dim() - 2)
        return s.view(shape) * x + m.view(shape)


# ----------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class NormSpec:
    """A registry entry: how to build it and which options it takes."""

    build: Callable[..., nn.Module]
    options: dict[str, Any] = field(default_factory=dict)  # name -> default
    batch_dependent: bool = False  # uses batch statistics (sensitive to batch size)
    conv_only: bool = False  # needs spatial dims (instance norm)
    reparametrizes_weight: bool = False  # acts on the preceding layer's weight
    vmappable: bool = True  # torch.func.vmap can batch it (else a pack trains its runs one by one)
    description: str = ""


def _bn(c, dim, affine, eps, momentum):
    cls = nn.BatchNorm1d if dim == 1 else nn.BatchNorm2d
    return cls(c, eps=eps, momentum=momentum, affine=affine)


def _gn_groups(c: int, groups, channels_per_group) -> int:
    if channels_per_group:
        if c % channels_per_group:
            raise ConfigError(
                f"gn: channels_per_group={channels_per_group} does not divide a layer of {c} channels"
            )
        return c // channels_per_group
    groups = min(groups, c)
    if c % groups:
        raise ConfigError(f"gn: groups={groups} does not divide a layer of {c} channels")
    return groups


NORMS: dict[str, NormSpec] = {
    "none": NormSpec(lambda c, dim: nn.Identity(), description="no normalization"),
    "bn": NormSpec(
        _bn, {"affine": True, "eps": 1e-5, "momentum": 0.1}, batch_dependent=True,
        description="batch norm (Ioffe & Szegedy 2015)",
    ),
    "ln": NormSpec(
        # LN over (C, H, W) with per-channel affine, as in the GN paper (GN with one group).
        lambda c, dim, eps, affine: nn.LayerNorm(c, eps=eps, elementwise_affine=affine)
        if dim == 1 else nn.GroupNorm(1, c, eps=eps, affine=affine),
        {"eps": 1e-5, "affine": True}, description="layer norm",
    ),
    "in": NormSpec(
        lambda c, dim, eps, affine: nn.InstanceNorm2d(c, eps=eps, affine=affine),
        {"eps": 1e-5, "affine": True}, conv_only=True, description="instance norm",
    ),
    "gn": NormSpec(
        lambda c, dim, groups, channels_per_group, eps, affine: nn.GroupNorm(
            _gn_groups(c, groups, channels_per_group), c, eps=eps, affine=affine),
        {"groups": 32, "channels_per_group": None, "eps": 1e-5, "affine": True},
        description="group norm (Wu & He 2018); groups is capped at the channel count",
    ),
    "wn": NormSpec(lambda c, dim: nn.Identity(), reparametrizes_weight=True,
                   description="weight normalization of the preceding conv/linear"),
    "sn": NormSpec(lambda c, dim, n_power_iterations: nn.Identity(), {"n_power_iterations": 1},
                   reparametrizes_weight=True, vmappable=False,  # its power iteration uses out= ops
                   description="spectral normalization of weights"),
    "brn": NormSpec(
        lambda c, dim, r_max, d_max, eps, momentum, affine: BatchRenorm(
            c, r_max=r_max, d_max=d_max, eps=eps, momentum=momentum, affine=affine),
        {"r_max": 3.0, "d_max": 5.0, "eps": 1e-5, "momentum": 0.01, "affine": True},
        batch_dependent=True, description="batch renormalization",
    ),
    "noisy_bn": NormSpec(
        lambda c, dim, affine, eps, momentum: nn.Sequential(
            _bn(c, dim, affine, eps, momentum), BatchNoise(c)),
        {"affine": True, "eps": 1e-5, "momentum": 0.1}, batch_dependent=True,
        description="BN followed by Santurkar's Algorithm 1 noise",
    ),
    "lp_bn": NormSpec(
        lambda c, dim, p, affine, eps, momentum: LpBatchNorm(
            c, p=_parse_p(p), eps=eps, momentum=momentum, affine=affine),
        {"p": 2, "affine": True, "eps": 1e-5, "momentum": 0.1}, batch_dependent=True,
        description="ℓp batch norm, p in {1, 2, inf}",
    ),
}

LP_CHOICES = ("1", "2", "inf")


def _parse_p(p) -> float:
    text = str(p).strip().lower()
    text = {"1.0": "1", "2.0": "2", "infinity": "inf", "∞": "inf"}.get(text, text)
    if text not in LP_CHOICES:
        raise ConfigError(f"lp_bn: p={p!r} is not one of {', '.join(LP_CHOICES)}")
    return float(text)


def norm_spec(name: str) -> NormSpec:
    try:
        return NORMS[name]
    except KeyError:
        raise ConfigError(
            f"norm type {name!r} is unknown; valid: {', '.join(sorted(NORMS))}"
        ) from None


def resolve_options(name: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults merged with ``options``; unknown option names are an error."""
    spec = norm_spec(name)
    options = dict(options or {})
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        allowed = ", ".join(sorted(spec.options)) or "none"
        raise ConfigError(f"norm {name!r}: unknown option(s) {', '.join(unknown)}; allowed: {allowed}")
    if name == "lp_bn":
        _parse_p(options.get("p", 2))
    return {**spec.options, **options}


def create_norm(name: str, num_features: int, dim: int = 2, **options) -> nn.Module:
    """Build normalizer ``name`` for ``num_features`` channels (timm-style factory)."""
    spec = norm_spec(name)
    if spec.conv_only and dim != 2:
        raise ConfigError(f"norm {name!r} needs spatial feature maps and cannot follow a linear layer")
    return spec.build(num_features, dim, **resolve_options(name, options))


def apply_to_weight(name: str, layer: nn.Module, **options) -> nn.Module:
    """Weight-reparametrizing norms act on the preceding conv/linear layer."""
    opts = resolve_options(name, options)
    if name == "wn":
        return nn.utils.parametrizations.weight_norm(layer, name="weight", dim=0)
    if name == "sn":
        return nn.utils.parametrizations.spectral_norm(
            layer, name="weight", n_power_iterations=opts["n_power_iterations"])
    return layer


def noise_modules(model: nn.Module) -> list[BatchNoise]:
    return [m for m in model.modules() if isinstance(m, BatchNoise)]


def seed_noise(model: nn.Module, seed: int) -> None:
    """Give every noise layer of a model its own reproducible stream."""
    for i, m in enumerate(noise_modules(model)):
        m.reseed(seed * 1_000_003 + i)


__all__ = ["NORMS", "NormSpec", "ConfigError", "create_norm", "apply_to_weight", "norm_spec",
           "resolve_options", "BatchNoise", "BatchRenorm", "LpBatchNorm", "seed_noise",
           "noise_modules"]
