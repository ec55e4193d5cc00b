"""The transformer study: causal masking, Pre-/Post-LN placement against a hand-composed block,
the generated corpus, next-token loss and accuracy, warm-up and Adam's betas, the gradient-norm
probe, a user's normalizer in the norm slot from config alone, and the study's claims on
hand-built data."""

import hashlib
import json
import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from normbench import probes
from normbench.claims import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, evaluate
from normbench.data import CHARS_ALPHABET, DATASETS, generate_text, load_chars
from normbench.errors import ConfigError
from normbench.models import NormAct, TokenNorm, build_model
from normbench.runners import train as run_train
from normbench.settings import RunConfig
from normbench.studies import transformer_norms as TN
from normbench.train import evaluate_model, make_optimizer, make_schedule

V, T = len(CHARS_ALPHABET), 16


def tiny(placement="pre", norm="ln", depth=2, seed=0):
    torch.manual_seed(seed)
    return build_model("transformer", (T,), V, NormAct(norm, {}, "relu", placement, "glorot"),
                       {"depth": depth, "width": 16, "heads": 2})


# -- the model -------------------------------------------------------------------------


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_a_future_token_never_changes_earlier_outputs(placement):
    """Position t's logits depend on tokens ≤ t only: changing token k leaves positions < k
    exactly as they were and changes position k (a missing or shifted mask fails this)."""
    net = tiny(placement).eval()
    x = torch.randint(0, V, (3, T), generator=torch.Generator().manual_seed(1))
    base = net(x)
    for k in (0, 5, T - 1):
        x2 = x.clone()
        x2[:, k] = (x2[:, k] + 1) % V
        out = net(x2)
        assert torch.equal(out[:, :k], base[:, :k])
        assert (out[:, k] - base[:, k]).abs().max() > 1e-4


