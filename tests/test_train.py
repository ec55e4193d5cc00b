"""One run: Parquet schema, determinism, divergence, the CLI."""

import subprocess
import sys

import pandas as pd
import pyarrow.parquet as pq
import pytest

from normbench.errors import ConfigError
from normbench.runners import train as run_train
from normbench.settings import RunConfig
from normbench.store import METRICS_SCHEMA, SUMMARY_SCHEMA

DESIGN_SUMMARY = ["study", "model", "dataset", "norm", "placement", "activation", "lr", "batch_size", "seed",
                  "final_test_acc", "final_test_loss", "best_test_acc", "final_train_loss", "diverged",
                  "diverged_step", "steps", "wall_time_s"]
DESIGN_METRICS = ["step", "epoch", "examples", "split", "metric", "layer", "value", "wall_time_s"]
VOLATILE = ["wall_time_s", "train_time_s", "probe_time_s", "compute_time_s"]


def train(cfg, out=None):
    """One run; its files written into ``out`` (a folder) if given."""
    return run_train(cfg, {k: out / f"{k}.parquet" for k in ("summary", "metrics")} if out else None)


def small(**kw):
    base = dict(model="mlp", model_options={"depth": 2, "width": 32}, norm="bn", lr=0.1, batch_size=16,
                steps=30, eval_every=10, threads=1)
    return RunConfig.from_dict({**base, **kw})


def test_writes_both_parquet_files_with_documented_columns(tmp_path):
    res = train(small(), tmp_path)
    m, s = pq.read_table(tmp_path / "metrics.parquet"), pq.read_table(tmp_path / "summary.parquet")
    assert m.schema.equals(METRICS_SCHEMA) and s.schema.equals(SUMMARY_SCHEMA)
    assert set(DESIGN_METRICS) <= set(m.schema.names) and set(DESIGN_SUMMARY) <= set(s.schema.names)
    df = m.to_pandas()
    # eval at 0, 10, 20, 30: test loss+acc each time, train loss+acc after the first
    assert len(df) == 4 * 2 + 3 * 2
    assert set(df.split) == {"train", "test"} and set(df.metric) == {"loss", "acc"}
    assert (df.norm == "bn").all() and (df.lr == 0.1).all() and (df.seed == 0).all()
    assert s.num_rows == 1 and res.summary["steps"] == 30 and not res.summary["diverged"]


def test_subnormals_flush_while_training_and_come_back_after(monkeypatch):
    """Training flushes subnormal floats (the CPU is ~100× slower on them) and gives the process its
    IEEE default back: code sharing the process (hypothesis, a user's notebook) keeps subnormals."""
    import torch

    seen = []
    real = torch.set_flush_denormal
    monkeypatch.setattr(torch, "set_flush_denormal", lambda on: seen.append(on) or real(on))
    train(small(steps=2, eval_every=2))
    assert seen == [True, False]
    assert (torch.full((64,), 1e-30) * 1e-10)[0].item() != 0.0  # a subnormal result survives


def test_same_seed_gives_identical_parquet(tmp_path):
    for d in ("a", "b"):
        train(small(norm="noisy_bn"), tmp_path / d)
    for name in ("metrics.parquet", "summary.parquet"):
        a = pd.read_parquet(tmp_path / "a" / name).drop(columns=VOLATILE, errors="ignore")
        b = pd.read_parquet(tmp_path / "b" / name).drop(columns=VOLATILE, errors="ignore")
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    other = train(small(norm="noisy_bn", seed=1)).metrics
    assert not other.value.equals(pd.read_parquet(tmp_path / "a/metrics.parquet").value)


def test_divergence_is_recorded_not_raised(tmp_path):
    res = train(small(norm="none", lr=1e4, steps=60), tmp_path)
    s = pd.read_parquet(tmp_path / "summary.parquet").iloc[0]
    assert bool(s.diverged) and 0 <= s.diverged_step < 10
    assert s.steps == 10  # stopped at the first eval point after diverging
    assert res.diverged and not s.collapsed  # diverged runs are not also called collapsed


