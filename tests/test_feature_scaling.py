"""The feature-scaling study: Hessian, convergence and error surface against closed forms."""

import numpy as np
import pytest

from normbench.runners import train
from normbench.runners.linear_gd import design, hessian, loss
from normbench.settings import RunConfig
from normbench.studies.feature_scaling import error_surface


def cfg(norm, lr=0.9, steps=3000):
    return RunConfig.from_dict(dict(model="linear", dataset="two_scale", norm=norm, lr=lr, batch_size=1000,
                                    steps=steps, eval_every=10, runner="linear_gd"))


def test_hessian_is_the_least_squares_one():
    A, y, _, _ = design("raw")
    H = hessian(A)
    assert A.shape == (1000, 3) and A[:, 0].min() >= 0.5 and A[:, 1].min() >= 500  # two scales, bias column
    w = np.array([0.3, -0.002, 1.5])
    eps = 1e-4  # ½·MSE is quadratic: its finite-difference Hessian is exact up to rounding
    num = np.array([[(loss(A, y, w + eps * (ei + ej)) - loss(A, y, w + eps * ei) - loss(A, y, w + eps * ej)
                      + loss(A, y, w)) / eps ** 2 for ej in np.eye(3)] for ei in np.eye(3)])
    np.testing.assert_allclose(num, H, rtol=1e-3, atol=1e-3)


def test_scaling_changes_the_condition_number_and_convergence():
    conds = {n: np.linalg.cond(hessian(design(n)[0])) for n in ("raw", "minmax", "mean_norm", "standardize")}
    assert conds["raw"] > 1e6 and conds["standardize"] < 1.5 and conds["minmax"] > conds["standardize"]
    raw, std = train(cfg("raw")).summary, train(cfg("standardize")).summary
    assert raw["steps_to_target"] is None and raw["steps"] == 3000  # crawls along the flat direction
    assert std["steps_to_target"] is not None and std["steps_to_target"] < 100
    A, y, _, _ = design("standardize")
    l_star = loss(A, y, np.linalg.lstsq(A, y, rcond=None)[0])
    l0 = loss(A, y, np.random.default_rng(0).standard_normal(3))  # the run's seeded start
    assert 0 <= std["final_train_loss"] - l_star <= 1e-6 * (l0 - l_star)  # the convergence criterion


def test_step_beyond_the_stability_limit_diverges():
    s = train(cfg("standardize", lr=1.5, steps=500)).summary  # step 3/λmax > 2/λmax
    assert s["diverged"] and s["diverged_step"] is not None


def test_error_surface_is_centred_on_the_optimum():
    W1, W2, L, w_star = error_surface("standardize", grid=41)
    i, j = np.unravel_index(L.argmin(), L.shape)
    assert W1[i, j] == pytest.approx(w_star[0], abs=0.16) and W2[i, j] == pytest.approx(w_star[1], abs=0.16)
    assert W1.max() - W1.min() == pytest.approx(W2.max() - W2.min())  # the same span on both axes
