"""Small dataset files written in the real on-disk formats (no network)."""

import pickle
import struct
from pathlib import Path

import numpy as np

from normbench.data import md5sum


def write_cifar10(data_dir: Path, n_per_batch: int = 6, seed: int = 0) -> dict[str, str]:
    """CIFAR-10 python version: pickled dicts of uint8 rows (N×3072, CHW) and labels.
    Returns the checksums of the files written (the published md5s cannot match)."""
    rng = np.random.default_rng(seed)
    base = Path(data_dir) / "cifar10" / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    sums = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {"batch_label": name, "labels": rng.integers(0, 10, n_per_batch).tolist(),
                 "data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 "filenames": [f"{name}_{i}.png" for i in range(n_per_batch)]}
        (base / name).write_bytes(pickle.dumps(batch))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    for f in names + ["batches.meta"]:
        sums[f"cifar-10-batches-py/{f}"] = md5sum(base / f)
    return sums


def _idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(data_dir: Path, name: str = "mnist", folder: str = "MNIST", n: int = 8, seed: int = 0) -> Path:
    """MNIST's IDX files (big-endian header, then uint8 data), uncompressed as torchvision keeps them."""
    rng = np.random.default_rng(seed)
    raw = Path(data_dir) / name / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n), ("t10k", n // 2)):
        _idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28)))
        _idx(raw / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, count))
    return raw
