"""The CUDA-graph training step (normbench.graphstep), a mode of train.Trainer.

On CUDA (skipped elsewhere): graph replays agree with eager steps within the documented pack
tolerance -- solo and packed, SGD, momentum and Adam, bf16, across an lr milestone, with probes,
on a second GPU.  On any machine, with stand-ins for the torch.cuda calls (fakecuda.py): the mode's
bookkeeping -- warm-up, the step counter on the device, the epoch's permutation, re-capture when the lr
or the live members change, probe steps between replays, the self-check of each capture's first replay,
the eager fallback -- run with a capture that records the step's Python function and replays it; the
runs must then equal eager training exactly.  And what the GPU path must call: the run's own device
and a stream of it, the capture ended and the stream restored after a failure."""

import gc
import weakref
from types import SimpleNamespace

import pytest
import torch

from fakecuda import FOLLOW_ON, FakeCuda
from normbench import graphstep
from normbench.data import load_dataset
from normbench.runners.sgd import get_data
from normbench.settings import RunConfig
from normbench.train import PACK_TOLERANCE, Trainer

CNN = {"model": "vgg", "model_options": {"layers": [8, "M", 16, "M"]}, "norm": "bn"}
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def trainer(runs, device="cpu", checkpoint=None, **common):
    cfgs = [RunConfig.from_dict({**CNN, "eval_every": 10, **common, **r}) for r in runs]
    data = load_dataset("digits", "resources", device)
    lines = []
    return Trainer(cfgs, data, checkpoint, progress=lines.append), lines


def rows(results):
    return [r.metrics.drop(columns="wall_time_s") for r in results]


def same_runs(a: Trainer, b: Trainer, ra, rb):
    for x, y in zip(rows(ra), rows(rb)):
        assert x.equals(y)
    for ma, mb in zip(a.models, b.models):
        for (k, ta), tb in zip(ma.state_dict().items(), mb.state_dict().values()):
            assert torch.equal(ta, tb), k


@pytest.fixture
def cuda(monkeypatch):
    """torch.cuda's calls faked; graph mode decided as on a GPU (the trainers' tensors stay on the CPU)."""
    monkeypatch.setattr(graphstep, "_FAILED", [])
    real = graphstep.why_eager
    monkeypatch.setattr(graphstep, "why_eager", lambda cfg, device, model: real(cfg, torch.device("cuda"), model))
    return FakeCuda(monkeypatch)


@pytest.fixture
def python_graph(cuda, monkeypatch):
    """Capture records the step's Python function; replay calls it (no CUDA needed)."""
    seen = SimpleNamespace(captures=[], replays=[], trainer=None, wrong=None)

    def record(body, device, stream):
        seen.captures.append(SimpleNamespace(device=device, stream=stream, at=seen.trainer and seen.trainer.step))

        def replay():
            seen.replays.append(seen.trainer and seen.trainer.step)
            if seen.wrong != "empty":
                body()
            if seen.wrong == "perturbed":  # a replay that misses part of the update
                with torch.no_grad():
                    next(seen.trainer.models[0].parameters()).add_(1e-3)
        return SimpleNamespace(replay=replay)

    monkeypatch.setattr(graphstep, "capture", record)
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
    python_graph.trainer = graph
    assert graph.graph is not None and eager.graph is None
    a, b = graph.run(), eager.run()
    same_runs(graph, eager, a, b)
    assert [r.summary["diverged_step"] for r in a] == [r.summary["diverged_step"] for r in b]
    assert len(python_graph.replays) > common["steps"] // 2  # most steps were replays
    assert graph.graph.replays == len(python_graph.replays) - len(python_graph.captures)  # first ones checked
    assert graph.graph.mode() == "graph"
    assert not any("cuda graph" in line for line in lines)


