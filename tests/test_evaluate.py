"""`normbench evaluate NORM` and `normbench leaderboard`: the arms come from the studies, baselines are
trained once per tier, the card refuses to judge what it cannot read, cost is time and memory side by
side, and broken normalizers get a card instead of a crash (a micro tier through Snakemake)."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from normbench import card as C
from normbench import cost as K
from normbench import evaluate as E
from normbench.config import default_config_path, load
from normbench.errors import ConfigError
from normbench.scoring import NOT_MEASURED, UNDECIDED, grids
from normbench.studies import STUDIES

from test_snakemake import USER_NORM

ROOT = Path(__file__).resolve().parents[1]

# the README's RMSNorm2d (the same file tests/test_snakemake.py runs through a study), and more
USER_NORMS = USER_NORM + '''

class ScaleBlind(torch.nn.Module):
    """Broken on purpose: centres, then divides by a constant instead of the input's scale."""

    def __init__(self, num_features, dim=2):
        super().__init__()

    def forward(self, x):
        return (x - x.mean(1, keepdim=True)) / 100.0


class HandGN(torch.nn.Module):
    """GroupNorm written by hand: the gn baseline's function (4 groups), up to rounding."""

    def __init__(self, num_features, dim=2, groups=4, eps=1e-5):
        super().__init__()
        self.groups, self.eps = groups, eps
        self.weight = torch.nn.Parameter(torch.ones(num_features))
        self.bias = torch.nn.Parameter(torch.zeros(num_features))

    def forward(self, x):
        g = x.reshape(x.shape[0], self.groups, -1)
        y = ((g - g.mean(-1, keepdim=True)) / (g.var(-1, unbiased=False, keepdim=True) + self.eps).sqrt())
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return y.reshape(x.shape) * self.weight.view(shape) + self.bias.view(shape)


class Boom(torch.nn.Module):
    def __init__(self, num_features, dim=2):
        super().__init__()

    def forward(self, x):
        raise RuntimeError("boom")


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


# -- the battery: arms from the studies ---------------------------------------------------------------


def test_every_arm_comes_from_a_study_and_has_every_baseline(base):
    cand = E.candidate("gn", {"groups": 8}, base["norms"])
    cfg = E.battery([cand], base, trim=True)
    declared = {n for n, st in STUDIES.items() if st.card is not None}
    assert set(cfg["studies"]) == declared and len(declared) >= 4
    for study, block in cfg["studies"].items():
        arm = STUDIES.get(study).card
        for g in grids(block):
            assert g["norm"] == ["gn_groups8", *E.BASELINES]  # bn, gn, ln and none in every arm
            for model in g["model"]:
                assert cfg["models"].get(model, {"type": model})["type"] == "vgg"  # conv-only norms enter too
            if arm.tune is not None:  # enough seeds to choose on some and measure on the others
                assert len(g["seed"]) >= arm.tune.select + E.MEASURING_SEEDS
        assert block["pack"] == E.PACK  # a job per norm: the baselines' packs are every card's
        info = cfg["evaluate"]["arms"][study]
        if arm.tune is not None:
            assert info["select"] == grids(block)[0]["seed"][:arm.tune.select] and info["shared_lr"] > 0
    assert cfg["results"] == "results/evaluate/default"  # one root per tier, shared by every card
    assert cfg["evaluate"]["reports"] == "reports/evaluate/default/gn_groups8"
    load(cfg)  # the schema accepts what it writes


def test_no_package_module_outside_the_studies_names_a_study():
    """Each study's card knowledge lives in its own module: evaluate, the card and the leaderboard
    iterate over the studies."""
    pkg = ROOT / "workflow/normbench"
    for name in STUDIES:
        files = [f.name for f in pkg.rglob("*.py")
                 if f.parent.name != "studies" and re.search(rf"\b{name}\b", f.read_text())]
        assert not files, (name, files)


def test_a_bare_baseline_name_is_the_config_entry_and_leaves_the_baselines(base):
    cand = E.candidate("gn", None, base["norms"])
    assert (cand.id, cand.type, cand.options) == ("gn", "gn", base["norms"]["gn"]["options"])
    assert E.battery([cand], base, trim=True)["evaluate"]["baselines"] == ["bn", "ln", "none"]


def test_an_id_that_would_replace_a_baselines_runs_is_refused(base):
    with pytest.raises(ConfigError, match="norm id 'gn' is a baseline's"):
        E.battery([E.Candidate("gn", "gn", {"groups": 2})], base, trim=True)


