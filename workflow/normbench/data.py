"""Datasets held whole in memory on the run's device; batches are index slices
of a seeded permutation (airbench-style, no DataLoader workers).

One ``DatasetSpec`` per dataset says what it is (shape, task, sizes) without
loading it, so configs are validated before any job.  Bundled / generated:
``digits`` (scikit-learn), ``synthetic`` (class-structured images),
``synthetic_linear`` (the deep-linear-net regression y = A x), ``two_scale``
(two features three orders of magnitude apart), ``chars16``/``chars128`` (next-character
prediction on a generated synthetic language, windows of 16/128 characters).  Downloaded once through
torchvision (``mirrors.py``): ``cifar10``, ``cifar100``, ``mnist``, ``fashion_mnist``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import ConfigError
from .mirrors import SOURCES, cached_tensors, load_arrays
from .registry import Registry


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    task: str  # "classification" | "regression"
    num_outputs: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device=None, dtype=None) -> "Dataset":
        """On ``device``; inputs (and regression targets) in ``dtype``."""
        # token ids (the character corpus) stay integers
        x = lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() else None,  # noqa: E731
                           non_blocking=True)
        y = x if self.task == "regression" else (lambda t: t.to(device, non_blocking=True))
        return Dataset(self.name, x(self.x_train), y(self.y_train), x(self.x_test), y(self.y_test), self.task,
                       self.num_outputs)


@dataclass(frozen=True)
class DatasetSpec:
    load: Callable[[str | Path], Dataset]  # data_dir -> Dataset
    input_shape: tuple[int, ...]
    task: str
    num_outputs: int
    n_train: int
    n_test: int
    downloadable: bool = False  # its files come from the network (mirrors.py)

    @property
    def chance(self) -> float:
        """Accuracy of a guess (classification): the level a collapsed run ends at."""
        return 1.0 / self.num_outputs


def standardize(x_train: torch.Tensor, x_test: torch.Tensor):
    """Per-channel mean/std from the training split only."""
    dims = [0] + list(range(2, x_train.dim()))
    mean, std = x_train.mean(dims, keepdim=True), x_train.std(dims, keepdim=True).clamp_min(1e-6)
    return (x_train - mean) / std, (x_test - mean) / std


def _split(x: torch.Tensor, y: torch.Tensor, n_test: int, seed: int):
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


# ----------------------------------------------------------------------------
# Bundled and generated data
# ----------------------------------------------------------------------------


def _sklearn_digits() -> dict[str, torch.Tensor]:
    from sklearn.datasets import load_digits as sk_digits  # ~1 s to import: cached below

    d = sk_digits()
    return {"x": torch.tensor(d.images, dtype=torch.float32).unsqueeze(1), "y": torch.tensor(d.target)}


def load_digits(data_dir="resources", size: int = 8) -> Dataset:
    """scikit-learn's 8×8 digits; ``size`` > 8 resizes them (bilinear) so that a deep
    conv net's feature maps stay larger than 1×1 -- real data, just resized."""
    t = cached_tensors("digits", data_dir, _sklearn_digits)
    x, y = t["x"] / 16.0, t["y"].long()
    if size != 8:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    xtr, ytr, xte, yte = _split(x, y, n_test=360, seed=0)  # fixed split, independent of the run seed
    xtr, xte = standardize(xtr, xte)
    return Dataset("digits" if size == 8 else f"digits{size}", xtr, ytr, xte, yte, "classification", 10)


def load_synthetic(data_dir=None, n_train=2000, n_test=500, classes=10, size=8, seed=0) -> Dataset:
    """Class-structured images: a smooth random template per class plus noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(classes, 1, size // 2, size // 2, generator=g)
    templates = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    y = torch.randint(0, classes, (n_train + n_test,), generator=g)
    x = templates[y] + 0.8 * torch.randn(n_train + n_test, 1, size, size, generator=g)
    xtr, xte = standardize(x[:n_train], x[n_train:])
    return Dataset("synthetic", xtr, y[:n_train], xte, y[n_train:], "classification", classes)


def load_synthetic_linear(data_dir=None, n_train=1000, n_test=200, dim=10, seed=0) -> Dataset:
    """Santurkar's deep-linear-net problem: x ~ N(0, I), y = A x with a fixed Gaussian A."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=g)
    x = torch.randn(n_train + n_test, dim, generator=g)
    y = x @ a.T
    return Dataset("synthetic_linear", x[:n_train], y[:n_train], x[n_train:], y[n_train:], "regression", dim)