def test_the_graph_is_captured_again_when_the_lr_or_the_live_members_change(python_graph):
    """lr 50 diverges at step 3 and stops at the eval point at step 10; the step schedule drops the
    lr at steps 20 and 40: captures after the warm-up, after 10, after 20 and after 40."""
    t, _ = trainer([{"lr": 0.05, "seed": 0}, {"lr": 0.1, "seed": 1}, {"lr": 50.0, "seed": 2}], cuda_graph="auto",
                   steps=60, batch_size=64, optimizer="momentum", schedule="step")
    python_graph.trainer = t
    res = t.run()
    assert [r.summary["diverged_step"] for r in res] == [None, None, 3] and t.stopped_at == [None, None, 10]
    assert [c.at for c in python_graph.captures] == [graphstep.WARMUP, 11, 21, 41]
    assert len(python_graph.replays) == 60 - graphstep.WARMUP - 3  # one eager step after each change


def test_probe_steps_run_eagerly_and_the_graph_replays_between_them(python_graph):
    """Probes every 10 steps: steps 0, 10, 20, 30 are probed (eager, on the live model), the others
    replay the one graph captured after the warm-up; probes and training equal eager training."""
    run, common = [{"lr": 0.05, "seed": 0}], {"steps": 40, "probes": ["landscape", "ics"], "probe_every": 10}
    graph, lines = trainer(run, cuda_graph="auto", **common)
    eager, _ = trainer(run, cuda_graph="off", **common)
    python_graph.trainer = graph
    assert graph.graph is not None
    a, b = graph.run(), eager.run()
    same_runs(graph, eager, a, b)
    assert (a[0].metrics.split == "probe").sum() > 0
    assert len(python_graph.captures) == 1
    assert python_graph.replays == [s for s in range(graphstep.WARMUP, 40) if s % 10]
    assert not [line for line in lines if "cuda graph" in line]


@pytest.mark.parametrize("wrong", ["empty", "perturbed"])
def test_a_replay_that_disagrees_with_the_eager_step_is_caught_and_the_run_trains_eagerly(python_graph, wrong):
    """An empty graph (a capture on the wrong GPU: the weights never move) or one that misses part of the
    update: its first replay is compared with the eager step from the same state, the run goes on
    eagerly from the eager step's result, and equals eager training exactly."""
    python_graph.wrong = wrong
    run, common = [{"lr": 0.05, "seed": 0}, {"lr": 0.1, "seed": 1}], {"steps": 30, "optimizer": "momentum"}
    graph, lines = trainer(run, cuda_graph="auto", **common)
    eager, _ = trainer(run, cuda_graph="off", **common)
    python_graph.trainer = graph
    same_runs(graph, eager, graph.run(), eager.run())
    assert len(python_graph.captures) == 1 and python_graph.replays == [graphstep.WARMUP]
    assert graph.graph.replays == 0 and graph.graph.mode().startswith("eager (the first replay")
    said = [line for line in lines if "cuda graph" in line]
    assert len(said) == 1 and "disagrees with the eager step" in said[0] and "max |replay − eager|" in said[0]
    assert "member 0 0.0.weight: max |replay − eager| " in said[0]  # the first tensor that differs


