"""Every model × norm × placement builds, trains one step, and lowers the loss."""

import pytest
import torch
import torch.nn.functional as F

from normbench.errors import ConfigError
from normbench.models import MODELS, NormAct, build_model, build_network, check_forward
from normbench.norms import NORMS
from normbench.probes import rng_state, set_rng_state
from normbench.settings import RunConfig

IMAGE = (1, 8, 8)
OPTIONS = {  # small sizes: the structure is what is tested
    "mlp": {"depth": 3, "width": 16}, "vgg": {"layers": [8, "M", 16]},
    "resnet_cifar": {"depth": 8, "width": 8}, "dln": {"depth": 6, "width": 10},
    "resnet18": {}, "resnet50": {}, "linear": {}, "transformer": {"depth": 2, "width": 16, "heads": 2},
}
NORM_OPTS = {"gn": {"groups": 2}}
LR = {"dln": 1e-2, "resnet18": 1e-3, "resnet50": 1e-3}


def unsupported(model, norm, placement):
    spec = NORMS.get(norm)
    if model == "transformer":  # token sequences, not images: tests/test_transformer.py trains it
        return True
    if spec.acts and placement != "pre":  # FRN, EvoNorm: norm and activation are one layer
        return True
    if model in ("resnet18", "resnet50"):
        # IN needs more than one spatial element; torchvision's stem shrinks 8×8 inputs to 1×1
        return placement != "pre" or spec.reparametrizes_weight or spec.acts or norm == "in"
    return spec.conv_only and model in ("mlp", "dln", "linear")


@pytest.mark.parametrize("placement", ["pre", "post"])
@pytest.mark.parametrize("norm", sorted(NORMS))
@pytest.mark.parametrize("model", sorted(MODELS))
def test_builds_and_one_sgd_step_lowers_the_loss(model, norm, placement):
    torch.manual_seed(0)
    if unsupported(model, norm, placement):
        with pytest.raises(ConfigError), torch.device("meta"):  # what config validation runs
            na = NormAct(norm, NORM_OPTS.get(norm, {}), "relu", placement)
            check_forward(build_model(model, IMAGE, 10, na, OPTIONS[model]), IMAGE)
        return
    na = NormAct(norm, NORM_OPTS.get(norm, {}), "relu", placement)
    if model == "resnet50" and norm not in ("bn", "gn", "none"):
        pytest.skip("resnet50 shares resnet18's norm_layer plumbing (tested with every norm); bn/gn/none here")
    net = build_model(model, IMAGE, 10, na, OPTIONS[model])
    net.train()
    x, y = torch.randn(16, *IMAGE), torch.randint(0, 10, (16,))
    rng = rng_state(net)

    def loss():
        set_rng_state(net, rng)  # same noise (noisy_bn) for both evaluations
        return F.cross_entropy(net(x), y)

    before = loss()
    before.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters() if p.requires_grad)
    opt = torch.optim.SGD(net.parameters(), lr=LR.get(model, 1e-2))
    opt.step()
    with torch.no_grad():
        after = loss()
    assert float(after) < float(before.detach())


@pytest.mark.parametrize("act", ["relu", "sigmoid", "tanh", "identity", "elu"])
def test_placement_orders_norm_and_activation(act):
    pre = build_model("mlp", (4,), 2, NormAct("bn", {}, act, "pre"), {"depth": 1, "width": 3})
    post = build_model("mlp", (4,), 2, NormAct("bn", {}, act, "post"), {"depth": 1, "width": 3})
    kinds = lambda net: [type(m).__name__ for m in net[1]]  # noqa: E731
    assert kinds(pre)[1] == "BatchNorm1d" and kinds(post)[2] == "BatchNorm1d"


def test_deep_mlp_of_the_depth_experiment_is_expressible():
    net = build_model("mlp", (1, 8, 8), 10, NormAct("bn", {}, "relu", "pre", "kaiming"), {"depth": 100, "width": 256})
    assert sum(isinstance(m, torch.nn.Linear) for m in net.modules()) == 101
    assert net(torch.randn(4, 1, 8, 8)).shape == (4, 10)


