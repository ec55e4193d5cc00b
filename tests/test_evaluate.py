"""`normbench evaluate NORM`: the battery config, the card's verdict rules, and a normalizer that
ignores its input's scale graded worse than BN end to end (a micro tier through Snakemake)."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from normbench import card as C
from normbench import evaluate as E
from normbench.config import default_config_path, load
from normbench.errors import ConfigError

from test_snakemake import USER_NORM

ROOT = Path(__file__).resolve().parents[1]

# the README's RMSNorm2d (the same file tests/test_snakemake.py runs through a study), and two more
USER_NORMS = USER_NORM + '''

class ScaleBlind(torch.nn.Module):
    """Broken on purpose: centres, then divides by a constant instead of the input's scale."""

    def __init__(self, num_features, dim=2):
        super().__init__()

    def forward(self, x):
        return (x - x.mean(1, keepdim=True)) / 100.0


class LinearOnly(torch.nn.Module):
    def __init__(self, num_features, dim=2):
        super().__init__()
        if dim != 1:
            raise ValueError("only after a linear layer")

    def forward(self, x):
        return x
'''


@pytest.fixture(scope="module")
def base():
    return load(default_config_path())


def test_battery_puts_norm_beside_the_baselines_in_every_arm_under_its_own_roots(base):
    cand = E.candidate("gn", {"groups": 8}, base["norms"])
    cfg = E.battery(cand, base, trim=True)
    assert cand.id == "gn_groups8" and cfg["norms"]["gn_groups8"] == {"type": "gn", "options": {"groups": 8}}
    assert set(cfg["studies"]) == {a.study for a in E.ARMS}
    for arm in E.ARMS:
        grid = cfg["studies"][arm.study]["grid"]
        expect = [b for b in E.BASELINES if arm.baselines is None or b in arm.baselines]
        assert grid["norm"] == ["gn_groups8", *expect]
        model = cfg["models"].get(grid["model"][0], {"type": grid["model"][0]})
        assert model["type"] in E.CONV_TYPES, arm  # conv-only normalizers can enter every arm
        assert 3 <= len(grid["seed"]) <= E.SEEDS
    assert cfg["studies"]["gn_small_batch"]["grid"]["batch_size"] == [32, 2]  # the study's largest and smallest
    assert cfg["results"] == "results/evaluate/gn_groups8"
    assert cfg["evaluate"]["reports"] == "reports/evaluate/gn_groups8"
    load(cfg)  # the schema accepts what it writes


def test_a_bare_baseline_name_is_the_config_entry_and_leaves_the_baselines(base):
    cand = E.candidate("gn", None, base["norms"])
    assert (cand.id, cand.type, cand.options) == ("gn", "gn", base["norms"]["gn"]["options"])
    assert E.battery(cand, base, trim=True)["evaluate"]["baselines"] == ["bn", "ln", "none"]


def test_a_user_file_keeps_its_path_and_a_typo_names_the_allowed_options(base, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("mynorms.py").write_text(USER_NORMS)
    cand = E.candidate("mynorms.py:RMSNorm2d", {"eps": 1e-5})
    assert cand.id == "RMSNorm2d_eps1e_05"
    assert E.battery(cand, base, trim=True)["norms"][cand.id] == {"type": "mynorms.py:RMSNorm2d",
                                                                   "options": {"eps": 1e-5}}
    with pytest.raises(ConfigError, match="unknown option.*epsilon.*allowed: eps"):
        E.candidate("mynorms.py:RMSNorm2d", {"epsilon": 1e-5})


def test_a_norm_that_cannot_enter_a_conv_arm_fails_before_any_job(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("mynorms.py").write_text(USER_NORMS)
    with pytest.raises(ConfigError, match="LinearOnly.*cannot be built.*only after a linear layer"):
        E.write_battery("mynorms.py:LinearOnly")
    assert not Path("results/evaluate/LinearOnly/config.yaml").exists()


# -- the verdict rules ------------------------------------------------------------------------------


@pytest.mark.parametrize("diffs, word", [
    ([0.01, -0.02, 0.0, 0.01], C.SAME),        # inside ±0.1
    ([1.0, 1.2, 0.9, 1.1], C.BETTER),          # wholly above 0, outside the margin
    ([-1.0, -1.2, -0.9, -1.1], C.WORSE),
    ([0.05, 0.06, 0.04, 0.05], C.SAME),        # significant but inside the margin: same
    ([0.2, -0.5, 0.9, -0.1], C.UNDECIDED),
    ([1.0, 1.0], C.UNDECIDED),                 # two pairs: no verdict (claims' min_n)
])
def test_verdict_follows_the_claims_rules(diffs, word):
    assert C.verdict(diffs, 0.1, "x")[0] == word


def test_lower_is_better_measures_flip_the_sign():
    ms = next(m for m in C.MEASURES if m.study == "gn_small_batch" and m.judged)
    values = pd.DataFrame({"norm": ["new"] * 3 + ["bn"] * 3 + ["gn"] * 3, "seed": [0, 1, 2] * 3,
                           "value": [5.0, 5.5, 5.2, 10.0, 10.4, 10.1, 5.1, 5.3, 5.4]})
    cells, verdicts, _ = C.grade(ms, values, "new", ["bn", "gn", "ln"])
    assert verdicts == {"bn": C.BETTER, "gn": C.SAME, "ln": C.NOT_MEASURED}
    assert cells["bn"].startswith("10.2 [")


def test_lr_rank_counts_grid_steps_to_the_largest_lr_that_trained():
    s = pd.DataFrame({"norm": "bn", "batch_size": 8, "seed": [0, 0, 0, 1, 1, 1], "lr": [0.01, 0.1, 1.0] * 2,
                      "diverged": [False, False, True, True, True, True],
                      "collapsed": [False, True, False, False, False, False]})
    r = C.lr_rank(s, None).set_index("seed").value
    assert r.to_dict() == {0: 1.0, 1: 0.0}  # seed 0: 0.01 trained, 0.1 collapsed, 1.0 diverged


def test_activation_scale_is_the_log_ratio_of_last_to_first_layer_at_init():
    rows = [{"norm": "none", "seed": 0, "metric": "act_std", "step": step, "layer": f"{i}", "value": v}
            for step, vals in ((0, [2.0, 0.2, 0.02]), (5, [1.0, 1.0, 1.0])) for i, v in enumerate(vals)]
    rows += [{"norm": "x", "seed": 0, "metric": "act_std", "step": 0, "layer": f"{i}", "value": v}
             for i, v in enumerate([1.0, 0.0, 0.0])]
    d = C.activation_scale(None, pd.DataFrame(rows)).set_index("norm").value
    assert d["none"] == pytest.approx(-2.0) and d["x"] == -C.LOG_CLIP


def test_an_axis_line_names_mixed_verdicts():
    rows = [{"judged": True, "short": "scale", "verdicts": {"bn": C.WORSE, "none": C.BETTER}},
            {"judged": True, "short": "training", "verdicts": {"bn": C.WORSE, "none": C.SAME}}]
    assert C.axis_line(rows, ["bn", "none"]) == "worse than bn; mixed (better: scale; same: training) against none"


# -- end to end: a normalizer that ignores its input's scale, on a micro tier through Snakemake -------

MICRO = {
    "device": "cpu", "threads": 1,
    "norms": {"gn": {"type": "gn", "options": {"groups": 4}}},
    "models": {"tiny": {"type": "vgg", "options": {"layers": [8, "M", 8]}}},
    "train": {"eval_every": 1000},
    "studies": {
        "lr_bs_sweep": {"grid": {"model": ["tiny"], "dataset": ["digits"], "norm": ["bn"], "batch_size": [32],
                                 "lr": [0.05, 0.2], "seed": [0, 1, 2]}, "train": {"steps": 40}},
        "gn_small_batch": {"grid": {"model": ["tiny"], "dataset": ["digits"], "norm": ["bn"], "batch_size": [16, 4],
                                    "lr": {"base": 0.4, "reference_batch": 16}, "seed": [0, 1, 2]},
                           "train": {"epochs": 0.5, "optimizer": "momentum"}},
        "depth_stats": {"grid": {"model": ["tiny"], "dataset": ["digits"], "norm": ["none"], "batch_size": [16],
                                 "lr": [0.01], "seed": [0, 1, 2]},
                        "train": {"steps": 1, "probe_every": 1, "probes": ["act_stats"]}},
    },  # no santurkar: a tier without a study leaves its axis "not measured"
}


def test_a_scale_blind_norm_is_graded_worse_than_bn_end_to_end(tmp_path):
    (tmp_path / "broken.py").write_text(USER_NORMS)
    (tmp_path / "micro.yaml").write_text(yaml.safe_dump(MICRO))
    cmd = [sys.executable, "-m", "normbench.cli", "evaluate", "broken.py:ScaleBlind", "--configfile", "micro.yaml",
           "--snakefile", str(ROOT / "Snakefile"), "--no-report", "--cores", "2", "--quiet"]
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = tmp_path / "reports/evaluate/ScaleBlind"
    t = pd.read_csv(out / "card.csv").set_index("measure")
    first = {m.study: m.name for m in reversed(C.MEASURES) if m.judged}  # each arm's first judged measure
    assert t.loc[first["lr_bs_sweep"], "vs bn"] == C.WORSE  # it trains at no lr where BN does
    assert t.loc[first["gn_small_batch"], "vs bn"] == C.WORSE  # error at the smallest batch per worker
    assert t.loc[first["depth_stats"], "vs bn"] == C.WORSE  # its activations vanish through depth
    assert "worse than bn" in (out / "README.md").read_text()
    smooth = t[t.axis == "landscape smoothness"]
    assert len(smooth) and (smooth["vs bn"] == C.NOT_MEASURED).all()
    assert not (tmp_path / "reports/lr_bs_sweep").exists() and not (tmp_path / "results/lr_bs_sweep").exists()
    assert (tmp_path / "results/evaluate/ScaleBlind/lr_bs_sweep/summary.parquet").exists()