def test_a_failed_capture_is_ended_the_stream_restored_and_graphs_stay_off_for_the_process(cuda, monkeypatch):
    """An error inside the capture (a host sync, say): the capture is still ended (the allocator leaves
    capture mode), the current stream is the caller's again, the line logged names the cause (not the
    follow-on error of capture_end), the run trains eagerly -- exactly as eager training -- and so does
    every later run of the process."""
    learn = Trainer.learn

    def learn_syncing_inside_capture(self, *a, **k):
        if cuda.allocating_to_pool is not None:
            cuda.fail_inside_capture("CUDA error: operation not permitted when stream is capturing\nmore detail")
        return learn(self, *a, **k)

    monkeypatch.setattr(Trainer, "learn", learn_syncing_inside_capture)
    run = [{"lr": 0.05, "seed": 0}]
    graph, lines = trainer(run, cuda_graph="auto", steps=30)
    eager, _ = trainer(run, cuda_graph="off", steps=30)
    before = cuda.current_stream("cpu")
    same_runs(graph, eager, graph.run(), eager.run())
    assert len(cuda.captures) == 1 and cuda.allocating_to_pool is None
    assert cuda.current_stream("cpu") is before and before.default
    cause = "capture failed: RuntimeError: CUDA error: operation not permitted when stream is capturing"
    assert [line for line in lines if "cuda graph" in line] == [
        f"cuda graph: off ({cause}); eager steps from step {graphstep.WARMUP}, and for the rest of this process"]
    assert FOLLOW_ON not in "".join(lines)
    later, later_lines = trainer(run, cuda_graph="auto", steps=5)
    assert later.graph is None and later.eager_reason == f"a capture failed earlier in this process ({cause})"


def test_capture_runs_on_a_stream_of_the_runs_device_and_restores_the_callers(cuda):
    """Capture on cuda:1 while the process's current device is cuda:0: the capture stream is cuda:1's
    (PyTorch's own default capture stream would be made on the current device), cuda:1 is current while
    the step is recorded, and afterwards the caller's device and streams are as they were."""
    device, stream = torch.device("cuda:1"), torch.cuda.Stream(torch.device("cuda:1"))
    seen = []
    g = graphstep.capture(lambda: seen.append((torch.cuda.current_device(), torch.cuda.current_stream())),
                          device, stream)
    assert cuda.captures == [{"stream": stream, "device": device}] and seen == [(1, stream)]
    assert cuda.current_key == "cuda:0" and cuda.current_stream(device).default and cuda.allocating_to_pool is None
    assert hasattr(g, "replay")

    def failing():
        cuda.fail_inside_capture("the cause")

    with pytest.raises(RuntimeError, match="^the cause$"):  # not capture_end's follow-on error
        graphstep.capture(failing, device, stream)
    assert cuda.current_key == "cuda:0" and cuda.current_stream(device).default and cuda.allocating_to_pool is None


def test_the_step_is_captured_on_a_stream_of_the_trainers_device(python_graph, cuda):
    """The warm-up's side stream and the capture's: one stream, made for the run's device."""
    t, _ = trainer([{"lr": 0.05, "seed": 0}], cuda_graph="auto", steps=10)
    python_graph.trainer = t
    t.run()
    (c,) = python_graph.captures
    assert c.device == t.device and c.stream.device == t.device and cuda.streams == [c.stream]


def test_a_finished_pack_is_freed_without_the_cyclic_collector(cuda, monkeypatch):
    """Nothing the trainer owns points back at it (the graph step, the probes): dropping a finished pack
    frees its models and optimizer state at once -- on a GPU, its memory and its graph's pool."""
    monkeypatch.setattr(graphstep, "capture", lambda body, device, stream: SimpleNamespace(replay=lambda: None))
    monkeypatch.setattr(graphstep.GraphStep, "_checked_replay", lambda self, t: None)  # a graph that holds nothing
    for runs, common in (([{"lr": 0.05, "seed": 0}, {"lr": 0.1, "seed": 1}], {"optimizer": "momentum"}),
                         ([{"lr": 0.05, "seed": 0}], {"probes": ["landscape"], "probe_every": 5})):
        t, _ = trainer(runs, cuda_graph="auto", steps=12, **common)
        t.run()
        assert t.graph is not None and t.graph.graph is not None
        alive = [weakref.ref(t), weakref.ref(t.models[0]), weakref.ref(t.opt)]
        gc.disable()
        try:
            del t
            assert [r() is None for r in alive] == [True] * len(alive)
        finally:
            gc.enable()