def _attention(att, x):
    """Causal multi-head attention written out: softmax(q kᵀ/√d_head + mask) v."""
    B, L, C = x.shape
    h = att.heads
    q, k, v = (x @ att.qkv.weight.T + att.qkv.bias).split(C, -1)
    q, k, v = (t.view(B, L, h, C // h).transpose(1, 2) for t in (q, k, v))
    s = q @ k.transpose(-1, -2) / math.sqrt(C // h)
    s = s + torch.full((L, L), float("-inf")).triu(1)
    y = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, L, C)
    return y @ att.out.weight.T + att.out.bias


def _ffn(block, x):
    a, b = block.ffn[0], block.ffn[2]
    return torch.relu(x @ a.weight.T + a.bias) @ b.weight.T + b.bias


def _ln(x):
    return F.layer_norm(x, x.shape[-1:])  # affine at init: γ = 1, β = 0


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_block_matches_a_hand_composed_pre_or_post_ln_block(placement):
    net = tiny(placement)
    block = net.blocks[0]
    with torch.no_grad():  # affine parameters away from 1/0, so a missing norm cannot pass
        for m in (block.norm1.norm, block.norm2.norm):
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.5, 0.5)
    n1 = lambda z: _ln(z) * block.norm1.norm.weight + block.norm1.norm.bias  # noqa: E731
    n2 = lambda z: _ln(z) * block.norm2.norm.weight + block.norm2.norm.bias  # noqa: E731
    x = torch.randn(2, T, 16)
    if placement == "pre":  # GPT-2 / Llama: x + f(norm(x))
        h = x + _attention(block.attn, n1(x))
        want = h + _ffn(block, n2(h))
    else:  # Vaswani et al.: norm(x + f(x))
        h = n1(x + _attention(block.attn, x))
        want = n2(h + _ffn(block, h))
    torch.testing.assert_close(block(x), want, rtol=1e-5, atol=1e-5)


def test_pre_ln_has_a_final_norm_and_post_ln_none():
    pre, post = tiny("pre"), tiny("post")
    assert isinstance(pre.final_norm, TokenNorm) and isinstance(pre.final_norm.norm, torch.nn.LayerNorm)
    assert isinstance(post.final_norm, torch.nn.Identity)
    x = torch.randint(0, V, (2, T))
    h = post.blocks(post.embed(x) + post.pos[:T])
    torch.testing.assert_close(post(x), post.head(h))
    h = pre.blocks(pre.embed(x) + pre.pos[:T])
    torch.testing.assert_close(pre(x), pre.head(pre.final_norm(h)))


def test_the_norm_slot_takes_any_norm_on_the_last_dim():
    """A registry norm built for (N, C) normalizes each token over its features."""
    for norm, check in (("rms", lambda y: y.pow(2).mean(-1)), ("ln", lambda y: y.var(-1, unbiased=False))):
        slot = TokenNorm(NormAct(norm).norm_layer(8, 1))
        y = slot(torch.randn(3, 5, 8) * 4 + 1)
        torch.testing.assert_close(check(y), torch.ones(3, 5), rtol=1e-3, atol=1e-3)
    with pytest.raises(ConfigError, match="token sequences"):
        build_model("transformer", (1, 8, 8), 10, NormAct("ln"))


# -- the corpus --------------------------------------------------------------------------


def test_the_corpus_is_fixed_and_windows_shift_by_one():
    text = generate_text(10_000)
    assert hashlib.sha256(text.encode()).hexdigest() == \
        "f8eb94adb59505f07fead99d891e9b4b9b8c0e11af01891a9fd7782d45fa3b85"
    assert set(text) <= set(CHARS_ALPHABET) and generate_text(10_000, seed=1) != text
    d = load_chars(context=16)
    spec = DATASETS.get("chars16")
    assert (len(d.x_train), len(d.x_test), d.input_shape, d.num_outputs) == \
        (spec.n_train, spec.n_test, spec.input_shape, spec.num_outputs)
    ids = torch.tensor([CHARS_ALPHABET.index(c) for c in generate_text(16 * 3 + 1)])
    assert torch.equal(d.x_train[:3].flatten(), ids[:-1]) and torch.equal(d.y_train[:3].flatten(), ids[1:])
    assert d.x_train.dtype == torch.long and d.to(dtype=torch.float32).x_train.dtype == torch.long


# -- training ----------------------------------------------------------------------------


def test_evaluation_is_mean_loss_and_accuracy_per_token():
    d = load_chars(context=16)
    net = tiny()
    loss, acc = evaluate_model(lambda x: net(x).unsqueeze(0), d, lambda o, y, reduction: F.cross_entropy(
        o.flatten(0, -2), y.flatten(), reduction=reduction), chunk=50)
    with torch.no_grad():
        out = net(d.x_test)
    assert float(loss[0]) == pytest.approx(float(F.cross_entropy(out.flatten(0, 1), d.y_test.flatten())), rel=1e-5)
    assert float(acc[0]) == pytest.approx(float((out.argmax(-1) == d.y_test).float().mean()), rel=1e-9)


def test_linear_warmup_then_the_schedule_and_adam_betas():
    p = [torch.nn.Parameter(torch.zeros(1))]
    cfg = RunConfig.from_dict(dict(optimizer="adam", lr=0.1, warmup_steps=4, adam_betas=[0.9, 0.98]))
    opt = make_optimizer(cfg, [{"params": p, "lr": cfg.lr}])
    assert opt.param_groups[0]["betas"] == (0.9, 0.98)
    sched, lrs = make_schedule(cfg, opt, 10), []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    assert make_schedule(RunConfig.from_dict(dict(lr=0.1)), opt, 10) is None  # no warm-up: as before
    with pytest.raises(ConfigError, match="adam_betas"):
        RunConfig.from_dict(dict(adam_betas=[0.9]))
    with pytest.raises(ConfigError, match="warmup_steps"):
        RunConfig.from_dict(dict(warmup_steps=-1))


def test_a_transformer_run_logs_per_token_metrics_and_layer_gradient_norms():
    cfg = RunConfig.from_dict(dict(model="transformer", model_options={"depth": 2, "width": 16, "heads": 2},
                                   dataset="chars16", norm="ln", placement="post", optimizer="adam", lr=3e-3,
                                   batch_size=8, steps=4, eval_every=2, probes=["grad_norm"], probe_every=2,
                                   warmup_steps=2))
    r = run_train(cfg)
    m = r.metrics
    g = m[m.metric == "grad_norm"]
    assert sorted(g.step.unique()) == [0, 2] and r.summary["warmup_steps"] == 2
    assert set(g.layer) == {f"blocks.{i}.{n}" for i in range(2) for n in ("attn.qkv", "attn.out", "ffn.0", "ffn.2")
                            } | {"head"}
    assert 0 < r.summary["final_train_acc"] < 1 and 0 < r.summary["final_test_loss"] < math.log(V) + 1


def test_grad_norm_probe_is_each_layer_weight_gradient_norm():
    net = tiny("post")
    x = torch.randint(0, V, (4, T))
    loss = F.cross_entropy(net(x).flatten(0, 1), torch.randint(0, V, (4 * T,)))
    loss.backward()
    g = {k: p.grad for k, p in net.named_parameters()}
    got = probes.grad_norms(net, g)
    assert got["blocks.1.ffn.2"] == pytest.approx(float(net.blocks[1].ffn[2].weight.grad.norm()), rel=1e-6)
    assert got["head"] == pytest.approx(float(net.head.weight.grad.norm()), rel=1e-6)
    assert list(got)[0] == "blocks.0.attn.qkv" and list(got)[-1] == "head"  # forward order


# -- a user's normalizer in the norm slot, from config alone --------------------------------

USER_NORM = '''
import torch

class ScaleNorm(torch.nn.Module):
    """Nguyen & Salazar's ScaleNorm: g * x / ||x|| over the last dim."""
    def __init__(self, num_features, dim=1, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.g = torch.nn.Parameter(torch.tensor(float(num_features) ** 0.5))

    def forward(self, x):
        return self.g * x / x.norm(dim=-1, keepdim=True).clamp_min(self.eps)
'''


@pytest.mark.slow
def test_a_users_normalizer_runs_in_the_transformer_norm_slot_from_config(tmp_path):
    from test_snakemake import run_snakemake, workdir_with

    (tmp_path / "mynorms.py").write_text(USER_NORM)
    config = {"device": "cpu", "threads": 1,
              "norms": {"scale": {"type": "mynorms.py:ScaleNorm", "options": {"eps": 1e-6}}},
              "models": {"tf": {"type": "transformer", "options": {"depth": 2, "width": 16, "heads": 2}}},
              "train": {"optimizer": "adam", "steps": 30, "eval_every": 10},
              "studies": {"transformer_norms": {"grid": {
                  "model": ["tf"], "dataset": ["chars16"], "norm": ["scale"], "placement": ["pre", "post"],
                  "batch_size": [8], "lr": [3e-3], "seed": [0]}}}}
    wd = workdir_with(tmp_path, config)
    p = run_snakemake(wd, "--cores", "2", "results/transformer_norms/summary.parquet")
    assert p.returncode == 0, p.stderr[-3000:]
    s = pq.read_table(wd / "results/transformer_norms/summary.parquet").to_pandas()
    assert set(s.norm_type) == {"mynorms.py:ScaleNorm"} and json.loads(s.norm_options.iloc[0]) == {"eps": 1e-6}
    m = pq.read_table(wd / "results/transformer_norms/metrics.parquet").to_pandas()
    for pl in ("pre", "post"):
        loss = m[(m.placement == pl) & (m.split == "test") & (m.metric == "loss")].sort_values("step").value
        assert loss.iloc[-1] < loss.iloc[0] - 0.2  # it trained
    assert not s.diverged.any()


# -- the claims, on hand-built data ----------------------------------------------------------

H1 = TN.unigram_entropy("chars16")


def _summary(rows):
    base = dict(study="transformer_norms", dataset="chars16", activation="relu", batch_size=16, norm_options="{}",
                model_type="transformer", diverged=False, collapsed=False, steps=150, warmup_steps=0, optimizer="adam")
    out = []
    for r in rows:
        r = {**base, **r}
        r.setdefault("model", "tf6" + ("_warmup" if r["warmup_steps"] else ""))
        r.setdefault("model_options", json.dumps({"depth": r.pop("depth", 6)}))
        r.setdefault("norm", r["norm_type"])
        r.setdefault("final_train_loss", r["final_test_loss"])
        out.append(r)
    return pd.DataFrame(out)


def _losses(post_nowarm, pre_nowarm, post_warm, lr=0.02, seeds=(0, 1, 2)):
    rows = []
    for i, seed in enumerate(seeds):
        for pl, w, v in (("post", 0, post_nowarm), ("pre", 0, pre_nowarm), ("post", 75, post_warm)):
            rows.append(dict(norm_type="ln", placement=pl, warmup_steps=w, lr=lr, seed=seed,
                             final_test_loss=v + 0.01 * i))
            rows.append(dict(norm_type="ln", placement=pl, warmup_steps=w, lr=0.002, seed=seed,
                             final_test_loss=1.7 + 0.01 * i))
    return _summary(rows)


def _verdict(claim_id, s, m=None):
    claim = next(c for c in TN.CLAIMS if c.id == claim_id)
    return claim.check(s, m if m is not None else pd.DataFrame(columns=["metric", "layer", "step", "value"]))


def test_post_ln_failure_and_warmup_rescue_claims():
    stalled, trained = H1 + 0.01, 1.8
    s = _losses(post_nowarm=stalled, pre_nowarm=trained, post_warm=1.9)
    assert _verdict("postln_fails_without_warmup", s).verdict == REPRODUCED
    assert _verdict("warmup_rescues_postln", s).verdict == REPRODUCED
    assert "Post-LN 3/3 seeds" in _verdict("postln_fails_without_warmup", s).measured  # stalled runs counted
    s = _losses(post_nowarm=trained, pre_nowarm=trained + 0.05, post_warm=trained)  # no failure at all
    assert _verdict("postln_fails_without_warmup", s).verdict == NOT_REPRODUCED
    assert _verdict("warmup_rescues_postln", s).verdict == NOT_REPRODUCED
    # a diverged run counts as ln V (uniform guess), not as its (non-finite) loss
    s = _losses(post_nowarm=float("nan"), pre_nowarm=trained, post_warm=1.9)
    s.loc[s.final_test_loss.isna(), "diverged"] = True
    ev = _verdict("postln_fails_without_warmup", s)
    assert ev.verdict == REPRODUCED and ev.estimate == pytest.approx(math.log(V) - trained - 0.01)


def _recipe(deltas: dict, seeds=range(3), attn: dict | None = None):
    """Recipe-arm runs (AdamW): setting -> validation loss above LN's 1.5; a DyT setting is (α₀, Δ)."""
    rows = []
    for seed in seeds:
        for name, d in deltas.items():
            norm_type, opts = ("dyt", {"alpha": d[0]}) if name.startswith("dyt") else (name, {})
            delta = d[1] if name.startswith("dyt") else d
            model_options = {"depth": 6, **({"attn_norm_options": attn[name]} if attn and name in attn else {})}
            rows.append(dict(norm=name, norm_type=norm_type, norm_options=json.dumps(opts), placement="pre", lr=0.003,
                             seed=seed, batch_size=64, optimizer="adamw", steps=254, model="tf6" + name,
                             model_options=json.dumps(model_options), final_test_loss=1.5 + delta + 0.002 * seed))
    return _summary(rows)


def test_rms_and_dyt_match_ln_claims_are_equivalence_tests_on_the_recipe_arm():
    s = _recipe({"ln": 0.0, "rms": 0.01, "dyt_a05": (0.5, 0.3), "dyt_a1": (1.0, 0.2), "dyt_a2": (2.0, 0.25)})
    assert _verdict("rms_trains_like_ln", s).verdict == REPRODUCED
    dyt = _verdict("dyt_trains_like_ln", s)
    # DyT at its best α₀ (1: 0.2 above LN) against LN: not reproduced; the sweep is in the text, each α₀ apart
    assert dyt.verdict == NOT_REPRODUCED and dyt.estimate == pytest.approx(0.2)
    assert "validation loss DyT α₀ 1 − LN" in dyt.measured
    assert "DyT α₀ 1 1.702, DyT α₀ 2 1.752, DyT α₀ 0.5 1.802" in dyt.measured
    # a setting with its own α₀ in attention is a variant of its own (the same norm id, another model)
    split = _recipe({"ln": 0.0, "dyt_a1": (1.0, 0.2), "dyt_a1 ": (1.0, 0.01)}, attn={"dyt_a1 ": {"alpha": 2.0}})
    split.loc[split.model == "tf6dyt_a1 ", "norm"] = "dyt_a1"
    ev = _verdict("dyt_trains_like_ln", split)
    assert ev.verdict == REPRODUCED and "DyT α₀ 1 (attention 2) − LN" in ev.measured
    # the training arm (Adam, Xiong et al.) does not enter the recipe claims, however it went
    xiong = _summary([dict(norm_type="dyt", placement="pre", lr=0.002, seed=k, final_test_loss=1.5) for k in range(3)])
    assert _verdict("dyt_trains_like_ln", pd.concat([s, xiong])).verdict == NOT_REPRODUCED
    noisy = s.copy()  # a difference whose interval crosses the margin decides nothing
    noisy.loc[noisy.norm_type == "rms", "final_test_loss"] += np.array([0.0, 0.09, -0.05])
    assert _verdict("rms_trains_like_ln", noisy).verdict == INCONCLUSIVE


def _grads(post_slope, pre_last, post_last=1.0, depths=(6, 12), seeds=range(4)):
    """Metric rows of ‖∂L/∂W2‖ at step 0: Post-LN's growing by exp(slope) per layer up to
    ``post_last``; Pre-LN flat at ``pre_last[depth]``."""
    srows, mrows = [], []
    for depth in depths:
        for seed in seeds:
            for pl in ("pre", "post"):
                srows.append(dict(model=f"tf{depth}", norm_type="ln", placement=pl, lr=0.002, seed=seed, depth=depth,
                                  batch_size=64, steps=1, final_test_loss=3.3))
                for i in range(depth):
                    v = post_last * math.exp(post_slope * (i + 1 - depth)) if pl == "post" else pre_last[depth]
                    mrows.append(dict(model=f"tf{depth}", norm="ln", placement=pl, batch_size=64, lr=0.002, seed=seed,
                                      metric="grad_norm", step=0, layer=f"blocks.{i}.ffn.2",
                                      value=v * (1 + 0.01 * seed)))
                mrows.append({**mrows[-1], "layer": "head", "value": 99.0})  # other layers are not W2
    return _summary(srows), pd.DataFrame(mrows)


def test_gradient_at_init_claims():
    s, m = _grads(post_slope=0.1, pre_last={6: 0.5, 12: 0.4})
    for cid in ("postln_grad_grows_with_layer", "postln_last_layers_exceed_preln", "preln_grad_shrinks_with_depth"):
        assert _verdict(cid, s, m).verdict == REPRODUCED, cid
    s, m = _grads(post_slope=-0.1, pre_last={6: 0.4, 12: 1.5})  # the opposite of Fig. 3
    for cid in ("postln_grad_grows_with_layer", "postln_last_layers_exceed_preln", "preln_grad_shrinks_with_depth"):
        assert _verdict(cid, s, m).verdict == NOT_REPRODUCED, cid
    s, m = _grads(post_slope=0.1, pre_last={6: 0.5}, depths=(6,))  # one depth: not measurable, said so
    row = evaluate("transformer_norms", TN.CLAIMS, s, m).set_index("claim").loc["preln_grad_shrinks_with_depth"]
    assert row.verdict == INCONCLUSIVE and "two depths" in row.note


def test_stalled_is_the_unigram_level():
    s = _summary([dict(norm_type="ln", placement="post", lr=0.02, seed=0, final_test_loss=H1 + 0.01,
                       final_train_loss=H1 - 0.05),
                  dict(norm_type="ln", placement="pre", lr=0.02, seed=0, final_test_loss=1.8)])
    r = TN.runs(s)
    assert list(r.stalled) == [True, False] and list(r.failed) == [True, False]
    assert 2.5 < H1 < math.log(V)


def test_a_vectorized_pack_of_transformer_runs_matches_them_solo():
    """Sequence outputs (R, B, T, V) through the pack's loss: the same numbers as solo runs
    (momentum SGD; Adam keeps transformer runs solo, runners/sgd.py)."""
    from normbench.data import load_dataset
    from normbench.train import PACK_TOLERANCE, Trainer

    data = load_dataset("chars16", dtype=torch.float32)
    cfgs = [RunConfig.from_dict(dict(model="transformer", model_options={"depth": 1, "width": 16, "heads": 2},
                                     dataset="chars16", norm="ln", lr=lr, seed=seed, batch_size=8, steps=10,
                                     optimizer="momentum", eval_every=5)) for lr, seed in ((0.01, 0), (0.03, 1))]
    packed = Trainer(cfgs, data).run()
    for cfg, p in zip(cfgs, packed):
        solo = Trainer([cfg], data).run()[0]
        np.testing.assert_allclose(p.metrics.value, solo.metrics.value, **PACK_TOLERANCE)