def test_a_user_file_keeps_its_path_and_a_typo_names_the_allowed_options(base, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("mynorms.py").write_text(USER_NORMS)
    cand = E.candidate("mynorms.py:RMSNorm2d", {"eps": 1e-5})
    assert cand.id == "RMSNorm2d_eps1e_05"
    assert E.battery([cand], base, trim=True)["norms"][cand.id] == {"type": "mynorms.py:RMSNorm2d",
                                                                     "options": {"eps": 1e-5}}
    with pytest.raises(ConfigError, match="unknown option.*epsilon.*allowed: eps"):
        E.candidate("mynorms.py:RMSNorm2d", {"epsilon": 1e-5})


def test_an_evaluated_id_is_remembered_and_another_layer_may_not_take_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b = E.Candidate("MyNorm", "a.py:MyNorm", {}), E.Candidate("MyNorm", "b.py:MyNorm", {})
    E.remember(a, "default")
    E.remember(a, "default")  # the same layer again: fine
    assert E.evaluated("default") == [a]
    with pytest.raises(ConfigError, match="was evaluated as.*a.py:MyNorm"):
        E.remember(b, "default")


def test_a_norm_that_cannot_enter_an_arm_leaves_that_arm_with_its_reason(base, tmp_path, monkeypatch):
    """Instance norm cannot normalize the 1×1 maps of the batch arm's last conv (torch refuses one value
    per channel): that arm is not measured for it, the others are."""
    cfg = E.checked_battery([E.candidate("in")], base, trim=True)
    skipped = {s: i.get("skipped", {}) for s, i in cfg["evaluate"]["arms"].items()}
    assert [s for s, v in skipped.items() if "in" in v] == ["gn_small_batch"]
    assert "Expected more than 1 spatial element" in skipped["gn_small_batch"]["in"]
    assert "gn_small_batch" not in cfg["studies"] and len(cfg["studies"]) == len(skipped) - 1
    monkeypatch.chdir(tmp_path)
    Path("mynorms.py").write_text(USER_NORMS)
    cfg = E.checked_battery([E.candidate("mynorms.py:LinearOnly")], base, trim=True)
    assert not cfg["studies"]  # it enters no arm: `evaluate` writes a card of reasons
    assert all("only after a linear layer" in i["skipped"]["LinearOnly"] for i in cfg["evaluate"]["arms"].values())


# -- cost: time and peak memory side by side -----------------------------------------------------------


def test_live_bytes_counts_the_tensors_a_step_allocates_at_once():
    x = torch.ones(1000)  # existed before: not counted
    with K.LiveBytes([x]) as w:
        a = x * 2  # 4000 bytes
        b = a + 1  # 4000 more, both alive
        del a
        c = b * 3  # a freed: 8000 at most
        del b, c
    assert w.peak == 8000 and w.live == 0


def test_cost_rows_are_relative_to_bn_measured_in_one_process():
    cost = K.measure({"bn": {"type": "bn"}, "none": {"type": "none"}, "ln": {"type": "ln"}}, shape=(4, 8, 4, 4),
                     rounds=3, repeats=2, on=["cpu"])
    assert set(cost.device) == {"cpu"} and len(cost) == 9 and (cost.seconds > 0).all()
    peak = cost.groupby("norm").peak_bytes.first()
    out = 4 * 8 * 4 * 4 * 4  # one activation in float32
    assert peak["none"] == out  # the identity allocates only the input's gradient
    assert peak["bn"] >= 2 * out  # its output and the input's gradient, at least
    rows = C.cost_rows(cost, "ln", ["bn", "none"])
    assert [r["short"] for r in rows] == ["time (cpu)", "memory (cpu)"]
    assert rows[1]["cells"]["bn"] == "1.00× [1.00×, 1.00×]"
    assert rows[1]["cells"]["none"] == f"{out / peak['bn']:.2f}× [{out / peak['bn']:.2f}×, {out / peak['bn']:.2f}×]"
    assert all(v == "" for r in rows for v in r["verdicts"].values())  # an implementation's cost: shown, not graded


def test_the_gpu_peak_is_the_allocators_own(monkeypatch):
    """On CUDA, peak memory is torch.cuda's: max allocated during the step minus allocated before it."""
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: 1000)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: 5096)
    assert K.peak_bytes(lambda: calls.append("step"), "cuda", []) == 4096 and calls == ["reset", "step"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert K.devices() == ["cpu", "cuda"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cost_on_the_gpu_in_bf16():
    cost = K.measure({"bn": {"type": "bn"}, "gn": {"type": "gn", "options": {"groups": 4}}}, rounds=2, repeats=2,
                     bf16=True)
    gpu = cost[cost.device == "cuda"]
    assert len(gpu) == 4 and (gpu.peak_bytes > 0).all() and set(gpu.dtype) == {"bf16 autocast"}


# -- the card -------------------------------------------------------------------------------------------


RUN = {"study": "st", "model": "m", "dataset": "d", "placement": "pre", "activation": "relu", "lr": 0.1,
       "batch_size": 32}


def _summary(rows):
    return pd.DataFrame([{**RUN, "diverged": False, "collapsed": False, "chance_acc": 0.1, **r} for r in rows])


def test_an_axis_line_names_mixed_verdicts():
    rows = [{"judged": True, "short": "scale", "verdicts": {"bn": "worse", "none": "better"}},
            {"judged": True, "short": "training", "verdicts": {"bn": "worse", "none": "same"}}]
    assert C.axis_line(rows, ["bn", "none"]) == "worse than bn; mixed (better: scale; same: training) against none"


def test_topup_lists_the_runs_behind_each_undecided_verdict():
    card = {"norm": "new", "rows": [{"study": "st", "measure": "acc", "view": "best lr",
                                     "verdicts": {"bn": UNDECIDED, "gn": "same"},
                                     "reads": {"new": [{"lr": 0.2, "batch_size": 32, "seed": s} for s in (2, 3, 4)],
                                               "bn": [{"lr": 0.1, "batch_size": 32, "seed": s} for s in (2, 3, 4)],
                                               "gn": [{"lr": 0.1, "batch_size": 32, "seed": 2}]}}]}
    t = C.topup(card)
    assert t[["norm", "lr", "against"]].values.tolist() == [["new", 0.2, "bn"], ["bn", 0.1, "bn"]]
    assert t.seeds.tolist() == [[2, 3, 4], [2, 3, 4]]


def test_smoothness_is_read_after_the_standard_nets_plateau_and_refused_without_one():
    """Probes count where both the run and the standard net have left their initial plateaus (the
    study's rule, applied to each); where the standard net never leaves it within the budget, the card
    refuses to judge and says why."""
    arm = STUDIES.get("santurkar").card
    leaves = {"new": 20, "late": 80, "none": 60}  # the step each leaves its plateau (loss 2.3 -> 0.5)
    s = _summary([{"norm": n, "norm_type": n, "seed": sd} for n in leaves for sd in range(3)])
    rows = []
    for n, at in leaves.items():
        for sd in range(3):
            for step in range(0, 100, 10):
                beta = 100.0 if step < at else 3.0 if step < 60 else 1.0 + (n == "none")
                rows += [{**RUN, "norm": n, "seed": sd, "step": step, "split": "train", "metric": "loss",
                          "value": 2.3 if step < at else 0.5},
                         {**RUN, "norm": n, "seed": sd, "step": step, "split": "probe", "metric": "beta_eff",
                          "value": beta}]
    m = pd.DataFrame(rows)
    beta = arm.measures[0]
    v = beta.values(s, m).groupby("norm").value.apply(list)
    assert np.allclose(v["new"], 0.0)  # steps ≥ 60 only: the standard net learns there
    assert np.allclose(v["late"], 0.0)  # steps ≥ 80 only: it learns there itself
    assert np.allclose(v["none"], np.log10(2.0))
    flat = m.assign(value=np.where((m.norm == "none") & (m.metric == "loss"), 2.3, m.value))
    why = beta.untrained(s, flat)
    assert set(why) == set(leaves) and "never left its initial plateau" in why["new"]


def test_the_rise_is_refused_where_the_large_batch_did_not_train():
    rise = STUDIES.get("gn_small_batch").card.measures[1]
    s = _summary([{"norm": n, "batch_size": b, "seed": 0, "final_test_acc": 0.9} for n in ("bn", "ln")
                  for b in (32, 2)])
    s.loc[(s.norm == "ln") & (s.batch_size == 32), "collapsed"] = True
    assert list(rise.untrained(s, None)) == ["ln"]


# -- end to end: a micro tier through Snakemake -----------------------------------------------------------

MICRO = {
    "device": "cpu", "threads": 1, "smoke": True,  # every run a few steps: the pipeline, not the numbers
    "norms": {"gn": {"type": "gn", "options": {"groups": 4}}},
    "models": {"tiny": {"type": "vgg", "options": {"layers": [8, "M", 8]}}},
    "train": {"eval_every": 1000},
    "studies": {
        "lr_bs_sweep": {"grid": {"model": ["tiny"], "dataset": ["digits"], "norm": ["bn"], "batch_size": [32],
                                 "lr": [0.05, 0.2], "seed": [0, 1, 2]}, "train": {"steps": 40}},
        "depth_stats": {"grid": {"model": ["tiny"], "dataset": ["digits"], "norm": ["none"], "batch_size": [16],
                                 "lr": [0.01], "seed": [0, 1, 2]},
                        "train": {"steps": 1, "probe_every": 1, "probes": ["act_stats"]}},
    },  # no gn_small_batch, no santurkar: a tier without a study leaves its axis "not measured"
}


def _evaluate(tmp_path, *args):
    cmd = [sys.executable, "-m", "normbench.cli", *args, "--configfile", "micro.yaml",
           "--snakefile", str(ROOT / "Snakefile"), "--no-report", "--cores", "2", "--quiet"]
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def _run_files(tmp_path):
    return {f: f.stat().st_mtime_ns for f in (tmp_path / "results/evaluate/micro").glob("*/runs/summary/**/*.parquet")}


@pytest.mark.slow
def test_cards_share_the_baselines_and_the_leaderboard_trains_nothing_new(tmp_path):
    (tmp_path / "mynorms.py").write_text(USER_NORMS)
    (tmp_path / "micro.yaml").write_text(yaml.safe_dump(MICRO))
    _evaluate(tmp_path, "evaluate", "mynorms.py:ScaleBlind")
    out = tmp_path / "reports/evaluate/micro/ScaleBlind"
    t = pd.read_csv(out / "card.csv").fillna("")
    props = t[t.axis == C.PROPERTIES_AXIS].set_index("measure")
    assert props.loc["scale-invariant", "ScaleBlind"].startswith("no") and props.loc["scale-invariant", "bn"] \
        .startswith("yes")
    batch = t[t.axis == "batch robustness"]["vs bn"]
    assert (batch == NOT_MEASURED).any() and batch.isin([NOT_MEASURED, ""]).all()  # the micro tier has no such study
    assert "this tier's config has no such study" in (out / "README.md").read_text()
    first = _run_files(tmp_path)

    _evaluate(tmp_path, "evaluate", "mynorms.py:HandGN")
    second = _run_files(tmp_path)
    new = set(second) - set(first)
    assert new and all("norm~HandGN" in str(f) for f in new)  # only its own runs trained ...
    assert all(second[f] == first[f] for f in first)  # ... every baseline run kept as it was
    assert (tmp_path / "reports/evaluate/micro/HandGN/README.md").exists()

    p = _evaluate(tmp_path, "leaderboard", "--norms", "ScaleBlind", "HandGN", "gn")
    assert _run_files(tmp_path) == second  # every run on the page was trained by a card
    page = tmp_path / "reports/evaluate/micro/leaderboard"
    assert all((page / f).exists() for f in ("README.md", "leaderboard.csv", "leaderboard.html", "leaderboard.png"))
    assert "Measured: this page took" in (page / "README.md").read_text() and "s wall" in p.stdout
    lb = pd.read_csv(page / "leaderboard.csv")
    assert set(lb.norm) == {"ScaleBlind", "HandGN", *E.BASELINES}  # the baselines are always on the page


def test_a_normalizer_that_raises_gets_a_card_not_a_crash(tmp_path):
    (tmp_path / "mynorms.py").write_text(USER_NORMS)
    (tmp_path / "micro.yaml").write_text(yaml.safe_dump(MICRO))
    p = _evaluate(tmp_path, "evaluate", "mynorms.py:Boom")
    assert "raises in its forward" in p.stdout
    text = (tmp_path / "reports/evaluate/micro/Boom/README.md").read_text()
    assert "raises RuntimeError: boom" in text and "not measured" in text
    assert not (tmp_path / "results/evaluate/micro/depth_stats").exists()  # nothing trained


def test_an_undecided_card_verdict_gets_seeds_for_its_two_cells_only():
    """The card's adaptive stage (as the claims'): on the lr-robustness arm, NORM climbs 1–2 grid steps
    above BN on three seeds -- not decided at 97.5% on three, its plan asks for a few more -- and matches
    GN, LN and none (decided "same"): new seeds for NORM's and BN's runs, nothing for the others."""
    tops = {"new": [3, 3, 2], "bn": [1, 0, 1], "gn": [3, 3, 2], "ln": [3, 3, 2], "none": [3, 3, 2]}
    s = _summary([{"norm": n, "norm_type": n, "seed": sd, "lr": lr, "batch_size": 8, "collapsed": rank > top}
                  for n, t in tops.items() for sd, top in enumerate(t)
                  for rank, lr in enumerate((0.05, 1.0, 4.0), 1)])
    evaluate = {"norms": ["new"], "baselines": ["bn", "gn", "ln", "none"], "page": "card", "arms": {}}
    study = next(name for name, arm in C.card_arms() if "learning-rate" in arm.axis)
    decision = C.plan_topup(study, s, pd.DataFrame(columns=["metric"]), evaluate, max_seeds=20)
    undecided = [k for k in decision["claims"] if k.startswith("new vs bn")]
    assert undecided and not [k for k in decision["claims"] if not k.startswith("new vs bn")]
    added = decision["claims"][undecided[0]]["added"]
    assert added and added[0] == 3 and len(added) <= 17
    runs = pd.DataFrame(decision["runs"])
    assert set(runs.norm) == {"new", "bn"} and set(runs.seed) == set(added)
    assert set(runs.lr) == {0.05, 1.0, 4.0}  # every lr its cells read
    assert C.plan_topup(study, s, pd.DataFrame(columns=["metric"]), evaluate, max_seeds=0)["runs"] == []


def test_a_card_verdict_over_two_batch_sizes_is_planned_in_seeds_and_the_shared_lr_view_gets_none():
    """The lr-robustness arm reads a value per batch size and seed: the same three seeds at two batch
    sizes are three seeds, not six, to the adaptive stage (the seeds added reach the plan in seeds).
    And only the verdicts a page states get seeds: a shared-lr view shown beside one gets none."""
    tops = {"new": [3, 3, 2], "bn": [1, 0, 1], "gn": [3, 3, 2], "ln": [3, 3, 2], "none": [3, 3, 2]}
    at_32 = {**tops, "bn": [3, 2, 1]}  # at the larger batch BN climbs as high on two seeds: undecided on six values
    s = _summary([{"norm": n, "norm_type": n, "seed": sd, "lr": lr, "batch_size": bs, "collapsed": rank > top}
                  for bs, tt in ((8, tops), (32, at_32)) for n, t in tt.items() for sd, top in enumerate(t)
                  for rank, lr in enumerate((0.05, 1.0, 4.0), 1)])
    evaluate = {"norms": ["new"], "baselines": ["bn", "gn", "ln", "none"], "page": "card", "arms": {}}
    study = next(name for name, arm in C.card_arms() if "learning-rate" in arm.axis)
    decision = C.plan_topup(study, s, pd.DataFrame(columns=["metric"]), evaluate, max_seeds=20)
    (key, c), = ((k, c) for k, c in decision["claims"].items() if k.startswith("new vs bn"))
    assert c["n"] == 3 and len(c["added"]) == min(max(c["planned"], c["needed"]), 20) - 3
    rows = C.arm_rows(study, dict(C.card_arms())[study], s, pd.DataFrame(columns=["metric"]), None, "new", ["bn"])
    ev = next(r["evidence"]["bn"] for r in rows if "bn" in r["evidence"])
    assert ev.n == 6 and ev.seeds == 3 and c["needed"] == ev.needed
    # a row that does not count (a shared-lr view beside the best-lr verdict) adds nothing
    import normbench.card as card_module
    real = card_module.arm_rows
    try:
        card_module.arm_rows = lambda *a, **k: [{**r, "counts": False} for r in real(*a, **k)]
        assert C.plan_topup(study, s, pd.DataFrame(columns=["metric"]), evaluate, max_seeds=20)["runs"] == []
    finally:
        card_module.arm_rows = real


def test_every_arms_runs_are_scheduled_from_the_start_not_arm_after_arm(tmp_path):
    """Snakemake sees each arm's base runs and its adaptive-stage checkpoint at once (a per-study rule
    between them and the page): one input function over every study's checkpoint stopped at the first
    incomplete one, and the arms trained one after another with a core idle at each checkpoint."""
    (tmp_path / "micro.yaml").write_text(yaml.safe_dump(MICRO))
    cmd = [sys.executable, "-m", "normbench.cli", "evaluate", "ln", "--configfile", "micro.yaml",
           "--snakefile", str(ROOT / "Snakefile"), "--no-report", "-n"]
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    stats = dict(re.findall(r"^(topup|aggregate|train)\s+(\d+)$", p.stdout + p.stderr, re.M))
    assert stats.get("topup") == str(len(MICRO["studies"])) and stats.get("aggregate") == stats["topup"]
    assert int(stats["train"]) >= 2 * len(MICRO["studies"])  # ln's and the baselines' packs of both arms
