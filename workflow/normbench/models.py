"""Model registry.  Every model builds its blocks through ``NormAct`` so that
the normalizer, its placement (``pre``: norm before the activation, as in the
BN paper; ``post``: after it), the activation and the init apply everywhere.

Your own model needs no edit here: name it in the config as ``type:
"mypkg.module:MyNet"``; it is built as ``MyNet(in_shape, out_dim, na,
**options)`` and should build its layers through ``na.block``/``na.weight``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .norms import NORMS, apply_to_weight, create_norm, norm_options
from .registry import Registry, keyword_defaults, resolve_options
from .settings import INITS, RunConfig, choice

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "elu": nn.ELU, "identity": nn.Identity,
}
PLACEMENTS = ("pre", "post")
_GAIN_NAME = {"relu": "relu", "elu": "relu", "sigmoid": "sigmoid", "tanh": "tanh", "identity": "linear"}


class Block(nn.Sequential):
    """layer + norm + activation: the unit whose output the activation probes read."""


@dataclass(frozen=True)
class NormAct:
    """The one place where a layer meets its normalizer, activation and init."""

    norm: str = "none"
    norm_options: dict = field(default_factory=dict)
    activation: str = "relu"
    placement: str = "pre"
    init: str = "default"
    init_std: float = 0.01

    def __post_init__(self):
        norm_options(self.norm, self.norm_options)
        choice("activation", self.activation, ACTIVATIONS)
        choice("placement", self.placement, PLACEMENTS)
        choice("init", self.init, INITS)
        if self.norm_acts and self.placement != "pre":
            raise ConfigError(f"placement: {self.placement!r} is not possible with norm {self.norm!r}, which "
                              f"includes its own activation (norm and activation are one layer); use 'pre'")

    @classmethod
    def of(cls, cfg: RunConfig) -> "NormAct":
        return cls(cfg.norm_kind, cfg.norm_options, cfg.activation, cfg.placement, cfg.init, cfg.init_std)

    @property
    def reparametrizes_weight(self) -> bool:
        return NORMS.get(self.norm).reparametrizes_weight

    @property
    def norm_acts(self) -> bool:
        """The norm is the block's activation too (FRN+TLU, EvoNorm, unless built with apply_act=False)."""
        return NORMS.get(self.norm).acts and norm_options(self.norm, self.norm_options)["apply_act"]

    def act(self) -> nn.Module:
        return ACTIVATIONS[self.activation]()

    def norm_layer(self, channels: int, dim: int, act: bool = True, options: dict | None = None) -> nn.Module:
        """The norm; ``act=False``: the one before a residual add, which must not include an
        activation (for norms that include one: their act-less variant); ``options`` override the
        configured ones for this slot (a model's per-slot settings, e.g. DyT's α₀ in attention)."""
        merged = {**self.norm_options, **(options or {})}
        merged = merged if act or not self.norm_acts else {**merged, "apply_act": False}
        return create_norm(self.norm, channels, dim, **merged)

    def init_layer(self, layer: nn.Module) -> nn.Module:
        """Initialise a conv/linear layer (before any weight reparametrization):
        kaiming = He et al. 2015 (fan-in, the activation's gain); glorot = Glorot &
        Bengio 2010 uniform (gain 1, as TensorFlow's default); normal = N(0, init_std²)
        ("small random Gaussian", Ioffe & Szegedy); default = torch's own."""
        if self.init == "kaiming":
            nn.init.kaiming_normal_(layer.weight, nonlinearity=_GAIN_NAME[self.activation])
        elif self.init == "glorot":
            nn.init.xavier_uniform_(layer.weight)
        elif self.init == "normal":
            nn.init.normal_(layer.weight, std=self.init_std)
        if self.init != "default" and getattr(layer, "bias", None) is not None:
            nn.init.zeros_(layer.bias)
        return layer

    def weight(self, layer: nn.Module) -> nn.Module:
        """Init, then apply a weight-reparametrizing norm (wn, sn) if configured."""
        self.init_layer(layer)
        if self.reparametrizes_weight:
            layer = apply_to_weight(self.norm, layer, **self.norm_options)
        return layer

    def block(self, layer: nn.Module, channels: int, dim: int) -> Block:
        """layer → norm → act (pre) or layer → act → norm (post); layer → norm-act for a norm
        that includes its activation."""
        norm, act = self.norm_layer(channels, dim), self.act()
        parts = (norm,) if self.norm_acts else (norm, act) if self.placement == "pre" else (act, norm)
        return Block(self.weight(layer), *parts)

    def residual_tail(self, channels: int, dim: int) -> tuple[nn.Module, nn.Module]:
        """(before the residual add, after it) for the last layer of a block."""
        if self.placement == "pre":
            return self.norm_layer(channels, dim, act=False), self.act()
        return nn.Identity(), nn.Sequential(self.act(), self.norm_layer(channels, dim))


