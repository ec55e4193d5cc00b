"""The modern normalizers (RMSNorm, DyT, FRN+TLU, EvoNorm B0/S0, Weight Standardization)
against their formulas, written out here, and against timm's own layers."""

import pytest
import torch
from torch import nn

from normbench.norms import create_norm


def _grads(layer, x, *extra):
    """Output, and the gradients of a fixed random projection of it w.r.t. x and ``extra``."""
    x = x.clone().requires_grad_()
    y = layer(x)
    torch.manual_seed(99)
    w = torch.randn_like(y)
    return (y, *torch.autograd.grad((y * w).sum(), (x, *extra)))


def _formula_grads(fn, x, *params):
    x = x.double().clone().requires_grad_()
    params = [p.detach().double().clone().requires_grad_() for p in params]
    y = fn(x, *params)
    torch.manual_seed(99)
    w = torch.randn(y.shape, dtype=torch.float32).double()
    return (y, *torch.autograd.grad((y * w).sum(), (x, *params)))


def _randomize(layer):
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p))
    return layer


def _close(ours, expect, tol=1e-5):
    for a, b in zip(ours, expect):
        torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol)


# -- RMSNorm (Zhang & Sennrich 2019): x / sqrt(mean(x²) + eps) · g, no re-centring -----------------


@pytest.mark.parametrize("eps", [None, 1e-3])
def test_rms_over_the_last_dim_is_the_formula(eps):
    torch.manual_seed(0)
    x = torch.randn(6, 10) * 3 + 1
    layer = _randomize(create_norm("rms", 10, 1, **({} if eps is None else {"eps": eps})))
    assert isinstance(layer, nn.RMSNorm)
    e = torch.finfo(torch.float32).eps if eps is None else eps  # torch's default: the dtype's epsilon

    def rms(x, g):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + e) * g

    _close(_grads(layer, x, layer.weight), _formula_grads(rms, x, layer.weight))


@pytest.mark.parametrize("eps", [None, 1e-2])
def test_rms_after_a_conv_normalizes_the_channels_of_each_position(eps):
    torch.manual_seed(1)
    x = torch.randn(4, 6, 3, 5) * 2 + 0.5
    layer = _randomize(create_norm("rms", 6, 2, **({} if eps is None else {"eps": eps})))
    e = 1e-6 if eps is None else eps  # timm's RmsNorm2d default

    def rms(x, g):
        return x / torch.sqrt(x.pow(2).mean(1, keepdim=True) + e) * g.view(1, -1, 1, 1)

    _close(_grads(layer, x, layer.weight), _formula_grads(rms, x, layer.weight))


def test_rms_without_affine_has_no_parameters():
    assert not list(create_norm("rms", 4, 1, affine=False).parameters())
    assert not list(create_norm("rms", 4, 2, affine=False).parameters())


# -- Dynamic Tanh (Zhu, Chen, He, LeCun, Liu 2025): γ·tanh(αx) + β, α₀ = 0.5 -----------------------


def test_dyt_initial_alpha_and_affine_are_the_papers():
    layer = create_norm("dyt", 5, 1)
    assert layer.alpha.shape == () and layer.alpha.item() == 0.5
    torch.testing.assert_close(layer.weight.data, torch.ones(5))
    torch.testing.assert_close(layer.bias.data, torch.zeros(5))
    x = torch.linspace(-4, 4, 15).view(3, 5)
    torch.testing.assert_close(layer(x), torch.tanh(0.5 * x))  # fresh: exactly tanh(x/2)
    assert create_norm("dyt", 5, 1, alpha=2.0).alpha.item() == 2.0


@pytest.mark.parametrize("dim,shape", [(1, (6, 7)), (2, (3, 7, 4, 2))])
def test_dyt_is_the_formula_with_gradients_for_x_and_alpha(dim, shape):
    torch.manual_seed(2)
    x = torch.randn(*shape) * 2
    layer = _randomize(create_norm("dyt", 7, dim))
    view = (-1,) if dim == 1 else (1, -1, 1, 1)  # γ/β: the last dim after linear, channels after conv

    def dyt(x, alpha, g, b):
        return g.view(view) * torch.tanh(alpha * x) + b.view(view)

    params = (layer.alpha, layer.weight, layer.bias)
    _close(_grads(layer, x, *params), _formula_grads(dyt, x, *params))


def test_dyt_without_affine_is_tanh_alone():
    layer = create_norm("dyt", 3, 2, affine=False, alpha=0.7)
    assert [n for n, _ in layer.named_parameters()] == ["alpha"]
    x = torch.randn(2, 3, 2, 2)
    torch.testing.assert_close(layer(x), torch.tanh(0.7 * x))


# -- timm's layers, as timm builds them ----------------------------------------------------------