def test_vgg16_has_13_convs_and_fits_cifar_and_digits():
    na = NormAct("bn", {}, "relu", "pre", "glorot")
    for shape in [(3, 32, 32), (1, 8, 8)]:
        net = build_model("vgg", shape, 10, na, {"layers": "vgg16", "width_mult": 0.125})
        assert sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) == 13
        assert net(torch.randn(2, *shape)).shape == (2, 10)


def test_resnet_depths():
    for depth, convs in [(20, 19 + 2), (56, 55 + 2)]:
        net = build_model("resnet_cifar", (3, 32, 32), 10, NormAct("bn"), {"depth": depth})
        assert sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) == convs  # + 2 projection shortcuts
    with pytest.raises(ConfigError, match="6n\\+2"):
        build_model("resnet_cifar", (3, 32, 32), 10, NormAct("bn"), {"depth": 21})


def test_dln_is_25_linear_layers_of_10():
    net = build_model("dln", (10,), 10, NormAct("none", activation="identity"))
    lins = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert len(lins) == 25 and all(m.weight.shape == (10, 10) and m.bias is None for m in lins)


def test_build_network_is_seeded_and_typed():
    cfg = RunConfig.from_dict(dict(model="mlp", model_options={"depth": 2, "width": 8}, norm="bn", seed=3,
                                   dtype="float64"))
    a, b = build_network(cfg, (1, 8, 8), 10), build_network(cfg, (1, 8, 8), 10)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert all(p.dtype == torch.float64 for p in a.parameters())


def test_user_model_from_a_file(tmp_path):
    """Your own model, named 'file.py:Class', built with (in_shape, out_dim, na, **options)."""
    (tmp_path / "mynets.py").write_text(
        "import math, torch\n"
        "class Tiny(torch.nn.Sequential):\n"
        "    def __init__(self, in_shape, out_dim, na, width=4):\n"
        "        super().__init__(torch.nn.Flatten(), na.block(torch.nn.Linear(math.prod(in_shape), width), width, 1),\n"
        "                         na.weight(torch.nn.Linear(width, out_dim)))\n")
    net = build_model(f"{tmp_path}/mynets.py:Tiny", (1, 8, 8), 10, NormAct("bn"), {"width": 6})
    assert isinstance(net[1][1], torch.nn.BatchNorm1d) and net[1][1].num_features == 6
    with pytest.raises(ConfigError, match="unknown option.*depth.*allowed: width"):
        build_model(f"{tmp_path}/mynets.py:Tiny", (1, 8, 8), 10, NormAct("bn"), {"depth": 2})


def test_inits():
    torch.manual_seed(0)
    net = build_model("mlp", (1000,), 10, NormAct("none", init="kaiming"), {"depth": 1, "width": 1000})
    assert float(net[1][0].weight.detach().std()) == pytest.approx((2 / 1000) ** 0.5, rel=0.02)
    # Glorot & Bengio 2010 uniform with gain 1 (TensorFlow's default), whatever the activation
    for act in ("identity", "relu"):
        net = build_model("mlp", (1000,), 10, NormAct("none", init="glorot", activation=act), {"depth": 1, "width": 1000})
        assert float(net[1][0].weight.detach().std()) == pytest.approx((2 / 2000) ** 0.5, rel=0.02)
    net = build_model("mlp", (1000,), 10, NormAct("none", init="normal", init_std=0.01), {"depth": 1, "width": 1000})
    assert float(net[1][0].weight.detach().std()) == pytest.approx(0.01, rel=0.02)
    assert float(net[1][0].bias.detach().abs().max()) == 0.0


def test_bad_names():
    with pytest.raises(ConfigError, match="valid: .*mlp"):
        build_model("perceiver", IMAGE, 10, NormAct())
    with pytest.raises(ConfigError, match="activation.*gelu.*relu"):
        NormAct(activation="gelu")
    with pytest.raises(ConfigError, match="placement"):
        NormAct(placement="middle")
    with pytest.raises(ConfigError, match="unknown option.*depht"):
        build_model("mlp", IMAGE, 10, NormAct(), {"depht": 3})