# ----------------------------------------------------------------------------
# Architectures
# ----------------------------------------------------------------------------


def mlp(in_shape, out_dim, na: NormAct, depth: int = 3, width: int = 128, bias: bool = True):
    layers: list[nn.Module] = [nn.Flatten()]
    fan_in = math.prod(in_shape)
    for _ in range(depth):
        layers.append(na.block(nn.Linear(fan_in, width, bias=bias), width, dim=1))
        fan_in = width
    layers.append(na.weight(nn.Linear(fan_in, out_dim)))
    return nn.Sequential(*layers)


VGG_PRESETS = {
    "digits": [32, 32, "M", 64, 64, "M"],
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    # 13 conv layers: the VGG-16-like net of Santurkar et al. (BN before ReLU).
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


def conv2d(weight_std: bool) -> type[nn.Conv2d]:
    """torch's Conv2d, or with ``weight_std`` timm's StdConv2d (Weight Standardization, Qiao et
    al. 2019: each filter's weights standardized in the forward pass), a Conv2d subclass taking
    the same arguments -- so WS + GN is a model option plus a norm."""
    if not isinstance(weight_std, bool):
        raise ConfigError(f"model.weight_std: {weight_std!r} is not true or false")
    if not weight_std:
        return nn.Conv2d
    from .timm_norms import StdConv2d  # lazy: importing timm costs seconds

    return StdConv2d


def vgg(in_shape, out_dim, na: NormAct, layers="digits", width_mult: float = 1.0, bias: bool = True,
        weight_std: bool = False):
    conv = conv2d(weight_std)
    if isinstance(layers, str):
        choice("model.layers", layers, VGG_PRESETS)
        layers = VGG_PRESETS[layers]
    chans, size = in_shape[0], in_shape[-1]
    body: list[nn.Module] = []
    for item in layers:
        if item == "M":
            if size >= 2:  # small inputs simply skip the late pools
                body.append(nn.MaxPool2d(2))
                size //= 2
            continue
        out = max(1, int(round(int(item) * width_mult)))
        body.append(na.block(conv(chans, out, 3, padding=1, bias=bias), out, dim=2))
        chans = out
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), na.weight(nn.Linear(chans, out_dim))]
    return nn.Sequential(*body, *head)