def _timm():
    import timm.layers

    return timm.layers


def _same_params(ours, ref):
    """Random parameters in ``ours``, copied into ``ref`` (same names)."""
    _randomize(ours)
    ref.load_state_dict(ours.state_dict())


@pytest.mark.parametrize("name,opts,timm_cls,timm_opts,attrs", [
    ("frn", {}, "FilterResponseNormTlu2d", {}, {"eps": 1e-5, "apply_act": True}),
    ("frn", {"eps": 1e-3, "apply_act": False}, "FilterResponseNormTlu2d", {"eps": 1e-3, "apply_act": False},
     {"eps": 1e-3, "apply_act": False}),
    ("evonorm_b0", {}, "EvoNorm2dB0", {}, {"eps": 1e-3, "momentum": 0.1, "apply_act": True}),
    ("evonorm_s0", {}, "EvoNorm2dS0", {"groups": 8}, {"eps": 1e-5, "groups": 8, "apply_act": True}),
    ("evonorm_s0", {"group_size": 4}, "EvoNorm2dS0", {"group_size": 4}, {"groups": 2}),
])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_timm_norms_are_timms_layers_with_timms_defaults(name, opts, timm_cls, timm_opts, attrs, mode):
    torch.manual_seed(3)
    cls = getattr(_timm(), timm_cls)
    ours, ref = create_norm(name, 8, 2, **opts), cls(8, **timm_opts)
    assert isinstance(ours, cls)
    assert {k: getattr(ours, k) for k in attrs} == attrs
    _same_params(ours, ref)
    x = torch.randn(6, 8, 4, 4) * 2 + 0.3
    if mode == "eval":  # after a training step: EvoNorm-B0's running variance in use
        ours(x * 3), ref(x * 3)
        ours.eval(), ref.eval()
    y1, g1 = _grads(ours, x)
    y2, g2 = _grads(ref, x)
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, rtol=0, atol=0)


@pytest.mark.parametrize("c,opts,groups", [(8, {}, 8), (64, {}, 32), (48, {"groups": 4}, 4),
                                           (16, {"group_size": 8}, 2)])
def test_evonorm_s0_groups_are_timms_32_capped_at_the_channels(c, opts, groups):
    assert create_norm("evonorm_s0", c, 2, **opts).groups == groups


def test_evonorm_s0_refuses_groups_that_do_not_divide_the_channels():
    from normbench.errors import ConfigError

    with pytest.raises(ConfigError, match="evonorm_s0: groups=3 does not divide a layer of 8 channels"):
        create_norm("evonorm_s0", 8, 2, groups=3)
    with pytest.raises(ConfigError, match="evonorm_s0: group_size=3 does not divide"):
        create_norm("evonorm_s0", 8, 2, group_size=3)


def test_rms_after_a_conv_is_timms_rmsnorm2d():
    assert isinstance(create_norm("rms", 4, 2), _timm().RmsNorm2d)
    assert create_norm("rms", 4, 2, eps=1e-3).eps == 1e-3


def test_frn_is_the_papers_formula():
    """Singh & Krishnan 2020: ν² = mean over H×W of x²; y = max(γ·x/√(ν² + ε) + β, τ)."""
    torch.manual_seed(5)
    x = torch.randn(3, 4, 5, 5) * 2
    layer = _randomize(create_norm("frn", 4, 2))
    v = lambda p: p.double().view(1, -1, 1, 1)  # noqa: E731
    xd = x.double()
    expect = torch.maximum(v(layer.weight) * xd / torch.sqrt(xd.pow(2).mean((2, 3), keepdim=True) + 1e-5)
                           + v(layer.bias), v(layer.tau))
    torch.testing.assert_close(layer(x).double(), expect.detach(), rtol=1e-5, atol=1e-5)


def test_evonorm_b0_per_worker_is_timms_layer_on_each_workers_slice():
    """W = 2 workers: each slice normalized by timm's own forward on that slice alone; the
    running variance moves by the mean of the two slices' updates."""
    from normbench.layers import set_workers

    torch.manual_seed(6)
    ours = create_norm("evonorm_b0", 4, 2)
    ref = _timm().EvoNorm2dB0(4)
    _same_params(ours, ref)
    set_workers(nn.Sequential(ours), 2)
    assert ours.workers == 2
    x = torch.randn(6, 4, 3, 3) * 2 + 1
    x[3:] *= 5  # the workers' statistics differ
    y, g = _grads(ours, x)

    def by_slice(x):  # the oracle: timm's own layer on each worker's slice, from the same state
        outs = []
        for xs in x.split(3):
            r = _timm().EvoNorm2dB0(4)
            r.load_state_dict(ref.state_dict())
            outs.append(r(xs))
            updates.append(r.running_var)
        return torch.cat(outs)

    updates = []
    expect, expect_g = _grads(by_slice, x)
    torch.testing.assert_close(y, expect)
    torch.testing.assert_close(g, expect_g)
    torch.testing.assert_close(ours.running_var, torch.stack(updates).mean(0))
    assert not torch.allclose(y, ref(x))  # not the whole batch's statistics
    ours.eval(), ref.eval()
    ref.running_var.copy_(ours.running_var)
    torch.testing.assert_close(ours(x), ref(x))  # eval: timm's forward


