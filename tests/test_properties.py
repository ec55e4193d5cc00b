"""The report card's properties: every built-in's known answers (batch statistics, running averages,
what each normalizer divides out), and broken normalizers flagged, never a crash."""

import math
from pathlib import Path

import pytest
import torch

from normbench import properties as Pr

TRAIN, EVAL, AGREE = "batch-independent in training", "batch-independent in evaluation", "train/eval agreement"
SCALE, SHIFT = "scale-invariant", "shift-invariant"
ZERO, ONE_BY_ONE, GRADS = "finite on an all-zero channel", "finite on 1×1 maps", "finite gradients"

# What each normalizer's formula says (None: not pinned here)
#            train  eval  agree  scale  shift
KNOWN = {
    "bn":   (False, True, False, True, True),    # batch statistics in training, running averages at evaluation
    "gn":   (True, True, True, True, True),      # per sample, per group: divides out scale and shift
    "ln":   (True, True, True, True, True),
    "in":   (True, True, True, True, True),
    "rms":  (True, True, True, True, False),     # no centring: a shift changes the root mean square
    "frn":  (True, True, True, True, False),     # ν² = mean x², no centring; TLU after it
    "dyt":  (True, True, True, False, False),    # tanh(αx): no statistics at all
    "none": (True, True, True, False, False),
    "brn":  (False, True, False, None, None),    # BN while its running statistics settle
    "evonorm_s0": (True, True, True, False, False),  # x·σ(v·x): the gate sees the scale
    "evonorm_b0": (False, True, False, True, False),
}


@pytest.fixture(scope="module")
def measured():
    norms = {n: {"type": n, "options": {"groups": 4} if n == "gn" else {}} for n in KNOWN}
    return Pr.measure(norms).set_index(["norm", "property"])


@pytest.mark.parametrize("norm", list(KNOWN))
def test_each_builtin_has_its_known_properties(measured, norm):
    for prop, expected in zip((TRAIN, EVAL, AGREE, SCALE, SHIFT), KNOWN[norm]):
        if expected is not None:
            row = measured.loc[(norm, prop)]
            assert bool(row.holds) == expected, (norm, prop, row.detail)


def test_the_numbers_behind_the_verdicts(measured):
    """Independence is exact for per-sample layers (the same arithmetic on the same sample), BN's batch
    dependence is large, and an invariance holds to the eps of the layer, not exactly."""
    assert measured.loc[("gn", TRAIN), "value"] == 0.0
    assert measured.loc[("bn", TRAIN), "value"] > 1e-2
    assert 0 < measured.loc[("ln", SCALE), "value"] < 1e-4
    assert measured.loc[("dyt", SCALE), "value"] > 0.1


def test_every_builtin_is_finite_on_degenerate_inputs_except_the_known_ones():
    norms = {n: {"type": n, "options": {}} for n in ("bn", "ln", "rms", "dyt", "frn", "in", "lp_bn")}
    p = Pr.measure(norms).set_index(["norm", "property"])
    finite = [q.name for q in Pr.PROPERTIES if q.name.startswith("finite")]
    for n in ("bn", "ln", "rms", "dyt", "frn"):
        assert all(p.loc[(n, q), "holds"] for q in finite), n
    # torch's instance norm refuses one value per channel in training: flagged with its error
    assert not p.loc[("in", ONE_BY_ONE), "holds"] and "raises ValueError" in p.loc[("in", ONE_BY_ONE), "detail"]
    # ℓp BN's (mean |x|^p)^(1/p) has an infinite derivative at an all-zero channel: NaN gradients
    assert p.loc[("lp_bn", ZERO), "holds"] and not p.loc[("lp_bn", GRADS), "holds"]


BROKEN = '''
import torch


class EvalBatchStats(torch.nn.Module):
    """BN that forgets its running statistics: batch statistics at evaluation too."""

    def __init__(self, num_features, dim=2):
        super().__init__()
        self.bn = torch.nn.BatchNorm2d(num_features, track_running_stats=False)

    def forward(self, x):
        return self.bn(x)


class NaNOnZero(torch.nn.Module):
    """Divides by the channel's mean absolute value without an eps: 0/0 on an all-zero channel."""

    def __init__(self, num_features, dim=2):
        super().__init__()

    def forward(self, x):
        return x / x.abs().mean((0, 2, 3), keepdim=True)


class Raises(torch.nn.Module):
    def __init__(self, num_features, dim=2):
        super().__init__()

    def forward(self, x):
        raise RuntimeError("not implemented for this shape")
'''


@pytest.fixture
def broken(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("broken.py").write_text(BROKEN)
    return lambda name: {"type": f"broken.py:{name}", "options": {}}


def test_batch_statistics_at_evaluation_are_flagged(broken):
    p = Pr.measure({"x": broken("EvalBatchStats")}).set_index("property")
    assert not p.loc[EVAL, "holds"] and p.loc[EVAL, "value"] > 1e-2
    assert p.loc[AGREE, "holds"]  # it agrees with itself: the same batch statistics in both modes


def test_nan_on_a_zero_channel_is_flagged(broken):
    p = Pr.measure({"x": broken("NaNOnZero")}).set_index("property")
    assert not p.loc[ZERO, "holds"] and p.loc[ZERO, "value"] == 8 * 16  # every value of that channel
    assert p.loc["finite on a constant channel", "holds"]


def test_a_forward_that_raises_is_flagged_on_every_property_and_never_raises(broken):
    p = Pr.measure({"x": broken("Raises")})
    assert not p.holds.any() and p.detail.str.startswith("raises RuntimeError: not implemented").all()
    assert math.isnan(p.value.iloc[0])
    assert Pr.forward_error(broken("Raises")["type"], {}) == "RuntimeError: not implemented for this shape"
    assert Pr.forward_error("gn", {"groups": 4}) is None


def test_each_check_gets_a_fresh_layer():
    """A check never sees the state another left (running statistics, step counters)."""
    layer = Pr.Layer("bn", {})
    a, b = layer.fresh(), layer.fresh()
    assert a is not b and torch.equal(a.running_mean, b.running_mean)
    w = layer.warmed()
    assert not torch.equal(w.running_mean, a.running_mean)  # the warm-up moved the statistics ...
    assert torch.equal(layer.warmed().running_mean, w.running_mean)  # ... once: each caller gets a copy