class BasicBlock(nn.Module):
    """CIFAR ResNet block (He et al. 2016), option-B 1×1 projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, na: NormAct, conv: type[nn.Conv2d] = nn.Conv2d):
        super().__init__()
        self.conv1 = na.block(conv(cin, cout, 3, stride, 1, bias=False), cout, 2)
        self.conv2 = na.weight(conv(cout, cout, 3, 1, 1, bias=False))
        self.before_add, self.after_add = na.residual_tail(cout, 2)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            proj = na.weight(conv(cin, cout, 1, stride, bias=False))
            self.shortcut = nn.Sequential(proj, na.norm_layer(cout, 2, act=False) if na.placement == "pre"
                                          else nn.Identity())

    def forward(self, x):
        return self.after_add(self.before_add(self.conv2(self.conv1(x))) + self.shortcut(x))


def resnet_cifar(in_shape, out_dim, na: NormAct, depth: int = 20, width: int = 16, weight_std: bool = False):
    if (depth - 2) % 6:
        raise ConfigError(f"model.depth: resnet_cifar needs depth = 6n+2 (20, 56, 110), got {depth}")
    n = (depth - 2) // 6
    conv = conv2d(weight_std)
    layers: list[nn.Module] = [na.block(conv(in_shape[0], width, 3, 1, 1, bias=False), width, 2)]
    cin = width
    for stage, cout in enumerate((width, 2 * width, 4 * width)):
        for i in range(n):
            layers.append(BasicBlock(cin, cout, 2 if (stage > 0 and i == 0) else 1, na, conv))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), na.weight(nn.Linear(cin, out_dim))]
    return nn.Sequential(*layers)


def _torchvision_resnet(arch: str):
    def build(in_shape, out_dim, na: NormAct):
        if na.placement != "pre" or na.activation != "relu" or na.reparametrizes_weight or na.norm_acts:
            raise ConfigError(
                f"model {arch!r} (torchvision) supports placement 'pre', activation 'relu' and layer "
                f"norms without their own activation only; got placement={na.placement!r}, "
                f"activation={na.activation!r}, norm={na.norm!r}")
        import torchvision  # lazy: only runs that use a torchvision model pay for the import

        net = getattr(torchvision.models, arch)(weights=None, num_classes=out_dim,
                                                norm_layer=lambda c: na.norm_layer(c, 2))
        if in_shape[0] != 3:
            net.conv1 = nn.Conv2d(in_shape[0], 64, 7, 2, 3, bias=False)
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                na.init_layer(m)
        return net

    return build


def dln(in_shape, out_dim, na: NormAct, depth: int = 25, width: int = 10):
    """Deep linear network (Santurkar §C): ``depth`` bias-free width×width layers."""
    layers: list[nn.Module] = [nn.Flatten()]
    fan_in = math.prod(in_shape)
    for _ in range(depth - 1):
        layers.append(na.block(nn.Linear(fan_in, width, bias=False), width, dim=1))
        fan_in = width
    layers.append(na.weight(nn.Linear(fan_in, out_dim, bias=False)))
    return nn.Sequential(*layers)


def linear(in_shape, out_dim, na: NormAct, bias: bool = True):
    return nn.Sequential(nn.Flatten(), na.weight(nn.Linear(math.prod(in_shape), out_dim, bias=bias)))


class TokenNorm(nn.Module):
    """A registry norm built for (N, C) inputs (``dim=1``) applied over the last dimension of
    (..., C): every token normalized as one row, so any norm that takes (N, C) fills a
    transformer's norm slot (LN, RMSNorm, DyT, none, a user's -- even BN, over the tokens)."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.norm = norm

    def forward(self, x):
        return self.norm(x.reshape(-1, x.shape[-1])).reshape(x.shape)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position t attends to positions ≤ t only."""

    def __init__(self, width: int, heads: int, na: NormAct):
        super().__init__()
        if width % heads:
            raise ConfigError(f"model.heads: {heads} heads do not divide width {width}")
        self.heads = heads
        self.qkv = na.weight(nn.Linear(width, 3 * width))
        self.out = na.weight(nn.Linear(width, width))

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        # softmax(q kᵀ/√d_head) v with the future masked out (torch's fused kernel: fewer ops, same math)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(att.transpose(1, 2).reshape(B, T, C))


class TransformerBlock(nn.Module):
    """Attention and a feed-forward sublayer, each a residual branch.  Placement ``pre``
    (Pre-LN, GPT-2/Llama): x + f(norm(x)); ``post`` (Post-LN, Vaswani et al.): norm(x + f(x))."""

    def __init__(self, width: int, heads: int, ffn: int, na: NormAct, attn_norm_options: dict | None = None):
        super().__init__()
        self.attn = CausalSelfAttention(width, heads, na)
        self.ffn = nn.Sequential(na.weight(nn.Linear(width, ffn)), na.act(), na.weight(nn.Linear(ffn, width)))
        # norm1 is the attention sublayer's (before it in Pre-LN, after its residual add in Post-LN)
        self.norm1 = TokenNorm(na.norm_layer(width, 1, options=attn_norm_options))
        self.norm2 = TokenNorm(na.norm_layer(width, 1))
        self.pre = na.placement == "pre"

    def forward(self, x):
        if self.pre:
            x = x + self.attn(self.norm1(x))
            return x + self.ffn(self.norm2(x))
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.ffn(x))


class Transformer(nn.Module):
    """A decoder-only (GPT-style) character model: token + learned position embeddings,
    ``depth`` blocks, a linear head to next-token logits (B, T, vocabulary).  Inputs are token
    ids of shape (B, T) with T ≤ the dataset's context; ``out_dim`` is the vocabulary.  Pre-LN
    has a final norm before the head; Post-LN has none (its last block ends in one).
    ``attn_norm_options`` override the norm's options in the attention sublayers alone (Zhu et al.
    set DyT's α₀ apart there: ``{alpha: 1.0}``)."""

    def __init__(self, in_shape, out_dim, na: NormAct, depth: int = 6, width: int = 64, heads: int = 4,
                 ffn_mult: int = 4, attn_norm_options: dict | None = None):
        super().__init__()
        if len(in_shape) != 1:
            raise ConfigError(f"model 'transformer' needs token sequences (shape (T,)); the dataset gives shape "
                              f"{tuple(in_shape)}")
        self.embed = nn.Embedding(out_dim, width)
        self.pos = nn.Parameter(torch.zeros(in_shape[0], width))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(*(TransformerBlock(width, heads, ffn_mult * width, na, attn_norm_options)
                                      for _ in range(depth)))
        self.final_norm = TokenNorm(na.norm_layer(width, 1)) if na.placement == "pre" else nn.Identity()
        self.head = na.weight(nn.Linear(width, out_dim))

    def forward(self, x):
        tokens = x.long()  # ids; the config check's shape-only forward passes a float placeholder
        h = self.embed(tokens) + self.pos[:tokens.shape[-1]]
        return self.head(self.final_norm(self.blocks(h)))