def test_adam_resumes_on_another_device_and_back(tmp_path):
    """A graph-mode GPU run saves Adam with capturable=True and its step counts on the GPU; the device is
    not in a run's fingerprint, so that checkpoint resumes on the CPU (map_location moves the tensors,
    the step counts go to the CPU, capturable off) -- and exactly as the uninterrupted run."""
    cfg = RunConfig.from_dict({**CNN, "optimizer": "adam", "lr": 0.002, "steps": 40, "eval_every": 10,
                               "checkpoint_every": 20, "seed": 3})
    full = Trainer([cfg], get_data(cfg, "cpu")).run()
    ck = tmp_path / "ck.pt"
    t = Trainer([cfg], get_data(cfg, "cpu"), ck)
    t.total = 25
    t.run()
    state = torch.load(ck, weights_only=True)
    for g in state["opt"]["param_groups"]:
        g["capturable"] = True  # what a graph-mode run on a GPU writes
    torch.save(state, ck)
    resumed = Trainer([cfg], get_data(cfg, "cpu"), ck)
    assert resumed.step == 20 and not resumed.opt.param_groups[0]["capturable"]
    for a, b in zip(rows(resumed.run()), rows(full)):
        assert a.equals(b)


def test_captured_adam_keeps_its_step_counts_on_the_parameters_device():
    """The other direction: a checkpoint saved on the CPU (step counts on the CPU) resumed in graph mode
    on a device -- here the meta device stands for it: the counts move to the parameters' device."""
    cpu = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([cpu], lr=0.1)
    cpu.grad = torch.ones(3)
    opt.step()
    saved = opt.state_dict()
    on_device = torch.nn.Parameter(torch.ones(3, device="meta"))
    opt = torch.optim.Adam([on_device], lr=0.1)
    opt.load_state_dict(saved)
    assert opt.state[on_device]["step"].device.type == "cpu"
    graphstep.set_capturable(opt, True)
    assert opt.param_groups[0]["capturable"] and opt.state[on_device]["step"].device.type == "meta"
    sgd = torch.optim.SGD([on_device], lr=0.1)
    graphstep.set_capturable(sgd, True)
    assert "capturable" not in sgd.param_groups[0]


@pytest.mark.parametrize("change, reason", [
    ({}, None), ({"cuda_graph": "off"}, "cuda_graph: off"), ({"probes": ["landscape"], "probe_every": 5}, None),
    ({"norm": "noisy_bn"}, "noisy BN"), ({"schedule": "cosine"}, "cosine"), ({"compile": True}, "compile"),
])
def test_why_a_run_trains_eagerly(change, reason, monkeypatch):
    from normbench.models import build_network

    monkeypatch.setattr(graphstep, "_FAILED", [])
    cfg = RunConfig.from_dict({**CNN, **change})
    with torch.device("meta"):
        model = build_network(cfg, (1, 8, 8), 10)
    why = graphstep.why_eager(cfg, torch.device("cuda"), model)
    assert (why is None) if reason is None else (reason in why)
    assert graphstep.why_eager(RunConfig.from_dict(CNN), torch.device("cpu"), model) == "device cpu is not CUDA"
    graphstep._FAILED.append("capture failed: X")
    assert graphstep.why_eager(cfg, torch.device("cuda"), model) in (
        "cuda_graph: off", "a capture failed earlier in this process (capture failed: X)")


def test_the_cpu_never_captures():
    t, lines = trainer([{"lr": 0.1, "seed": 0}], steps=5)
    assert t.graph is None and t.eager_reason == "device cpu is not CUDA" and lines == []


