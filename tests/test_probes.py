"""Probe definitions against analytic oracles; probes never change training."""

import math

import pandas as pd
import pytest
import torch
from torch import nn

from normbench import probes
from normbench.runners import train
from normbench.settings import RunConfig

torch.set_default_dtype(torch.float32)


def quadratic(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, n, generator=g, dtype=torch.float64)
    H = q @ q.T + torch.eye(n, dtype=torch.float64)
    w = torch.randn(n, generator=g, dtype=torch.float64)
    return H, {"w": w}, lambda p: 0.5 * p["w"] @ H @ p["w"]


def test_line_search_on_a_quadratic():
    H, params, loss = quadratic()
    g = H @ params["w"]
    etas = [0.01, 0.05, 0.1]
    ls = probes.line_search(loss, params, etas)
    Hg = H @ g
    for eta, d, L in zip(etas, ls.grad_diffs, ls.losses):
        # ∇L(w − ηg) − g = −ηHg: predictiveness is η‖Hg‖
        assert d == pytest.approx(eta * float(Hg.norm()), rel=1e-6)
        w = params["w"] - eta * g
        assert L == pytest.approx(float(0.5 * w @ H @ w), rel=1e-6)  # landscape = direct evaluation
    # β_eff = ‖Hg‖/‖g‖ at every η, so also the max
    assert ls.beta_eff == pytest.approx(float(Hg.norm() / g.norm()), rel=1e-6)
    assert ls.grad_norm == pytest.approx(float(g.norm()), rel=1e-9)


def test_relative_loss():
    H, params, loss = quadratic()
    g = H @ params["w"]
    alphas = [0.0, 0.01, 0.1]
    rel = probes.relative_loss(loss, params, alphas)
    assert rel[0] == 1.0
    for a, r in zip(alphas, rel):
        w = params["w"] - a * g
        assert r == pytest.approx(float((w @ H @ w) / (params["w"] @ H @ params["w"])), rel=1e-9)


def test_ics_on_a_two_layer_linear_model_matches_hand_computation():
    """f(x) = W2 W1 x, L = ½ mean ‖f(x) − y‖².  For layer 2, G = ∇_{W2} L(W1, W2) and
    G' = ∇_{W2} L(W1', W2) where W1' is W1 after its update; for layer 1 nothing
    precedes it, so its ICS is zero."""
    torch.manual_seed(0)
    n, d = 7, 3
    x, y = torch.randn(n, d, dtype=torch.float64), torch.randn(n, d, dtype=torch.float64)
    W1, W2 = torch.randn(d, d, dtype=torch.float64), torch.randn(d, d, dtype=torch.float64)
    W1_new, W2_new = W1 - 0.1 * torch.randn(d, d, dtype=torch.float64), W2 + 0.3

    def loss(p):
        return 0.5 * ((x @ p["l1"].T @ p["l2"].T - y) ** 2).sum(1).mean()

    def grad_w2(w1, w2):  # by hand: (1/n) Σ (W2 W1 x − y)(W1 x)ᵀ
        h = x @ w1.T
        return (h @ w2.T - y).T @ h / n

    res = probes.ics(loss, {"l1": W1, "l2": W2}, {"l1": W1_new, "l2": W2_new}, [["l1"], ["l2"]], ["l1", "l2"])
    G, Gp = grad_w2(W1, W2), grad_w2(W1_new, W2)
    assert res[1][0] == pytest.approx(float((G - Gp).norm()), rel=1e-9)
    assert res[1][1] == pytest.approx(float((G * Gp).sum() / (G.norm() * Gp.norm())), rel=1e-9)
    assert res[0][0] == 0.0 and res[0][1] == pytest.approx(1.0)


def test_functional_loss_leaves_network_state_alone():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
    from normbench.layers import BatchNoise
    net.insert(2, BatchNoise(6, seed=3))
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    f = probes.FunctionalLoss(net, nn.functional.cross_entropy, x, y)
    p = f.params()
    a = f(p)
    b = f({k: v + 0.0 for k, v in p.items()})
    assert torch.equal(a, b)  # same noise at every evaluation
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k])  # BN running stats untouched
    assert torch.equal(torch.get_rng_state(), rng)


