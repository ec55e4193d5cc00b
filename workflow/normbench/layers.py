"""The normalization layers torch does not ship, written from their papers.

The batch-statistics ones keep state in buffers (never Python attributes) so that a vectorized
pack (torch.func) can batch them, probes can evaluate them on copies, and a
checkpoint restores them.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def per_channel(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, *([1] * (x.dim() - 2)))


# Data-parallel workers: a batch of W·N examples is W workers' N examples each, and a
# batch-statistics layer normalizes each worker's slice with that slice's own statistics
# (unsynchronized BN, as on W GPUs).  The running statistics follow the mean of the
# workers' batch statistics -- the same as averaging W running averages, since the
# exponential average is linear (TensorFlow's mirrored variables read as a mean).


def by_worker(x: torch.Tensor, workers: int) -> torch.Tensor:
    """(W·N, C, *S) -> (W, N, C, *S)."""
    return x.reshape(workers, x.shape[0] // workers, *x.shape[1:])


def worker_stat(v: torch.Tensor, xw: torch.Tensor) -> torch.Tensor:
    """Per-worker, per-channel values (W, C) broadcast over (W, N, C, *S)."""
    return v.view(v.shape[0], 1, v.shape[1], *([1] * (xw.dim() - 3)))


class PerWorker:
    """Mixin: a batch-statistics layer that normalizes each data-parallel worker's slice of the
    batch with that slice's own statistics when ``workers`` > 1 (``set_workers`` sets it)."""

    workers = 1


