"""`normbench export tensorboard` round-trips: TensorBoard's own reader gives back every metric row of
the Parquet, and its HParams backend lists every run with its grid point and final metrics."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("tensorboard")  # the lock pins it; a bare install without the extra skips these

from google.protobuf import json_format  # noqa: E402
from tensorboard import context  # noqa: E402
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins import base_plugin  # noqa: E402
from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups  # noqa: E402
from tensorboard.util import tensor_util  # noqa: E402

from normbench import cli  # noqa: E402
from normbench.export import HPARAMS, run_paths, tag  # noqa: E402
from normbench.runstate import read_finished, read_plan  # noqa: E402

import trees  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """Santurkar-style probes (per-layer rows, the relative loss's step sizes) beside plain runs: one
    study finished, one half-finished."""
    results = tmp_path_factory.mktemp("tb") / "results"
    config = {**trees.TINY, "studies": {
        "lr_bs_sweep": trees.TINY["studies"]["lr_bs_sweep"],
        "bn_placement": {"train": {"probes": ["rel_loss", "act_stats"], "probe_every": 3, "rel_loss_steps": 2},
                         **trees.TINY["studies"]["bn_placement"]}}}
    pipe = trees.planned(results, config)
    trees.finish(pipe, "lr_bs_sweep")
    trees.train(pipe, "bn_placement", list(pipe.packs("bn_placement"))[:1])
    out = results.parent / "tb"
    assert cli.main(["export", "tensorboard", str(out), "--results", str(results)]) == 0
    return results, out


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float, float]]]:
    """tag -> [(step, value, wall time)] as TensorBoard reads them."""
    acc = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    acc.Reload()
    return {t: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto)), e.wall_time) for e in acc.Tensors(t)]
            for t in acc.Tags()["tensors"] if not t.startswith("_hparams_")}


def test_every_scalar_reads_back_equal_to_the_parquet(exported):
    results, out = exported
    plan = read_plan(results)
    n = 0
    for study in ("lr_bs_sweep", "bn_placement"):
        runs = read_finished(results, study, plan)
        assert runs.done == (12 if study == "lr_bs_sweep" else 3)
        for path, (_, row) in zip(run_paths(runs.summary), runs.summary.iterrows()):
            m = runs.metrics[(runs.metrics.norm == row.norm) & (runs.metrics.placement == row.placement)
                             & (runs.metrics.lr == row.lr) & (runs.metrics.seed == row.seed)]
            want: dict[str, list] = {}
            for r in m.itertuples():
                want.setdefault(tag(r.split, r.metric, r.layer, r.step_size), []).append(
                    (r.step, r.value, r.wall_time_s))
            got = scalars(out / study / path)
            final = {t: v for t, v in got.items() if t.startswith("final/")}
            assert {t: v for t, v in got.items() if not t.startswith("final/")} == want  # exact: doubles
            assert final["final/final_test_acc"] == [(row.steps, row.final_test_acc, row.wall_time_s)]
            assert final["final/diverged"][0][1] == float(row.diverged)
            n += len(m)
    assert n > 0
    tags = set(scalars(next((out / "bn_placement").rglob("seed~0"))))
    assert {"train/loss", "test/acc", "probe/rel_loss/step_size=0.001"} <= tags
    assert any(t.startswith("probe/act_std/") for t in tags)  # per-layer probes carry their layer


def test_the_hparams_dashboard_lists_the_sweep(exported):
    """TensorBoard's HParams backend (what its table and parallel coordinates show) on the export."""
    results, out = exported
    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(out))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(out))
    ctx = backend_context.Context(base_plugin.TBContext(logdir=str(out), data_provider=provider, multiplexer=mux))
    request = json_format.Parse('{"allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS"], "colParams": '
                                '[{"metric": {"tag": "final/final_test_acc"}}], "startIndex": 0, "sliceSize": 1000}',
                                api_pb2.ListSessionGroupsRequest())
    groups = list_session_groups.Handler(context.RequestContext(), ctx, "", request).run().session_groups
    summary = pd.concat([read_finished(results, s, read_plan(results)).summary
                         for s in ("lr_bs_sweep", "bn_placement")], ignore_index=True)
    assert len(groups) == len(summary) == 15
    got = {}
    for g in groups:
        hp = {k: (v.string_value if v.HasField("string_value") else v.number_value) for k, v in g.hparams.items()}
        acc = {mv.name.tag: mv.value for mv in g.metric_values}["final/final_test_acc"]
        got[tuple(hp[c] for c in HPARAMS)] = acc
    want = {tuple(float(r[c]) if c in ("lr", "batch_size", "seed") else r[c] for c in HPARAMS): r.final_test_acc
            for _, r in summary.iterrows()}
    assert got == want
    # the experiment: every grid column, with the values the sweep took
    exp = ctx.experiment_from_metadata(context.RequestContext(), "", True, ctx.hparams_metadata(
        context.RequestContext(), ""), ctx.hparams_from_data_provider(context.RequestContext(), "", 1000))
    domains = {h.name: [json_format.MessageToDict(v) for v in h.domain_discrete.values] for h in exp.hparam_infos}
    assert sorted(domains) == sorted(HPARAMS)
    assert domains["lr"] == [0.05, 0.5] and domains["norm"] == ["bn", "none"]
    assert domains["placement"] == ["pre"]  # bn_placement's "post" runs have not finished: not in the sweep yet
    assert "final/final_test_acc" in [m.name.tag for m in exp.metric_infos]


def test_exporting_again_replaces_the_export_and_refuses_other_folders(exported, tmp_path):
    results, out = exported
    before = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert cli.main(["export", "tensorboard", str(out), "--results", str(results)]) == 0
    after = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert len(after) == len(before)  # replaced, not doubled: one event file per run
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # nothing left beside
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "todo.txt").write_text("mine\n")
    assert cli.main(["export", "tensorboard", str(mine), "--results", str(results)]) == 2
    assert [p.name for p in mine.iterdir()] == ["todo.txt"]


def test_tags_name_the_layer_and_the_step_size():
    assert tag("train", "loss", None, np.nan) == "train/loss"
    assert tag("probe", "act_std", "features.3", None) == "probe/act_std/features.3"
    assert tag("probe", "rel_loss", None, 0.003) == "probe/rel_loss/step_size=0.003"
