"""`normbench report` on a folder whose runs did not all finish: every claim it can decide from the
runs that did, each study saying how many of its runs it read, an index marked partial at the top, a
study with none of its runs listed as not run, and a claim whose arms are missing saying so."""

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest

from normbench import cli
from normbench.claims import CLAIMS_SCHEMA, INCONCLUSIVE, Claim, Evidence
from normbench.publish import build_all, missing_arms
from normbench.report import claims_table
from normbench.runstate import read_finished, read_plan
from normbench.store import read_parquet
from normbench.studies import STUDIES

import trees


@pytest.fixture(scope="module")
def half(tmp_path_factory) -> Path:
    """lr_bs_sweep finished and aggregated; gn_small_batch: its BN packs only (6 of 12 runs); bn_placement
    not started."""
    results = tmp_path_factory.mktemp("half") / "results"
    pipe = trees.planned(results)
    trees.finish(pipe, "lr_bs_sweep")
    trees.train(pipe, "gn_small_batch", [p for p in pipe.packs("gn_small_batch") if "norm~bn" in p])
    return results


def _divides_by_gn_runs(s: pd.DataFrame, m: pd.DataFrame) -> Evidence:
    """A claim written for the whole grid: it divides by its GN arm's run count (none yet: ZeroDivisionError)."""
    gn = s[s.norm == "gn"]
    return Evidence(INCONCLUSIVE, f"GN's share of failed runs: {int(gn.diverged.sum()) / len(gn)}")


