"""Normalizer registry: one constructor signature for every norm (timm-style).

``create_norm(name, num_features, dim=2, **options)`` builds the layer that
follows a conv (``dim=2``, input N×C×H×W) or a linear layer (``dim=1``, input
N×C).  Weight-reparametrizing norms (``wn``, ``sn``) build an identity here
and act on the preceding layer through ``apply_to_weight`` instead;
normalization-activation layers (``frn``, ``evonorm_*``: ``NormSpec.acts``) are
the block's activation too.  timm's layers are imported lazily (``timm_norms``).

Your own normalizer needs no edit here: name its class in the config as
``type: "mypkg.module:MyNorm"``.  It is built as ``MyNorm(num_features, dim,
**options)``; its keyword parameters after ``dim`` are the options a config may
set.  A class attribute ``vmappable = False`` keeps its runs out of vectorized
packs (for layers torch.func cannot batch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from .errors import ConfigError
from .layers import BatchNoise, BatchNorm1d, BatchNorm2d, BatchRenorm, DynamicTanh, LpBatchNorm
from .registry import Registry, keyword_defaults, resolve_options


@dataclass(frozen=True)
class NormSpec:
    """A registry entry: how to build it and which options it takes (name -> default)."""

    build: Callable[..., nn.Module]
    options: dict[str, Any] = field(default_factory=dict)
    conv_only: bool = False  # needs spatial dims (instance norm)
    reparametrizes_weight: bool = False  # acts on the preceding layer's weight
    vmappable: bool = True  # torch.func.vmap can batch it (else a pack trains its runs one by one)
    batch_dependent: bool = False  # normalizes with batch statistics (so per data-parallel worker, if any)
    acts: bool = False  # includes its nonlinearity (FRN+TLU, EvoNorm): option apply_act=False builds it without
    check: Callable[[dict], None] | None = None  # option checks beyond the names


def _user_norm(cls, name: str) -> NormSpec:
    try:
        options = keyword_defaults(cls.__init__ if isinstance(cls, type) else cls, 3 if isinstance(cls, type) else 2)
    except (TypeError, ValueError):
        raise ConfigError(f"norm type {name!r} is not a class or function with the signature "
                          f"(num_features, dim, **options)") from None
    return NormSpec(lambda c, dim, **o: cls(c, dim, **o), options, vmappable=getattr(cls, "vmappable", True),
                    batch_dependent=getattr(cls, "batch_dependent", False))


NORMS: Registry[NormSpec] = Registry("norm type", _user_norm, key="norm")


def _bn(c, dim, affine, eps, momentum):
    return (BatchNorm1d if dim == 1 else BatchNorm2d)(c, eps=eps, momentum=momentum, affine=affine)


def _gn_groups(c: int, groups, channels_per_group, name: str = "gn", per_group: str = "channels_per_group") -> int:
    """Wu & He fix the group count G (capped at the channel count); or give C/G instead (GN, EvoNorm-S0)."""
    if channels_per_group:
        if c % channels_per_group:
            raise ConfigError(f"{name}: {per_group}={channels_per_group} does not divide a layer of {c} channels")
        return c // channels_per_group
    groups = min(groups, c)
    if c % groups:
        raise ConfigError(f"{name}: groups={groups} does not divide a layer of {c} channels")
    return groups


def _rms(c, dim, eps, affine):
    if dim == 1:
        return nn.RMSNorm(c, eps=eps, elementwise_affine=affine)
    from .timm_norms import RmsNorm2d  # lazy, here and below: importing timm costs seconds

    return RmsNorm2d(c, **({} if eps is None else {"eps": eps}), affine=affine)


def _frn(c, dim, eps, apply_act):
    from .timm_norms import FilterResponseNormTlu2d

    return FilterResponseNormTlu2d(c, apply_act=apply_act, eps=eps)


def _evonorm_b0(c, dim, momentum, eps, apply_act):
    from .timm_norms import WorkerEvoNorm2dB0

    return WorkerEvoNorm2dB0(c, apply_act=apply_act, momentum=momentum, eps=eps)


def _evonorm_s0(c, dim, groups, group_size, eps, apply_act):
    from .timm_norms import EvoNorm2dS0

    return EvoNorm2dS0(c, groups=_gn_groups(c, groups, group_size, "evonorm_s0", "group_size"),
                       apply_act=apply_act, eps=eps)


LP_CHOICES = ("1", "2", "inf")


def _parse_p(p) -> float:
    text = str(p).strip().lower()
    text = {"1.0": "1", "2.0": "2", "infinity": "inf", "∞": "inf"}.get(text, text)
    if text not in LP_CHOICES:
        raise ConfigError(f"lp_bn: p={p!r} is not one of {', '.join(LP_CHOICES)}")
    return float(text)


for _name, _spec in {
    "none": NormSpec(lambda c, dim: nn.Identity()),
    "bn": NormSpec(_bn, {"affine": True, "eps": 1e-5, "momentum": 0.1}, batch_dependent=True),
    # LN over (C, H, W) with per-channel affine, as in the GN paper (GN with one group).
    "ln": NormSpec(lambda c, dim, eps, affine: nn.LayerNorm(c, eps=eps, elementwise_affine=affine)
                   if dim == 1 else nn.GroupNorm(1, c, eps=eps, affine=affine), {"eps": 1e-5, "affine": True}),
    "in": NormSpec(lambda c, dim, eps, affine: nn.InstanceNorm2d(c, eps=eps, affine=affine),
                   {"eps": 1e-5, "affine": True}, conv_only=True),
    "gn": NormSpec(lambda c, dim, groups, channels_per_group, eps, affine: nn.GroupNorm(
        _gn_groups(c, groups, channels_per_group), c, eps=eps, affine=affine),
        {"groups": 32, "channels_per_group": None, "eps": 1e-5, "affine": True}),
    "wn": NormSpec(lambda c, dim: nn.Identity(), reparametrizes_weight=True),
    # spectral norm's power iteration uses out= ops that vmap cannot batch
    "sn": NormSpec(lambda c, dim, n_power_iterations: nn.Identity(), {"n_power_iterations": 1},
                   reparametrizes_weight=True, vmappable=False),
    "brn": NormSpec(lambda c, dim, **o: BatchRenorm(c, **o),
                    {"r_max": 3.0, "d_max": 5.0, "eps": 1e-5, "momentum": 0.01, "affine": True,
                     "bn_until": 0.1, "r_max_at": 0.6, "d_max_at": 0.35}, batch_dependent=True),
    "noisy_bn": NormSpec(lambda c, dim, affine, eps, momentum: nn.Sequential(
        _bn(c, dim, affine, eps, momentum), BatchNoise(c)), {"affine": True, "eps": 1e-5, "momentum": 0.1},
        batch_dependent=True),
    "lp_bn": NormSpec(lambda c, dim, p, affine, eps, momentum: LpBatchNorm(
        c, p=_parse_p(p), eps=eps, momentum=momentum, affine=affine),
        {"p": 2, "affine": True, "eps": 1e-5, "momentum": 0.1}, check=lambda o: _parse_p(o["p"]), batch_dependent=True),
    # The modern ones (README, "Extending": a table).  RMSNorm (Zhang & Sennrich 2019): torch's over the
    # last dim, timm's RmsNorm2d over the channels of each position; eps None = the library's own
    # default (torch: the dtype's machine epsilon; timm: 1e-6).
    "rms": NormSpec(_rms, {"eps": None, "affine": True}),
    "dyt": NormSpec(lambda c, dim, alpha, affine: DynamicTanh(c, dim, alpha=alpha, affine=affine),
                    {"alpha": 0.5, "affine": True}),
    # Normalization-activation layers, timm's, with timm's defaults: they replace norm + activation
    # in a block (acts=True); before a residual add they are built with apply_act=False and the
    # configured activation follows the add, as in timm's EvoNorm/FRN nets.  FRN+TLU (Singh &
    # Krishnan 2020): max(γ·x/√(mean_HW x² + ε) + β, τ).  EvoNorm (Liu, Brock, Simonyan, Le
    # 2020): B0 divides by max(√(batch var + ε), v·x + instance std), batch-dependent with a
    # running variance (per data-parallel worker: timm_norms.WorkerEvoNorm2dB0); S0 is
    # x·σ(v·x) / group std, timm's 32 groups capped at the channel count (or C/G as group_size).
    "frn": NormSpec(_frn, {"eps": 1e-5, "apply_act": True}, conv_only=True, acts=True),
    "evonorm_b0": NormSpec(_evonorm_b0, {"momentum": 0.1, "eps": 1e-3, "apply_act": True}, conv_only=True,
                           acts=True, batch_dependent=True),
    "evonorm_s0": NormSpec(_evonorm_s0, {"groups": 32, "group_size": None, "eps": 1e-5, "apply_act": True},
                           conv_only=True, acts=True),
}.items():
    NORMS.register(_name, _spec)


def norm_options(name: str, options: dict | None) -> dict[str, Any]:
    """The options a norm is built with: defaults, overridden, checked."""
    spec = NORMS.get(name)
    opts = resolve_options("norm", name, spec.options, options)
    if spec.check:
        spec.check(opts)
    return opts


def create_norm(name: str, num_features: int, dim: int = 2, **options) -> nn.Module:
    """Build normalizer ``name`` for ``num_features`` channels (timm-style factory)."""
    spec = NORMS.get(name)
    if spec.conv_only and dim != 2:
        raise ConfigError(f"norm {name!r} needs spatial feature maps and cannot follow a linear layer")
    return spec.build(num_features, dim, **norm_options(name, options))


def apply_to_weight(name: str, layer: nn.Module, **options) -> nn.Module:
    """Weight-reparametrizing norms act on the preceding conv/linear layer."""
    opts = norm_options(name, options)
    if name == "wn":
        return nn.utils.parametrizations.weight_norm(layer, name="weight", dim=0)
    if name == "sn":
        return nn.utils.parametrizations.spectral_norm(layer, name="weight", n_power_iterations=opts["n_power_iterations"])
    return layer
