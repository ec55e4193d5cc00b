"""Normalizers against torch's reference layers, explicit formulas, gradcheck."""

import math

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from normbench.norms import (NORMS, BatchNoise, BatchRenorm, ConfigError, LpBatchNorm, apply_to_weight,
                             create_norm)


def formula(x, dims, eps=1e-5):
    """(x - mean) / sqrt(var + eps) over ``dims``, in float64."""
    x = x.double()
    mean = x.mean(dims, keepdim=True)
    var = x.var(dims, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def _pair(ours, ref, x):
    """Outputs and input gradients of two layers on the same input."""
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = ours(x1), ref(x2)
    w = torch.randn_like(y1)
    (y1 * w).sum().backward()
    (y2 * w).sum().backward()
    return y1, y2, x1.grad, x2.grad


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name,dim,ref_fn", [
    ("bn", 2, lambda c: nn.BatchNorm2d(c)),
    ("bn", 1, lambda c: nn.BatchNorm1d(c)),
    ("gn", 2, lambda c: nn.GroupNorm(4, c)),
    ("in", 2, lambda c: nn.InstanceNorm2d(c, affine=True)),
    ("ln", 1, lambda c: nn.LayerNorm(c)),
])
def test_matches_torch_reference(name, dim, ref_fn, mode):
    torch.manual_seed(0)
    c = 8
    x = torch.randn(6, c, 5, 5) * 3 + 1 if dim == 2 else torch.randn(6, c) * 3 + 1
    ours = create_norm(name, c, dim, **({"groups": 4} if name == "gn" else {}))
    ref = ref_fn(c)
    with torch.no_grad():  # non-trivial affine parameters, identical in both
        for p, q in zip(ours.parameters(), ref.parameters()):
            p.copy_(torch.randn_like(p)); q.copy_(p)
    if mode == "eval":  # eval after a training pass: running statistics in use
        ours(x * 2), ref(x * 2)
        ours.eval(); ref.eval()
    y1, y2, g1, g2 = _pair(ours, ref, x)
    torch.testing.assert_close(y1, y2)
    torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize("name,dims,opts", [
    ("bn", [0, 2, 3], {}), ("ln", [1, 2, 3], {}), ("in", [2, 3], {}), ("gn", None, {"groups": 2}),
    ("lp_bn", [0, 2, 3], {"p": 2, "eps": 0.0}),
])
def test_matches_formula(name, dims, opts):
    torch.manual_seed(1)
    x = torch.randn(4, 6, 3, 3) * 2 + 0.5
    y = create_norm(name, 6, 2, **opts)(x)
    if name == "gn":  # 2 groups of 3 channels
        expect = formula(x.view(4, 2, 3 * 9), [2]).view_as(x)
    elif name == "lp_bn":
        expect = formula(x, dims, eps=0.0)
    else:
        expect = formula(x, dims)
    torch.testing.assert_close(y.double(), expect, rtol=1e-5, atol=1e-5)


def test_ln_conv_is_layer_norm_over_chw():
    x = torch.randn(3, 4, 5, 5)
    torch.testing.assert_close(create_norm("ln", 4, 2)(x), F.layer_norm(x, (4, 5, 5)), rtol=1e-5, atol=1e-5)


def test_lp_norms_scale():
    torch.manual_seed(2)
    x = torch.randn(64, 5, 4, 4) * 4 + 2
    for p, stat in [(1, lambda y: y.abs().mean((0, 2, 3))), ("inf", lambda y: y.abs().amax((0, 2, 3))),
                    (2, lambda y: y.pow(2).mean((0, 2, 3)).sqrt())]:
        y = create_norm("lp_bn", 5, 2, p=p, eps=0.0, affine=False)(x)
        torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(5), atol=1e-5, rtol=0)
        torch.testing.assert_close(stat(y), torch.ones(5), atol=1e-5, rtol=1e-5)


def test_lp_bn_p2_is_batchnorm():
    x = torch.randn(16, 3, 4, 4)
    ours = create_norm("lp_bn", 3, 2, p=2, eps=1e-12)
    torch.testing.assert_close(ours(x), F.batch_norm(x, None, None, training=True, eps=1e-12), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer", [
    lambda: LpBatchNorm(3, p=1, momentum=0.0), lambda: LpBatchNorm(3, p=2, momentum=0.0),
    lambda: LpBatchNorm(3, p=float("inf"), momentum=0.0),
    lambda: BatchRenorm(3, momentum=0.0),
])
def test_custom_layers_gradcheck(layer):
    torch.manual_seed(3)
    m = layer().double()
    with torch.no_grad():
        m.running_mean.fill_(0.3); m.running_scale.fill_(0.7)
        if isinstance(m, BatchRenorm):
            # r and d are constants in BRN's backward by definition; where they are
            # clipped they are constant in the forward too, so finite differences agree.
            m.running_mean.fill_(100.0); m.running_scale.fill_(0.01)
        m.weight.copy_(torch.randn(3)); m.bias.copy_(torch.randn(3))
    x = torch.randn(6, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))
    m.eval()
    assert torch.autograd.gradcheck(m, (x,))


