"""What a reviewer checks first about a normalizer, measured in seconds before any training.

Each property is one number and one rule applied to it, on a conv activation (N×C×H×W, the slot
every arm of the card fills) in the dtype the tier trains in:

* batch independence, in training and in evaluation: does sample 0's output change when its
  batch-mates are replaced?  (Batch statistics at evaluation make a test prediction depend on
  the other test images in its batch.)
* train/eval agreement: the same batch through the layer in training mode and in evaluation mode,
  after running statistics (if any) have seen batches of the same distribution;
* scale and shift invariance (training mode): the input × 10, the input + 3;
* finiteness on degenerate inputs: a constant channel, an all-zero channel, 1×1 maps, inputs at
  1e4 scale; and finite gradients (input and parameters) on all of them.

A layer that raises is flagged on that property (the error is the detail), never a crash.  Every
property runs on a fresh layer built with the same seed (state such as running statistics never
leaks from one check into another).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import pandas as pd
import pyarrow as pa
import torch

from .layers import set_run_length
from .norms import create_norm

SHAPE = (8, 8, 4, 4)  # N × C × H × W: 8 samples of 8 channels (GN's and EvoNorm's groups divide it)
TOL = 1e-4  # relative change still counted as "unchanged": float32 rounding is ~1e-7, a dependence ~1e-2+
INVARIANCE_TOL = 1e-3  # scale/shift: the layers' eps (1e-5 against a variance of 4) moves outputs ~1e-6
WARM_BATCHES = 20  # training-mode batches that set running statistics before an evaluation check
SCALE, SHIFT, HUGE = 10.0, 3.0, 1e4
RUN_LENGTH = 1000  # steps of the run a layer is told it starts (WARM_BATCHES stay in its first tenth)

PROPERTIES_SCHEMA = pa.schema([
    ("norm", pa.string()), ("property", pa.string()), ("value", pa.float64()), ("holds", pa.bool_()),
    ("detail", pa.string()), ("rule", pa.string()),
])


class Layer:
    """Fresh copies of one normalizer, each built with the same seed, in the tier's dtype."""

    def __init__(self, type_: str, options: dict, dtype: torch.dtype = torch.float32, shape=SHAPE):
        self.type, self.options, self.dtype, self.shape = type_, dict(options or {}), dtype, shape
        self._warm: torch.nn.Module | None = None

    def fresh(self) -> torch.nn.Module:
        """A new layer in training mode, told that a run of ``RUN_LENGTH`` steps starts (a layer whose
        behaviour follows the run's progress, as Batch Renorm's warm-up, is at its first steps)."""
        torch.manual_seed(0)
        layer = create_norm(self.type, self.shape[1], 2, **self.options).to(self.dtype).train()
        set_run_length(layer, RUN_LENGTH)
        return layer

    def warmed(self) -> torch.nn.Module:
        """A layer whose running statistics (if any) have seen batches of the input distribution."""
        if self._warm is None:
            layer = self.fresh()
            with torch.no_grad():
                for i in range(WARM_BATCHES):
                    layer(self.input(100 + i))
            self._warm = layer
        return copy.deepcopy(self._warm)

    def input(self, seed: int, shape=None) -> torch.Tensor:
        """Activations with a mean and a scale of their own (1 + 2·N(0, 1)): a layer that does not
        normalize them shows it."""
        gen = torch.Generator().manual_seed(seed)
        return (1.0 + 2.0 * torch.randn(shape or self.shape, generator=gen, dtype=torch.float64)).to(self.dtype)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| relative to the scale of a (∞ where either is not finite)."""
    a, b = a.detach().double(), b.detach().double()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return math.inf
    return float((a - b).abs().max() / (a.abs().max() + 1e-12))


def _batch_mates(layer: Layer, training: bool) -> float:
    base = layer.warmed()
    x, other = layer.input(0), layer.input(1)
    mixed = torch.cat([x[:1], other[1:]])
    with torch.no_grad():
        a = copy.deepcopy(base).train(training)(x)[0]
        b = copy.deepcopy(base).train(training)(mixed)[0]
    return _rel(a, b)


def _train_eval(layer: Layer) -> float:
    base, x = layer.warmed(), layer.input(0)
    with torch.no_grad():
        return _rel(copy.deepcopy(base).train()(x), copy.deepcopy(base).eval()(x))


def _transform(layer: Layer, f: Callable[[torch.Tensor], torch.Tensor]) -> float:
    x = layer.input(0)
    with torch.no_grad():
        return _rel(layer.fresh()(x), layer.fresh()(f(x)))


def _degenerate(layer: Layer) -> dict[str, torch.Tensor]:
    x = layer.input(0)
    const, zero = x.clone(), x.clone()
    const[:, 0] = 5.0
    zero[:, 0] = 0.0
    return {"a constant channel": const, "an all-zero channel": zero,
            "1×1 maps": layer.input(0, (layer.shape[0], layer.shape[1], 1, 1)),
            f"inputs at {HUGE:g} scale": x * HUGE}


def _non_finite_output(layer: Layer, case: str) -> float:
    with torch.no_grad():
        y = layer.fresh()(_degenerate(layer)[case])
    return float((~torch.isfinite(y)).sum())


def _non_finite_gradients(layer: Layer) -> float:
    """Non-finite entries among the gradients of the input and of the parameters, over the
    ordinary input and every degenerate one (a random upstream gradient)."""
    bad = 0
    for i, x in enumerate([layer.input(0), *_degenerate(layer).values()]):
        net = layer.fresh()
        x = x.detach().requires_grad_(True)
        y = net(x)
        gen = torch.Generator().manual_seed(7 + i)
        y.backward(torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y.dtype))
        for g in [x.grad, *(p.grad for p in net.parameters())]:
            if g is not None:
                bad += int((~torch.isfinite(g)).sum())
    return float(bad)


@dataclass(frozen=True)
class Property:
    name: str
    rule: str  # how the number is judged, in words
    measure: Callable[[Layer], float]
    holds: Callable[[float], bool]
    show: Callable[[float], str]


def _small(tol: float) -> Callable[[float], bool]:
    return lambda v: v <= tol


def _change(v: float) -> str:
    return "non-finite" if math.isinf(v) else f"{v:.2g}"


def _count(v: float) -> str:
    return f"{v:.0f} non-finite"


PROPERTIES = (
    Property("batch-independent in training", f"sample 0's output changes by ≤ {TOL:g} (relative) when its "
             f"{SHAPE[0] - 1} batch-mates are replaced, training mode", lambda l: _batch_mates(l, True),
             _small(TOL), _change),
    Property("batch-independent in evaluation", f"the same, evaluation mode (after {WARM_BATCHES} training "
             f"batches set any running statistics)", lambda l: _batch_mates(l, False), _small(TOL), _change),
    Property("train/eval agreement", f"the same batch differs by ≤ {TOL:g} (relative) between training and "
             f"evaluation mode", _train_eval, _small(TOL), _change),
    Property("scale-invariant", f"f({SCALE:g}·x) differs from f(x) by ≤ {INVARIANCE_TOL:g} (relative), training "
             f"mode", lambda l: _transform(l, lambda x: SCALE * x), _small(INVARIANCE_TOL), _change),
    Property("shift-invariant", f"f(x + {SHIFT:g}) differs from f(x) by ≤ {INVARIANCE_TOL:g} (relative), training "
             f"mode", lambda l: _transform(l, lambda x: x + SHIFT), _small(INVARIANCE_TOL), _change),
    *(Property(f"finite on {case}", f"no non-finite output value on {case}, training mode",
               lambda l, case=case: _non_finite_output(l, case), _small(0), _count)
      for case in ("a constant channel", "an all-zero channel", "1×1 maps", f"inputs at {HUGE:g} scale")),
    Property("finite gradients", "no non-finite gradient (input and parameters) on the ordinary input and on "
             "each degenerate one", _non_finite_gradients, _small(0), _count),
)


def measure(norms: dict[str, dict], dtype: str = "float32") -> pd.DataFrame:
    """``norms``: id -> {"type", "options"}.  One row per norm and property; a check that raises
    (or a layer that cannot be built) is flagged with the error as its detail."""
    rows = []
    for norm, entry in norms.items():
        layer = Layer(entry["type"], entry.get("options") or {}, getattr(torch, dtype))
        for p in PROPERTIES:
            try:
                value = p.measure(layer)
                holds, detail = bool(p.holds(value)), p.show(value)
            except Exception as e:  # the layer's own failure is the finding
                value, holds, detail = math.nan, False, f"raises {type(e).__name__}: {str(e)[:200]}"
            rows.append({"norm": norm, "property": p.name, "value": value, "holds": holds, "detail": detail,
                         "rule": p.rule})
    return pd.DataFrame(rows, columns=PROPERTIES_SCHEMA.names)


def forward_error(type_: str, options: dict, dtype: str = "float32") -> str | None:
    """The error an ordinary training-mode forward raises, or None: a normalizer that cannot
    normalize its input cannot train in any arm."""
    layer = Layer(type_, options, getattr(torch, dtype))
    try:
        with torch.no_grad():
            layer.fresh()(layer.input(0))
    except Exception as e:
        return f"{type(e).__name__}: {str(e)[:200]}"
    return None


def cell(row: pd.Series) -> str:
    """'yes (0)' / 'no (0.83)' / 'no (raises …)'."""
    return f"{'yes' if row['holds'] else 'no'} ({row['detail']})"


def summary(props: pd.DataFrame) -> str:
    """One line per property: holds or not, with its number."""
    return "\n".join(f"  {'yes' if r.holds else 'NO '}  {r.property}: {r.detail}" for r in props.itertuples())
