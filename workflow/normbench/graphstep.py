"""The training step as one CUDA graph: a mode of ``train.Trainer``, not a second loop.

Small nets on a GPU are launch-bound: hundreds of kernels a step, each one cheap.
Captured once (``torch.cuda.CUDAGraph``), the whole step -- the batch gathered on
the device from the epoch's permutation, forward, loss, backward, optimizer step,
divergence bookkeeping, the train-metric accumulators -- replays with one launch.
Everything it touches stays at fixed addresses: data resident, fixed batch
(drop-last), the step counter a device tensor, state updated in place
(``Trainer.learn``).  Evaluation, checkpoints and the lr schedule run outside.

What a graph bakes in is checked before each replay: the learning rates (foreach
SGD reads a tensor lr back to the host, and torch's schedulers do too, so the lr
stays a Python number) and which members are still live.  When they change (a
step schedule's milestone, a member that diverged) the step runs eagerly; once
they hold for a second step the graph is captured again -- a handful of captures
per run.  A run that cannot be captured trains eagerly, with one logged line
saying why.  The first steps are eager on a side stream, as capture requires
(cuDNN/cuBLAS workspaces, autograd's streams, the optimizer's state); they are
ordinary training steps, so nothing is trained twice.
"""

from __future__ import annotations

import contextlib

import torch

from .layers import noise_modules
from .settings import RunConfig

WARMUP = 3  # eager steps before the first capture (the PyTorch docs' whole-network example uses 3)


def why_eager(cfg: RunConfig, device: torch.device, model: torch.nn.Module) -> str | None:
    """Why this run's steps cannot be one CUDA graph (None: they can)."""
    if device.type != "cuda":
        return f"device {device} is not CUDA"
    if cfg.cuda_graph == "off":
        return "cuda_graph: off"
    if cfg.probes:
        return f"probes {', '.join(cfg.probes)} run between steps on the live model"
    if cfg.compile:
        return "compile: torch.compile's forward is not captured by hand"
    if noise_modules(model):
        return "noisy BN draws from its own generator on the host's schedule"
    if cfg.schedule == "cosine":
        return "the cosine schedule changes the lr every step (a graph bakes it in)"
    return None


class GraphStep:
    """Replays one captured training step of ``trainer``; eager steps where it must."""

    @classmethod
    def plan(cls, trainer) -> "GraphStep | None":
        reason = why_eager(trainer.cfg, trainer.device, trainer.models[0])
        if reason is None:
            return cls(trainer)
        if trainer.device.type == "cuda":  # on the CPU there is nothing to explain
            trainer.say(f"cuda graph: off ({reason}); eager steps")
        return None

    def __init__(self, trainer):
        t = self.t = trainer
        cfg = t.cfg
        self.bs, self.per_epoch = t.batches[0].bs, t.batches[0].per_epoch
        n = t.batches[0].n
        self.perm = torch.empty(len(t.cfgs), n, dtype=torch.long, device=t.device)  # each member's epoch order
        self.offsets = torch.arange(self.bs, device=t.device)
        self.step_t = torch.zeros((), dtype=torch.long, device=t.device)  # the step the graph trains
        self.epoch = None  # whose permutation self.perm holds
        self.synced = False  # step_t == t.step (the graph advances it; an eager step does not)
        self.graph, self.key, self.last_key, self.eager_steps = None, None, None, 0
        self.failed = False  # a capture failed: eager to the end
        self.stream = None
        # autocast's weight-cast cache must be off under capture (PyTorch's CUDA Graphs notes)
        t.autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.bf16, cache_enabled=False)
        if cfg.optimizer == "adam" and t.device.type == "cuda":  # its step count on the device, to be captured
            for g in t.opt.param_groups:
                g["capturable"] = True

    def baked(self) -> tuple:
        """What a captured graph holds as constants."""
        return tuple(self.t.active), tuple(float(g["lr"]) for g in self.t.opt.param_groups)

    def step(self) -> None:
        """Train step ``t.step`` of every member: a replay, or eagerly while the graph would be stale."""
        t, key = self.t, self.baked()
        if key != self.key:
            self.graph = None
            if self.failed or self.eager_steps < WARMUP or key != self.last_key or not self._capture(key):
                self.last_key = key
                self._eager()
                return
        epoch = t.step // self.per_epoch
        if epoch != self.epoch:
            for r, b in enumerate(t.batches):
                self.perm[r].copy_(b.permutation(t.step))
            self.epoch = epoch
        if not self.synced:
            self.step_t.fill_(t.step)
            self.synced = True
        self.graph.replay()
        if t.sched is not None:
            t.sched.step()
        t.seen += 1

    def _eager(self) -> None:
        with self._side_stream():
            self.t.train_step(*self.t.batch())
        self.eager_steps += 1
        self.synced = False

    @contextlib.contextmanager
    def _side_stream(self):
        """Eager steps run on a side stream, as capture requires of the steps before it."""
        current = torch.cuda.current_stream(self.t.device)
        self.stream = self.stream or torch.cuda.Stream(self.t.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            yield
        current.wait_stream(self.stream)

    @staticmethod
    def _record(body):
        """``body``'s kernels captured as a graph (not run: the first replay runs them)."""
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            body()
        return g

    def _body(self) -> None:
        """The captured step: the batch gathered from the permutation at step_t, then Trainer.learn."""
        t = self.t
        idx = self.perm[:, (self.step_t % self.per_epoch) * self.bs + self.offsets]  # (R, B)
        if len(t.cfgs) == 1:  # as Trainer.batch: one member's gather keeps the data's memory format
            x, y = t.data.x_train[idx[0]].unsqueeze(0), t.data.y_train[idx[0]].unsqueeze(0)
        else:
            x, y = t.data.x_train[idx], t.data.y_train[idx]
        t.learn(x, y, self.step_t)
        self.step_t.add_(1)

    def _capture(self, key) -> bool:
        t = self.t
        t.opt.zero_grad(set_to_none=True)  # gradients are then allocated from the graph's own pool
        try:
            g = self._record(self._body)
        except Exception as e:  # a layer that syncs with the host, or allocates from Python objects
            t.opt.zero_grad(set_to_none=True)
            first = (str(e).splitlines() or [""])[0]
            t.say(f"cuda graph: off (capture failed: {type(e).__name__}: {first}); eager steps from step {t.step}")
            self.failed = True
            return False
        self.graph, self.key = g, key
        return True