# -- norms that include their activation, in the models -------------------------------------------


def _na(norm, **kw):
    from normbench.models import NormAct

    return NormAct(norm, **kw)


def test_a_norm_with_its_own_activation_replaces_norm_and_activation_in_a_block():
    from normbench.models import vgg

    net = vgg((1, 8, 8), 10, _na("frn"), layers=[4, 6])
    blocks = [m for m in net if isinstance(m, nn.Sequential)]
    assert [type(m).__name__ for m in blocks[0]] == ["Conv2d", "FilterResponseNormTlu2d"]
    assert blocks[0][1].apply_act and not any(isinstance(m, nn.ReLU) for m in net.modules())
    with_gn = vgg((1, 8, 8), 10, _na("gn"), layers=[4, 6])  # an ordinary norm keeps its activation
    assert [type(m).__name__ for m in with_gn[0]] == ["Conv2d", "GroupNorm", "ReLU"]
    off = vgg((1, 8, 8), 10, _na("frn", norm_options={"apply_act": False}), layers=[4])
    assert [type(m).__name__ for m in off[0]] == ["Conv2d", "FilterResponseNormTlu2d", "ReLU"]


@pytest.mark.parametrize("norm", ["frn", "evonorm_b0", "evonorm_s0"])
def test_resnet_blocks_end_in_the_act_less_variant_and_activate_after_the_add(norm):
    """As timm's EvoNorm/FRN nets: the norm before the residual add (and on the projection
    shortcut) is built with apply_act=False; the configured activation follows the add."""
    from normbench.models import BasicBlock, resnet_cifar

    net = resnet_cifar((1, 8, 8), 10, _na(norm), depth=8, width=4)
    blocks = [m for m in net.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 3
    for b in blocks:
        assert b.conv1[1].apply_act and len(b.conv1) == 2
        assert not b.before_add.apply_act and isinstance(b.after_add, nn.ReLU)
    projections = [b.shortcut[1] for b in blocks if isinstance(b.shortcut, nn.Sequential)]
    assert len(projections) == 2 and not any(p.apply_act for p in projections)


def test_norms_with_their_own_activation_refuse_post_placement_and_torchvision():
    from normbench.errors import ConfigError
    from normbench.models import build_model

    with pytest.raises(ConfigError, match="placement: 'post' is not possible with norm 'evonorm_s0'"):
        _na("evonorm_s0", placement="post")
    with pytest.raises(ConfigError, match="without their own activation"):
        build_model("resnet18", (3, 32, 32), 10, _na("frn"))


@pytest.mark.parametrize("norm", ["frn", "evonorm_b0", "evonorm_s0"])
def test_conv_only_norms_cannot_follow_a_linear_layer(norm):
    from normbench.errors import ConfigError

    with pytest.raises(ConfigError, match=f"norm '{norm}' needs spatial feature maps and cannot follow a linear"):
        create_norm(norm, 8, 1)


# -- Weight Standardization (Qiao et al. 2019): timm's StdConv2d as a model option -----------------


def test_std_conv_standardizes_each_filter():
    """Ŵ = (W − mean) / √(var + ε) per output filter (over in-channels × kernel): zero mean, unit
    variance; the layer convolves with Ŵ."""
    from normbench.models import conv2d

    torch.manual_seed(7)
    conv = conv2d(True)(3, 5, 3, 1, 1, bias=True)
    assert isinstance(conv, _timm().StdConv2d) and isinstance(conv, nn.Conv2d)
    with torch.no_grad():
        conv.weight.mul_(4).add_(torch.randn(5, 1, 1, 1))  # filters far from standardized
        conv.bias.normal_()
    w = conv.weight.double().flatten(1)
    w_hat = ((w - w.mean(1, keepdim=True)) / torch.sqrt(w.var(1, unbiased=False, keepdim=True) + conv.eps))
    torch.testing.assert_close(w_hat.mean(1), torch.zeros(5, dtype=torch.double), atol=1e-12, rtol=0)
    torch.testing.assert_close(w_hat.var(1, unbiased=False), torch.ones(5, dtype=torch.double), atol=1e-4, rtol=0)
    x = torch.randn(2, 3, 6, 6)
    expect = torch.nn.functional.conv2d(x.double(), w_hat.view_as(conv.weight), conv.bias.double(), padding=1)
    torch.testing.assert_close(conv(x).double(), expect.detach(), rtol=1e-5, atol=1e-5)
    assert conv.eps == 1e-6 and conv2d(False) is nn.Conv2d


@pytest.mark.parametrize("model,opts", [("vgg", {"layers": [4, "M", 6]}), ("resnet_cifar", {"depth": 8, "width": 4})])
def test_weight_std_builds_std_convs_only_when_asked_and_they_get_the_init(model, opts):
    from normbench.models import build_model

    StdConv2d = _timm().StdConv2d
    plain = build_model(model, (1, 8, 8), 10, _na("gn", norm_options={"groups": 2}), opts)
    assert not any(isinstance(m, StdConv2d) for m in plain.modules())
    torch.manual_seed(0)
    na = _na("gn", norm_options={"groups": 2}, init="normal", init_std=0.003)
    ws = build_model(model, (1, 8, 8), 10, na, {**opts, "weight_std": True})
    convs = [m for m in ws.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(isinstance(m, StdConv2d) for m in convs)
    assert len(convs) == sum(isinstance(m, nn.Conv2d) for m in plain.modules())
    assert all(0.001 < m.weight.std().item() < 0.006 for m in convs)  # N(0, init_std²), not torch's default


def test_weight_std_must_be_a_boolean():
    from normbench.errors import ConfigError
    from normbench.models import build_model

    with pytest.raises(ConfigError, match="model.weight_std: 'yes' is not true or false"):
        build_model("vgg", (1, 8, 8), 10, _na("gn"), {"weight_std": "yes"})


# -- through validation and training like every built-in ------------------------------------------

NEW = ["rms", "dyt", "frn", "evonorm_b0", "evonorm_s0"]
CONV_ONLY = {"frn", "evonorm_b0", "evonorm_s0"}
CNN = {"layers": [8, "M", 16]}


def run_cfg(norm, seed=0, model="vgg", model_options=CNN, **kw):
    from normbench.settings import RunConfig

    return RunConfig.from_dict({**dict(model=model, model_options=model_options, norm=norm, lr=0.05, seed=seed,
                                       batch_size=8, steps=20, eval_every=10, threads=1, optimizer="momentum",
                                       momentum=0.9, dataset="digits"), **kw})


@pytest.mark.parametrize("norm", NEW)
def test_new_norms_pass_validation_in_a_cnn_and_where_allowed_an_mlp(norm):
    from normbench.errors import ConfigError
    from normbench.runners.sgd import SGD

    SGD().check(run_cfg(norm))
    SGD().check(run_cfg(norm, model="resnet_cifar", model_options={"depth": 8, "width": 8}))
    mlp = run_cfg(norm, model="mlp", model_options={"depth": 2, "width": 16})
    if norm in CONV_ONLY:
        with pytest.raises(ConfigError, match=f"norm '{norm}' needs conv feature maps; model 'mlp' has only linear"):
            SGD().check(mlp)
    else:
        SGD().check(mlp)


def test_ws_gn_and_evonorm_b0_with_workers_pass_validation():
    from normbench.runners.sgd import SGD

    SGD().check(run_cfg("gn", model_options={**CNN, "weight_std": True}, norm_options={"groups": 4}))
    SGD().check(run_cfg("evonorm_b0", workers=2))  # per-worker statistics: allowed


@pytest.mark.slow
@pytest.mark.parametrize("norm,kw", [(n, {}) for n in NEW] + [
    ("gn", {"norm_options": {"groups": 4}, "model_options": {**CNN, "weight_std": True}}),
    ("evonorm_b0", {"workers": 2})])
def test_new_norms_train_end_to_end_and_a_pack_of_two_matches_solo(norm, kw):
    """Each trains (digits, a small CNN, 20 steps) to a finite loss through the runner; two
    seeds vectorized in one pack (torch.func) match their solo runs within PACK_TOLERANCE."""
    import numpy as np

    from normbench.norms import NORMS
    from normbench.runners import train
    from normbench.runners.sgd import get_data
    from normbench.train import PACK_TOLERANCE, Trainer

    assert NORMS.get(norm).vmappable
    cfgs = [run_cfg(norm, seed, **kw) for seed in (0, 1)]
    pack = Trainer(cfgs, get_data(cfgs[0], "cpu"))
    assert pack.net.vectorized
    packed = pack.run()
    for c, p in zip(cfgs, packed):
        solo = train(c)
        assert np.isfinite(solo.summary["final_train_loss"]) and not solo.diverged
        assert (solo.metrics[["step", "split", "metric"]].values == p.metrics[["step", "split", "metric"]].values).all()
        np.testing.assert_allclose(p.metrics.value.values, solo.metrics.value.values, **PACK_TOLERANCE)
