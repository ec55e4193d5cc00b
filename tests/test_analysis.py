"""Report tables from small fixture frames, against hand-computed numbers."""

import json

import numpy as np
import pandas as pd
import pytest

from normbench import analysis as A
from normbench.reports import build_study
from normbench.store import METRICS_SCHEMA, SUMMARY_SCHEMA, write_parquet


def runs(rows):
    """Summary rows with defaults for the columns a table does not look at."""
    base = dict(study="t", model="cnn", dataset="digits", norm="bn", placement="pre", activation="relu",
                batch_size=32, lr=0.1, seed=0, norm_type="bn", norm_options="{}", model_type="vgg",
                model_options="{}", init="default", optimizer="sgd", final_test_acc=0.5, final_test_loss=1.0,
                best_test_acc=0.5, final_train_loss=1.0, diverged=False, diverged_step=None, steps=100,
                examples=3200, target_acc=0.9, steps_to_target=None, examples_to_target=None, wall_time_s=1.0,
                train_time_s=1.0, probe_time_s=0.0, num_params=10, device="cpu", torch_version="x",
                normbench_version="x", git_rev="x")
    return pd.DataFrame([{**base, **r} for r in rows])


def test_bootstrap_ci_hand_cases():
    assert A.bootstrap_ci([0.7, 0.7, 0.7]) == pytest.approx((0.7, 0.7, 0.7))
    assert A.bootstrap_ci([0.4]) == (0.4, 0.4, 0.4)
    # [1, 2, 3]: each extreme mean (all 1s, all 3s) has probability 1/27 > 2.5%,
    # so the 95% percentile interval is exactly [1, 3]
    assert A.bootstrap_ci([1.0, 2.0, 3.0]) == (2.0, 1.0, 3.0)
    # fixed seed: the same numbers every time
    x = [0.91, 0.87, 0.95, 0.9]
    assert A.bootstrap_ci(x) == A.bootstrap_ci(x)
    m, lo, hi = A.bootstrap_ci(x)
    assert m == pytest.approx(0.9075) and 0.87 <= lo < m < hi <= 0.95
    assert np.isnan(A.bootstrap_ci([np.nan])[0])


def test_summarize_counts_diverged_runs_and_leaves_them_out_of_the_mean():
    s = runs([dict(seed=0, final_test_acc=0.9), dict(seed=1, final_test_acc=0.8),
              dict(seed=2, final_test_acc=0.1, diverged=True, diverged_step=5)])
    t = A.summarize(s, ["norm"], "final_test_acc").iloc[0]
    assert t.n == 3 and t.n_diverged == 1 and t["mean"] == pytest.approx(0.85)
    assert A.fmt_row(t).endswith("(1/3 diverged)")
    all_div = A.summarize(runs([dict(diverged=True), dict(seed=1, diverged=True)]), ["norm"], "final_test_acc")
    assert A.fmt_row(all_div.iloc[0]) == "diverged (2/2)"


def test_max_stable_and_trained_lr():
    s = runs([dict(lr=0.1), dict(lr=0.1, seed=1), dict(lr=1.0), dict(lr=1.0, seed=1, diverged=True),
              dict(lr=0.5, final_test_acc=0.15), dict(lr=0.5, seed=1)])
    t = A.max_stable_lr(s).iloc[0]
    assert t.max_stable_lr == 0.5  # 1.0 had a diverged seed
    assert t.max_trained_lr == 0.1  # at 0.5 one seed stayed near chance (0.15 < 0.2)
    assert t.lrs_diverged == 1 and t.lrs_not_trained == 2


