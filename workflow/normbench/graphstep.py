"""The training step as one CUDA graph: a mode of ``train.Trainer``, not a second loop.

Small nets on a GPU are launch-bound: hundreds of kernels a step, each one cheap.
Captured once (``torch.cuda.CUDAGraph``), the whole step -- the batch gathered on
the device from the epoch's permutation, forward, loss, backward, optimizer step,
divergence bookkeeping, the train-metric accumulators -- replays with one launch.
Everything it touches stays at fixed addresses: data resident, fixed batch
(drop-last), the step counter a device tensor, state updated in place
(``Trainer.learn``).  Evaluation, checkpoints, probes and the lr schedule run outside.

What a graph bakes in is checked before each replay: the learning rates (foreach
SGD reads a tensor lr back to the host, and torch's schedulers do too, so the lr
stays a Python number) and which members are still live.  When they change (a
step schedule's milestone, a member that diverged) the step runs eagerly; once
they hold for a second step the graph is captured again -- a handful of captures
per run.  A probe step runs eagerly on the live model and the graph replays again
at the next step.  The first steps are eager on a side stream of the run's own
device, as capture requires (cuDNN/cuBLAS workspaces, autograd's streams, the
optimizer's state); they are ordinary training steps, so nothing is trained twice.

Nothing here may train silently wrong, whatever the PyTorch version: the first
replay of every capture is compared with the eager step it replaces, from the same
state, and a run whose replay disagrees trains eagerly.  A capture that fails is
ended, the process's current stream restored, and graphs stay off for the rest of
the process (a failed capture can leave CUDA state that later captures would
inherit); the line logged names the first error, not the follow-on one.
"""

from __future__ import annotations

import contextlib

import torch

from .layers import noise_modules
from .settings import PACK_TOLERANCE, RunConfig

WARMUP = 3  # eager steps before the first capture (the PyTorch docs' whole-network example uses 3)
_FAILED: list[str] = []  # why a capture failed in this process: graphs stay off for the rest of it


def why_eager(cfg: RunConfig, device: torch.device, model: torch.nn.Module) -> str | None:
    """Why this run's steps cannot be one CUDA graph (None: they can)."""
    if device.type != "cuda":
        return f"device {device} is not CUDA"
    if cfg.cuda_graph == "off":
        return "cuda_graph: off"
    if _FAILED:
        return f"a capture failed earlier in this process ({_FAILED[0]})"
    if cfg.compile:
        return "compile: torch.compile's forward is not captured by hand"
    if noise_modules(model):
        return "noisy BN draws from its own generator on the host's schedule"
    if cfg.schedule == "cosine":
        return "the cosine schedule changes the lr every step (a graph bakes it in)"
    return None


def capture(body, device: torch.device, stream) -> "torch.cuda.CUDAGraph":
    """``body``'s kernels captured as one graph on ``stream``, a stream of ``device`` (not run: the
    first replay runs them).  Whatever happens, the capture is ended and the caller's current device
    and stream are restored; on failure the body's error is raised, not capture_end's follow-on (an
    invalidated capture cannot end cleanly).  capture_begin/capture_end rather than the
    ``torch.cuda.graph`` context: older versions of it skip restoring the stream when capture_end
    raises, and raise capture_end's error in place of the cause."""
    g = torch.cuda.CUDAGraph()
    with torch.cuda.device(device), torch.cuda.stream(stream):
        torch.cuda.synchronize(device)  # nothing of the eager steps may still be running
        g.capture_begin()
        try:
            body()
        except BaseException:
            with contextlib.suppress(Exception):
                g.capture_end()
            raise
        g.capture_end()
    return g


def set_capturable(opt: torch.optim.Optimizer, capturable: bool) -> None:
    """The optimizer's step counts where this run needs them: on the parameters' device for a captured
    step (``capturable``), on the CPU otherwise -- whichever device a resumed checkpoint was saved on
    (the device is no part of a run's fingerprint, so a GPU run's checkpoint resumes on the CPU and back)."""
    for group in opt.param_groups:
        if "capturable" not in group:  # SGD keeps no step count
            continue
        group["capturable"] = capturable
        for p in group["params"]:
            state = opt.state.get(p, {})
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].to(p.device if capturable else torch.device("cpu"))


