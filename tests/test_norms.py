"""Normalizers against torch's reference layers, explicit formulas, gradcheck."""

import math

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from normbench.errors import ConfigError
from normbench.layers import BatchNoise, BatchRenorm, LpBatchNorm
from normbench.norms import NORMS, apply_to_weight, create_norm


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
])
def test_matches_formula(name, dims, opts):
    torch.manual_seed(1)
    x = torch.randn(4, 6, 3, 3) * 2 + 0.5
    y = create_norm(name, 6, 2, **opts)(x)
    if name == "gn":  # 2 groups of 3 channels
        expect = formula(x.view(4, 2, 3 * 9), [2]).view_as(x)
    else:
        expect = formula(x, dims)
    torch.testing.assert_close(y.double(), expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opts,groups", [({"groups": 3}, 3), ({"channels_per_group": 2}, 6), ({"groups": 32}, 12),
                                         ({"channels_per_group": 12}, 1)])
def test_gn_group_layout_is_torchs(opts, groups):
    """channels_per_group = C/G (not G); groups is capped at the channel count; the layout is torch's."""
    torch.manual_seed(4)
    x = torch.randn(5, 12, 3, 3) * 3 + 1
    ours = create_norm("gn", 12, 2, **opts)
    assert ours.num_groups == groups
    torch.testing.assert_close(ours(x), torch.nn.functional.group_norm(x, groups, eps=1e-5), rtol=1e-5, atol=1e-5)
    # and by hand: contiguous blocks of C/G channels share their statistics
    per = 12 // groups
    by_hand = torch.cat([formula(x[:, g * per:(g + 1) * per], [1, 2, 3]) for g in range(groups)], 1)
    torch.testing.assert_close(ours(x).double(), by_hand, rtol=1e-5, atol=1e-5)


def test_ln_conv_is_layer_norm_over_chw():
    x = torch.randn(3, 4, 5, 5)
    torch.testing.assert_close(create_norm("ln", 4, 2)(x), F.layer_norm(x, (4, 5, 5)), rtol=1e-5, atol=1e-5)


def test_lp_bn_scales_by_the_norm_before_the_mean_is_subtracted():
    """Santurkar §3.3: subtract the batch mean, divide by the batch-average ℓp norm of the
    activations *before* shifting the mean -- computed here by hand, per channel."""
    torch.manual_seed(2)
    x = torch.randn(64, 5, 4, 4) * 4 + 2  # mean 2: centring first would give another scale
    flat = x.permute(1, 0, 2, 3).reshape(5, -1).double()
    mean = flat.mean(1)
    for p, scale in [(1, flat.abs().mean(1)), ("inf", flat.abs().amax(1)), (2, flat.pow(2).mean(1).sqrt())]:
        y = create_norm("lp_bn", 5, 2, p=p, eps=0.0, affine=False)(x)
        expect = (x.double() - mean.view(1, 5, 1, 1)) / scale.view(1, 5, 1, 1)
        torch.testing.assert_close(y.double(), expect, atol=1e-5, rtol=1e-5)
        centred = (flat - mean[:, None]).pow(2).mean(1).sqrt()  # what a centred ℓ2 scale would have been
        assert not torch.allclose(scale, centred) or p != 2


def test_lp_bn_p2_is_batchnorm_on_zero_mean_activations():
    x = torch.randn(16, 3, 4, 4)
    x = x - x.mean((0, 2, 3), keepdim=True)  # uncentred and centred ℓ2 scales agree only here
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
    noise.ensure_generator("cpu")
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
    noise.ensure_generator("cpu"); st = noise.generator.get_state()
    y = noise(x)
    noise.generator.set_state(st)
    s, m = noise.sample(5, "cpu", x.dtype)
    torch.testing.assert_close(y, s[:, :, None, None] * x + m[:, :, None, None])
    noise.eval()  # evaluation applies the noise's expected value: E[s] = E[σ] = 1.125, E[m] = E[μ] = 0
    torch.testing.assert_close(noise(x), 1.125 * x)
    wide = BatchNoise(64, seed=2)  # those are the draws' means: 12,800 draws of σ, SE 0.0006
    draws = [wide.sample(100, "cpu", torch.float64) for _ in range(200)]
    assert float(torch.stack([d[0].mean() for d in draws]).mean()) == pytest.approx(1.125, abs=4e-3)
    assert float(torch.stack([d[1].mean() for d in draws]).mean()) == pytest.approx(0.0, abs=1e-2)


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