def test_noisy_bn_gradcheck_with_fixed_noise():
    m = create_norm("noisy_bn", 3, 2).double()
    noise = m[1]
    noise._gen("cpu")
    state = noise.generator.get_state()

    def f(x):
        noise.generator.set_state(state)  # same noise at every evaluation
        return m(x)

    x = torch.randn(5, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (x,))


def test_batch_renorm_is_bn_when_running_stats_match():
    x = torch.randn(32, 4)
    m = BatchRenorm(4, momentum=0.0)
    with torch.no_grad():  # running = batch statistics -> r = 1, d = 0
        m.running_mean.copy_(x.mean(0)); m.running_scale.copy_((x.var(0, unbiased=False) + 1e-5).sqrt())
    torch.testing.assert_close(m(x), F.batch_norm(x, None, None, training=True), rtol=1e-5, atol=1e-5)


def test_noise_statistics_follow_algorithm_1():
    """Per unit and step: μ ~ U(-.5,.5), σ ~ U(1,1.25); per sample m ~ U(μ±.1), s ~ N(σ,.1)."""
    noise = BatchNoise(16, seed=7)
    mus, sigmas = [], []
    for _ in range(200):
        s, m = noise.sample(4000, "cpu", torch.float64)
        mu_hat = (m.amax(0) + m.amin(0)) / 2  # midrange of a uniform: its centre μ
        width = m.amax(0) - m.amin(0)
        assert torch.all(width <= 0.2 + 1e-9) and torch.all(width > 0.19)
        assert torch.allclose(m.std(0), torch.full((16,), 0.2 / math.sqrt(12), dtype=torch.float64), rtol=0.06)
        assert torch.allclose(s.std(0), torch.full((16,), 0.1, dtype=torch.float64), rtol=0.06)
        mus.append(mu_hat); sigmas.append(s.mean(0))
    mus, sigmas = torch.cat(mus), torch.cat(sigmas)
    assert mus.min() >= -0.5 - 1e-3 and mus.max() <= 0.5 + 1e-3
    assert abs(float(mus.mean())) < 0.03 and abs(float(mus.var()) - 1 / 12) < 0.01  # U(-.5,.5)
    assert sigmas.min() >= 1 - 0.01 and sigmas.max() <= 1.25 + 0.01
    assert abs(float(sigmas.mean()) - 1.125) < 0.01  # U(1, 1.25)


def test_noise_is_applied_as_s_times_a_plus_m_in_training_only():
    noise = BatchNoise(3, seed=1)
    x = torch.randn(5, 3, 2, 2)
    noise._gen("cpu"); st = noise.generator.get_state()
    y = noise(x)
    noise.generator.set_state(st)
    s, m = noise.sample(5, "cpu", x.dtype)
    torch.testing.assert_close(y, s[:, :, None, None] * x + m[:, :, None, None])
    noise.eval()
    assert torch.equal(noise(x), x)


def test_weight_norm_keeps_function_and_separates_g_and_v():
    torch.manual_seed(0)
    lin = nn.Linear(5, 4)
    x = torch.randn(3, 5)
    before = lin(x)
    wn = apply_to_weight("wn", lin)
    torch.testing.assert_close(wn(x), before)
    names = {n for n, _ in wn.named_parameters()}
    assert {"parametrizations.weight.original0", "parametrizations.weight.original1"} <= names
    g = wn.parametrizations.weight.original0
    torch.testing.assert_close(g.flatten(), lin.parametrizations.weight.original1.norm(dim=1))


def test_spectral_norm_bounds_the_weight():
    conv = apply_to_weight("sn", nn.Linear(6, 6))
    for _ in range(20):
        conv(torch.randn(2, 6))
    assert float(torch.linalg.matrix_norm(conv.weight.detach(), 2)) == pytest.approx(1.0, rel=0.05)


def test_unknown_names_and_options_list_the_choices():
    with pytest.raises(ConfigError, match="valid: .*bn.*gn"):
        create_norm("batchnorm", 4)
    with pytest.raises(ConfigError, match="unknown option.*grops.*allowed: .*groups"):
        create_norm("gn", 8, grops=2)
    with pytest.raises(ConfigError, match="does not divide"):
        create_norm("gn", 6, groups=4)
    with pytest.raises(ConfigError, match="p=3"):
        create_norm("lp_bn", 4, p=3)
    with pytest.raises(ConfigError, match="spatial"):
        create_norm("in", 4, dim=1)


def test_registry_has_every_norm_of_the_design():
    assert {"none", "bn", "ln", "in", "gn", "wn", "sn", "brn", "noisy_bn", "lp_bn"} <= set(NORMS)
