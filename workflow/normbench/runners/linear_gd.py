"""Full-batch gradient descent on a linear least-squares model, in closed form
(LeCun et al. 1998, "Efficient BackProp", §4.3): how input scaling reshapes the
error surface and the steps gradient descent needs.

The run's ``norm`` is the *input* normalization (a registry of scalings below);
its ``lr`` is the step as a fraction of the stability limit 2/λmax, so every
scaling is compared at the same relative step.  Rows and summary are those of a
network run (the same ``Recorder``); the optimizer column says sgd: GD is SGD on
the full batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..data import DATASETS
from ..errors import ConfigError
from ..recorder import Recorder
from ..registry import Registry
from ..settings import RunConfig

Scaling = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (x, x_train) -> scaled x

SCALINGS: Registry[Scaling] = Registry("input scaling", key="norm")
for _name, _fn in {
    "raw": lambda x, ref: x,
    "minmax": lambda x, ref: (x - ref.min(0)) / (ref.max(0) - ref.min(0)),
    "mean_norm": lambda x, ref: (x - ref.mean(0)) / (ref.max(0) - ref.min(0)),
    "standardize": lambda x, ref: (x - ref.mean(0)) / ref.std(0),
}.items():
    SCALINGS.register(_name, _fn)


def design(scaling: str, dataset: str = "two_scale", data_dir="resources"):
    """(A_train, y_train, A_test, y_test): the scaled features plus a bias column."""
    d = DATASETS.get(dataset).load(data_dir)
    xtr, xte = d.x_train.double().numpy(), d.x_test.double().numpy()
    f = SCALINGS.get(scaling)
    add1 = lambda z: np.column_stack([z, np.ones(len(z))])  # noqa: E731
    return add1(f(xtr, xtr)), d.y_train.double().numpy()[:, 0], add1(f(xte, xtr)), d.y_test.double().numpy()[:, 0]


def loss(A: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """½·mean squared error; w may be (..., k) for a whole grid at once."""
    r = np.einsum("nk,...k->...n", A, w) - y
    return 0.5 * (r ** 2).mean(-1)


def hessian(A: np.ndarray) -> np.ndarray:
    return A.T @ A / len(A)


class LinearGD:
    def check(self, cfg: RunConfig) -> None:
        SCALINGS.get(cfg.norm_kind)
        spec = DATASETS.get(cfg.dataset)
        if cfg.model_kind != "linear":
            raise ConfigError(f"model: the linear_gd runner trains the model type 'linear', not {cfg.model_kind!r}")
        if spec.task != "regression" or spec.num_outputs != 1 or len(spec.input_shape) != 1:
            raise ConfigError(f"dataset: the linear_gd runner needs a one-target regression on feature vectors; "
                              f"{cfg.dataset!r} is a {spec.task} of shape {spec.input_shape}")

    def resumable(self, jobs, checkpoint_dir) -> list[bool]:
        return [False] * len(jobs)  # nothing is checkpointed

    def train(self, jobs, say: Callable[[str], None], checkpoint_dir: Path | None = None) -> list:
        out = []
        for job in jobs:  # milliseconds each: nothing to checkpoint
            out.append(job.finish(self.run(job.config, say)))
        return out

    @staticmethod
    def run(cfg: RunConfig, say: Callable[[str], None]):
        rec = Recorder(cfg, per_epoch=1, classification=False)
        A, y, At, yt = design(cfg.norm_kind, cfg.dataset, cfg.data_dir)
        H = hessian(A)
        eig = np.linalg.eigvalsh(H)
        step = cfg.lr * 2.0 / eig[-1]
        w_star = np.linalg.solve(H, A.T @ y / len(A))
        l_star, w = loss(A, y, w_star), np.random.default_rng(cfg.seed).standard_normal(A.shape[1])
        l0 = loss(A, y, w)
        converged = diverged = None
        rec.row(0, "probe", "hessian_cond", eig[-1] / eig[0])
        s = 0
        for s in range(cfg.steps + 1):
            lt = loss(A, y, w)
            if not np.isfinite(lt) or lt > cfg.diverge_loss:
                diverged = s
            if converged is None and lt - l_star <= 1e-6 * (l0 - l_star):
                converged = s
            if s % cfg.eval_every == 0 or s == cfg.steps or diverged is not None or converged == s:
                for split, metric, value in (("train", "loss", lt), ("test", "loss", loss(At, yt, w)),
                                             ("probe", "w1", w[0]), ("probe", "w2", w[1])):
                    rec.row(s, split, metric, value)
            if diverged is not None or converged is not None or s == cfg.steps:
                break
            w = w - step * (H @ w - A.T @ y / len(A))
        say(f"{cfg.norm}: cond {eig[-1] / eig[0]:.3g}, "
            + (f"converged at step {converged}" if converged is not None else f"not converged in {s} steps"))
        rec.steps_to_target = converged
        return rec.result(s, -1 if diverged is None else diverged, num_params=A.shape[1], device="cpu")
