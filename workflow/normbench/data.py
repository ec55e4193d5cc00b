"""Datasets held whole in memory on the run's device; batches are index slices
of a seeded permutation (airbench-style, no DataLoader workers).

Bundled / generated: ``digits`` (scikit-learn), ``synthetic`` (class-structured
images), ``synthetic_linear`` (the deep-linear-net regression y = A x).
Downloaded once through torchvision: ``cifar10``, ``cifar100``, ``mnist``,
``fashion_mnist``.  Files are checksum-verified before torchvision reads them
(CIFAR's batches are pickles), then cached as a tensor file that loads with
``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import ConfigError
from .store import atomic_path


class DataError(RuntimeError):
    """Dataset files missing or corrupt; the message names the file."""


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

    def to(self, device) -> "Dataset":
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return Dataset(self.name, move(self.x_train), move(self.y_train), move(self.x_test),
                       move(self.y_test), self.task, self.num_outputs)


def _standardize(x_train: torch.Tensor, x_test: torch.Tensor):
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


def load_digits(data_dir="resources") -> Dataset:
    t = cached_tensors("digits", data_dir, _sklearn_digits)
    x, y = t["x"] / 16.0, t["y"].long()
    xtr, ytr, xte, yte = _split(x, y, n_test=360, seed=0)  # fixed split, independent of the run seed
    xtr, xte = _standardize(xtr, xte)
    return Dataset("digits", xtr, ytr, xte, yte, "classification", 10)


def load_synthetic(data_dir=None, n_train=2000, n_test=500, classes=10, size=8, seed=0) -> Dataset:
    """Class-structured images: a smooth random template per class plus noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(classes, 1, size // 2, size // 2, generator=g)
    templates = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    y = torch.randint(0, classes, (n_train + n_test,), generator=g)
    x = templates[y] + 0.8 * torch.randn(n_train + n_test, 1, size, size, generator=g)
    xtr, xte = _standardize(x[:n_train], x[n_train:])
    return Dataset("synthetic", xtr, y[:n_train], xte, y[n_train:], "classification", classes)


def load_synthetic_linear(data_dir=None, n_train=1000, n_test=200, dim=10, seed=0) -> Dataset:
    """Santurkar's deep-linear-net problem: x ~ N(0, I), y = A x with a fixed Gaussian A."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=g)
    x = torch.randn(n_train + n_test, dim, generator=g)
    y = x @ a.T
    return Dataset("synthetic_linear", x[:n_train], y[:n_train], x[n_train:], y[n_train:], "regression", dim)


# ----------------------------------------------------------------------------
# torchvision datasets: verify, load, cache
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TorchvisionSource:
    cls_name: str  # torchvision.datasets class
    folder: str  # what torchvision creates under the data dir
    num_classes: int

    def tv_class(self):
        import torchvision  # lazy: only runs on these datasets pay for it

        return getattr(torchvision.datasets, self.cls_name)

    def expected_files(self) -> dict[str, str | None]:
        """Relative path -> md5 (None: existence only) of what must be on disk."""
        cls = self.tv_class()
        if hasattr(cls, "train_list"):  # CIFAR: pickled batches with published md5s
            base = Path(cls.base_folder)
            files = cls.train_list + cls.test_list + [[cls.meta["filename"], cls.meta["md5"]]]
            return {str(base / f): md5 for f, md5 in files}
        # MNIST family: raw idx files (not pickles); torchvision's md5s are of the .gz archives.
        return {f"{self.folder}/raw/{Path(url).stem}": None for url, _ in cls.resources}


TORCHVISION: dict[str, TorchvisionSource] = {
    "cifar10": TorchvisionSource("CIFAR10", "cifar-10-batches-py", 10),
    "cifar100": TorchvisionSource("CIFAR100", "cifar-100-python", 100),
    "mnist": TorchvisionSource("MNIST", "MNIST", 10),
    "fashion_mnist": TorchvisionSource("FashionMNIST", "FashionMNIST", 10),
}


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def missing_files(name: str, data_dir: str | Path) -> list[Path]:
    root = Path(data_dir) / name
    return [root / rel for rel in TORCHVISION[name].expected_files() if not (root / rel).exists()]


def verify_files(name: str, data_dir: str | Path, checksums: dict[str, str] | None = None) -> None:
    """Every expected file exists and matches its checksum; otherwise a DataError naming it.
    ``checksums`` replaces the published md5s (tests use small files in the real formats)."""
    root = Path(data_dir) / name
    missing = missing_files(name, data_dir)
    if missing:
        raise DataError(
            f"dataset {name!r}: {missing[0]} is missing ({len(missing)} file(s) in all). Run "
            f"`normbench download {name} --data-dir {data_dir}` on a machine with network, "
            f"or copy the torchvision files into {root}/")
    for rel, md5 in TORCHVISION[name].expected_files().items():
        md5 = (checksums or {}).get(rel, md5)
        if md5 is not None and md5sum(root / rel) != md5:
            raise DataError(f"dataset {name!r}: {root / rel} fails its checksum (truncated or corrupt); "
                            f"delete it and download again")
        if md5 is None:
            _check_idx(root / rel, name)


def _check_idx(path: Path, name: str) -> None:
    """An IDX file (MNIST family) is exactly as long as its header says."""
    raw = path.read_bytes()
    ok = len(raw) >= 4 and raw[0] == raw[1] == 0
    if ok:
        ndim = raw[3]
        dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
        ok = len(raw) == 4 + 4 * ndim + int(np.prod(dims, dtype=np.int64))
    if not ok:
        raise DataError(f"dataset {name!r}: {path} is truncated or not an IDX file; delete it and download again")


def download(name: str, data_dir: str | Path) -> None:
    """The real download (torchvision's own code, with its checksums)."""
    src = TORCHVISION[name]
    root = Path(data_dir) / name
    root.mkdir(parents=True, exist_ok=True)
    for train in (True, False):
        src.tv_class()(str(root), train=train, download=True)
    verify_files(name, data_dir)


def ensure_dataset(name: str, data_dir: str | Path, allow_download: bool, marker: str | Path) -> None:
    """Verify the files (downloading them first if allowed and missing), then
    write ``marker`` listing what was verified."""
    import json

    from .store import write_text

    if missing_files(name, data_dir) and allow_download:
        print(f"{name}: downloading into {data_dir}/{name}", flush=True)
        download(name, data_dir)
    verify_files(name, data_dir)
    write_text(json.dumps(sorted(TORCHVISION[name].expected_files())), marker)
    print(f"{name}: verified", flush=True)


def _read_torchvision(name: str, root: Path, checksums: dict[str, str] | None):
    src = TORCHVISION[name]
    cls = src.tv_class()
    if checksums and hasattr(cls, "train_list"):
        # Same reader, our verified checksums: torchvision re-checks md5s against these.
        md5 = lambda f, m: checksums.get(str(Path(cls.base_folder) / f), m)  # noqa: E731
        patch = lambda lst: [[f, md5(f, m)] for f, m in lst]  # noqa: E731
        meta = {**cls.meta, "md5": md5(cls.meta["filename"], cls.meta["md5"])}
        cls = type(cls.__name__, (cls,), {"train_list": patch(cls.train_list), "test_list": patch(cls.test_list),
                                          "meta": meta})
    out = []
    for train in (True, False):
        try:
            ds = cls(str(root), train=train, download=False)
        except Exception as e:  # torchvision's messages do not name the file
            raise DataError(f"dataset {name!r}: cannot read the files under {root}: {e}") from e
        x = torch.as_tensor(np.asarray(ds.data))
        x = x.permute(0, 3, 1, 2) if x.dim() == 4 else x.unsqueeze(1)  # CIFAR is NHWC, MNIST NHW
        out += [x.contiguous(), torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)]
    return out


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cached_tensors(name: str, data_dir, build: Callable[[], dict]) -> dict[str, torch.Tensor]:
    """``build()`` once, saved as ``<data_dir>/<name>/normbench-cache.pt``; later
    loads read the tensors back (``weights_only``: nothing executes).  One writer:
    a second job that starts at the same time waits, then reads the cache."""
    root = Path(data_dir if data_dir is not None else "resources") / name
    cache = root / "normbench-cache.pt"
    try:
        with _file_lock(root / ".cache.lock"):
            if not cache.exists():
                tensors = build()
                with atomic_path(cache) as tmp:
                    torch.save(tensors, tmp)
    except PermissionError:  # read-only data dir: build in memory
        return build()
    try:
        return torch.load(cache, weights_only=True)
    except Exception as e:
        raise DataError(f"dataset {name!r}: cache {cache} is unreadable ({e}); delete it to rebuild") from e


def load_torchvision(name: str, data_dir: str | Path = "resources", checksums: dict | None = None) -> Dataset:
    root = Path(data_dir) / name

    def build():
        verify_files(name, data_dir, checksums)
        xtr, ytr, xte, yte = _read_torchvision(name, root, checksums)
        return {"x_train": xtr, "y_train": ytr, "x_test": xte, "y_test": yte}

    t = cached_tensors(name, data_dir, build)
    to_float = lambda x: x.float() / 255.0  # noqa: E731
    xtr, xte = _standardize(to_float(t["x_train"]), to_float(t["x_test"]))
    return Dataset(name, xtr, t["y_train"], xte, t["y_test"], "classification", TORCHVISION[name].num_classes)


# ----------------------------------------------------------------------------
# Registry and batches
# ----------------------------------------------------------------------------

DATASETS: dict[str, Callable[..., Dataset]] = {
    "digits": load_digits,
    "synthetic": load_synthetic,
    "synthetic_linear": load_synthetic_linear,
    **{name: (lambda data_dir="resources", _n=name: load_torchvision(_n, data_dir)) for name in TORCHVISION},
}


# Input shape and task of each dataset, known without loading it (config validation).
SHAPES: dict[str, tuple[tuple[int, ...], str, int]] = {
    "digits": ((1, 8, 8), "classification", 10),
    "synthetic": ((1, 8, 8), "classification", 10),
    "synthetic_linear": ((10,), "regression", 10),
    "cifar10": ((3, 32, 32), "classification", 10),
    "cifar100": ((3, 32, 32), "classification", 100),
    "mnist": ((1, 28, 28), "classification", 10),
    "fashion_mnist": ((1, 28, 28), "classification", 10),
}
TRAIN_SIZES = {"digits": 1437, "synthetic": 2000, "synthetic_linear": 1000, "cifar10": 50000,
               "cifar100": 50000, "mnist": 60000, "fashion_mnist": 60000}


def check_dataset_name(name: str) -> None:
    if name not in DATASETS:
        raise ConfigError(f"dataset {name!r} is unknown; valid: {', '.join(sorted(DATASETS))}")


def load_dataset(name: str, data_dir: str | Path = "resources", device="cpu") -> Dataset:
    check_dataset_name(name)
    return DATASETS[name](data_dir=data_dir).to(device)


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
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g).to(self.device)
        return epoch, self._perm[i * self.bs:(i + 1) * self.bs]


__all__ = ["Dataset", "DataError", "DATASETS", "TORCHVISION", "load_dataset", "BatchSchedule", "download",
           "verify_files", "missing_files", "check_dataset_name"]
