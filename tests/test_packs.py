"""One training loop over R ≥ 1 members: a vectorized pack equals its solo twins within
the documented tolerance; workers normalize their own slices."""

import copy

import numpy as np
import pytest
import torch

from normbench.pack import run_pack
from normbench.runners import Job, train
from normbench.runners.sgd import get_data, plan
from normbench.settings import RunConfig
from normbench.train import PACK_TOLERANCE, Trainer


def VectorTrainer(cfgs, data):
    return Trainer(cfgs, data)


def cfg(norm, lr, seed, **kw):
    opts = {"groups": 4} if norm == "gn" else {}
    return RunConfig.from_dict({**dict(model="vgg", model_options={"layers": [8, "M", 16]}, norm=norm,
                                       norm_options=opts, lr=lr, seed=seed, batch_size=8, steps=20, eval_every=10,
                                       threads=1, optimizer="momentum", momentum=0.9), **kw})


def close(a, b):
    np.testing.assert_allclose(a, b, **PACK_TOLERANCE)


@pytest.mark.parametrize("norm", ["none", "bn", "gn", "noisy_bn"])
def test_packed_equals_solo(norm):
    cfgs = [cfg(norm, lr, seed) for lr in (0.01, 0.05) for seed in (0, 1)]
    vt = VectorTrainer(cfgs, get_data(cfgs[0], "cpu"))
    packed = vt.run()
    for r, c in enumerate(cfgs):
        solo = Trainer([c], get_data(c, "cpu"))
        s = solo.run()[0]
        p = packed[r]
        assert len(s.metrics) == len(p.metrics)
        assert (s.metrics[["step", "split", "metric"]].values == p.metrics[["step", "split", "metric"]].values).all()
        close(p.metrics.value.values, s.metrics.value.values)
        close(p.summary["final_test_acc"], s.summary["final_test_acc"])
        for name, buf in solo.models[0].named_buffers():  # BN running statistics, per member
            close(vt.models[r].get_buffer(name).double().numpy(), buf.double().numpy())
        for name, prm in solo.models[0].named_parameters():
            close(vt.models[r].get_parameter(name).detach().numpy(), prm.detach().numpy())


def test_noise_differs_between_members_and_matches_solo_streams():
    cfgs = [cfg("noisy_bn", 0.05, 0), cfg("noisy_bn", 0.05, 1)]
    packed = VectorTrainer(cfgs, get_data(cfgs[0], "cpu")).run()
    a, b = (r.metrics[r.metrics.split == "train"].value.values for r in packed)
    assert not np.allclose(a, b)  # members draw their own noise


def test_a_diverging_member_does_not_stop_its_pack():
    cfgs = [cfg("bn", 0.05, 0), cfg("bn", 1e5, 0), cfg("bn", 0.01, 1)]  # same structure: only lr differs
    res = VectorTrainer(cfgs, get_data(cfgs[0], "cpu")).run()
    assert [r.diverged for r in res] == [False, True, False]
    solo = train(cfgs[1])
    assert res[1].summary["diverged_step"] == solo.summary["diverged_step"]
    assert res[1].summary["steps"] == solo.summary["steps"] == 10  # stops at the eval point, as solo
    assert len(res[1].metrics) == len(solo.metrics)
    for r, c in zip((res[0], res[2]), (cfgs[0], cfgs[2])):  # the others finish, as if alone
        assert r.summary["steps"] == 20
        close(r.metrics.value.values, train(c).metrics.value.values)


def test_plan_groups_by_structure_and_keeps_probed_runs_solo():
    cfgs = [cfg("bn", 0.1, 0), cfg("bn", 0.2, 1), cfg("gn", 0.1, 0), cfg("bn", 0.1, 2, probe_every=5, probes=["ics"]),
            cfg("bn", 0.1, 3, optimizer="adam"), cfg("bn", 0.3, 4, optimizer="adam")]
    assert plan(cfgs) == [[0, 1], [2], [3], [4], [5]]
    assert plan(cfgs, vectorize=False) == [[0], [1], [2], [3], [4], [5]]


def test_momentum_members_keep_their_own_learning_rates_and_weight_decay():
    """torch.optim with a parameter group per member: each member steps with its own lr, and
    weight decay is scaled by that lr, as in its solo twin."""
    cfgs = [cfg("bn", 0.01, 0, weight_decay=5e-3), cfg("bn", 0.2, 1, weight_decay=5e-3)]
    packed = Trainer(cfgs, get_data(cfgs[0], "cpu")).run()
    for r, c in enumerate(cfgs):
        close(packed[r].metrics.value.values, Trainer([c], get_data(c, "cpu")).run()[0].metrics.value.values)


