"""The statistics that make verdicts hold on any seed list: each pinned by a hand-built example."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from normbench import analysis as A
from normbench.claims import INCONCLUSIVE, LOOK_LEVEL, NOT_REPRODUCED, REPRODUCED, at_most
from normbench.studies import STUDIES
from normbench.studies.gn_small_batch import label, primary, side_table
from normbench.studies.lr_bs_sweep import largest_trained_lr
from normbench.studies.santurkar import MATCH_BINS, matched_loss, probe_values

from test_analysis import runs


def _claim(study, cid):
    return next(c for c in STUDIES.get(study).claims if c.id == cid)


def test_at_most_is_one_sided_non_inferiority():
    assert at_most([0.1, -0.2, 0.0], 1.5, "x").verdict == REPRODUCED  # whole interval below 1.5
    assert at_most([-3.0, -2.5, -2.0], 1.5, "x").verdict == REPRODUCED  # lower is fine: one-sided
    assert at_most([3.0, 3.2, 2.9], 1.5, "x").verdict == NOT_REPRODUCED  # whole interval above
    undecided = at_most([0.0, 3.0, 1.5], 1.5, "x")  # mean 1.5: the interval straddles the bound
    assert undecided.verdict == INCONCLUSIVE and "includes 1.5" in undecided.note
    assert at_most([0.1, 0.2], 1.5, "x").verdict == INCONCLUSIVE  # two pairs: too few


def _sweep(bn_top, none_top, lrs=(0.01, 0.05, 0.2, 0.5, 1.0, 4.0), bs=8):
    """lr_bs_sweep runs: seed k of BN trains at every lr up to bn_top[k] and fails above; no norm likewise
    (None: trains at no lr); a trained no-norm run below its top is slow but not failed."""
    rows = []
    for norm, tops in (("bn", bn_top), ("none", none_top)):
        for seed, top in enumerate(tops):
            for lr in lrs:
                ok = top is not None and lr <= top
                rows.append(dict(study="lr_bs_sweep", norm=norm, norm_type=norm, seed=seed, lr=lr, batch_size=bs,
                                 final_test_acc=0.95 if ok else 0.1, collapsed=not ok))
    return runs(rows)


def test_largest_trained_lr_per_seed_by_hand():
    s = _sweep([1.0, 0.5, 1.0], [0.2, 0.2, None])
    top = largest_trained_lr(s).set_index(["norm_type", "seed"]).largest_trained_lr
    # a seed that trained at no lr is censored below the grid: 0, read by its rank alone
    assert top.to_dict() == {("bn", 0): 1.0, ("bn", 1): 0.5, ("bn", 2): 1.0,
                             ("none", 0): 0.2, ("none", 1): 0.2, ("none", 2): 0.0}


def test_bn_larger_lr_is_a_sign_test_that_no_seed_at_an_edge_decides():
    claim = _claim("lr_bs_sweep", "bn_larger_lr")
    # eight seeds; one BN seed fails at 1.0 (as one did on a GPU): still 8 of 8 seeds above no norm -> reproduced
    ev = claim.check(_sweep([1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0], [0.2] * 8), None)
    assert ev.verdict == REPRODUCED and ev.test == "sign test"
    assert ev.estimate == pytest.approx(math.log2(5))  # the median seed
    assert "per seed: BN 1/1/0.5/1/1/1/1/1, no norm 0.2/0.2/0.2/0.2/0.2/0.2/0.2/0.2" in ev.measured
    # a no-norm seed that trained at no lr is one more seed above, whatever sentinel once stood for it
    assert claim.check(_sweep([1.0] * 8, [0.2] * 7 + [None]), None).verdict == REPRODUCED
    # seeds where both trained up to the same lr are ties: left out, as the sign test leaves them
    tied = claim.check(_sweep([1.0] * 7 + [0.2], [0.2] * 8), None)
    assert tied.verdict == REPRODUCED and tied.n == 8
    # five seeds cannot decide a sign test at the 97.5% of a look, however clear: the plan asks for more
    few = claim.check(_sweep([1.0] * 5, [0.2] * 5), None)
    assert few.verdict == INCONCLUSIVE and 7 <= few.needed <= 20
    # BN no better than no norm on most seeds: not reproduced
    assert claim.check(_sweep([0.2] * 8, [0.5] * 8), None).verdict == NOT_REPRODUCED


def _gn_runs():
    rows = []
    for seed in range(4):
        for bs in (32, 16, 8, 4, 2):  # the main table: an MLP at five batch sizes
            for norm in ("bn", "gn"):
                err = (0.02 + 0.3 * (bs == 2)) if norm == "bn" else 0.03 - 0.002 * seed * (bs == 2)
                rows.append(dict(model="mlp6", model_type="mlp", norm=norm, norm_type=norm, batch_size=bs, seed=seed,
                                 workers=8, final_test_acc=1 - err, final_train_loss=0.1 if bs == 32 else 0.01))
        for bs in (32, 2):  # a conv side arm at the two ends
            for norm, mopts, err in (("bn", {}, 0.010), ("frn", {}, 0.012), ("gn", {"weight_std": True}, 0.011),
                                     ("evonorm_s0", {}, 0.015 + 0.05 * (bs == 2))):
                model = "cnn_ws" if mopts else "cnn"
                rows.append(dict(model=model, model_type="vgg", model_options=json.dumps({"layers": [8], **mopts}),
                                 norm=norm, norm_type=norm, batch_size=bs, seed=seed, workers=8,
                                 final_test_acc=1 - err - 0.001 * seed))
    return runs(rows)


def test_gn_small_batch_main_table_is_the_model_at_most_batch_sizes():
    s = _gn_runs()
    assert set(primary(s).model) == {"mlp6"}
    assert label(s[s.model == "cnn_ws"].iloc[0]) == "GN+WS" and label(s[s.model == "cnn"].iloc[0]) == "bn"
    # the side arm's table: errors in points, by model and label
    t = side_table(s[s.model != "mlp6"]).set_index(["model", "norm", "batch_size"])
    assert t.loc[("cnn_ws", "GN+WS", 32), "mean"] == pytest.approx(100 * (0.011 + 0.0015))
    assert t.loc[("cnn", "evonorm_s0", 2), "mean"] == pytest.approx(100 * (0.065 + 0.0015))


def test_batch_independent_norms_hold_by_the_one_sided_rule():
    s, m = _gn_runs(), None
    verdicts = {c: _claim("gn_small_batch", c).check(s, m) for c in
                ("bn_rises", "gn_flat", "gn_beats_bn", "frn_holds", "evonorm_s0_holds", "ws_gn_matches_bn")}
    assert verdicts["bn_rises"].verdict == REPRODUCED and "batch 2 − batch 32" in verdicts["bn_rises"].measured
    assert verdicts["bn_rises"].estimate == pytest.approx(30.0)  # the MLP's BN only, not the conv arm's
    # GN improves at the small batch (−0.2·seed points): the one-sided claim holds
    assert verdicts["gn_flat"].verdict == REPRODUCED and verdicts["gn_flat"].estimate == pytest.approx(-0.3)
    # FRN at batch 2 against BN at batch 32 (the same net): +0.2 points in every seed
    frn = verdicts["frn_holds"]
    assert frn.verdict == REPRODUCED and frn.estimate == pytest.approx(0.2) and "FRN at batch 2 − BN at batch 32" \
        in frn.measured
    # EvoNorm-S0 at batch 2 is 5.5 points worse than BN at 32 in this example: not reproduced
    assert verdicts["evonorm_s0_holds"].verdict == NOT_REPRODUCED
    assert verdicts["evonorm_s0_holds"].estimate == pytest.approx(5.5)
    # GN+WS at batch 2 vs BN at batch 32 on the same net but for WS: +0.1 points in every seed
    ws = verdicts["ws_gn_matches_bn"]
    assert ws.verdict == REPRODUCED and ws.estimate == pytest.approx(0.1) and ws.n == 4
    assert "GN+WS at batch 2 − BN at batch 32" in ws.measured
    worse = s.assign(final_test_acc=np.where((s.model == "cnn_ws") & (s.batch_size == 2), 0.9, s.final_test_acc))
    assert _claim("gn_small_batch", "ws_gn_matches_bn").check(worse, m).verdict == NOT_REPRODUCED


def _probe_metrics(shift_bn: float):
    """Probes of two seeds: the standard net stands at losses 1.0, 0.3 and 0.1; BN at 0.3, 0.1 and 0.03.
    β: the standard net's 2.0 everywhere, BN's 2·10^shift_bn; two layers of ICS."""
    rows = []
    for seed in (0, 1):
        for norm, losses in (("none", (1.0, 0.3, 0.1)), ("bn", (0.3, 0.1, 0.03))):
            for step, loss in zip((0, 100, 200), losses):
                key = dict(study="santurkar", model="vgg8", dataset="d", norm=norm, placement="pre",
                           activation="relu", batch_size=32, lr=0.1, seed=seed, norm_type=norm, label=norm,
                           step=step, split="probe", layer=None)
                rows.append({**key, "metric": "probe_loss", "value": loss})
                value = 2.0 * 10 ** shift_bn if norm == "bn" else 2.0
                rows.append({**key, "metric": "beta_eff", "value": value})
    return pd.DataFrame(rows)


def test_matched_loss_compares_the_nets_only_where_their_losses_meet():
    m = _probe_metrics(0.5)
    v = probe_values(m, m, "beta_eff")
    # 4 bins per decade: loss 0.3 -> floor(log10(0.3)·4) = floor(-2.09) = -3; 0.1 -> -4; 1.0 -> 0; 0.03 -> -7
    assert sorted(v[v.norm_type == "none"].bin.unique()) == [-4, -3, 0] and MATCH_BINS == 4
    r = matched_loss(m, m, "beta_eff")
    # the shared bins are the losses 0.3 and 0.1: two per seed, BN 10^0.5 higher in each
    assert list(r.bins) == [2, 2] and r.log_ratio.tolist() == pytest.approx([0.5, 0.5])
    # at equal step, BN's probe at step 0 (loss 0.3) meets the standard net's at loss 1.0: not a matched pair
    assert matched_loss(_probe_metrics(0.0), _probe_metrics(0.0), "beta_eff").log_ratio.tolist() == \
        pytest.approx([0.0, 0.0])


def test_seed_offset_moves_every_grid_to_an_unseen_seed_list():
    import yaml

    from normbench.config import default_config_path
    from normbench.pipeline import load_pipeline

    config = yaml.safe_load(default_config_path().read_text())
    base = load_pipeline(config, check_files=False)
    shifted = load_pipeline({**config, "seed_offset": 100}, check_files=False)
    for name, st in base.studies.items():
        moved = shifted.studies[name].runs
        assert sorted(moved.seed) == sorted(st.runs.seed + 100)
        assert moved.drop(columns="seed").equals(st.runs.drop(columns="seed"))
        assert all("seed~1" in p for p in shifted.studies[name].paths)  # seed~100, ~101, …: new files


def test_same_step_claims_read_the_regular_probes_only():
    """Extra early probes (probe_at) feed the matched-loss view; the same-step claims take the median over
    the regular schedule, as the paper's curves do -- eight early probes must not outvote three regular ones
    (read after the standard net's plateau, which ends before step 100 here)."""
    s = runs([dict(study="santurkar", model="vgg8", model_type="vgg", norm=n, norm_type=n, seed=seed, probe_every=100)
              for n in ("bn", "none") for seed in (0, 1, 2)])
    rows = []
    for _, r in s.iterrows():
        key = {k: r[k] for k in ("study", "model", "dataset", "norm", "placement", "activation", "batch_size", "lr",
                                 "seed")}
        for step, loss in ((0, 2.3), (100, 1.0), (200, 0.8), (300, 0.7)):
            rows.append({**key, "step": step, "split": "train", "metric": "loss", "layer": None, "value": loss})
        regular = {0: (1.0, 3.0), 100: (1.0, 3.0), 200: (1.0, 3.0), 300: (1.0 + 0.1 * r.seed, 3.0)}
        early = {step: (5.0, 1.0) for step in range(10, 90, 10)}
        for step, (bn, none) in {**regular, **early}.items():
            rows.append({**key, "step": step, "split": "probe", "metric": "beta_eff", "layer": None,
                         "value": bn if r.norm_type == "bn" else none})
    m = pd.DataFrame(rows)
    ev = _claim("santurkar", "beta_eff").check(s, m)
    assert ev.verdict == REPRODUCED and "regular probes" in ev.measured
    assert ev.estimate == pytest.approx(np.log10(3.0))  # medians 1 (BN) vs 3 (standard)
    flat = s.assign(probe_every=0)  # every probe regular: the early ones outvote
    assert _claim("santurkar", "beta_eff").check(flat, m).verdict == NOT_REPRODUCED


def test_matched_loss_takes_the_median_bin_so_the_chance_loss_bin_does_not_decide():
    m = _probe_metrics(0.5)
    # both nets also meet at the chance loss (2.3): BN's first step, ICS-like 1000× the plateaued net's
    extra = m[(m.step == 0)].copy()
    extra["step"] = 300
    extra.loc[extra.metric == "probe_loss", "value"] = 2.3
    extra.loc[(extra.metric == "beta_eff") & (extra.norm_type == "bn"), "value"] = 2000.0
    r = matched_loss(pd.concat([m, extra]), pd.concat([m, extra]), "beta_eff")
    # shared bins per seed: 0.3, 0.1 (log ratio 0.5 each) and 2.3 (log ratio 3): median 0.5, mean 1.33
    assert list(r.bins) == [3, 3] and r.log_ratio.tolist() == pytest.approx([0.5, 0.5])


def _accuracy_runs(spec):
    """Santurkar VGG runs from (norm, seed, steps, {step: test accuracy}, diverged); a diverged run stops at 100."""
    rows, mrows = [], []
    for norm, seed, steps, accs, diverged in spec:
        rows.append(dict(study="santurkar", model="vgg8", model_type="vgg", norm=norm, norm_type=norm, seed=seed,
                         steps=100 if diverged else steps, diverged=diverged, final_test_acc=max(accs.values())))
        mrows += [dict(study="santurkar", model="vgg8", dataset="digits", norm=norm, placement="pre", activation="relu",
                       batch_size=32, lr=0.1, seed=seed, step=step, split="test", metric="acc", layer=None, value=acc)
                  for step, acc in accs.items()]
    return runs(rows), pd.DataFrame(mrows)


def test_accuracy_claims_compare_every_net_at_the_shortest_arms_length():
    """Noisy BN trains 400 steps, BN and the standard net 900: the claim reads BN's test accuracy at
    step 400 (0.95, as noisy BN's), not at 900 (0.99); a standard run that diverged at step 100 does not
    shorten the budget."""
    s, m = _accuracy_runs([(norm, seed, steps, accs, norm == "none" and seed == 0) for seed in range(3)
                           for norm, steps, accs in (("bn", 900, {400: 0.95, 900: 0.99}),
                                                     ("noisy_bn", 400, {400: 0.95 + 0.001 * seed}),
                                                     ("none", 900, {400: 0.5, 900: 0.6}))])
    ev = _claim("santurkar", "noisy_bn").check(s, m)
    assert ev.verdict == REPRODUCED and "at step 400" in ev.measured
    assert ev.estimate == pytest.approx(0.001)  # the nearer of its two parts to failing: noisy − BN at 400


def test_noisy_bn_beats_the_standard_net_on_its_training_curve_not_on_a_coin_flip_endpoint():
    """The standard net leaves its plateau at step 200 on three seeds and after step 400 on two: at step 400
    the gap is 0, 0, 0, 0.87, 0.87 (the t interval includes 0); over the curve (evaluations 0 … 400) noisy BN
    is ahead on every seed, so "trains better than the standard net" is reproduced."""
    noisy = {0: 0.1, 100: 0.9, 200: 0.95, 300: 0.97, 400: 0.97}
    late = {0: 0.1, 100: 0.1, 200: 0.1, 300: 0.1, 400: 0.1}
    early = {0: 0.1, 100: 0.1, 200: 0.6, 300: 0.97, 400: 0.97}
    s, m = _accuracy_runs([(norm, seed, 400, curve, False) for seed in range(5)
                           for norm, curve in (("bn", noisy), ("noisy_bn", noisy), ("none", late if seed >= 3 else early))])
    ev = _claim("santurkar", "noisy_bn").check(s, m)
    assert ev.verdict == REPRODUCED and "mean test accuracy over the evaluations up to step 400" in ev.measured
    # per seed: noisy BN's curve mean 0.778 vs the standard net's 0.548 (early) or 0.1 (late)
    gaps = [0.778 - 0.548] * 3 + [0.778 - 0.1] * 2
    mean, lo, _ = A.t_interval(pd.Series(gaps), LOOK_LEVEL)
    assert f"noisy BN − standard: {mean:.3f} [{lo:.3f}" in ev.measured
    endpoint = pd.Series([0.0] * 3 + [0.87] * 2)
    assert A.t_interval(endpoint)[1] < 0  # the endpoint's interval includes 0: it would not have decided


def test_the_training_curve_is_read_at_the_evaluation_steps_every_net_shares():
    from normbench.studies.santurkar import at_equal_budget

    s = pd.DataFrame([dict(norm=n, lr=0.1, seed=0, steps=200) for n in ("bn", "none")])
    m = pd.DataFrame([dict(norm="bn", lr=0.1, seed=0, step=st, split="test", metric="acc", value=v)
                      for st, v in ((0, 0.1), (100, 0.9), (200, 1.0))]
                     + [dict(norm="none", lr=0.1, seed=0, step=st, split="test", metric="acc", value=v)
                        for st, v in ((0, 0.1), (200, 0.5))])
    sv, budget = at_equal_budget(s, m)
    curve = sv.set_index("norm").curve_acc
    assert budget == 200 and curve["bn"] == pytest.approx(0.55) and curve["none"] == pytest.approx(0.3)


def _placement(loss_gap, acc_gaps, seeds=range(5)):
    """bn_placement's conv runs: BN before and after ReLU (no affine, and with scale&bias), per seed; after
    ReLU has a test log loss lower by ``loss_gap`` and an accuracy higher by ``acc_gaps[seed]``."""
    rows = []
    for seed in seeds:
        for place, sign in (("pre", 0), ("post", 1)):
            for norm, opts in (("bn_noaffine", '{"affine": false}'), ("bn", "{}")):
                rows.append(dict(study="bn_placement", model="cnn_small", norm=norm, norm_type="bn",
                                 norm_options=opts, placement=place, seed=seed,
                                 final_test_loss=0.3 - sign * loss_gap + 0.01 * seed,
                                 final_test_acc=0.93 + sign * acc_gaps[seed]))
    return runs(rows)


def test_after_relu_is_decided_on_the_test_log_loss_with_accuracy_beside():
    """360 test images make accuracy coarse (a step of 1/360): seed-level accuracy gaps of −1 … +2 images
    decide nothing, while the log loss of the same predictions moves by 0.15 on every seed."""
    coarse = [0.0, 2 / 360, -1 / 360, 1 / 360, 0.0]
    ev = _claim("bn_placement", "after_relu").check(_placement(0.15, coarse), None)
    assert ev.verdict == REPRODUCED and ev.estimate == pytest.approx(0.15)
    assert ev.measured.startswith("test log loss, BN before − after ReLU")
    assert "test accuracy, after − before" in ev.measured and "inconclusive" in ev.measured  # accuracy beside
    assert _claim("bn_placement", "after_relu").check(_placement(-0.15, coarse), None).verdict == NOT_REPRODUCED


def _relative_losses(none_top, bn_top, seeds=4, lrs=(1e-4, 0.1)):
    """Bjorck runs: each run's relative loss is ``top`` at every step size (its largest); None: overflowed."""
    rows, metrics = [], []
    for norm, top in (("none", none_top), ("bn", bn_top)):
        for lr in lrs:
            for seed in range(seeds):
                rows.append(dict(study="bjorck", norm=norm, norm_type=norm, lr=lr, seed=seed))
                for alpha in (1e-4, 0.003, 0.1, 1.0):
                    metrics.append(dict(study="bjorck", model="cnn", dataset="digits", norm=norm, placement="pre",
                                        activation="relu", batch_size=32, lr=lr, seed=seed, step=0,
                                        metric="rel_loss", step_size=alpha, value=math.nan if top is None else top))
    return runs(rows), pd.DataFrame(metrics)


def test_an_overflowed_relative_loss_is_censored_not_a_stand_in_number():
    explodes, tame = _claim("bjorck", "explodes_without_bn"), _claim("bjorck", "tame_with_bn")
    s, m = _relative_losses(None, 2.0)  # every unnormalized run overflowed; BN at 2 (below its bound of 3)
    ev = explodes.check(s, m)
    assert ev.verdict == REPRODUCED and ev.test == "sign test" and ev.n == 8
    assert ev.estimate == math.inf and ev.lo == math.inf  # no number stands in for an overflow
    assert tame.check(s, m).verdict == REPRODUCED
    # a BN run that overflowed counts against BN, never dropped: 2 of 8 -> the interval reaches below the bound
    s, m = _relative_losses(1e9, 2.0)
    bad = m.norm.eq("bn") & m.seed.eq(0)
    m.loc[bad, "value"] = math.nan
    assert tame.check(s, m).verdict == INCONCLUSIVE
    # the unnormalized net below 1e6 on every run: not reproduced
    assert explodes.check(*_relative_losses(10.0, 2.0)).verdict == NOT_REPRODUCED
