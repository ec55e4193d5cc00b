"""The CUDA-graph training step (normbench.graphstep), a mode of train.Trainer.

On CUDA (skipped elsewhere): graph replays agree with eager steps within the documented pack
tolerance, solo and packed.  On any machine: the mode's bookkeeping -- warm-up, the step
counter on the device, the epoch's permutation, re-capture when the lr or the live members
change, the eager fallback -- run with a stand-in for the capture that replays the recorded
step in Python; the runs must then equal eager training exactly."""

import contextlib
from types import SimpleNamespace

import pytest
import torch

from normbench import graphstep
from normbench.data import load_dataset
from normbench.settings import RunConfig
from normbench.train import PACK_TOLERANCE, Trainer

CNN = {"model": "vgg", "model_options": {"layers": [8, "M", 16, "M"]}, "norm": "bn"}


def trainer(runs, device="cpu", **common):
    cfgs = [RunConfig.from_dict({**CNN, "eval_every": 10, **common, **r}) for r in runs]
    data = load_dataset("digits", "resources", device)
    lines = []
    return Trainer(cfgs, data, progress=lines.append), lines


def rows(results):
    return [r.metrics.drop(columns="wall_time_s") for r in results]


@pytest.fixture
def python_graph(monkeypatch):
    """Capture records the step's Python function; replay calls it (no CUDA needed)."""
    seen = SimpleNamespace(captures=[], replays=[])

    def record(body):
        seen.captures.append(1)
        return SimpleNamespace(replay=lambda: (seen.replays.append(1), body()))

    monkeypatch.setattr(graphstep, "why_eager", lambda cfg, device, model: None if cfg.cuda_graph == "auto" else "off")
    monkeypatch.setattr(graphstep.GraphStep, "_record", staticmethod(record))
    monkeypatch.setattr(graphstep.GraphStep, "_side_stream", lambda self: contextlib.nullcontext())
    return seen


@pytest.mark.parametrize("runs, common", [
    ([{"lr": 0.05, "seed": 0}], {"steps": 100, "batch_size": 32}),  # > 2 epochs of digits
    ([{"lr": 0.05, "seed": 0}, {"lr": 0.1, "seed": 1}, {"lr": 50.0, "seed": 2}],  # one member diverges
     {"steps": 60, "batch_size": 64, "optimizer": "momentum", "schedule": "step"}),  # lr drops twice
    ([{"lr": 0.05, "seed": 0}], {"steps": 40, "batch_size": 4, "workers": 4, "warmup_steps": 5}),
])
def test_graph_mode_bookkeeping_equals_eager_training(python_graph, runs, common):
    graph, lines = trainer(runs, cuda_graph="auto", **common)
    eager, _ = trainer(runs, cuda_graph="off", **common)
    assert graph.graph is not None and eager.graph is None
    a, b = graph.run(), eager.run()
    for ra, rb in zip(rows(a), rows(b)):
        assert ra.equals(rb)
    assert [r.summary["diverged_step"] for r in a] == [r.summary["diverged_step"] for r in b]
    for ma, mb in zip(graph.models, eager.models):
        for (k, ta), tb in zip(ma.state_dict().items(), mb.state_dict().values()):
            assert torch.equal(ta, tb), k
    assert len(python_graph.replays) > common["steps"] // 2  # most steps were replays
    assert not any("cuda graph" in line for line in lines)


def test_the_graph_is_captured_again_when_the_lr_or_the_live_members_change(python_graph):
    """lr 50 diverges at step 3 and stops at the eval point at step 10; the step schedule drops the
    lr at steps 20 and 40: captures after the warm-up, after 10, after 20 and after 40."""
    t, _ = trainer([{"lr": 0.05, "seed": 0}, {"lr": 0.1, "seed": 1}, {"lr": 50.0, "seed": 2}], cuda_graph="auto",
                   steps=60, batch_size=64, optimizer="momentum", schedule="step")
    res = t.run()
    assert [r.summary["diverged_step"] for r in res] == [None, None, 3] and t.stopped_at == [None, None, 10]
    assert len(python_graph.captures) == 4
    assert len(python_graph.replays) == 60 - graphstep.WARMUP - 3  # one eager step after each change


def test_a_step_that_cannot_be_captured_falls_back_with_one_line(python_graph, monkeypatch):
    def broken(body):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    monkeypatch.setattr(graphstep.GraphStep, "_record", staticmethod(broken))
    run = [{"lr": 0.05, "seed": 0}]
    graph, lines = trainer(run, cuda_graph="auto", steps=30)
    eager, _ = trainer(run, cuda_graph="off", steps=30)
    for ra, rb in zip(rows(graph.run()), rows(eager.run())):
        assert ra.equals(rb)
    said = [line for line in lines if "cuda graph" in line]
    assert said == [f"cuda graph: off (capture failed: RuntimeError: operation not permitted when stream is "
                    f"capturing); eager steps from step {graphstep.WARMUP}"]


@pytest.mark.parametrize("change, reason", [
    ({}, None), ({"cuda_graph": "off"}, "cuda_graph: off"), ({"probes": ["landscape"], "probe_every": 5}, "probes"),
    ({"norm": "noisy_bn"}, "noisy BN"), ({"schedule": "cosine"}, "cosine"), ({"compile": True}, "compile"),
])
def test_why_a_run_trains_eagerly(change, reason):
    from normbench.models import build_network

    cfg = RunConfig.from_dict({**CNN, **change})
    with torch.device("meta"):
        model = build_network(cfg, (1, 8, 8), 10)
    why = graphstep.why_eager(cfg, torch.device("cuda"), model)
    assert (why is None) if reason is None else (reason in why)
    assert graphstep.why_eager(RunConfig.from_dict(CNN), torch.device("cpu"), model) == "device cpu is not CUDA"


def test_the_cpu_never_captures():
    t, lines = trainer([{"lr": 0.1, "seed": 0}], steps=5)
    assert t.graph is None and lines == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("runs", [[{"lr": 0.05, "seed": 0}], [{"lr": 0.05, "seed": 0}, {"lr": 0.1, "seed": 1}]])
@pytest.mark.parametrize("common", [{"batch_size": 32}, {"batch_size": 2, "workers": 4, "optimizer": "momentum"}])
def test_graph_replays_agree_with_eager_steps_on_cuda(runs, common):
    """20 steps: every logged loss and accuracy and the BN running statistics within PACK_TOLERANCE."""
    graph, lines = trainer(runs, "cuda", cuda_graph="auto", steps=20, **common)
    eager, _ = trainer(runs, "cuda", cuda_graph="off", steps=20, **common)
    a, b = graph.run(), eager.run()
    assert graph.graph.graph is not None, lines  # the last steps were replays
    for ra, rb in zip(rows(a), rows(b)):
        torch.testing.assert_close(torch.tensor(ra.value.values), torch.tensor(rb.value.values), **PACK_TOLERANCE)
    for ma, mb in zip(graph.models, eager.models):
        for (k, ta), tb in zip(ma.state_dict().items(), mb.state_dict().values()):
            if "running" in k:
                torch.testing.assert_close(ta, tb, **PACK_TOLERANCE)