@pytest.mark.parametrize("norm", ["bn", "brn", "lp_bn"])
def test_workers_normalize_their_own_slice_and_share_parameters(norm):
    """W workers × N examples: each worker's BN uses its own N examples' statistics (as on W
    GPUs without SyncBN); the gradient is the mean over all W·N; the running statistics
    follow the mean of the workers' statistics.  Oracle: each worker's slice run through the
    layer's own single-batch forward (on a copy of the step's buffers), by hand."""
    from torch.func import functional_call

    c = RunConfig.from_dict(dict(model="mlp", model_options={"depth": 1, "width": 6}, norm=norm, lr=0.5, seed=0,
                                 batch_size=4, workers=3, steps=10, eval_every=10, threads=1))
    t = Trainer([c], get_data(c, "cpu"))
    model = t.models[0]
    for _ in range(3):  # a few steps in: running statistics away from their start
        x, y = t.batch()
        t.train_step(x, y)
        t.step += 1
    x, y = t.batch()
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    oracle = copy.deepcopy(model)
    oracle[1][1].workers = 1
    oracle.train()
    outs, after = [], []
    for xs in x[0].split(4):  # each worker's slice as a batch of its own, from the same state
        b = {k: v.clone() for k, v in buffers.items()}
        outs.append(functional_call(oracle, {**params, **b}, (xs,)))
        after.append(b)
    loss = torch.nn.functional.cross_entropy(torch.cat(outs), y[0])
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
    t.train_step(x, y)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), params[name].detach() - 0.5 * grads[name], rtol=1e-5, atol=1e-6)
    for name in ("1.1.running_mean", "1.1.running_var" if norm == "bn" else "1.1.running_scale"):
        # one update with the mean of the workers' statistics = the mean of the workers' updates
        torch.testing.assert_close(model.get_buffer(name), torch.stack([b[name] for b in after]).mean(0),
                                   rtol=1e-5, atol=1e-6)
    assert not torch.allclose(outs[0], functional_call(oracle, {**params, **buffers}, (x[0],))[:4])  # per slice


def test_a_pack_of_runs_vmap_cannot_batch_trains_them_one_by_one(tmp_path):
    """Spectral norm's power iteration uses out= ops that vmap cannot batch."""
    cfgs = [cfg("sn", lr, 0) for lr in (0.01, 0.05)]
    assert plan(cfgs) == [[0], [1]]
    jobs = [job(c, tmp_path / f"r{i}") for i, c in enumerate(cfgs)]
    run_pack(jobs, say=lambda m: None)
    assert all((tmp_path / f"r{i}" / "summary.parquet").exists() for i in range(2))


def job(c, folder):
    return Job(c, {k: folder / f"{k}.parquet" for k in ("summary", "metrics")}).to_dict()


def test_run_pack_writes_each_run_and_skips_finished(tmp_path):
    jobs = [job(cfg("bn", lr, 0), tmp_path / f"lr{lr}") for lr in (0.01, 0.05)]
    run_pack(jobs, tmp_path / "pack.json", say=lambda m: None, checkpoint_dir=tmp_path / "ck")
    assert all((tmp_path / f"lr{lr}" / "summary.parquet").exists() for lr in (0.01, 0.05))
    assert (tmp_path / "pack.json").exists()
    msgs = []
    run_pack(jobs, tmp_path / "pack.json", say=msgs.append, checkpoint_dir=tmp_path / "ck")
    assert "2 of 2 runs already finished: skipped" in msgs[0]


def test_a_finished_run_whose_settings_changed_trains_again(tmp_path):
    """A setting outside the run's path (here steps) changed since the run finished: the pack must
    train it again with the new settings, not keep the old numbers under the new config."""
    import pyarrow.parquet as pq

    jobs = [job(cfg("bn", 0.05, 0), tmp_path / "r")]
    run_pack(jobs, say=lambda m: None)
    longer = [job(cfg("bn", 0.05, 0, steps=30), tmp_path / "r")]
    msgs = []
    run_pack(longer, say=msgs.append)
    assert not any("already finished" in m for m in msgs)
    assert pq.read_table(tmp_path / "r" / "summary.parquet").column("steps")[0].as_py() == 30
    msgs = []
    run_pack(longer, say=msgs.append)  # now finished with these settings
    assert "1 of 1 runs already finished: skipped" in msgs[0]
    # where it ran is not what it means: another thread count or device keeps the finished run
    assert Job.from_dict(job(cfg("bn", 0.05, 0, steps=30, threads=2, device="cpu"), tmp_path / "r")).done