def test_batch_renorm_step_by_hand():
    """One training step of BRN against a hand computation with r and d away from 1 and 0,
    not clipped, then clipped (Ioffe 2017, Algorithm 1)."""
    x = torch.tensor([[1.0, 10.0], [3.0, 14.0], [5.0, 6.0], [7.0, 10.0]])  # per channel: means 4, 10
    mu_b = torch.tensor([4.0, 10.0])
    sd_b = torch.sqrt(torch.tensor([5.0, 8.0]) + 1e-5)  # biased variances 5 and 8
    for r_max, d_max, run_mean, run_sd in [(10.0, 10.0, [3.0, 12.0], [2.0, 4.0]),  # r, d inside the clips
                                           (1.2, 0.25, [3.0, 12.0], [2.0, 4.0])]:  # both clipped
        m = BatchRenorm(2, r_max=r_max, d_max=d_max, momentum=0.0, affine=False)
        with torch.no_grad():
            m.running_mean.copy_(torch.tensor(run_mean)); m.running_scale.copy_(torch.tensor(run_sd))
        r = (sd_b / torch.tensor(run_sd)).clamp(1 / r_max, r_max)  # σ_B/σ: > 1 for channel 0, < 1 for 1
        d = ((mu_b - torch.tensor(run_mean)) / torch.tensor(run_sd)).clamp(-d_max, d_max)  # +0.5, −0.5
        expect = (x - mu_b) / sd_b * r + d
        torch.testing.assert_close(m(x), expect)
        assert r[0] > 1 > r[1] and d[0] > 0 > d[1]  # a swapped ratio or sign would not pass


def test_batch_renorm_warm_up_follows_ioffe_scaled_to_the_run():
    """BN only (r_max = 1, d_max = 0) for the first 10% of the run, then the clips relax
    linearly to r_max at 60% and d_max at 35% (Ioffe 2017: 5k, 40k and 25k steps)."""
    m = BatchRenorm(3, r_max=3.0, d_max=5.0)
    m.set_run_length(1000)
    x = torch.randn(8, 3) * 0.4 + 0.7
    seen = {}
    for step in range(1000):
        if step in (0, 50, 100, 225, 350, 600, 999):
            seen[step] = tuple(float(v) for v in m.clips())
        m(x)
    assert seen[0] == seen[50] == seen[100] == (1.0, 0.0)
    assert seen[225] == pytest.approx((1.0 + 2.0 * 0.25, 5.0 * 0.5))  # a quarter and half of the way
    assert seen[350] == pytest.approx((2.0, 5.0)) and seen[600] == seen[999] == pytest.approx((3.0, 5.0))
    fresh = BatchRenorm(3)
    fresh.set_run_length(10)
    with torch.no_grad():
        out = fresh(x)  # step 0: plain BN, whatever the running statistics say
    torch.testing.assert_close(out, F.batch_norm(x, None, None, training=True), rtol=1e-4, atol=1e-4)


def test_user_normalizer_from_a_file(tmp_path):
    """Your own norm class, named 'file.py:Class', with the one constructor signature."""
    (tmp_path / "mynorms.py").write_text(
        "import torch\n"
        "class RMS(torch.nn.Module):\n"
        "    def __init__(self, num_features, dim=2, eps=1e-6):\n"
        "        super().__init__(); self.eps = eps\n"
        "    def forward(self, x):\n"
        "        return x / x.pow(2).mean(1, keepdim=True).add(self.eps).sqrt()\n")
    name = f"{tmp_path}/mynorms.py:RMS"
    layer = create_norm(name, 4, 2, eps=1e-3)
    assert layer.eps == 1e-3
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(layer(x), x / x.pow(2).mean(1, keepdim=True).add(1e-3).sqrt())
    with pytest.raises(ConfigError, match="unknown option.*epsilon.*allowed: eps"):
        create_norm(name, 4, 2, epsilon=1)
    with pytest.raises(ConfigError, match="has no 'Nope'"):
        create_norm(f"{tmp_path}/mynorms.py:Nope", 4)


