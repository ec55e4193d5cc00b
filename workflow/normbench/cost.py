"""The cost axis of ``normbench evaluate``: forward + backward time of one normalization layer
on a fixed conv activation, NORM beside the baselines, on the machine that runs it.

Rounds alternate the layers (each round starts one later) so that drift in the machine's load
hits every layer alike; a round's times are paired, and the card compares them round by round.
"""

from __future__ import annotations

import time

import pandas as pd
import torch

from .norms import create_norm

SHAPE = (32, 16, 16, 16)  # N × C × H × W: a batch of 32 maps of 16 channels at 16×16
ROUNDS, REPEATS, WARMUP = 15, 20, 5


def measure(norms: dict[str, dict], shape=SHAPE, rounds: int = ROUNDS, repeats: int = REPEATS) -> pd.DataFrame:
    """``norms``: id -> {"type", "options"}.  One row per round and norm: seconds per forward +
    backward of the layer (training mode), the mean of ``repeats`` in a row."""
    torch.set_num_threads(1)  # one core, as each training job runs
    gen = torch.Generator().manual_seed(0)
    x, grad_out = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    layers = {n: create_norm(e["type"], shape[1], 2, **(e.get("options") or {})).train() for n, e in norms.items()}

    def step(layer):
        xi = x.detach().requires_grad_(True)
        layer(xi).backward(grad_out)

    names = list(layers)
    for n in names:
        for _ in range(WARMUP):
            step(layers[n])
    rows = []
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            for _ in range(repeats):
                step(layers[n])
            rows.append({"round": r, "norm": n, "seconds": (time.perf_counter() - t0) / repeats})
    return pd.DataFrame(rows)
