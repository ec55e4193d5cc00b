"""The network runner: models from the registry trained by torch.optim (SGD,
momentum, Adam) in the one training loop, vectorized where runs allow it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import torch

from ..data import DATASETS, load_dataset
from ..devices import resolve_device
from ..errors import ConfigError
from ..layers import PerWorker
from ..models import MODELS, NormAct, build_network, check_forward, model_options
from ..norms import NORMS
from ..settings import RunConfig
from ..train import Trainer

_DATA: dict = {}


def get_data(cfg: RunConfig, device):
    """Load a dataset once per process (a pack's runs share it)."""
    key = (cfg.dataset, str(cfg.data_dir), str(device), cfg.dtype)
    if key not in _DATA:
        _DATA[key] = load_dataset(cfg.dataset, cfg.data_dir, device, getattr(torch, cfg.dtype))
    return _DATA[key]


def vectorizable(cfg: RunConfig) -> bool:
    """Probes measure one model's own step; the speed options and norms vmap cannot batch
    (spectral norm) train solo.  So does Adam: it divides each gradient entry by its own
    scale, so the rounding noise of batched kernels in a near-zero gradient (a bias before
    BN) becomes a full-size step, and a pack would not match its solo twins."""
    return (not cfg.probes and cfg.optimizer != "adam" and not (cfg.channels_last or cfg.bf16 or cfg.compile)
            and NORMS.get(cfg.norm_kind).vmappable)


def plan(cfgs: list[RunConfig], vectorize: bool = True) -> list[list[int]]:
    """Groups of run indices, each trained as one pack (vectorized) or alone."""
    groups: dict[str, list[int]] = {}
    solo = []
    for i, cfg in enumerate(cfgs):
        if vectorize and vectorizable(cfg):
            groups.setdefault(cfg.structure(), []).append(i)
        else:
            solo.append([i])
    return list(groups.values()) + solo


def checkpoint_file(checkpoint_dir: str | Path, group: list) -> Path:
    """The checkpoint of a group of jobs trained together, named by the runs and their settings: a
    checkpoint of other settings is never resumed."""
    key = hashlib.sha1("\n".join(f"{j.files['summary']} {j.config.fingerprint()}"
                                  for j in group).encode()).hexdigest()[:16]
    return Path(checkpoint_dir) / f"{key}.pt"


class SGD:
    def resumable(self, jobs, checkpoint_dir: str | Path) -> list[bool]:
        """Which of a pack's unfinished ``jobs`` a checkpoint would resume: they form the same groups
        when the pack runs again (finished runs are skipped the same way), so their names agree."""
        cfgs, out = [j.config for j in jobs], [False] * len(jobs)
        for group in plan(cfgs):
            if checkpoint_file(checkpoint_dir, [jobs[i] for i in group]).exists():
                for i in group:
                    out[i] = True
        return out

    def check(self, cfg: RunConfig) -> None:
        spec = DATASETS.get(cfg.dataset)
        if cfg.batch_size * cfg.workers > spec.n_train:
            raise ConfigError(f"batch_size: {cfg.batch_size}{f' × {cfg.workers} workers' if cfg.workers > 1 else ''}"
                              f" exceeds the {spec.n_train} training examples of {cfg.dataset}")
        NormAct.of(cfg)
        MODELS.get(cfg.model_kind)
        model_options(cfg.model_kind, cfg.model_options)
        what = f"model {cfg.model!r} with norm {cfg.norm!r} on {cfg.dataset}"
        try:  # on the meta device: no memory, no arithmetic
            with torch.device("meta"):
                net = build_network(cfg, spec.input_shape, spec.num_outputs)
                check_forward(net, spec.input_shape, f"model {cfg.model!r}")
            if cfg.workers > 1 and NORMS.get(cfg.norm_kind).batch_dependent and not any(
                    isinstance(m, PerWorker) for m in net.modules()):
                raise ConfigError(f"workers: {cfg.workers} needs per-worker batch statistics, and norm "
                                  f"{cfg.norm_kind!r} declares batch_dependent without building them "
                                  f"(subclass normbench.layers.RunningNorm)")
        except ConfigError as e:
            raise ConfigError(f"{what}: {e}") from None
        except Exception as e:  # a user's class that fails to build: say which, and how
            raise ConfigError(f"{what} cannot be built: {type(e).__name__}: {e}") from None

    def train(self, jobs, say: Callable[[str], None], checkpoint_dir: Path | None = None,
              vectorize: bool = True) -> list:
        # subnormal floats (below 1.2e-38) cost the CPU ~100× per operation: a 100-layer net whose signal
        # vanishes trained 4× slower.  Flushed to zero they change no recorded value (measured: every
        # metric of the depth study bitwise equal).  A no-op where the CPU has no such mode; the process's
        # default (off) is restored after, for the code that shares the process (hypothesis refuses to run)
        torch.set_flush_denormal(True)
        try:
            return self._train(jobs, say, checkpoint_dir, vectorize)
        finally:
            torch.set_flush_denormal(False)

    def _train(self, jobs, say, checkpoint_dir, vectorize) -> list:
        cfgs, out = [j.config for j in jobs], [None] * len(jobs)
        for group in plan(cfgs, vectorize):
            gcfgs, gjobs = [cfgs[i] for i in group], [jobs[i] for i in group]
            c0 = gcfgs[0]
            if c0.threads:
                torch.set_num_threads(c0.threads)
            tag = (f"{c0.norm} bs={c0.batch_size} " + (f"[{len(group)} runs]" if len(group) > 1 else
                                                        f"lr={c0.lr} seed={c0.seed}"))
            ckpt = checkpoint_file(checkpoint_dir, gjobs) if checkpoint_dir else None
            data = get_data(c0, resolve_device(c0.device, c0.gpu_jobs))
            results = Trainer(gcfgs, data, ckpt, progress=lambda m, tag=tag: say(f"{tag} {m}")).run()
            for i, cfg, job, r in zip(group, gcfgs, gjobs, results):
                out[i] = job.finish(r)
                say(f"{cfg.norm} lr={cfg.lr} bs={cfg.batch_size} seed={cfg.seed}: test acc "
                    f"{r.summary['final_test_acc']:.4f}" + (" (diverged)" if r.diverged else "")
                    + (" (collapsed)" if r.summary["collapsed"] else ""))
            if ckpt and ckpt.exists():
                os.unlink(ckpt)
        return out