TWO_SCALE_W = (2.0, 0.003)  # y = 2·x1 + 0.003·x2 + 1 + noise


def load_two_scale(data_dir=None, n_train=1000, n_test=200, seed=0) -> Dataset:
    """Two raw features three orders of magnitude apart (LeCun et al. 1998, §4.3):
    x1 ~ U(0.5, 1.5), x2 ~ U(500, 1500); y linear in both plus noise.  Not
    standardized: how to scale them is the question asked of it."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    x = np.column_stack([rng.uniform(0, 1, n), rng.uniform(0, 1000, n)]) + np.array([0.5, 500.0])
    y = x @ np.array(TWO_SCALE_W) + 1.0 + 0.1 * rng.standard_normal(n)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return Dataset("two_scale", t(x[:n_train]), t(y[:n_train, None]), t(x[n_train:]), t(y[n_train:, None]),
                   "regression", 1)


# ----------------------------------------------------------------------------
# A generated character corpus (the transformer study's language modelling data)
# ----------------------------------------------------------------------------

CHARS_ALPHABET = " .\nabcdefghijklmnopqrstuvwxyz"  # token ids are positions in this string
_ONSETS = ["b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
           "br", "ch", "cl", "dr", "gr", "pl", "sh", "st", "th", "tr"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "oo", "ou"]
_CODAS = ["", "", "", "n", "r", "s", "t", "l", "nd", "st", "ng"]
# A toy grammar: a sentence is a subject, a verb and an object, with optional adjectives and a
# trailing prepositional phrase; every slot draws from its own word class with Zipf frequencies.
_CLASSES = {"det": 6, "adj": 40, "noun": 120, "verb": 60, "prep": 8}
_SENTENCE = [("det", 1.0), ("adj", 0.4), ("noun", 1.0), ("verb", 1.0), ("det", 1.0), ("adj", 0.3),
             ("noun", 1.0), ("prep", 0.35)]


def _draw(rng: np.random.Generator, cdf: np.ndarray) -> int:
    """Inverse-CDF draw from ``rng.random()`` only: its stream is fixed for PCG64 across numpy
    versions (``choice``/``integers`` may change their algorithm), so the corpus is too."""
    return int(np.searchsorted(cdf, rng.random(), side="right"))


def _cdf(weights) -> np.ndarray:
    c = np.cumsum(np.asarray(weights, dtype=np.float64))
    return c / c[-1]


def generate_text(n_chars: int, seed: int = 0) -> str:
    """A deterministic synthetic language of ``n_chars`` characters (seeded PCG64, nothing
    downloaded): pronounceable words built from syllables, five word classes with Zipf(1)
    frequencies, sentences from a small grammar (det adj? noun verb det adj? noun, then a
    prepositional phrase sometimes), a line break every few sentences.  Structure at three
    scales -- spelling, word choice, syntax -- so a character model learns well below the
    unigram entropy; bigram-level statistics alone leave a clear gap."""
    rng = np.random.Generator(np.random.PCG64(seed))
    syl = lambda: _ONSETS[_draw(rng, _cdf(np.ones(len(_ONSETS))))] + _VOWELS[  # noqa: E731
        _draw(rng, _cdf(np.ones(len(_VOWELS))))] + _CODAS[_draw(rng, _cdf(np.ones(len(_CODAS))))]
    words: dict[str, list[str]] = {}
    seen: set[str] = set()
    for cls, n in _CLASSES.items():
        short = cls in ("det", "prep")
        out = []
        while len(out) < n:
            w = syl() if short else "".join(syl() for _ in range(1 + _draw(rng, _cdf([3, 4, 2]))))
            if w not in seen:
                seen.add(w)
                out.append(w)
        words[cls] = out
    zipf = {cls: _cdf(1.0 / np.arange(1, len(ws) + 1)) for cls, ws in words.items()}
    parts, length, sentences = [], 0, 0
    while length < n_chars:
        toks = [words[c][_draw(rng, zipf[c])] for c, p in _SENTENCE if p >= 1.0 or rng.random() < p]
        if toks[-1] in words["prep"]:
            toks += [words["det"][_draw(rng, zipf["det"])], words["noun"][_draw(rng, zipf["noun"])]]
        sentences += 1
        s = " ".join(toks) + (".\n" if sentences % 5 == 0 else ". ")
        parts.append(s)
        length += len(s)
    return "".join(parts)[:n_chars]


def load_chars(data_dir=None, context: int = 16, n_chars: int = 262_144, n_test: int = 128, seed: int = 0
               ) -> Dataset:
    """Next-character prediction on ``generate_text``: non-overlapping windows of ``context``
    characters (x) and the same window shifted by one (y), shapes (N, T); the last ``n_test``
    windows of the text are the validation split (held out as a contiguous block, so no
    window overlaps a training one)."""
    lookup = np.zeros(128, dtype=np.int64)
    lookup[np.frombuffer(CHARS_ALPHABET.encode(), np.uint8)] = np.arange(len(CHARS_ALPHABET))
    ids = torch.from_numpy(lookup[np.frombuffer(generate_text(n_chars, seed).encode(), np.uint8)])
    n = (len(ids) - 1) // context
    x = ids[:n * context].view(n, context)
    y = ids[1:n * context + 1].view(n, context)
    k = n - n_test
    return Dataset(f"chars{context}", x[:k], y[:k], x[k:], y[k:], "classification", len(CHARS_ALPHABET))


def _chars_spec(context: int, n_chars: int, n_test: int) -> DatasetSpec:
    n = (n_chars - 1) // context
    return DatasetSpec(lambda data_dir: load_chars(data_dir, context, n_chars, n_test), (context,), "classification",
                       len(CHARS_ALPHABET), n - n_test, n_test)


DATASETS: Registry[DatasetSpec] = Registry("dataset", key="dataset")
DATASETS.register("digits", DatasetSpec(load_digits, (1, 8, 8), "classification", 10, 1437, 360))
DATASETS.register("digits16", DatasetSpec(lambda data_dir: load_digits(data_dir, 16), (1, 16, 16), "classification",
                                          10, 1437, 360))
DATASETS.register("synthetic", DatasetSpec(load_synthetic, (1, 8, 8), "classification", 10, 2000, 500))
DATASETS.register("synthetic_linear", DatasetSpec(load_synthetic_linear, (10,), "regression", 10, 1000, 200))
DATASETS.register("two_scale", DatasetSpec(load_two_scale, (2,), "regression", 1, 1000, 200))
DATASETS.register("chars16", _chars_spec(16, 262_144, 128))  # the transformer study's default (CPU)
DATASETS.register("chars128", _chars_spec(128, 8_388_608, 512))  # its full-scale config (GPU)


def load_downloaded(name: str, data_dir, checksums: dict[str, str] | None = None) -> Dataset:
    """A torchvision dataset from its verified files: [0, 1] pixels, standardized per channel."""
    t = load_arrays(name, data_dir, checksums)
    xtr, xte = standardize(t["x_train"].float() / 255.0, t["x_test"].float() / 255.0)
    return Dataset(name, xtr, t["y_train"], xte, t["y_test"], "classification", SOURCES[name].num_classes)


for _name, _src in SOURCES.items():
    DATASETS.register(_name, DatasetSpec(lambda data_dir, _n=_name: load_downloaded(_n, data_dir), _src.shape,
                                         "classification", _src.num_classes, _src.n_train, _src.n_test, True))


def load_dataset(name: str, data_dir: str | Path = "resources", device="cpu", dtype=None) -> Dataset:
    return DATASETS.get(name).load(data_dir).to(device, dtype)


class BatchSchedule:
    """Step s → (epoch, indices): a seeded permutation per epoch, drop-last
    (batch-statistics norms need full batches).  Depends only on (seed, s), so a
    resumed run sees the same batches."""

    def __init__(self, n: int, batch_size: int, seed: int, device):
        if batch_size > n:
            raise ConfigError(f"batch_size: {batch_size} exceeds the {n} training examples")
        self.n, self.bs, self.seed, self.device = n, batch_size, seed, device
        self.per_epoch = n // batch_size
        self._epoch, self._perm = -1, None

    def __call__(self, step: int) -> tuple[int, torch.Tensor]:
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            perm = torch.randperm(self.n, generator=g)  # on the host: the same batches on every device
            if torch.device(self.device).type == "cuda":  # from pageable memory the copy would wait for the GPU
                self._epoch, self._perm = epoch, perm.pin_memory().to(self.device, non_blocking=True)
            else:
                self._epoch, self._perm = epoch, perm.to(self.device)
        return epoch, self._perm[i * self.bs:(i + 1) * self.bs]

    def permutation(self, step: int) -> torch.Tensor:
        """The whole permutation (on the device) of the epoch that ``step`` falls in."""
        self(step)
        return self._perm