def test_a_run_that_ends_at_chance_is_collapsed_not_diverged():
    """Finite loss, chance accuracy: collapsed (a sigmoid net with tiny weights that cannot move)."""
    s = train(small(norm="none", activation="sigmoid", init="normal", init_std=1e-4, lr=1e-4, steps=20)).summary
    assert not s["diverged"] and s["collapsed"] and s["chance_acc"] == 0.1
    assert s["final_test_acc"] < 0.1 + 3 * (0.1 * 0.9 / 360) ** 0.5
    assert not train(small(steps=60)).summary["collapsed"]  # BN trains: not collapsed


def test_loss_bound_counts_as_divergence():
    res = train(small(diverge_loss=0.5, steps=20))
    assert res.summary["diverged"] and res.summary["diverged_step"] == 0


def test_float64_runs_in_float64():
    r = train(RunConfig.from_dict(dict(model="dln", model_options={"depth": 3, "width": 10}, dataset="synthetic_linear",
                                       norm="bn", activation="identity", lr=1e-3, batch_size=100, steps=3,
                                       eval_every=3, dtype="float64")))
    assert r.summary["final_test_loss"] > 0


def test_steps_to_target_and_regression_task():
    s = train(small(target_acc=0.5, steps=40)).summary
    assert s["steps_to_target"] is not None and s["steps_to_target"] % 10 == 0
    assert s["examples_to_target"] == s["steps_to_target"] * 16
    r = train(RunConfig.from_dict(dict(model="dln", dataset="synthetic_linear", norm="none", activation="identity",
                                        lr=1e-3, batch_size=1000, steps=5, eval_every=5))).summary
    assert pd.isna(r["final_test_acc"]) and r["final_test_loss"] > 0 and not r["collapsed"]


def test_summed_loss_trains_on_the_sum_and_reports_the_mean():
    """loss_sum: the gradient of Σ‖ŷ − y‖² is the mean loss's times the number of terms; what is
    recorded stays the mean per output, comparable with a mean-loss run."""
    base = dict(model="dln", model_options={"depth": 3, "width": 10}, dataset="synthetic_linear", norm="none",
                activation="identity", batch_size=1000, steps=1, eval_every=1, dtype="float64", init="glorot")
    mean = train(RunConfig.from_dict({**base, "lr": 1e-2})).metrics
    summed = train(RunConfig.from_dict({**base, "lr": 1e-2 / (1000 * 10), "loss_sum": True})).metrics
    pd.testing.assert_series_equal(mean.value, summed.value, rtol=1e-9, check_exact=False)


@pytest.mark.parametrize("opt,sched", [("momentum", "step"), ("adam", "cosine")])
def test_optimizers_and_schedules(opt, sched):
    s = train(small(optimizer=opt, schedule=sched, lr=0.01 if opt == "adam" else 0.05, steps=40)).summary
    assert s["final_test_acc"] > 0.3


def test_run_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="optimizer.*rmsprop.*sgd"):
        small(optimizer="rmsprop")
    with pytest.raises(ConfigError, match="lr.*positive"):
        small(lr=-0.1)
    with pytest.raises(ConfigError, match="unknown run setting.*learning_rate"):
        RunConfig.from_dict({"learning_rate": 0.1})
    assert small(lr="1e-3").lr == 0.001  # YAML's 1e-3 (no dot) is a string; still a number