def stepped_state(t, extra: dict | None = None) -> dict[str, torch.Tensor]:
    """Every tensor a training step of trainer ``t`` updates in place, by a name a person can read."""
    out = {}
    names = {}
    for r, m in enumerate(t.models):
        for k, v in m.named_parameters():
            out[f"member {r} {k}"] = v
            names[v] = f"member {r} {k}"
        for k, v in m.named_buffers():
            out[f"member {r} buffer {k}"] = v
    for k, v in t.net.state().get("buffers", {}).items():  # a vectorized pack's stacked buffers
        out[f"stacked buffer {k}"] = v
    for p, state in t.opt.state.items():
        for k, v in state.items():
            if torch.is_tensor(v):
                out[f"optimizer {k} of {names.get(p, 'a parameter')}"] = v
    out.update({"first_bad": t.first_bad, "loss_sum": t.loss_sum, "correct": t.correct, **(extra or {})})
    return out


def disagreement(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], rtol: float, atol: float) -> str | None:
    """The first tensor where ``got`` and ``want`` differ beyond the tolerance (exactly, for integers)."""
    for k, w in want.items():
        g, w = got[k].detach(), w.detach()
        if g.is_floating_point():
            same = bool(torch.isclose(g, w, rtol=rtol, atol=atol, equal_nan=True).all())
        else:
            same = torch.equal(g, w)
        if not same:
            diff = (g.double() - w.double()).abs().nan_to_num(float("inf"))
            return f"{k}: max |replay − eager| {float(diff.max()):.3g}"
    return None