@pytest.fixture(scope="module")
def reported(half, tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    st = STUDIES.get("gn_small_batch")
    extra = Claim("gn_share", "GN's share of failed runs", "a test", _divides_by_gn_runs)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(STUDIES._entries, "gn_small_batch", dataclasses.replace(st, claims=st.claims + (extra,)))
        written = build_all(half, out)
    return out, written


def test_the_index_says_partial_at_the_top_and_lists_the_study_not_run(reported):
    out, written = reported
    assert [p.relative_to(out).as_posix() for p in written] == ["lr_bs_sweep/README.md",
                                                                "gn_small_batch/README.md", "index.md"]
    index = (out / "index.md").read_text()
    assert index.startswith("# normbench reports — partial results\n\n> **Partial results: 18 of 30 planned runs "
                            "finished.**")
    assert "gn_small_batch 6 of 12, bn_placement 0 of 6" in index.splitlines()[2]
    assert "- BN before vs after the nonlinearity (`bn_placement`) — not run (0 of 6 runs finished)" in index
    assert "*(partial: 6 of 12 runs)*" in index
    studies = {line.split("|")[1].strip() for line in index.splitlines() if line.startswith("| [")}
    assert studies == {"[lr_bs_sweep](lr_bs_sweep/README.md)", "[gn_small_batch](gn_small_batch/README.md) (partial)"}
    assert not (out / "bn_placement").exists()


def test_each_claim_of_the_partial_study_is_decided_or_says_what_is_missing(reported, half):
    out, _ = reported
    md = (out / "gn_small_batch/README.md").read_text()
    assert "> **Partial results: 6 of 12 runs finished.**" in md and "Not finished yet: norm gn." in md
    assert md.index("Partial results") < md.index("## Claims")
    finding = json.loads((out / "gn_small_batch/finding.json").read_text())
    assert (finding["runs"], finding["expected"], finding["missing"]) == (6, 12, "norm gn")
    # decided from the BN runs that finished: BN's error by batch (a verdict with its numbers)
    s = read_finished(half, "gn_small_batch", read_plan(half)).summary
    assert set(s.norm) == {"bn"} and len(s) == 6
    lines = [line for line in md[md.index("## Claims"):].splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {r["claim"]: r for r in (dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
                                    for line in lines[2:])}
    bn = rows["BN's error rises as the batch per worker shrinks"]
    assert "over 3 seeds" in bn["measured"] and bn["runs"] == "6"  # decided from the BN runs that finished
    # the claim that cannot read its GN arm: inconclusive, saying so, and the report still written
    row = rows["GN's share of failed runs"]
    assert row["verdict"] == INCONCLUSIVE and row["measured"] == "not measurable on the runs that finished"
    assert row["why / caveat"].startswith("its arms lack finished runs (norm gn): ZeroDivisionError")
    # results/<study>/claims.parquet stays the finished pipeline's: only the complete study wrote one
    assert (half / "lr_bs_sweep/claims.parquet").exists() and not (half / "gn_small_batch/claims.parquet").exists()


def test_a_complete_study_reads_its_aggregates_and_reports_as_before(reported, half):
    out, _ = reported
    r = read_finished(half, "lr_bs_sweep", read_plan(half))
    assert r.aggregated and not r.partial and r.done == r.expected == 12
    md = (out / "lr_bs_sweep/README.md").read_text()
    assert "Partial results" not in md and "## Where the runs ran" in md
    claims = read_parquet(half / "lr_bs_sweep/claims.parquet", CLAIMS_SCHEMA)
    assert list(claims.claim) == [c.id for c in STUDIES.get("lr_bs_sweep").claims]


def test_a_build_that_needs_the_missing_runs_still_writes_the_claims(half, tmp_path):
    st = STUDIES.get("gn_small_batch")

    def build(s, m):
        return st.build(s[s.norm == "gn"].iloc[[0]], m)  # needs a GN run: IndexError

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(STUDIES._entries, "gn_small_batch", dataclasses.replace(st, build=build))
        build_all(half, tmp_path, ["gn_small_batch"])
    md = (tmp_path / "gn_small_batch/README.md").read_text()
    assert "## Claims" in md and "The tables and figures need runs that have not finished yet (IndexError" in md
    assert not list((tmp_path / "gn_small_batch").glob("*.png"))


def test_a_complete_study_whose_build_fails_still_fails(half, tmp_path):
    st = STUDIES.get("lr_bs_sweep")

    def build(s, m):
        raise RuntimeError("a bug")

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(STUDIES._entries, "lr_bs_sweep", dataclasses.replace(st, build=build))
        with pytest.raises(RuntimeError, match="a bug"):
            build_all(half, tmp_path, ["lr_bs_sweep"])


def test_missing_arms_names_the_grid_values_without_a_finished_run(half):
    plan = read_plan(half)
    rows = plan[plan.study == "gn_small_batch"]
    s = read_finished(half, "gn_small_batch", plan).summary
    assert missing_arms(rows, s) == "norm gn"
    assert missing_arms(rows, s[s.batch_size == 8]) == "norm gn; batch_size 2"
    assert missing_arms(rows, s.iloc[:0]) == ("model tiny; dataset digits; norm bn, gn; placement pre; activation "
                                              "relu; batch_size 2, 8; lr 0.05; seed 0, 1, 2")


def test_each_claims_run_count_is_shown():
    claims = pd.DataFrame([{"study": "s", "claim": "c", "statement": "x", "source": "y", "verdict": INCONCLUSIVE,
                            "measured": "m", "estimate": 1.0, "lo": 0.0, "hi": 2.0, "n": 3, "note": None, "test": "t",
                            "level": 0.95, "runs": 6, "seeds": 3, "seeds_added": 0, "look": 1, "needed": None}],
                          columns=CLAIMS_SCHEMA.names)
    assert claims_table(claims)["runs"].tolist() == [6]


def test_report_command_on_a_folder_without_a_plan(half, tmp_path, capsys):
    """Results copied without their plan (or from before plans): the aggregated studies are reported whole."""
    bare = tmp_path / "results"
    import shutil

    shutil.copytree(half / "lr_bs_sweep", bare / "lr_bs_sweep")
    assert cli.main(["report", "--results", str(bare), "--out", str(tmp_path / "reports")]) == 0
    index = (tmp_path / "reports/index.md").read_text()
    assert index.startswith("# normbench reports\n") and "partial" not in index


def test_aggregates_are_read_only_while_they_hold_every_planned_run_as_it_is(half, tmp_path):
    import os
    import shutil

    copy = tmp_path / "results"
    shutil.copytree(half, copy)
    plan = read_plan(copy)
    assert read_finished(copy, "lr_bs_sweep", plan).aggregated
    first = next((copy / "lr_bs_sweep/runs/summary").rglob("*.parquet"))
    agg = (copy / "lr_bs_sweep/summary.parquet").stat().st_mtime
    os.utime(first, (agg + 10, agg + 10))  # a run trained again since the aggregate was written
    r = read_finished(copy, "lr_bs_sweep", plan)
    assert not r.aggregated and r.done == 12
    first.unlink()  # a run gone (its settings changed): the aggregate is stale, though it has 12 rows
    r = read_finished(copy, "lr_bs_sweep", plan)
    assert not r.aggregated and r.partial and r.done == 11