class WorkerBatchNorm(PerWorker):
    """Mixin for torch's BatchNorm: statistics per data-parallel worker when ``workers`` > 1;
    with one worker it is torch's own forward, untouched."""

    workers = 1

    def forward(self, x):
        if self.workers == 1 or not self.training:
            return super().forward(x)
        # one pass on every device: the same arithmetic on the CPU and the GPU (and ~20% faster on the
        # CPU than a transposed batch_norm call, measured on the GN small-batch study's vectorized MLP packs)
        return self.forward_one_pass(x)

    def forward_one_pass(self, x):
        """Statistics once per (worker, channel) from a view of the batch, normalized with them,
        the running statistics moved by the same numbers: no copies of the batch, γ/β broadcast.
        Statistics in float32 whatever autocast made of x (bf16 sums drift)."""
        W, c = self.workers, x.shape[1]
        xw = by_worker(x, W)  # a view: (W, N, C, *S)
        xf = xw.float() if xw.dtype in (torch.float16, torch.bfloat16) else xw
        var, mean = torch.var_mean(xf, [1] + list(range(3, xw.dim())), correction=0, keepdim=True)
        y = (xf - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            shape = (c,) + (1,) * (x.dim() - 2)  # broadcasts over (W, N, C, *S) from the right
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                k = xw.numel() // (W * c)  # values per (worker, channel); torch's running var is unbiased
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(mean.view(W, c).mean(0), alpha=m)
                self.running_var.mul_(1 - m).add_(var.view(W, c).mean(0) * (k / max(k - 1, 1)), alpha=m)
                self.num_batches_tracked.add_(1)
        return y.to(x.dtype).reshape(x.shape)


class BatchNorm1d(WorkerBatchNorm, nn.BatchNorm1d):
    pass


class BatchNorm2d(WorkerBatchNorm, nn.BatchNorm2d):
    pass


def affine_parameters(module: nn.Module, num_features: int, affine: bool) -> None:
    """γ = 1 and β = 0 per feature (``weight``, ``bias``), or both None without affine."""
    if affine:
        module.weight = nn.Parameter(torch.ones(num_features))
        module.bias = nn.Parameter(torch.zeros(num_features))
    else:
        module.register_parameter("weight", None)
        module.register_parameter("bias", None)


class RunningNorm(PerWorker, nn.Module):
    """Shared state of the batch-statistics layers below: affine + running statistics
    (and the data-parallel workers whose slices are normalized separately)."""

    workers = 1

    def __init__(self, num_features: int, eps: float, momentum: float, affine: bool):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        affine_parameters(self, num_features, affine)
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_scale", torch.ones(num_features))

    def affine(self, y: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            return y
        return y * per_channel(self.weight, y) + per_channel(self.bias, y)

    @torch.no_grad()
    def update_running(self, mean: torch.Tensor, scale: torch.Tensor) -> None:
        """From per-worker statistics (W, C): their mean, by torch BN's rule (spelled with
        ops vmap batches: it has no batching rule for lerp_)."""
        self.running_mean.mul_(1 - self.momentum).add_(mean.detach().mean(0), alpha=self.momentum)
        self.running_scale.mul_(1 - self.momentum).add_(scale.detach().mean(0), alpha=self.momentum)

    def worker_view(self, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """x as (W, N, C, *S) and the dims each worker's statistics reduce over."""
        return by_worker(x, self.workers), [1] + list(range(3, x.dim() + 1))


class LpBatchNorm(RunningNorm):
    """ℓp batch norm (Santurkar et al. 2018, §3.3): subtract the batch mean, then
    divide by the batch-average ℓp norm of the activations *before* the mean is
    subtracted (the paper's words): ``(mean |x|^p)^(1/p)`` per channel, ``max |x|``
    for p = inf.  With zero-mean inputs and p = 2 this is BatchNorm."""

    def __init__(self, num_features, p: float = 2.0, eps=1e-5, momentum=0.1, affine=True):
        super().__init__(num_features, eps, momentum, affine)
        self.p = float(p)

    def forward(self, x):
        if not self.training:
            xc = x - per_channel(self.running_mean, x)
            return self.affine(xc / (per_channel(self.running_scale, x) + self.eps))
        xw, dims = self.worker_view(x)
        mean = xw.mean(dims)
        a = xw.abs()
        scale = a.amax(dims) if math.isinf(self.p) else a.pow(self.p).mean(dims).pow(1.0 / self.p)
        self.update_running(mean, scale)
        y = (xw - worker_stat(mean, xw)) / (worker_stat(scale, xw) + self.eps)
        return self.affine(y.reshape(x.shape))


class BatchRenorm(RunningNorm):
    """Batch Renormalization (Ioffe 2017): BN corrected towards the running
    statistics, y = (x − μ_B)/σ_B · r + d with r = clip(σ_B/σ, 1/r_max, r_max) and
    d = clip((μ_B − μ)/σ, ±d_max), both constants in the backward pass.

    Ioffe trains as plain BN first (r_max = 1, d_max = 0) while the running
    statistics settle, then relaxes the clips linearly: here, scaled to the run
    length, BN only until ``bn_until`` of the run, r_max reaching its value at
    ``r_max_at`` and d_max at ``d_max_at`` (Ioffe: 5k, 40k and 25k steps).  The
    trainer announces the run length with ``set_run_length``; unannounced, the
    clips are at their final values from the first step."""

    def __init__(self, num_features, r_max=3.0, d_max=5.0, eps=1e-5, momentum=0.01, affine=True,
                 bn_until=0.1, r_max_at=0.6, d_max_at=0.35):
        super().__init__(num_features, eps, momentum, affine)
        self.r_max, self.d_max = float(r_max), float(d_max)
        self.bn_until, self.r_max_at, self.d_max_at = float(bn_until), float(r_max_at), float(d_max_at)
        self.register_buffer("steps_seen", torch.zeros(()))
        self.register_buffer("run_length", torch.zeros(()))

    def set_run_length(self, steps: int) -> None:
        self.run_length.fill_(float(steps))

    def clips(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(r_max, d_max) at the current step of the warm-up."""
        frac = torch.where(self.run_length > 0, self.steps_seen / self.run_length.clamp_min(1), 1.0)

        def ramp(until):  # 0 while BN only, 1 from `until` on, linear between
            return ((frac - self.bn_until) / max(until - self.bn_until, 1e-12)).clamp(0.0, 1.0)

        return 1.0 + (self.r_max - 1.0) * ramp(self.r_max_at), self.d_max * ramp(self.d_max_at)

    def forward(self, x):
        if not self.training:
            return self.affine((x - per_channel(self.running_mean, x)) / per_channel(self.running_scale, x))
        xw, dims = self.worker_view(x)
        mean = xw.mean(dims)  # (W, C): each worker's own statistics
        std = (xw.var(dims, unbiased=False) + self.eps).sqrt()
        with torch.no_grad():
            r_max, d_max = self.clips()
            r = torch.clamp(std / self.running_scale, min=1.0 / r_max, max=r_max)
            d = torch.clamp((mean - self.running_mean) / self.running_scale, min=-d_max, max=d_max)
            self.steps_seen.add_(1.0)
        y = (xw - worker_stat(mean, xw)) / worker_stat(std, xw) * worker_stat(r, xw) + worker_stat(d, xw)
        self.update_running(mean, std)
        return self.affine(y.reshape(x.shape))


class BatchNoise(nn.Module):
    """Santurkar et al. 2018, Algorithm 1: time-varying, non-Gaussian noise
    injected after BN.  Per unit and step μ ~ U(-0.5, 0.5), σ ~ U(1, 1.25); per
    sample m ~ U(μ-0.1, μ+0.1), s ~ N(σ, 0.1); a ← s·a + m.

    The paper does not say how a noisy net is evaluated; dropping the noise
    would shift every activation's scale by 1/E[s] against what training saw, so
    evaluation applies the noise's expected value: a ← E[s]·a + E[m] = 1.125·a.

    Draws from its own generator so that probes and packs can save, restore and
    separate the noise stream exactly."""

    MEAN_SCALE, MEAN_SHIFT = 1.125, 0.0  # E[s] = E[σ] = (1 + 1.25)/2; E[m] = E[μ] = 0

    def __init__(self, num_features: int, seed: int = 0):
        super().__init__()
        self.num_features = num_features
        self.generator: torch.Generator | None = None
        self._seed = seed
        # Noise handed in from outside (a vectorized pack draws each member's noise
        # from that member's generator and passes it through functional_call).
        self.register_buffer("ext_s", None, persistent=False)
        self.register_buffer("ext_m", None, persistent=False)

    def ensure_generator(self, device) -> torch.Generator:
        if self.generator is None or self.generator.device != torch.device(device):
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(self._seed)
        return self.generator

    def reseed(self, seed: int) -> None:
        self._seed, self.generator = seed, None

    def sample(self, n: int, device, dtype):
        g, c = self.ensure_generator(device), self.num_features
        u = lambda *shape: torch.rand(*shape, generator=g, device=device, dtype=dtype)  # noqa: E731
        mu = u(c) - 0.5
        sigma = 1.0 + 0.25 * u(c)
        m = mu + 0.2 * u(n, c) - 0.1
        s = sigma + 0.1 * torch.randn(n, c, generator=g, device=device, dtype=dtype)
        return s, m

    def forward(self, x):
        if not self.training:
            return x * self.MEAN_SCALE + self.MEAN_SHIFT
        if x.device.type == "meta":  # a shape check: nothing to draw
            return x
        if self.ext_s is not None:
            s, m = self.ext_s, self.ext_m
        else:
            s, m = self.sample(x.shape[0], x.device, x.dtype)
        shape = (x.shape[0], self.num_features) + (1,) * (x.dim() - 2)
        return s.view(shape) * x + m.view(shape)


class DynamicTanh(nn.Module):
    """Dynamic Tanh (Zhu, Chen, He, LeCun, Liu 2025, "Transformers without Normalization",
    arXiv 2503.10622): y = γ·tanh(αx) + β, α one learnable scalar (α₀ = 0.5, the paper's
    default for non-LLM models), γ/β per channel: the last dim after a linear layer
    (``dim=1``, as LN's), the channel dim (1) after a conv (``dim=2``)."""

    def __init__(self, num_features: int, dim: int = 1, alpha: float = 0.5, affine: bool = True):
        super().__init__()
        self.num_features, self.dim = num_features, dim
        self.alpha = nn.Parameter(torch.full((), float(alpha)))
        affine_parameters(self, num_features, affine)

    def forward(self, x):
        y = torch.tanh(self.alpha * x)
        if self.weight is None:
            return y
        if self.dim == 1:  # channels last: (…, C)
            return y * self.weight + self.bias
        return y * per_channel(self.weight, y) + per_channel(self.bias, y)


def noise_modules(model: nn.Module) -> list[BatchNoise]:
    return [m for m in model.modules() if isinstance(m, BatchNoise)]


def seed_noise(model: nn.Module, seed: int) -> None:
    """Give every noise layer of a model its own reproducible stream."""
    for i, m in enumerate(noise_modules(model)):
        m.reseed(seed * 1_000_003 + i)


def set_workers(model: nn.Module, workers: int) -> None:
    """Normalize each data-parallel worker's slice of the batch with its own statistics."""
    for m in model.modules():
        if isinstance(m, PerWorker):
            m.workers = workers


def set_run_length(model: nn.Module, steps: int) -> None:
    """Tell the layers whose behaviour follows the run's progress (BRN's warm-up) how long it is."""
    for m in model.modules():
        if hasattr(m, "set_run_length"):
            m.set_run_length(steps)