class GraphStep:
    """Replays one captured training step of a trainer; eager steps where it must.  It holds no
    reference to the trainer (the trainer holds it): a finished pack is freed as soon as it is dropped."""

    @classmethod
    def plan(cls, trainer) -> tuple["GraphStep | None", str | None]:
        """The graph mode of ``trainer`` (None: eager steps), and why not where not."""
        reason = why_eager(trainer.cfg, trainer.device, trainer.models[0])
        if reason is None:
            return cls(trainer), None
        if trainer.device.type == "cuda":  # on the CPU there is nothing to explain
            trainer.say(f"cuda graph: off ({reason}); eager steps")
        return None, reason

    def __init__(self, t):
        cfg = t.cfg
        self.device = t.device
        self.bs, self.per_epoch = t.batches[0].bs, t.batches[0].per_epoch
        n = t.batches[0].n
        self.perm = torch.empty(len(t.cfgs), n, dtype=torch.long, device=t.device)  # each member's epoch order
        self.offsets = torch.arange(self.bs, device=t.device)
        self.step_t = torch.zeros((), dtype=torch.long, device=t.device)  # the step the graph trains
        self.epoch = None  # whose permutation self.perm holds
        self.synced = False  # step_t == t.step (the graph advances it; an eager step does not)
        self.graph, self.key, self.last_key = None, None, None
        self.eager_steps = self.replays = 0  # steps trained eagerly / by a replay whose result was kept
        self.why = None  # why the steps are eager from now on (a failed capture, a replay that disagreed)
        self.stream = None
        # autocast's weight-cast cache must be off under capture (PyTorch's CUDA Graphs notes)
        t.autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.bf16, cache_enabled=False)

    def baked(self, t) -> tuple:
        """What a captured graph holds as constants."""
        return tuple(t.active), tuple(float(g["lr"]) for g in t.opt.param_groups)

    def mode(self) -> str:
        return f"eager ({self.why})" if self.why else "graph"

    def step(self, t, eager=None) -> None:
        """Train step ``t.step`` of every member: a replay, or eagerly while the graph would be stale.
        ``eager``: this step must run eagerly on the live model (a probe step; it calls train_step)."""
        key = self.baked(t)
        if eager is not None:  # the graph stays valid: the next step replays it
            self._eager(eager)
            self.last_key = key
            return
        fresh = key != self.key
        if fresh:
            self.graph = None
            if self.why or self.eager_steps < WARMUP or key != self.last_key:
                self.last_key = key
                self._eager(lambda: t.train_step(*t.batch()))
                return
        self._inputs(t)  # before a capture too: it records the step from the state it will replay from
        if fresh and not self._capture(t, key):
            self._eager(lambda: t.train_step(*t.batch()))
            return
        if fresh:
            self._checked_replay(t)
        else:
            self.graph.replay()
            self.replays += 1
        if t.sched is not None:
            t.sched.step()
        t.seen += 1

    def _inputs(self, t) -> None:
        """The permutation of step t.step's epoch, and the step counter, where the graph reads them."""
        epoch = t.step // self.per_epoch
        if epoch != self.epoch:
            for r, b in enumerate(t.batches):
                self.perm[r].copy_(b.permutation(t.step))
            self.epoch = epoch
        if not self.synced:
            self.step_t.fill_(t.step)
            self.synced = True

    def _eager(self, train) -> None:
        with self._side_stream():
            train()
        self.eager_steps += 1
        self.synced = False

    @contextlib.contextmanager
    def _side_stream(self):
        """Eager steps run on a side stream of the run's device while a capture may follow, as capture
        requires of the steps before it."""
        if self.why:  # no capture follows (and a failed capture's stream is never used again)
            yield
            return
        current, side = torch.cuda.current_stream(self.device), self._stream()
        side.wait_stream(current)
        with torch.cuda.stream(side):
            yield
        current.wait_stream(side)

    def _stream(self):
        self.stream = self.stream or torch.cuda.Stream(self.device)
        return self.stream

    def _body(self, t) -> None:
        """The captured step: the batch gathered from the permutation at step_t, then Trainer.learn."""
        idx = self.perm[:, (self.step_t % self.per_epoch) * self.bs + self.offsets]  # (R, B)
        if len(t.cfgs) == 1:  # as Trainer.batch: one member's gather keeps the data's memory format
            x, y = t.data.x_train[idx[0]].unsqueeze(0), t.data.y_train[idx[0]].unsqueeze(0)
        else:
            x, y = t.data.x_train[idx], t.data.y_train[idx]
        t.learn(x, y, self.step_t)
        self.step_t.add_(1)

    def _capture(self, t, key) -> bool:
        t.opt.zero_grad(set_to_none=True)  # gradients are then allocated from the graph's own pool
        try:  # on the stream the warm-up ran on, a stream of the run's device
            g = capture(lambda: self._body(t), self.device, self._stream())
        except Exception as e:  # a layer that syncs with the host, or allocates from Python objects
            t.opt.zero_grad(set_to_none=True)
            first = (str(e).splitlines() or [""])[0]
            self.why = f"capture failed: {type(e).__name__}: {first}"
            _FAILED.append(self.why)
            self.stream = None  # the capture's stream is dropped, whatever state the failure left it in
            t.say(f"cuda graph: off ({self.why}); eager steps from step {t.step}, and for the rest of this "
                  f"process")
            return False
        self.graph, self.key = g, key
        return True

    def _checked_replay(self, t) -> None:
        """The first replay of a capture, checked against the eager step it replaces from the same state;
        the eager step's result is kept.  A replay that disagrees (an empty graph, one captured on another
        device, a PyTorch whose capture misses an update) turns this run's graph off."""

        counter = "the graph's step counter"
        state = stepped_state(t, {counter: self.step_t})
        before = {k: v.detach().clone() for k, v in state.items()}
        self.graph.replay()
        replayed = {k: v.detach().clone() for k, v in state.items()}
        with torch.no_grad():
            for k, v in state.items():
                v.copy_(before[k])
        with self._side_stream():
            t.learn(*t.batch(), t.step)
        self.eager_steps += 1
        self.synced = False  # the eager step leaves the graph's step counter behind
        bad = disagreement(replayed, {**state, counter: before[counter] + 1}, **PACK_TOLERANCE)
        if bad:
            self.why = f"the first replay of the graph captured at step {t.step} disagrees with the eager step: {bad}"
            self.graph = self.key = None
            t.say(f"cuda graph: off ({self.why}, beyond rtol {PACK_TOLERANCE['rtol']:g}, atol "
                  f"{PACK_TOLERANCE['atol']:g}); eager steps for this run")
