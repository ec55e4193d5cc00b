"""The typed configuration of one run, built once the user's config is validated."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

OPTIMIZERS = ("sgd", "momentum", "adam")
SCHEDULES = ("constant", "step", "cosine")
PROBES = ("ics", "landscape", "rel_loss", "act_stats")
RUNNERS = ("network", "linear_gd")


@dataclass
class RunConfig:
    # identity (these become the run's typed columns and its folder)
    study: str = "adhoc"
    model: str = "vgg"  # id as named in the config (also the registry type unless model_type is set)
    dataset: str = "digits"
    norm: str = "bn"  # id as named in the config, e.g. "gn8"; the registry type is norm_type
    placement: str = "pre"
    activation: str = "relu"
    batch_size: int = 32
    lr: float = 0.1
    seed: int = 0
    # what the ids mean
    model_type: str | None = None
    model_options: dict = field(default_factory=dict)
    norm_type: str | None = None
    norm_options: dict = field(default_factory=dict)
    init: str = "default"
    # optimisation
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    schedule_step_every: int = 0  # step schedule: decay every N steps (0: a third of the budget)
    schedule_gamma: float = 0.1
    steps: int = 200  # budget in optimizer steps (epochs, if set, overrides)
    epochs: float | None = None
    # measurement
    eval_every: int = 50
    target_acc: float | None = None
    diverge_loss: float = 1.0e4  # loss above this (or non-finite) ends the run as diverged
    probe_every: int = 0  # 0: no probes
    probes: list = field(default_factory=list)
    probe_layers: int = 4  # ICS on this many conv/linear layers, evenly spaced
    landscape_etas: list = field(default_factory=lambda: [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0])  # × lr
    rel_loss_alphas: list = field(default_factory=lambda: [1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0])
    rel_loss_steps: int = 3  # Bjorck: relative loss at the first mini-batches only
    # execution
    runner: str = "network"  # network | linear_gd (the feature-scaling study)
    device: str = "auto"
    data_dir: str = "resources"
    threads: int = 0  # 0: torch's default
    checkpoint_every: int = 0  # steps; 0: only on SIGTERM
    checkpoint_minutes: float = 10.0
    # speed options (GPU-minded; each also works on CPU)
    channels_last: bool = False  # NHWC memory format for conv nets
    bf16: bool = False  # bfloat16 autocast for the training forward pass
    compile: bool = False  # torch.compile the training forward (static shapes)

    @property
    def norm_kind(self) -> str:
        return self.norm_type or self.norm

    @property
    def model_kind(self) -> str:
        return self.model_type or self.model

    def identity(self) -> dict[str, Any]:
        from .store import PARAM_COLUMNS

        return {k: getattr(self, k) for k in PARAM_COLUMNS}

    def provenance(self) -> dict[str, Any]:
        """Summary columns saying what the ids stood for."""
        import json

        return {"norm_type": self.norm_kind, "norm_options": json.dumps(self.norm_options, sort_keys=True),
                "model_type": self.model_kind, "model_options": json.dumps(self.model_options, sort_keys=True),
                "init": self.init, "optimizer": self.optimizer}

    def validate(self) -> "RunConfig":
        """Check names and values; ConfigError names the key, value and choices."""
        from .data import check_dataset_name
        from .models import NormAct, model_spec, resolve_model_options

        _choice("runner", self.runner, RUNNERS)
        if self.runner == "linear_gd":
            from .feature_scaling import check

            check(self.norm_kind, self.model_kind, self.dataset)
        else:
            NormAct(self.norm_kind, self.norm_options, self.activation, self.placement, self.init)
            model_spec(self.model_kind)
            resolve_model_options(self.model_kind, self.model_options)
            check_dataset_name(self.dataset)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        for p in self.probes:
            _choice("probes", p, PROBES)
        _positive("lr", self.lr)
        _positive("batch_size", self.batch_size)
        _positive("steps", self.steps)
        _positive("eval_every", self.eval_every)
        if self.epochs is not None:
            _positive("epochs", self.epochs)
        if self.device not in ("auto", "cpu") and not str(self.device).startswith("cuda"):
            raise ConfigError(f"device: {self.device!r} is not valid; choose auto, cpu, cuda or cuda:N")
        return self

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown run setting(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
        return cls(**coerce_numbers(d)).validate()

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict | None = None) -> "RunConfig":
        d = yaml.safe_load(Path(path).read_text()) or {}
        return cls.from_dict({**d, **(overrides or {})})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _choice(key, value, choices):
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not valid; choose one of {', '.join(choices)}")


def _positive(key, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{key}: {value!r} must be a positive number")


def to_number(value):
    """PyYAML reads ``1e-3`` (no dot) as a string; accept it as the number it is."""
    if isinstance(value, str):
        try:
            f = float(value)
        except ValueError:
            return value
        return int(f) if f.is_integer() and "." not in value and "e" not in value.lower() else f
    return value


_NUMERIC = {f.name for f in dataclasses.fields(RunConfig) if f.type in ("float", "int", "float | None")}


def coerce_numbers(d: dict) -> dict:
    out = dict(d)
    for k in _NUMERIC & set(out):
        out[k] = to_number(out[k])
    for k in ("landscape_etas", "rel_loss_alphas"):
        if k in out:
            out[k] = [to_number(v) for v in out[k]]
    return out