def test_steps_to_target_and_speedup():
    s = runs([dict(norm="none", lr=0.01, steps_to_target=400), dict(norm="none", lr=0.01, seed=1, steps_to_target=600),
              dict(norm="none", lr=0.1, steps_to_target=None),  # one seed never reached: lr 0.1 does not count
              dict(norm="none", lr=0.1, seed=1, steps_to_target=100),
              dict(norm="bn", lr=0.1, steps_to_target=100), dict(norm="bn", lr=0.1, seed=1, steps_to_target=150),
              dict(norm="bn", lr=0.5, steps_to_target=50, diverged=True), dict(norm="bn", lr=0.5, seed=1, steps_to_target=50)])
    t = A.steps_to_target(s).set_index("norm")
    assert t.loc["none", "best_lr"] == 0.01 and t.loc["none", "steps"] == 500
    assert t.loc["bn", "best_lr"] == 0.1 and t.loc["bn", "steps"] == 125  # lr 0.5 had a diverged seed
    assert t.loc["bn", "examples"] == 125 * 32
    assert t.loc["bn", "speedup"] == pytest.approx(4.0) and t.loc["none", "speedup"] == pytest.approx(1.0)


def test_gn_table_delta_row_is_paired_and_carries_wu_he():
    rows = []
    for bs, (bn_acc, gn_acc) in {32: ((0.9, 0.8), (0.85, 0.85)), 2: ((0.6, 0.5), (0.84, 0.86))}.items():
        for seed in (0, 1):
            rows.append(dict(norm="bn", norm_type="bn", batch_size=bs, seed=seed, final_test_acc=bn_acc[seed]))
            rows.append(dict(norm="gn", norm_type="gn", batch_size=bs, seed=seed, final_test_acc=gn_acc[seed]))
    rows.append(dict(norm="gn", norm_type="gn", batch_size=2, seed=2, final_test_acc=0.1, diverged=True))
    t = A.gn_table(runs(rows)).set_index(["norm_type", "batch_size"])
    assert t.loc[("bn", 32), "mean"] == pytest.approx(15.0)  # error % = 100·(1 − acc): (10 + 20) / 2
    assert t.loc[("gn", 2), "mean"] == pytest.approx(15.0) and t.loc[("gn", 2), "n_diverged"] == 1
    # Δ per seed: batch 2: (16 − 40), (14 − 50) → mean −30
    assert t.loc[("Δ(GN−BN)", 2), "mean"] == pytest.approx(-30.0)
    assert t.loc[("Δ(GN−BN)", 2), "lo"] == pytest.approx(-36.0) and t.loc[("Δ(GN−BN)", 2), "hi"] == pytest.approx(-24.0)
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
    t = A.bn_placement_table(runs(rows)).set_index("variant")
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


def test_headline_reports_from_fixture_parquet(tmp_path):
    rows = []
    for bs in (32, 2):
        for norm in ("bn", "gn"):
            for seed in (0, 1):
                rows.append(dict(study="gn_small_batch", norm=norm, norm_type=norm, batch_size=bs, seed=seed,
                                 final_test_acc=0.9 - (0.3 if (norm == "bn" and bs == 2) else 0) - 0.01 * seed))
    s = runs(rows)
    write_parquet(s, tmp_path / "summary.parquet", SUMMARY_SCHEMA)
    write_parquet(_metric_rows(s), tmp_path / "metrics.parquet", METRICS_SCHEMA)
    rep = build_study("gn_small_batch", tmp_path / "summary.parquet", tmp_path / "metrics.parquet", tmp_path / "out")
    md = (tmp_path / "out/README.md").read_text()
    assert "Wu & He 2018" in md and "W&H 34.7" in md and "Compare the trend" in md
    assert "BN 10.5% → 40.5%" in rep.finding  # computed from the fixture: 100·(1 − 0.895), 100·(1 − 0.595)
    csv = pd.read_csv(tmp_path / "out/error_by_batch.csv")
    assert set(csv.norm_type) == {"bn", "gn", "Δ(GN−BN)"}
    assert json.loads((tmp_path / "out/finding.json").read_text())["finding"] == rep.finding
    for name in ("error_vs_batch.png", "error_by_batch.html", "captions/error_vs_batch.rst"):
        assert (tmp_path / "out" / name).stat().st_size > 0
