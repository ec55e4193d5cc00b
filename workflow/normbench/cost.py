"""The cost axis of the report card: forward + backward time and peak memory of one normalization
layer on a fixed conv activation, every layer side by side in one process, on the CPU and, where
there is one, on the GPU, in the dtype the tier trains in (float32/float64; bf16: under autocast).

Time: rounds alternate the layers (each round starts one later) so that drift in the machine's load
hits every layer alike; a round's times are paired, and the card compares them round by round.
Peak memory: the most bytes of tensors alive at once during the layer's forward + backward, beyond
its input, upstream gradient and parameters -- on the GPU the caching allocator's own peak
(``torch.cuda.max_memory_allocated``), on the CPU the same count kept by watching every tensor the
step allocates (a dispatch mode; torch keeps no allocator statistics on the CPU).
"""

from __future__ import annotations

import contextlib
import time
import weakref

import pandas as pd
import pyarrow as pa
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .norms import create_norm

SHAPE = (32, 16, 16, 16)  # N × C × H × W: a batch of 32 maps of 16 channels at 16×16
ROUNDS, REPEATS, WARMUP = 15, 20, 5

COST_SCHEMA = pa.schema([("device", pa.string()), ("dtype", pa.string()), ("round", pa.int64()),
                         ("norm", pa.string()), ("seconds", pa.float64()), ("peak_bytes", pa.int64())])


class LiveBytes(TorchDispatchMode):
    """The peak of the bytes held by tensor storages allocated inside it (storages that existed
    before -- the input, the upstream gradient, the parameters -- are not counted)."""

    def __init__(self, existing=()):
        super().__init__()
        self.live = self.peak = 0
        self._seen = {t.untyped_storage().data_ptr() for t in existing}

    def _free(self, ptr: int, n: int) -> None:
        self.live -= n
        self._seen.discard(ptr)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                ptr = storage.data_ptr()
                if ptr not in self._seen and storage.nbytes():
                    self._seen.add(ptr)
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, ptr, storage.nbytes())
        return out


def devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _autocast(device: str, bf16: bool):
    return torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def peak_bytes(step, device: str, existing) -> int:
    """Peak bytes of one ``step()`` beyond what existed before it."""
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - before)
    with LiveBytes(existing) as watch:
        step()
    return int(watch.peak)


def measure(norms: dict[str, dict], shape=SHAPE, rounds: int = ROUNDS, repeats: int = REPEATS,
            dtype: str = "float32", bf16: bool = False, on=None) -> pd.DataFrame:
    """``norms``: id -> {"type", "options"}.  One row per device, round and norm: seconds per forward
    + backward of the layer (training mode; the mean of ``repeats`` in a row) and its peak memory."""
    torch.set_num_threads(1)  # one core, as each training job runs
    rows = []
    for device in on or devices():
        gen = torch.Generator().manual_seed(0)
        dt = getattr(torch, dtype)
        x = torch.randn(shape, generator=gen, dtype=dt).to(device)
        grad_out = torch.randn(shape, generator=gen, dtype=dt).to(device)
        if bf16:
            grad_out = grad_out.to(torch.bfloat16)
        layers = {n: create_norm(e["type"], shape[1], 2, **(e.get("options") or {})).to(device, dt).train()
                  for n, e in norms.items()}

        def step(layer):
            xi = x.detach().requires_grad_(True)
            with _autocast(device, bf16):
                y = layer(xi)
            y.backward(grad_out.to(y.dtype))

        names = list(layers)
        for n in names:
            for _ in range(WARMUP):
                step(layers[n])
        existing = [x, grad_out, *(t for layer in layers.values() for t in [*layer.parameters(), *layer.buffers()])]
        peaks = {n: peak_bytes(lambda n=n: step(layers[n]), device, existing) for n in names}
        for r in range(rounds):
            for n in names[r % len(names):] + names[:r % len(names)]:
                _sync(device)
                t0 = time.perf_counter()
                for _ in range(repeats):
                    step(layers[n])
                _sync(device)
                rows.append({"device": device, "dtype": "bf16 autocast" if bf16 else dtype, "round": r, "norm": n,
                             "seconds": (time.perf_counter() - t0) / repeats, "peak_bytes": peaks[n]})
    return pd.DataFrame(rows, columns=COST_SCHEMA.names)
