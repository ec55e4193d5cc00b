"""Statistics, claims and report tables from small fixture frames, against hand-computed numbers."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from normbench import analysis as A
from normbench.claims import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, every, greater, within
from normbench.publish import build_study, check_claims, write_index
from normbench.store import ENVIRONMENT_FIELDS, METRICS_SCHEMA, PARAM_COLUMNS, SUMMARY_SCHEMA, write_parquet
from normbench.studies.bn_placement import placement_table, variant
from normbench.studies.gn_small_batch import error_table
from normbench.studies.santurkar import STUDY as SANTURKAR, by_phase, on_plateau


def runs(rows):
    """Summary rows with defaults for the columns a table does not look at."""
    base = dict(study="t", model="cnn", dataset="digits", norm="bn", placement="pre", activation="relu",
                batch_size=32, lr=0.1, seed=0, norm_type="bn", norm_options="{}", model_type="vgg",
                model_options="{}", init="default", optimizer="sgd", final_test_acc=0.5, final_test_loss=1.0,
                best_test_acc=0.5, final_train_loss=1.0, final_train_acc=0.5, diverged=False, diverged_step=None,
                collapsed=False, chance_acc=0.1, steps=100, examples=3200, workers=1, target_acc=0.9,
                steps_to_target=None, examples_to_target=None, wall_time_s=1.0, train_time_s=1.0, probe_time_s=0.0, probe_every=0,
                compute_time_s=1.0, warmup_steps=0, num_params=10, device="cpu", torch_version="x", normbench_version="x", git_rev="x",
                **{n: None for n, _ in ENVIRONMENT_FIELDS})
    return pd.DataFrame([{**base, **r} for r in rows])


def test_t_interval_hand_cases():
    # [1, 2, 3]: mean 2, s = 1, t(0.975, 2) = 4.302653: 2 ± 4.302653/√3
    m, lo, hi = A.t_interval([1.0, 2.0, 3.0])
    assert m == 2.0 and hi - m == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6) and lo == pytest.approx(2 * m - hi)
    assert A.t_interval([0.7, 0.7, 0.7]) == pytest.approx((0.7, 0.7, 0.7))
    one = A.t_interval([0.4])
    assert one[0] == 0.4 and math.isnan(one[1]) and math.isnan(one[2])  # one seed: no interval
    assert math.isnan(A.t_interval([np.nan])[0])
    # five seeds: t(0.975, 4) = 2.776445
    x = [0.91, 0.87, 0.95, 0.9, 0.92]
    m, lo, hi = A.t_interval(x)
    assert hi - m == pytest.approx(2.776445 * np.std(x, ddof=1) / math.sqrt(5), rel=1e-6)


def test_t_interval_covers_at_three_seeds():
    """Simulated: the t interval covers the true mean ~95% of the time at n = 3 (a
    percentile bootstrap of three values covers ~75%)."""
    rng = np.random.default_rng(0)
    draws = rng.normal(1.0, 0.3, (4000, 3))
    cover = np.mean([lo <= 1.0 <= hi for _, lo, hi in map(A.t_interval, draws)])
    assert 0.935 <= cover <= 0.965


def test_summarize_counts_failed_runs_and_leaves_them_out_of_the_mean():
    s = runs([dict(seed=0, final_test_acc=0.9), dict(seed=1, final_test_acc=0.8),
              dict(seed=2, final_test_acc=0.1, diverged=True, diverged_step=5),
              dict(seed=3, final_test_acc=0.1, collapsed=True)])
    t = A.summarize(s, ["norm"], "final_test_acc").iloc[0]
    assert t.n == 4 and t.n_diverged == 1 and t.n_collapsed == 1
    assert t["mean"] == pytest.approx((0.9 + 0.8 + 0.1) / 3)  # diverged out, collapsed kept by default
    t2 = A.summarize(s, ["norm"], "final_test_acc", drop_failed="failed").iloc[0]
    assert t2["mean"] == pytest.approx(0.85)
    assert A.fmt_row(t).endswith("(1/4 diverged) (1/4 collapsed)")
    all_div = A.summarize(runs([dict(diverged=True), dict(seed=1, diverged=True)]), ["norm"], "final_test_acc")
    assert A.fmt_row(all_div.iloc[0]) == "diverged (2/2)"


def test_max_stable_and_trained_lr():
    s = runs([dict(lr=0.1), dict(lr=0.1, seed=1), dict(lr=1.0), dict(lr=1.0, seed=1, diverged=True),
              dict(lr=0.5, collapsed=True, final_test_acc=0.1), dict(lr=0.5, seed=1)])
    t = A.max_stable_lr(s).iloc[0]
    assert t.max_stable_lr == 0.5  # 1.0 had a diverged seed
    assert t.max_trained_lr == 0.1  # at 0.5 one seed collapsed to chance
    assert t.lrs_diverged == 1 and t.lrs_not_trained == 2


def test_steps_to_target_and_speedup():
    s = runs([dict(norm="none", norm_type="none", lr=0.01, steps_to_target=400),
              dict(norm="none", norm_type="none", lr=0.01, seed=1, steps_to_target=600),
              dict(norm="none", norm_type="none", lr=0.1, steps_to_target=None),  # a seed never reached it
              dict(norm="none", norm_type="none", lr=0.1, seed=1, steps_to_target=100),
              dict(norm="bn", lr=0.1, steps_to_target=100), dict(norm="bn", lr=0.1, seed=1, steps_to_target=150),
              dict(norm="bn", lr=0.5, steps_to_target=50, diverged=True), dict(norm="bn", lr=0.5, seed=1, steps_to_target=50)])
    t = A.steps_to_target(s).set_index("norm")
    assert t.loc["none", "best_lr"] == 0.01 and t.loc["none", "steps"] == 500
    assert t.loc["bn", "best_lr"] == 0.1 and t.loc["bn", "steps"] == 125  # lr 0.5 had a diverged seed
    assert t.loc["bn", "examples"] == 125 * 32
    assert t.loc["bn", "speedup"] == pytest.approx(4.0) and t.loc["none", "speedup"] == pytest.approx(1.0)


def test_claim_verdicts_from_intervals():
    assert greater([1.0, 1.2, 0.9], "Δ").verdict == REPRODUCED
    assert greater([-1.0, -1.2, -0.9], "Δ").verdict == NOT_REPRODUCED
    assert greater([1.0, -1.2, 0.4], "Δ").verdict == INCONCLUSIVE
    assert greater([2.0, 2.1, 1.95], "Δ", margin=1.5).verdict == REPRODUCED
    assert greater([1.0, 1.1], "Δ").verdict == INCONCLUSIVE  # two seeds: too few to decide
    ev = greater([1.0, 2.0, 3.0], "Δ")  # a look's 97.5% interval: t(0.9875, 2) = 6.205
    assert (ev.estimate, ev.n) == (2.0, 3) and ev.lo == pytest.approx(2 - 6.205347 / math.sqrt(3), rel=1e-6)
    assert within([0.001, -0.002, 0.0], 0.02, "Δ").verdict == REPRODUCED
    assert within([0.1, 0.12, 0.09], 0.02, "Δ").verdict == NOT_REPRODUCED
    assert within([0.01, -0.02, 0.04], 0.02, "Δ").verdict == INCONCLUSIVE
    mixed = every([greater([1.0, 1.1, 1.2], "a"), greater([-1.0, -1.1, -1.2], "b")])
    assert mixed.verdict == NOT_REPRODUCED and ";" in mixed.measured


def test_gn_table_delta_row_is_paired_and_carries_wu_he():
    rows = []
    for bs, (bn_acc, gn_acc) in {32: ((0.9, 0.8), (0.85, 0.85)), 2: ((0.6, 0.5), (0.84, 0.86))}.items():
        for seed in (0, 1):
            rows.append(dict(norm="bn", norm_type="bn", batch_size=bs, seed=seed, final_test_acc=bn_acc[seed]))
            rows.append(dict(norm="gn", norm_type="gn", batch_size=bs, seed=seed, final_test_acc=gn_acc[seed]))
    rows.append(dict(norm="gn", norm_type="gn", batch_size=2, seed=2, final_test_acc=0.1, diverged=True))
    t = error_table(runs(rows)).set_index(["norm_type", "batch_size"])
    assert t.loc[("bn", 32), "mean"] == pytest.approx(15.0)  # error % = 100·(1 − acc): (10 + 20) / 2
    assert t.loc[("gn", 2), "mean"] == pytest.approx(15.0) and t.loc[("gn", 2), "n_diverged"] == 1
    # Δ per seed: batch 2: (16 − 40), (14 − 50) → mean −30, SE 6, t(0.975, 1) = 12.706: ± 12.706·6
    assert t.loc[("Δ(GN−BN)", 2), "mean"] == pytest.approx(-30.0)
    assert t.loc[("Δ(GN−BN)", 2), "hi"] == pytest.approx(-30 + 12.7062 * 6, rel=1e-4)
    assert t.loc[("bn", 2), "ref_err"] == 34.7 and t.loc[("gn", 32), "ref_err"] == 24.1
    assert t.loc[("Δ(GN−BN)", 2), "ref_err"] == pytest.approx(24.1 - 34.7)


def test_bn_placement_rows_and_reference():
    rows = []
    for norm, opts, place, acc in [("none", "{}", "pre", 0.8), ("bn_na", '{"affine": false}', "pre", 0.9),
                                   ("bn", "{}", "pre", 0.91), ("bn_na", '{"affine": false}', "post", 0.93),
                                   ("bn", "{}", "post", 0.92)]:
        for seed in (0, 1):
            rows.append(dict(norm=norm, norm_type="none" if norm == "none" else "bn", norm_options=opts,
                             placement=place, seed=seed, final_test_acc=acc, final_test_loss=1 - acc))
    s = runs(rows)
    t = placement_table(s.assign(variant=s.apply(variant, axis=1))).set_index("variant")
    assert list(t.index) == ["no BN", "BN before ReLU", "BN before ReLU + scale&bias", "BN after ReLU",
                             "BN after ReLU + scale&bias"]
    assert t.loc["BN after ReLU", "test_acc"] == pytest.approx(0.93)
    assert t.loc["BN after ReLU", "ref_acc"] == 0.499 and t.loc["no BN", "ref_log_loss"] == 2.36


def _metric_rows(summary: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in summary.iterrows():
        for step in (0, 50, 100):
            for split, metric, v in (("train", "loss", 1.0 / (step + 1)), ("test", "loss", 1.2 / (step + 1)),
                                     ("test", "acc", r.final_test_acc * step / 100)):
                rows.append({**{k: r[k] for k in ("study", "model", "dataset", "norm", "placement", "activation",
                                                  "batch_size", "lr", "seed")},
                             "step": step, "epoch": step / 10, "examples": step * 32, "split": split, "metric": metric,
                             "layer": None, "step_size": None, "value": v, "wall_time_s": 0.1})
    return pd.DataFrame(rows)


def test_headline_report_and_claims_from_fixture_parquet(tmp_path):
    rows = []
    for bs in (32, 2):
        for norm in ("bn", "gn"):
            for seed in (0, 1, 2):
                bad = 0.3 if (norm == "bn" and bs == 2) else 0
                rows.append(dict(study="gn_small_batch", norm=norm, norm_type=norm, batch_size=bs, seed=seed,
                                 workers=4, final_test_acc=0.9 - bad - 0.01 * seed + 0.002 * (bs == 2) * seed))
    s = runs(rows)
    write_parquet(s, tmp_path / "summary.parquet", SUMMARY_SCHEMA)
    write_parquet(_metric_rows(s), tmp_path / "metrics.parquet", METRICS_SCHEMA)
    claims = check_claims("gn_small_batch", tmp_path / "summary.parquet", tmp_path / "metrics.parquet",
                          tmp_path / "claims.parquet")
    verdicts = dict(zip(claims.claim, claims.verdict))
    assert verdicts == {"bn_rises": REPRODUCED, "gn_flat": REPRODUCED, "gn_beats_bn": REPRODUCED,
                        # no FRN / EvoNorm / WS runs in this fixture: their claims say so
                        "frn_holds": INCONCLUSIVE, "evonorm_s0_holds": INCONCLUSIVE, "ws_gn_matches_bn": INCONCLUSIVE}
    rep = build_study("gn_small_batch", tmp_path / "summary.parquet", tmp_path / "metrics.parquet",
                      tmp_path / "claims.parquet", tmp_path / "out")
    md = (tmp_path / "out/README.md").read_text()
    assert "Wu & He 2018" in md and "W&H 34.7" in md and "## Claims" in md and "reproduced" in md
    assert md.index("## Claims") < md.index("## Test error")  # claims at the top
    # 100·(1 − mean acc) by hand: batch 32: 10, 11, 12 → 11.0; batch 2: 40, 40.8, 41.6 → 40.8
    assert "BN 11.0% → 40.8%" in rep.finding and "GN 11.0% → 10.8%" in rep.finding
    csv = pd.read_csv(tmp_path / "out/error_by_batch.csv")
    assert set(csv.norm_type) == {"bn", "gn", "Δ(GN−BN)"}
    assert json.loads((tmp_path / "out/finding.json").read_text())["finding"] == rep.finding
    for name in ("error_vs_batch.png", "error_vs_batch.svg", "error_by_batch.html", "claims.html",
                 "captions/error_vs_batch.rst", "captions/claims.rst"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    write_index(tmp_path / "idx", ["gn_small_batch"], [tmp_path / "claims.parquet"])
    (tmp_path / "idx" / "gn_small_batch").mkdir()
    index = (tmp_path / "idx/index.md").read_text()
    assert "3 reproduced, 0 not reproduced, 3 inconclusive" in index
    assert "Smoke check" not in index
    write_index(tmp_path / "smoke", ["gn_small_batch"], [tmp_path / "claims.parquet"], smoke=True)
    smoke = (tmp_path / "smoke/index.md").read_text()
    assert smoke.index("Smoke check") < smoke.index("3 reproduced")  # said above the verdicts


def _plateau_metrics(summary: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in summary.iterrows():
        run = {k: r[k] for k in PARAM_COLUMNS}
        # the standard net's training loss, logged at steps 10, 20, 30: 2.3 and 2.2 are above 90% of
        # 2.3 (on the plateau), 1.0 is not
        for step, loss in ((10, 2.3), (20, 2.2), (30, 1.0)):
            rows.append({**run, "step": step, "split": "train", "metric": "loss", "layer": None,
                         "value": loss if r.norm_type == "none" else 0.5})
        # probes at steps 0 and 10 read the loss logged at 10 (plateau), at 25 the one logged at 30 (after);
        # BN's β is below the standard net's at 10 and 25
        for step, bn, none in ((0, 5.0, 1.0), (10, 0.5, 1.0), (25, 1.0 + 0.03 * r.seed, 3.0)):
            for layer in ("a", "b"):
                for metric in ("beta_eff", "ics_l2"):
                    rows.append({**run, "step": step, "split": "probe", "metric": metric, "layer": layer,
                                 "value": bn if r.norm_type == "bn" else none})
    return pd.DataFrame(rows)


def test_smoothness_probes_split_at_the_end_of_the_standard_nets_plateau():
    s = runs([dict(study="santurkar", norm=n, norm_type=n, seed=seed) for n in ("bn", "none") for seed in (0, 1, 2)])
    m = A.with_runs(_plateau_metrics(s), s, ["norm_type"])
    flat = on_plateau(m[m.seed == 0])
    assert flat.to_dict() == {(0.1, 0, 0): True, (0.1, 0, 10): True, (0.1, 0, 25): False}
    text = by_phase(m[m.seed == 0], m[m.seed == 0], "beta_eff")
    assert "at 1 of 2 probes while the standard net was on its initial plateau" in text
    assert text.endswith("and at 1 of 1 after")
    # β is decided where both nets learn too: after the plateau BN's is 1.0–1.06 vs 3 (log ratio standard / BN
    # 0.45 … 0.48: reproduced); over both phases the run medians (BN 1 + 0.03·seed vs 1) would have left it
    # undecided, and that value stands beside, with the probe-by-probe split
    beta = next(c for c in SANTURKAR.claims if c.id == "beta_eff").check(s, m)
    assert beta.verdict == REPRODUCED and "after the standard net left its initial plateau" in beta.measured
    assert beta.estimate == pytest.approx(np.mean([np.log10(3.0 / (1.0 + 0.03 * k)) for k in range(3)]))
    assert "over every regular probe (both phases) -0.01" in beta.measured
    assert "BN's below the standard net's at 3 of 6 probes" in beta.measured and "and at 3 of 3 after" in beta.measured
    # ICS is decided where both nets learn: after the plateau BN's is 1.0–1.06 vs 3 (log ratio −0.48 … −0.45,
    # below −log10 2: not reproduced); the median over both phases (log ratio 0 … 0.03) would have said
    # reproduced, and is shown beside
    ics = next(c for c in SANTURKAR.claims if c.id == "ics_vgg").check(s, m)
    assert ics.verdict == NOT_REPRODUCED and "after the standard net left its initial plateau" in ics.measured
    assert ics.estimate == pytest.approx(np.mean([np.log10((1.0 + 0.03 * k) / 3.0) for k in range(3)]))
    assert "over every regular probe (both phases) 0.01" in ics.measured
    assert ics.note.endswith("at 3 of 6 probes while the standard net was on its initial plateau (training loss "
                             "above 90% of its first) and at 3 of 3 after")
