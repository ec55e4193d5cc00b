"""The typed settings of one run, in one place.

Every field says which group it belongs to: ``identity`` (the run's typed
columns and its folder), ``meaning`` (what the ids stand for), ``train`` (what
a config's ``train:`` blocks may set; the schema's ``train`` definition is
checked against this list by a test) and ``execution`` (set by the pipeline).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

# Documented agreement of a vectorized pack with the same runs trained solo
# (float32, CPU) -- and of a replayed CUDA graph with the eager step it replaces -- checked by the tests: over the first 20 steps every logged loss
# and accuracy and the BN running statistics agree within this tolerance.  Bitwise
# equality is not promised: batched kernels sum in another order, and -- exactly
# as when a solo run changes its thread count -- rounding differences then grow
# with training at large learning rates.
PACK_TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine")
PROBES = ("ics", "landscape", "rel_loss", "act_stats", "grad_norm")
DTYPES = ("float32", "float64")
INITS = ("default", "kaiming", "glorot", "normal")
CUDA_GRAPH = ("auto", "off")


def _f(default, group: str, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"group": group, **kw})
    return field(default=default, metadata={"group": group, **kw})


@dataclass
class RunConfig:
    # identity: the run's typed columns (and its folder)
    study: str = _f("adhoc", "identity")
    model: str = _f("vgg", "identity")  # id as named in the config (a registry type unless model_type says)
    dataset: str = _f("digits", "identity")
    norm: str = _f("bn", "identity")  # id as named in the config, e.g. "gn8"; norm_type is the registry type
    placement: str = _f("pre", "identity")
    activation: str = _f("relu", "identity")
    batch_size: int = _f(32, "identity")
    lr: float = _f(0.1, "identity")
    seed: int = _f(0, "identity")
    # meaning: what the ids stand for
    model_type: str | None = _f(None, "meaning")
    model_options: dict = _f({}, "meaning")
    norm_type: str | None = _f(None, "meaning")
    norm_options: dict = _f({}, "meaning")
    # train: what a config's train blocks may set
    init: str = _f("default", "train")
    init_std: float = _f(0.01, "train")  # init 'normal': N(0, init_std²) weights, zero biases
    optimizer: str = _f("sgd", "train")
    momentum: float = _f(0.9, "train")
    weight_decay: float = _f(0.0, "train")
    schedule: str = _f("constant", "train")
    schedule_milestones: list = _f([1 / 3, 2 / 3], "train")  # step schedule: × gamma at these fractions of the run
    schedule_gamma: float = _f(0.1, "train")
    warmup_steps: int = _f(0, "train")  # linear lr warm-up over the first steps, then the schedule
    adam_betas: list = _f([0.9, 0.999], "train")  # Adam's (β1, β2); torch's default
    grad_clip: float = _f(0.0, "train")  # clip each run's gradient to this global ℓ2 norm (0: no clipping)
    steps: int = _f(200, "train")  # budget in optimizer steps (epochs, if set, overrides)
    epochs: float | None = _f(None, "train")
    workers: int = _f(1, "train")  # data-parallel replicas: the batch is workers × batch_size, norm statistics per replica
    dtype: str = _f("float32", "train")
    loss_sum: bool = _f(False, "train")  # train on the loss summed over the batch (Santurkar's DLN: ‖W x − A x‖²), not its mean
    eval_every: int = _f(50, "train")
    eval_examples: int = _f(0, "train")  # 0: evaluate on the whole test set; k: on its first k (a smoke check)
    target_acc: float | None = _f(None, "train")
    diverge_loss: float = _f(1.0e4, "train")  # loss above this (or non-finite) ends the run as diverged
    probe_every: int = _f(0, "train")  # 0: no periodic probes
    probe_at: list = _f([], "train")  # more probe steps beside the periodic ones (finer early in the run)
    probes: list = _f([], "train")
    probe_layers: int = _f(4, "train")  # ICS on this many conv/linear layers, evenly spaced
    landscape_etas: list = _f([0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0], "train")  # × lr
    rel_loss_alphas: list = _f([1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0], "train")
    rel_loss_steps: int = _f(3, "train")  # Bjorck: relative loss at the first mini-batches only
    checkpoint_every: int = _f(0, "train")  # steps; 0: only on SIGTERM and every checkpoint_minutes
    checkpoint_minutes: float = _f(10.0, "train")
    channels_last: bool = _f(False, "train")  # NHWC memory format for conv nets (GPU-minded)
    bf16: bool = _f(False, "train")  # bfloat16 autocast for the training forward (on CUDA conv nets go channels_last)
    compile: bool = _f(False, "train")  # torch.compile the training forward (static shapes)
    cuda_graph: str = _f("auto", "train")  # auto: on CUDA, each training step replays one CUDA graph where it can
    # execution: set by the pipeline (or `normbench train --set`)
    runner: str = _f("sgd", "execution")
    device: str = _f("auto", "execution")
    data_dir: str = _f("resources", "execution")
    threads: int = _f(0, "execution")  # 0: torch's default
    gpu_jobs: int = _f(1, "execution")  # training jobs sharing one GPU (normbench.devices picks the GPU)

    @property
    def norm_kind(self) -> str:
        return self.norm_type or self.norm

    @property
    def model_kind(self) -> str:
        return self.model_type or self.model

    def identity(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in IDENTITY}

    def provenance(self) -> dict[str, Any]:
        """Summary columns saying what the ids stood for."""
        return {"norm_type": self.norm_kind, "norm_options": json.dumps(self.norm_options, sort_keys=True),
                "model_type": self.model_kind, "model_options": json.dumps(self.model_options, sort_keys=True),
                "init": self.init, "optimizer": self.optimizer, "warmup_steps": self.warmup_steps}

    def fingerprint(self) -> str:
        """What the run's results depend on (identity, meaning and train settings; not where or how fast
        it ran), hashed: a finished run whose fingerprint differs was trained with other settings."""
        d = {k: v for k, v in self.to_dict().items() if FIELDS[k].metadata["group"] != "execution"}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def structure(self) -> str:
        """What runs must share to train as one vectorized pack: everything but lr and seed."""
        d = self.to_dict()
        for k in ("lr", "seed"):
            d.pop(k)
        return json.dumps(d, sort_keys=True, default=str)

    def validate(self) -> "RunConfig":
        """Value checks that need no registry; names are checked by the runner."""
        choice("optimizer", self.optimizer, OPTIMIZERS)
        choice("schedule", self.schedule, SCHEDULES)
        choice("dtype", self.dtype, DTYPES)
        choice("init", self.init, INITS)
        choice("cuda_graph", self.cuda_graph, CUDA_GRAPH)
        for p in self.probes:
            choice("probes", p, PROBES)
        for key in ("lr", "batch_size", "steps", "eval_every", "workers", "init_std", "gpu_jobs"):
            positive(key, getattr(self, key))
        if self.epochs is not None:
            positive("epochs", self.epochs)
        if isinstance(self.eval_examples, bool) or not isinstance(self.eval_examples, int) or self.eval_examples < 0:
            raise ConfigError(f"eval_examples: {self.eval_examples!r} must be a whole number ≥ 0 (0: the whole "
                              f"test set)", key="eval_examples")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps: {self.warmup_steps!r} must be a whole number ≥ 0", key="warmup_steps")
        if len(self.adam_betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.adam_betas):
            raise ConfigError(f"adam_betas: {self.adam_betas!r} must be two numbers in [0, 1), e.g. [0.9, 0.98]",
                              key="adam_betas")
        if self.device not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d+)?", str(self.device)):
            raise ConfigError(f"device: {self.device!r} is not valid; choose auto, cpu, cuda or cuda:N")
        if self.workers > 1 and self.probes:
            raise ConfigError(f"workers: {self.workers} with probes {self.probes}: probes measure one replica's "
                              f"training step; use workers: 1")
        return self

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        unknown = sorted(set(d) - set(FIELDS))
        if unknown:
            raise ConfigError(f"unknown run setting(s) {', '.join(unknown)}; allowed: {', '.join(sorted(FIELDS))}")
        d = coerce_numbers(dict(d))
        for name in INTEGER & set(d):  # 1e3 from YAML: a whole number, typed as the field is
            if isinstance(d[name], float) and d[name].is_integer():
                d[name] = int(d[name])
        return cls(**d).validate()

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict | None = None) -> "RunConfig":
        d = yaml.safe_load(Path(path).read_text()) or {}
        return cls.from_dict({**d, **(overrides or {})})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
IDENTITY = [n for n, f in FIELDS.items() if f.metadata["group"] == "identity"]
TRAIN_SETTINGS = [n for n, f in FIELDS.items() if f.metadata["group"] == "train"]
INTEGER = {n for n, f in FIELDS.items() if f.type == "int"}


def choice(key: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not valid; choose one of {', '.join(map(str, choices))}", key=key)


def positive(key: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{key}: {value!r} must be a positive number")


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)$")


def coerce_numbers(obj):
    """PyYAML reads ``1e-3`` (no dot) as the string "1e-3": make such strings the
    numbers they are, recursively (a quoted "0.1" stays a string: that is a typo)."""
    if isinstance(obj, dict):
        return {k: coerce_numbers(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [coerce_numbers(v) for v in obj]
    if isinstance(obj, str) and _NUMBER.match(obj.strip()):
        return float(obj)
    return obj