def test_cli_200_step_digits_run(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: vgg\nnorm: bn\nlr: 0.1\nbatch_size: 32\nsteps: 200\neval_every: 50\nthreads: 1\n")
    p = subprocess.run([sys.executable, "-m", "normbench.cli", "train", "--config", str(cfg), "--out",
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "step    200/200" in p.stderr  # progress is shown
    s = pd.read_parquet(tmp_path / "out/summary.parquet").iloc[0]
    assert s.final_test_acc > 0.9  # chance is 0.1
    assert set(DESIGN_SUMMARY) <= set(s.index)


def test_cli_bad_setting_is_one_clear_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "normbench.cli", "train", "--set", "norm=batchnorm"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "norm type 'batchnorm' is unknown; valid:" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("opt", [{"channels_last": True}, {"bf16": True}, {"channels_last": True, "bf16": True}])
def test_speed_options_train(opt):
    base = dict(model="vgg", model_options={"layers": "digits"}, norm="bn", lr=0.1, batch_size=32, steps=60,
                eval_every=30, threads=1)
    plain = train(RunConfig.from_dict(base)).summary
    fast = train(RunConfig.from_dict({**base, **opt})).summary
    assert fast["final_train_loss"] < 1.0 and fast["final_test_acc"] > 0.8  # it trains (chance: 2.3, 0.1)
    if opt == {"channels_last": True}:  # the same model in another memory layout (other kernels: rounding)
        assert fast["final_train_loss"] == pytest.approx(plain["final_train_loss"], rel=2e-2)


def test_eval_examples_evaluates_on_the_first_k_test_examples():
    """A smoke check's evaluation: the first k test examples, exactly (an oracle: evaluate_model on them)."""
    from normbench.data import Dataset
    from normbench.runners.sgd import get_data
    from normbench.train import Trainer, criterion_for, evaluate_model

    cfg = small(eval_examples=50)
    data = get_data(cfg, "cpu")
    trainer = Trainer([cfg], data)
    m = trainer.run()[0].metrics
    last = m[(m.split == "test") & (m.step == 30)].set_index("metric").value
    first = Dataset(data.name, data.x_train, data.y_train, data.x_test[:50], data.y_test[:50], data.task,
                    data.num_outputs)
    loss, acc = (float(v[0]) for v in evaluate_model(trainer.net.eval_forward, first, criterion_for(data.task)))
    assert last["loss"] == pytest.approx(loss, rel=1e-6) and last["acc"] == pytest.approx(acc)
    whole_loss, _ = evaluate_model(trainer.net.eval_forward, data, criterion_for(data.task))
    assert len(data.x_test) > 50 and float(whole_loss[0]) != pytest.approx(loss, rel=1e-6)
    with pytest.raises(ConfigError, match="eval_examples.*whole number"):
        small(eval_examples=-1)


def test_adamw_with_clipping_is_torchs_step_by_hand():
    """One step of ``learn`` with adamw + grad_clip equals torch's own AdamW after clip_grad_norm_ on the same
    batch and weights; in a pack each run is clipped by its own gradient norm, as if it trained alone."""
    import copy

    import torch

    from normbench.data import DATASETS
    from normbench.train import Trainer

    data = DATASETS.get("digits").load(None)
    cfgs = [small(optimizer="adamw", weight_decay=0.1, grad_clip=0.05, lr=0.01, seed=s, norm="ln") for s in (0, 1)]
    t = Trainer(cfgs, data)
    refs = [copy.deepcopy(m) for m in t.models]
    x, y = t.batch()
    t.learn(x, y, 0)
    norms = []
    for r, ref in enumerate(refs):
        opt = torch.optim.AdamW(ref.parameters(), lr=0.01, weight_decay=0.1)
        loss = torch.nn.functional.cross_entropy(ref(x[r]), y[r])
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.05)))
        opt.step()
        for (name, p), q in zip(ref.named_parameters(), t.models[r].parameters()):
            torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)
    assert min(norms) > 0.05 and norms[0] != pytest.approx(norms[1])  # clipping acted, each by its own norm
    unclipped = Trainer([small(optimizer="adamw", weight_decay=0.1, lr=0.01, seed=0, norm="ln")], data)
    unclipped.learn(x[:1], y[:1], 0)
    moved = [(a - b).abs().max() for a, b in zip(unclipped.models[0].parameters(), t.models[0].parameters())]
    assert max(moved) > 0  # without clipping the step is another one


def test_adamw_decays_every_parameter_dyts_alpha_too():
    """Zhu et al. apply weight decay to α as well: with a zero gradient AdamW shrinks α by lr · wd."""
    import torch

    from normbench.layers import DynamicTanh
    from normbench.train import make_optimizer

    d = DynamicTanh(4, dim=1, alpha=1.0)
    opt = make_optimizer(small(optimizer="adamw", weight_decay=0.1, lr=0.01), [{"params": list(d.parameters())}])
    for p in d.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert float(d.alpha) == pytest.approx(1.0 * (1 - 0.01 * 0.1))
