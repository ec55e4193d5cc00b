"""A vectorized pack equals its solo twins within the documented tolerance."""

import numpy as np
import pytest

from normbench.config import RunConfig
from normbench.pack import plan, run_pack
from normbench.train import Trainer, get_data, train
from normbench.vectorized import PACK_TOLERANCE, VectorTrainer


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
        solo = Trainer(c, get_data(c, "cpu"))
        s = solo.run()
        p = packed[r]
        assert len(s.metrics) == len(p.metrics)
        assert (s.metrics[["step", "split", "metric"]].values == p.metrics[["step", "split", "metric"]].values).all()
        close(p.metrics.value.values, s.metrics.value.values)
        close(p.summary["final_test_acc"], s.summary["final_test_acc"])
        for name, buf in solo.model.named_buffers():  # BN running statistics, per member
            close(vt.buffers[name][r].double().numpy(), buf.double().numpy())
        for name, prm in solo.model.named_parameters():
            close(vt.params[name][r].detach().numpy(), prm.detach().numpy())


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
            cfg("bn", 0.1, 3, optimizer="adam")]
    assert plan(cfgs) == [[0, 1], [2], [3], [4]]
    assert plan(cfgs, vectorize=False) == [[0], [1], [2], [3], [4]]


def test_a_pack_of_runs_vmap_cannot_batch_trains_them_one_by_one(tmp_path):
    """Spectral norm's power iteration uses out= ops that vmap cannot batch."""
    cfgs = [cfg("sn", lr, 0) for lr in (0.01, 0.05)]
    assert plan(cfgs) == [[0], [1]]
    jobs = [{"config": c.to_dict(), "out": str(tmp_path / f"r{i}")} for i, c in enumerate(cfgs)]
    run_pack(jobs, say=lambda m: None)
    assert all((tmp_path / f"r{i}" / "summary.parquet").exists() for i in range(2))


def test_run_pack_writes_each_run_and_skips_finished(tmp_path):
    jobs = [{"config": cfg("bn", lr, 0).to_dict(), "out": str(tmp_path / f"lr{lr}"),
             "checkpoint": str(tmp_path / f"ck{lr}.pt")} for lr in (0.01, 0.05)]
    run_pack(jobs, tmp_path / "pack.json", say=lambda m: None)
    assert all((tmp_path / f"lr{lr}" / "summary.parquet").exists() for lr in (0.01, 0.05))
    assert (tmp_path / "pack.json").exists()
    msgs = []
    run_pack(jobs, tmp_path / "pack.json", say=msgs.append)
    assert "2 of 2 runs already finished: skipped" in msgs[0]
