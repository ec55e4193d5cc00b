"""Property-based: random configs either fail validation with a message that
names a config key, or give runs that build and train."""

import copy
import re
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from normbench.errors import ConfigError
from normbench.pipeline import load_pipeline as load_config
from normbench.runners import Job, train

ROOT = Path(__file__).resolve().parents[1]
BASE = {
    "device": "cpu", "threads": 1,
    "norms": {"gn2": {"type": "gn", "options": {"groups": 2}}},
    "models": {"tiny": {"type": "vgg", "options": {"layers": [4, "M"]}},
               "flat": {"type": "mlp", "options": {"depth": 1, "width": 6}}},
    "train": {"steps": 2, "eval_every": 1},
    "studies": {"lr_bs_sweep": {"grid": {"model": ["tiny"], "dataset": ["digits"], "norm": ["bn"],
                                         "batch_size": [4], "lr": [0.1], "seed": [0]}}},
}
KEY = re.compile(r"^(studies|norms|models|train|device|data_dir|download|threads|mem_mb|runtime|\(top level\))"
                 r"[\w.]*: ")

anything = st.one_of(st.none(), st.booleans(), st.integers(-5, 5000), st.floats(allow_nan=True),
                     st.text(max_size=6), st.sampled_from(["1e-3", "0.1", "inf", "bn", "pre", "relu"]),
                     st.lists(st.integers(-2, 40), max_size=3))
names = st.sampled_from(["bn", "gn", "gn2", "ln", "in", "none", "noisy_bn", "lp_bn", "brn", "wn", "sn", "batchnorm"])
grid_edits = st.fixed_dictionaries({}, optional={
    "model": st.lists(st.sampled_from(["tiny", "flat", "vgg", "mlp", "resnet9000", "dln"]), max_size=2),
    "dataset": st.lists(st.sampled_from(["digits", "synthetic", "synthetic_linear", "imagenet"]), max_size=2),
    "norm": st.lists(names, max_size=2),
    "placement": st.lists(st.sampled_from(["pre", "post", "middle"]), max_size=2),
    "activation": st.lists(st.sampled_from(["relu", "tanh", "identity", "gelu"]), max_size=2),
    "batch_size": st.lists(st.integers(-1, 3000), max_size=2) | anything,
    "lr": st.lists(st.one_of(st.floats(-1, 10, allow_nan=False), st.sampled_from(["1e-2", "fast"])), max_size=2)
    | st.fixed_dictionaries({"base": st.floats(0.001, 1), "reference_batch": st.integers(0, 64)}) | anything,
    "seed": st.lists(st.integers(-1, 3), max_size=2),
    "bogus": anything,
})
train_edits = st.fixed_dictionaries({}, optional={
    "optimizer": st.sampled_from(["sgd", "momentum", "adam", "rmsprop"]),
    "schedule": st.sampled_from(["constant", "step", "cosine", "linear"]),
    "probes": st.lists(st.sampled_from(["ics", "landscape", "rel_loss", "act_stats", "hessian"]), max_size=2),
    "probe_every": st.integers(-1, 2),
    "steps": st.integers(-1, 3) | anything,
    "momentum": st.floats(-1, 2, allow_nan=False),
    "stepz": st.integers(),
})
top_edits = st.fixed_dictionaries({}, optional={
    "device": st.sampled_from(["cpu", "tpu", "cuda:x"]),
    "threads": st.integers(-1, 2),
    "norms": st.dictionaries(st.sampled_from(["gn2", "x"]), st.fixed_dictionaries(
        {"type": st.sampled_from(["gn", "bn", "lp_bn", "xnorm"])},
        optional={"options": st.fixed_dictionaries({}, optional={"groups": st.integers(0, 8), "p": anything,
                                                                 "affine": st.booleans()})}), max_size=2),
    "study_name": st.sampled_from(["lr_bs_sweep", "gn_small_batch", "imagenet_sweep"]),
})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(grid=grid_edits, tr=train_edits, top=top_edits)
def test_random_configs_fail_clearly_or_run(grid, tr, top):
    torch.set_num_threads(1)
    c = copy.deepcopy(BASE)
    name = top.pop("study_name", "lr_bs_sweep")
    study = c["studies"].pop("lr_bs_sweep")
    study["grid"].update(grid)
    study["train"] = tr
    c["studies"][name] = study
    for k, v in top.items():
        c[k] = {**c.get(k, {}), **v} if isinstance(v, dict) else v
    try:
        pipe = load_config(copy.deepcopy(c))
    except ConfigError as e:
        msg = str(e)
        assert KEY.match(msg), f"message does not start with a config key: {msg!r}"
        return
    # valid: every run's config builds, and the first run trains
    for sname in pipe.studies:
        jobs = [j for p in pipe.packs(sname) for j in pipe.pack_jobs(sname, p)]
        assert jobs
        cfg = Job.from_dict(jobs[0]).config
        cfg.steps, cfg.eval_every, cfg.epochs = 2, 1, None
        res = train(cfg)
        assert res.summary["steps"] <= 2
