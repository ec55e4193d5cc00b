"""Input feature scaling and the error surface of a linear model (LeCun et al.
1998, "Efficient BackProp", §4.3).

Two features differing in scale by orders of magnitude make the least-squares
Hessian ill-conditioned: gradient descent must take steps below 2/λmax, and then
crawls along the flat direction.  Scaling the inputs changes the Hessian
H = AᵀA/n (A = [scaled features, 1]) and with it the condition number and the
number of steps to converge.

The runner writes the same Parquet schema as a network run.  Its ``norm`` is
the input scaling; its ``lr`` is the step as a fraction of the stability limit
2/λmax (so every scaling is compared at the same relative step).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import ConfigError

Scaling = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (x, x_train) -> scaled x

SCALINGS: dict[str, Scaling] = {
    "raw": lambda x, ref: x,
    "minmax": lambda x, ref: (x - ref.min(0)) / (ref.max(0) - ref.min(0)),
    "mean_norm": lambda x, ref: (x - ref.mean(0)) / (ref.max(0) - ref.min(0)),
    "standardize": lambda x, ref: (x - ref.mean(0)) / ref.std(0),
}
TRUE_W = np.array([2.0, 0.003])  # y = 2·x1 + 0.003·x2 + 1 + noise


def two_scale(n: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x1 ~ U(0, 1), x2 ~ U(0, 1000) (three orders of magnitude apart), shifted off zero."""
    rng = np.random.default_rng(seed)
    x = np.column_stack([rng.uniform(0, 1, n), rng.uniform(0, 1000, n)]) + np.array([0.5, 500.0])
    y = x @ TRUE_W + 1.0 + 0.1 * rng.standard_normal(n)
    return x, y


def check(norm: str, model_type: str, dataset: str) -> None:
    if norm not in SCALINGS:
        raise ConfigError(f"norm: {norm!r} is not an input scaling; valid: {', '.join(SCALINGS)}")
    if model_type != "linear":
        raise ConfigError(f"model: feature_scaling trains the linear model 'linear', not {model_type!r}")
    if dataset != "two_scale":
        raise ConfigError(f"dataset: feature_scaling uses 'two_scale', not {dataset!r}")


def design(scaling: str, seed: int = 0):
    """(A_train, y_train, A_test, y_test): scaled features plus a bias column."""
    x, y = two_scale(1200, seed)
    xtr, xte = x[:1000], x[1000:]
    f = SCALINGS[scaling]
    add1 = lambda z: np.column_stack([z, np.ones(len(z))])  # noqa: E731
    return add1(f(xtr, xtr)), y[:1000], add1(f(xte, xtr)), y[1000:]


def loss(A: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """½·mean squared error; w may be (..., 3) for a whole grid at once."""
    r = np.einsum("nk,...k->...n", A, w) - y
    return 0.5 * (r ** 2).mean(-1)


def hessian(A: np.ndarray) -> np.ndarray:
    return A.T @ A / len(A)


def error_surface(scaling: str, grid: int = 121, seed: int = 0, half: float = 3.0):
    """Loss over the two feature weights (bias at its optimum for each point) on a
    square window of ±``half`` around the optimum -- the same span on both axes, so
    an ill-conditioned surface shows as elongated: (w1 grid, w2 grid, loss, optimum)."""
    A, y, _, _ = design(scaling, seed)
    w_star = np.linalg.lstsq(A, y, rcond=None)[0]
    w1 = np.linspace(w_star[0] - half, w_star[0] + half, grid)
    w2 = np.linspace(w_star[1] - half, w_star[1] + half, grid)
    W1, W2 = np.meshgrid(w1, w2)
    # optimal bias given (w1, w2): mean residual
    b = (y[None, None, :] - W1[..., None] * A[:, 0] - W2[..., None] * A[:, 1]).mean(-1)
    L = loss(A, y, np.stack([W1, W2, b], -1))
    return W1, W2, L, w_star


def train(cfg, progress=None):
    """Full-batch gradient descent on ½·MSE; rows and summary as a network run
    (the same ``Recorder``; the optimizer column says sgd: GD is SGD on the full batch)."""
    from .train import Recorder

    check(cfg.norm_kind, cfg.model_kind, cfg.dataset)
    rec = Recorder(cfg, per_epoch=1, classification=False)
    A, y, At, yt = design(cfg.norm_kind)
    H = hessian(A)
    eig = np.linalg.eigvalsh(H)
    step = cfg.lr * 2.0 / eig[-1]
    w_star = np.linalg.solve(H, A.T @ y / len(A))
    l_star, w = loss(A, y, w_star), np.random.default_rng(cfg.seed).standard_normal(3)
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
    if progress:
        progress(f"{cfg.norm}: cond {eig[-1] / eig[0]:.3g}, "
                 + (f"converged at step {converged}" if converged is not None else f"not converged in {s} steps"))
    rec.steps_to_target = converged
    return rec.result(s, -1 if diverged is None else diverged, num_params=3, device="cpu")