def test_the_epoch_permutation_reaches_the_gpu_without_a_sync(monkeypatch):
    """A copy from pageable host memory waits for the GPU's queue to drain, once an epoch; from pinned
    memory with non_blocking it is queued like a kernel.  The permutation is the host's either way."""
    from normbench.data import BatchSchedule

    copies = []
    real_to = torch.Tensor.to

    def pin(self):
        pinned = self.clone()
        pinned.pinned = True
        return pinned

    def to(self, *a, **k):
        if a and torch.device(a[0]).type == "cuda":
            copies.append((getattr(self, "pinned", False), k.get("non_blocking", False)))
            return self
        return real_to(self, *a, **k)

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    monkeypatch.setattr(torch.Tensor, "to", to)
    gpu, cpu = BatchSchedule(100, 10, seed=3, device="cuda:1"), BatchSchedule(100, 10, seed=3, device="cpu")
    for step in (0, 5, 10, 25):
        assert torch.equal(gpu(step)[1], cpu(step)[1])
    assert copies == [(True, True)] * 3  # one copy an epoch, pinned and asynchronous


# -- on CUDA ------------------------------------------------------------------------------------------


def agree_on_cuda(runs, device="cuda", **common):
    """Graph and eager training on ``device``: every logged value and the BN running statistics within
    PACK_TOLERANCE, and the last steps were replays (not an eager fallback)."""
    graph, lines = trainer(runs, device, cuda_graph="auto", **common)
    eager, _ = trainer(runs, device, cuda_graph="off", **common)
    a, b = graph.run(), eager.run()
    assert graph.graph is not None and graph.graph.why is None and graph.graph.replays > 0, lines
    for ra, rb in zip(rows(a), rows(b)):
        torch.testing.assert_close(torch.tensor(ra.value.values), torch.tensor(rb.value.values), **PACK_TOLERANCE)
    for ma, mb in zip(graph.models, eager.models):
        for (k, ta), tb in zip(ma.state_dict().items(), mb.state_dict().values()):
            if "running" in k:
                torch.testing.assert_close(ta, tb, **PACK_TOLERANCE)
    return graph


@CUDA
@pytest.mark.parametrize("runs", [[{"lr": 0.05, "seed": 0}], [{"lr": 0.05, "seed": 0}, {"lr": 0.1, "seed": 1}]])
@pytest.mark.parametrize("common", [{"batch_size": 32}, {"batch_size": 2, "workers": 4, "optimizer": "momentum"},
                                    {"batch_size": 32, "optimizer": "momentum", "schedule": "step"},  # an lr milestone
                                    {"batch_size": 32, "bf16": True}])
def test_graph_replays_agree_with_eager_steps_on_cuda(runs, common):
    agree_on_cuda(runs, steps=20, **common)


@CUDA
def test_adam_and_probes_in_graph_mode_on_cuda():
    agree_on_cuda([{"lr": 0.002, "seed": 0}], steps=20, optimizer="adam")
    t = agree_on_cuda([{"lr": 0.05, "seed": 0}], steps=20, probes=["landscape"], probe_every=5)
    assert t.graph.replays >= 20 - graphstep.WARMUP - 4 - 1


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_graph_mode_on_the_second_gpu():
    torch.cuda.set_device(1)
    try:
        agree_on_cuda([{"lr": 0.05, "seed": 0}], device="cuda:1", steps=20, optimizer="momentum")
    finally:
        torch.cuda.set_device(0)


@CUDA
def test_an_adam_checkpoint_moves_between_the_cpu_and_the_gpu(tmp_path):
    """Saved on the CPU, resumed in graph mode on the GPU, saved there, resumed on the CPU."""
    cfg = RunConfig.from_dict({**CNN, "optimizer": "adam", "lr": 0.002, "steps": 60, "eval_every": 10,
                               "checkpoint_every": 20, "seed": 3})
    ck = tmp_path / "ck.pt"
    t = Trainer([cfg], get_data(cfg, "cpu"), ck)
    t.total = 25
    t.run()
    gpu = Trainer([cfg], get_data(cfg, "cuda"), ck)
    assert gpu.step == 20 and gpu.graph is not None
    gpu.total = 45
    gpu.run()
    back = Trainer([cfg], get_data(cfg, "cpu"), ck)
    assert back.step == 40 and not back.opt.param_groups[0]["capturable"]
    back.run()
