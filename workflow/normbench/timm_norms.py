"""The normalizers taken from timm (pytorch-image-models) as timm ships them.

``norms.py`` imports this module inside its builders only: importing ``timm.layers`` takes
seconds, and only the runs (and checks) that use one of these should pay for it.

What is timm's: FRN+TLU (``FilterResponseNormTlu2d``), EvoNorm-B0 and -S0 (``EvoNorm2dB0``,
``EvoNorm2dS0``), the channel RMSNorm (``RmsNorm2d``) and Weight Standardization
(``StdConv2d``).  What is ours: the per-worker statistics of EvoNorm-B0 below (timm has no
data-parallel notion of its own: on W GPUs each replica sees only its slice).
"""

from __future__ import annotations

import torch
from timm.layers import EvoNorm2dB0, EvoNorm2dS0, FilterResponseNormTlu2d, RmsNorm2d, StdConv2d  # noqa: F401
from timm.layers.evo_norm import instance_std

from .layers import PerWorker, by_worker, worker_stat


class WorkerEvoNorm2dB0(PerWorker, EvoNorm2dB0):
    """timm's EvoNorm-B0; with ``workers`` > 1 each worker's slice is divided by
    max(√(its own batch variance + ε), v·x + instance std), and the running variance follows
    the mean of the workers' (unbiased) variances, as ``WorkerBatchNorm`` does for BN.  With one
    worker, or in eval, it is timm's forward untouched."""

    def forward(self, x):
        W = self.workers
        if W == 1 or not self.training or self.v is None:
            return super().forward(x)
        xw = by_worker(x, W)
        var = xw.float().var(dim=(1, 3, 4), unbiased=False)  # (W, C): each worker's own batch variance
        n = x.numel() / x.shape[1] / W
        with torch.no_grad():
            self.running_var.copy_(self.running_var * (1 - self.momentum)
                                   + var.mean(0) * self.momentum * (n / (n - 1)))
        left = worker_stat(var.add(self.eps).sqrt().to(x.dtype), xw).expand_as(xw).reshape(x.shape)
        v_shape = (1, -1, 1, 1)
        right = x * self.v.to(x.dtype).view(v_shape) + instance_std(x, self.eps)
        x = x / left.max(right)
        return x * self.weight.to(x.dtype).view(v_shape) + self.bias.to(x.dtype).view(v_shape)
