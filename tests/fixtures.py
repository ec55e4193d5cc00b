"""Small dataset files written in the real on-disk formats (no network).

Each writer returns the checksums of what it wrote (``{file: "algo:hex"}`` of the
decompressed content): the published checksums cannot match fixture files."""

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _cifar_batches(n_per_batch: int, seed: int) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        out[name] = pickle.dumps({"batch_label": name, "labels": rng.integers(0, 10, n_per_batch).tolist(),
                                  "data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                                  "filenames": [f"{name}_{i}.png" for i in range(n_per_batch)]})
    out["batches.meta"] = pickle.dumps({"label_names": [f"c{i}" for i in range(10)]})
    return out


def write_cifar10(data_dir: Path, n_per_batch: int = 6, seed: int = 0, as_tarball: bool = False) -> dict[str, str]:
    """CIFAR-10 python version: pickled dicts of uint8 rows (N×3072, CHW) and labels, extracted in
    torchvision's layout or as the distributed ``cifar-10-python.tar.gz``."""
    files = _cifar_batches(n_per_batch, seed)
    root = Path(data_dir) / "cifar10"
    if as_tarball:
        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as t:
            for name, data in files.items():
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    else:
        base = root / "cifar-10-batches-py"
        base.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (base / name).write_bytes(data)
    return {name: "md5:" + hashlib.md5(data).hexdigest() for name, data in files.items()}


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def mnist_files(n: int = 8, seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    arrays = (rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n), rng.integers(0, 256, (n // 2, 28, 28)),
              rng.integers(0, 10, n // 2))
    return {name: idx_bytes(a) for name, a in zip(IDX, arrays)}


def write_mnist(data_dir: Path, name: str = "mnist", folder: str = "MNIST", n: int = 8, seed: int = 0,
                gz: bool = False, flat: bool = False, gzip_level: int = 9) -> dict[str, str]:
    """MNIST's IDX files (big-endian header, then uint8 data): extracted or gzipped (at any
    compression level, as mirrors recompress them), in torchvision's layout or flat."""
    files = mnist_files(n, seed)
    where = Path(data_dir) / name if flat else Path(data_dir) / name / folder / "raw"
    where.mkdir(parents=True, exist_ok=True)
    for fname, data in files.items():
        if gz:
            (where / f"{fname}.gz").write_bytes(gzip.compress(data, compresslevel=gzip_level, mtime=seed))
        else:
            (where / fname).write_bytes(data)
    return {fname: "sha256:" + hashlib.sha256(data).hexdigest() for fname, data in files.items()}