def probe_cfg(norm, probes_on, **kw):
    return RunConfig.from_dict({**dict(model="vgg", model_options={"layers": [8, "M", 16]}, norm=norm, lr=0.1,
                                       batch_size=16, steps=12, eval_every=4, threads=1,
                                       probe_every=3 if probes_on else 0,
                                       probes=["ics", "landscape", "rel_loss", "act_stats"] if probes_on else []),
                                **kw})


@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("norm", ["bn", "noisy_bn", "none"])
def test_probes_do_not_change_training(norm, opt):
    off = train(probe_cfg(norm, False, optimizer=opt, lr=0.01 if opt == "adam" else 0.1)).metrics
    on = train(probe_cfg(norm, True, optimizer=opt, lr=0.01 if opt == "adam" else 0.1)).metrics
    keep = lambda m: m[m.split != "probe"].drop(columns="wall_time_s").reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(keep(off), keep(on), check_exact=True, check_dtype=False)  # bit for bit
    probe = on[on.split == "probe"]
    assert {"ics_l2", "ics_cos", "landscape_min", "landscape_max", "grad_pred_min", "grad_pred_max", "beta_eff",
            "rel_loss", "act_mean", "act_std", "probe_loss"} == set(probe.metric)
    assert sorted(probe[probe.metric == "beta_eff"].step.unique()) == [0, 3, 6, 9]
    assert sorted(probe[probe.metric == "probe_loss"].step.unique()) == [0, 3, 6, 9]
    rel = probe[probe.metric == "rel_loss"]
    assert sorted(rel.step.unique()) == [0, 1, 2] and rel.step_size.notna().all()
    assert probe[probe.metric.str.startswith("ics")].layer.notna().all()
    lm = probe.pivot_table(index="step", columns="metric", values="value").dropna(subset=["landscape_min"])
    assert (lm.landscape_min <= lm.landscape_max).all() and (lm.grad_pred_min <= lm.grad_pred_max).all()