@dataclass(frozen=True)
class ModelSpec:
    build: Callable[..., nn.Module]
    options: dict[str, Any]
    needs_images: bool = False


def _user_model(obj, name: str) -> ModelSpec:
    init = obj.__init__ if isinstance(obj, type) else obj
    return ModelSpec(obj, keyword_defaults(init, 4 if isinstance(obj, type) else 3))


MODELS: Registry[ModelSpec] = Registry("model type", _user_model, key="model")
for _name, _spec in {
    "linear": ModelSpec(linear, {"bias": True}),
    "mlp": ModelSpec(mlp, {"depth": 3, "width": 128, "bias": True}),
    "vgg": ModelSpec(vgg, {"layers": "digits", "width_mult": 1.0, "bias": True, "weight_std": False},
                     needs_images=True),
    "resnet_cifar": ModelSpec(resnet_cifar, {"depth": 20, "width": 16, "weight_std": False}, needs_images=True),
    "resnet18": ModelSpec(_torchvision_resnet("resnet18"), {}, needs_images=True),
    "resnet50": ModelSpec(_torchvision_resnet("resnet50"), {}, needs_images=True),
    "dln": ModelSpec(dln, {"depth": 25, "width": 10}),
    "transformer": ModelSpec(Transformer, {"depth": 6, "width": 64, "heads": 4, "ffn_mult": 4,
                                           "attn_norm_options": {}}),
}.items():
    MODELS.register(_name, _spec)


def model_options(name: str, options: dict | None) -> dict:
    return resolve_options("model", name, MODELS.get(name).options, options)


def build_model(name: str, in_shape: tuple[int, ...], out_dim: int, na: NormAct,
                options: dict | None = None) -> nn.Module:
    spec = MODELS.get(name)
    if spec.needs_images and len(in_shape) != 3:
        raise ConfigError(f"model {name!r} needs image inputs (C×H×W); the dataset gives shape {tuple(in_shape)}")
    if NORMS.get(na.norm).conv_only and not spec.needs_images and ":" not in name:
        raise ConfigError(f"norm {na.norm!r} needs conv feature maps; model {name!r} has only linear layers")
    return spec.build(tuple(in_shape), out_dim, na, **model_options(name, options))


def build_network(cfg: RunConfig, in_shape: tuple[int, ...], out_dim: int) -> nn.Module:
    """The run's network, exactly as every path builds it (training, packs, validation):
    seeded by the run's seed, in the run's dtype."""
    torch.manual_seed(cfg.seed)
    net = build_model(cfg.model_kind, in_shape, out_dim, NormAct.of(cfg), cfg.model_options)
    return net.to(getattr(torch, cfg.dtype))


def check_forward(model: nn.Module, in_shape: tuple[int, ...], name: str = "model") -> None:
    """One training-mode forward pass on a batch of 2 (call it under the meta device: no
    memory, no arithmetic) to catch shape-level impossibilities, e.g. instance norm on
    feature maps that have shrunk to 1×1."""
    model.train()
    try:
        model(torch.empty(2, *in_shape, dtype=next(model.parameters(), torch.empty(0)).dtype))
    except (ValueError, RuntimeError, TypeError) as e:
        raise ConfigError(f"{name} cannot run on inputs of shape {tuple(in_shape)}: {e}") from None


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def probe_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The conv/linear layers whose weights the probes look at, in forward order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def block_outputs(model: nn.Module) -> dict[str, nn.Module]:
    """The normalized-and-activated blocks (``NormAct.block``), in forward order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (Block, BasicBlock, TransformerBlock))}