# a conv batch, and gn_small_batch's MLP (8 workers × 2 examples × 128 features)
@pytest.mark.parametrize("shape", [(3, 4, 5, 3, 2), (8, 2, 128)])
@pytest.mark.parametrize("affine", [True, False])
def test_worker_batchnorm_normalizes_each_slice_of_a_batch(affine, shape):
    """BN with W data-parallel workers: each worker's N examples normalized over its own N(×H×W)
    values (gradients too); the running statistics move by the mean of the workers' statistics
    (one step: num_batches_tracked + 1); evaluation uses them, as torch's BN does."""
    from normbench.layers import BatchNorm1d, BatchNorm2d

    torch.manual_seed(5)
    W, N, C, *S = shape
    x = torch.randn(W * N, C, *S) * torch.arange(1, W * N + 1).view(-1, *[1] * (1 + len(S))) + 2
    m = (BatchNorm2d if S else BatchNorm1d)(C, affine=affine, momentum=0.3)
    if affine:
        with torch.no_grad():
            m.weight.copy_(torch.randn(C)); m.bias.copy_(torch.randn(C))
    m.workers = W
    xg, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = m(xg)
    w, b = (m.weight, m.bias) if affine else (None, None)
    expect = torch.cat([F.batch_norm(xs, None, None, w, b, True, 0.0, 1e-5) for xs in xr.split(N)])
    tol = {"rtol": 1e-4, "atol": 1e-4} if N == 2 else {}  # 2 values per feature: float32 rounding, ~1e-5
    torch.testing.assert_close(y, expect, **tol)
    g = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, xg, g)[0], torch.autograd.grad(expect, xr, g)[0], **tol)
    dims = [0, *range(2, x.dim())]
    stats = [(xs.mean(dims), xs.var(dims, unbiased=True)) for xs in x.split(N)]
    torch.testing.assert_close(m.running_mean, 0.3 * torch.stack([s[0] for s in stats]).mean(0))
    torch.testing.assert_close(m.running_var, 0.7 + 0.3 * torch.stack([s[1] for s in stats]).mean(0))
    assert int(m.num_batches_tracked) == 1
    m.eval()
    torch.testing.assert_close(m(x), F.batch_norm(x, m.running_mean, m.running_var, w, b, False, 0.0, 1e-5))


@pytest.mark.parametrize("layer", ["lp_bn", "brn"])
def test_custom_layers_evaluate_with_their_running_statistics(layer):
    """Evaluation: (x − running mean) / running scale (+ eps for ℓp BN), by hand; a large eps
    makes its sign visible."""
    torch.manual_seed(6)
    x = torch.randn(16, 3, 2, 2) * 2 + 1
    m = (LpBatchNorm(3, p=1, eps=0.5, momentum=0.5, affine=False) if layer == "lp_bn"
         else BatchRenorm(3, eps=0.5, momentum=0.5, affine=False))
    m(x)  # one training step moves the running statistics away from (0, 1)
    mean, scale = m.running_mean.view(1, 3, 1, 1), m.running_scale.view(1, 3, 1, 1)
    assert not torch.allclose(mean, torch.zeros_like(mean)) and not torch.allclose(scale, torch.ones_like(scale))
    m.eval()
    expect = (x - mean) / (scale + 0.5) if layer == "lp_bn" else (x - mean) / scale
    torch.testing.assert_close(m(x), expect)


def test_lp_bn_training_divides_by_scale_plus_eps():
    x = torch.randn(32, 2, 3, 3) + 1
    y = LpBatchNorm(2, p=2, eps=0.5, affine=False)(x)
    flat = x.transpose(0, 1).reshape(2, -1)
    expect = (x - flat.mean(1).view(1, 2, 1, 1)) / (flat.pow(2).mean(1).sqrt().view(1, 2, 1, 1) + 0.5)
    torch.testing.assert_close(y, expect)


def test_registry_options_reach_the_layers():
    bn = create_norm("bn", 4, 2, affine=False, momentum=0.3, eps=1e-3)
    assert (bn.affine, bn.momentum, bn.eps) == (False, 0.3, 1e-3) and bn.weight is None
    gn = create_norm("gn", 8, 2, groups=2, eps=1e-3, affine=False)
    assert (gn.num_groups, gn.eps, gn.affine) == (2, 1e-3, False)
    for p, expect in [(1, 1.0), ("1.0", 1.0), (2.0, 2.0), ("inf", math.inf), ("infinity", math.inf), ("∞", math.inf)]:
        assert create_norm("lp_bn", 3, 2, p=p).p == expect