def test_network_probes_match_direct_evaluation():
    """The probe's landscape values equal L(W − ηg) computed by hand on the same batch."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    f = probes.FunctionalLoss(net, nn.functional.cross_entropy, x, y)
    ls = probes.line_search(f, f.params(), [0.1, 0.5])
    net.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()
    for eta, L in zip([0.1, 0.5], ls.losses):
        with torch.no_grad():
            moved = {k: v - eta * v.grad for k, v in net.named_parameters()}
            direct = nn.functional.cross_entropy(torch.func.functional_call(net, moved, (x,)), y)
        assert L == pytest.approx(float(direct), rel=1e-5)
    assert math.isfinite(ls.beta_eff) and ls.beta_eff > 0


def test_trainer_probes_measure_the_training_loss_and_real_shift():
    """Probes use batch statistics even when the model was left in eval mode, and G'
    is taken after the optimizer really moved the earlier layers (W_t is a copy)."""
    cfg = RunConfig.from_dict(dict(model="mlp", model_options={"depth": 4, "width": 32}, norm="bn", lr=0.5,
                                   batch_size=64, steps=2, eval_every=1, threads=1, probe_every=1,
                                   probes=["ics", "act_stats"], probe_layers=3))
    m = train(cfg).metrics
    std0 = m[(m.metric == "act_std") & (m.step == 0)].value
    # BN then ReLU on standardized pre-activations: std of max(z, 0), z ~ N(0, 1), is about 0.58
    assert std0.between(0.5, 0.65).all()
    ics = m[m.metric == "ics_l2"]
    assert len(ics) == 2 * 3 and (ics.value > 0).all()  # layers after the first: a real shift
    assert (m[m.metric == "ics_cos"].value < 1).all()


@pytest.mark.parametrize("opt", ["momentum", "adam"])
def test_ics_uses_the_optimizers_real_update(opt):
    """G′ is taken after the earlier layers' *actual* update -- momentum's buffer, Adam's
    moments -- not after a plain SGD step.  Oracle: a two-layer net, the update written out
    by hand from the optimizer's state, the gradients by autograd."""
    from normbench.runners.sgd import get_data
    from normbench.train import Trainer

    cfg = RunConfig.from_dict(dict(model="mlp", model_options={"depth": 1, "width": 8}, norm="none",
                                   activation="identity", optimizer=opt, lr=0.05 if opt == "momentum" else 0.01,
                                   momentum=0.9, batch_size=16, steps=3, eval_every=3, threads=1, probes=["ics"],
                                   probe_every=1, probe_layers=1))
    t = Trainer([cfg], get_data(cfg, "cpu"))
    net = t.models[0]
    names = [n for n, _ in net.named_parameters()]  # 1.0.weight, 1.0.bias, 2.weight, 2.bias
    state = {k: None for k in ("buf", "m", "v")}
    for step in range(3):
        x, y = t.batch()
        w = {k: v.detach().clone() for k, v in net.named_parameters()}

        def loss(p):
            return torch.nn.functional.cross_entropy(torch.func.functional_call(net, p, (x[0],)), y[0])

        wr = {k: v.clone().requires_grad_() for k, v in w.items()}
        g = dict(zip(names, torch.autograd.grad(loss(wr), list(wr.values()))))
        new = {}
        for k in names[:2]:  # the first layer's update, by hand
            if opt == "momentum":
                buf = g[k] if state["buf"] is None else 0.9 * state["buf"][k] + g[k]
                state.setdefault("next_buf", {})[k] = buf
                new[k] = w[k] - 0.05 * buf
            else:
                b1, b2, n = 0.9, 0.999, step + 1
                m = (1 - b1) * g[k] + (b1 * state["m"][k] if state["m"] is not None else 0)
                v = (1 - b2) * g[k] ** 2 + (b2 * state["v"][k] if state["v"] is not None else 0)
                state.setdefault("next_m", {})[k], state.setdefault("next_v", {})[k] = m, v
                new[k] = w[k] - 0.01 * (m / (1 - b1 ** n)) / ((v / (1 - b2 ** n)).sqrt() + 1e-8)
        for a in ("buf", "m", "v"):
            if f"next_{a}" in state:
                state[a] = state.pop(f"next_{a}")
        mixed = {**w, **new}
        mr = {k: v.clone().requires_grad_() for k, v in mixed.items()}
        g2 = dict(zip(names, torch.autograd.grad(loss(mr), list(mr.values()))))
        G = torch.cat([g[k].flatten() for k in names[2:]]).double()
        Gp = torch.cat([g2[k].flatten() for k in names[2:]]).double()
        t.probing.step(t, x, y)
        rows = {r["metric"]: r["value"] for r in t.recs[0].rows if r["step"] == step and r["split"] == "probe"}
        assert rows["ics_l2"] == pytest.approx(float((G - Gp).norm()), rel=1e-4, abs=1e-7)
        assert rows["ics_cos"] == pytest.approx(float(G @ Gp / (G.norm() * Gp.norm())), rel=1e-5)
        sgd = {k: w[k] - cfg.lr * g[k] for k in names[:2]}  # what a plain SGD step would have given
        assert not all(torch.allclose(sgd[k], new[k]) for k in sgd) or (opt == "momentum" and step == 0)
        t.step += 1


def test_probe_loss_is_the_loss_where_the_net_stands_and_probe_at_adds_steps():
    """probe_loss at a probe step is L(W_t; B_t): at step 0 the freshly built net's loss on the first batch;
    probe_at adds probe steps off the regular schedule."""
    from normbench.data import BatchSchedule
    from normbench.models import build_network
    from normbench.runners.sgd import get_data

    cfg = probe_cfg("none", True, probe_at=[1, 5])
    res = train(cfg)
    probe = res.metrics[res.metrics.split == "probe"]
    pl = probe[probe.metric == "probe_loss"].set_index("step").value
    assert sorted(pl.index) == [0, 1, 3, 5, 6, 9] and res.summary["probe_every"] == 3
    data = get_data(cfg, torch.device("cpu"))
    net = build_network(cfg, data.input_shape, data.num_outputs)
    idx = BatchSchedule(len(data.x_train), cfg.batch_size, cfg.seed, "cpu")(0)[1]
    with torch.no_grad():
        want = nn.functional.cross_entropy(net(data.x_train[idx]), data.y_train[idx])
    assert pl[0] == pytest.approx(float(want), rel=1e-6)
