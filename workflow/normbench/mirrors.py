"""Downloaded datasets: found as distributed, verified, read once, cached.

Files are accepted the way mirrors ship them -- gzipped or extracted, in
torchvision's layout (``<data_dir>/<name>/<folder>/``) or flat
(``<data_dir>/<name>/``), CIFAR also as its ``.tar.gz`` -- and verified by the
checksum of their *decompressed* content (a mirror that recompressed an archive
changes the archive's checksum, not its content).  Verified content is placed in
torchvision's layout and read by torchvision's own dataset classes; the arrays
are then cached as a tensor file that loads with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import DataError
from .store import atomic_path, write_text

_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class Source:
    tv_class: str  # the torchvision.datasets class that downloads and reads it
    folder: str  # where torchvision keeps the files, under <data_dir>/<name>/
    checksums: dict[str, str]  # file -> "sha256:…" / "md5:…" of its decompressed content
    archive: str | None  # a tarball the files may come in (CIFAR)
    shape: tuple[int, ...]
    num_classes: int
    n_train: int
    n_test: int


# Checksums of the decompressed content.  MNIST family: SHA-256 of the idx files
# (torchvision publishes MD5s of the .gz archives only, which a recompressing mirror
# changes); CIFAR: torchvision's published MD5s of the extracted batches.
def _idx(tv_class: str, sha256: str) -> Source:
    """An MNIST-family dataset: four idx files, their SHA-256s in the order of _IDX_FILES."""
    return Source(tv_class, f"{tv_class}/raw", {f: f"sha256:{h}" for f, h in zip(_IDX_FILES, sha256.split())}, None,
                  (1, 28, 28), 10, 60000, 10000)


SOURCES: dict[str, Source] = {
    "mnist": _idx("MNIST", """
        ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db 65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5
        0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7 ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"""),
    "fashion_mnist": _idx("FashionMNIST", """
        c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888 bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9
        5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b 0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"""),
    "cifar10": Source("CIFAR10", "cifar-10-batches-py", {
        "data_batch_1": "md5:c99cafc152244af753f735de768cd75f", "data_batch_2": "md5:d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "md5:54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "md5:634d18415352ddfa80567beed471001a",
        "data_batch_5": "md5:482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "md5:40351d587109b95175f43aff81a1287e",
        "batches.meta": "md5:5ff9c542aee3614f3951f8cda6e48888"}, "cifar-10-python.tar.gz",
        (3, 32, 32), 10, 50000, 10000),
    "cifar100": Source("CIFAR100", "cifar-100-python", {
        "train": "md5:16019d7e3df5f24257cddd939b257f8d", "test": "md5:f0ef6b0ae62326f3e7ffdfab6717acfc",
        "meta": "md5:7973b15100ade9c7d40fb424638fde48"}, "cifar-100-python.tar.gz",
        (3, 32, 32), 100, 50000, 10000),
}


def digest(data: bytes, algo: str) -> str:
    return hashlib.new(algo, data).hexdigest()


def _candidates(root: Path, src: Source, name: str) -> list[Path]:
    """Where a file may be, in the order looked at: torchvision's layout, then flat; extracted, then .gz."""
    return [root / src.folder / name, root / name, root / src.folder / f"{name}.gz", root / f"{name}.gz"]


def _content(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path} is not a readable gzip file ({e}); delete it and fetch it again") from None
    return raw


def _from_archive(root: Path, src: Source, wanted: set[str]) -> dict[str, bytes]:
    """Members of the dataset's tarball (if present) by file name; nothing else is read or written."""
    tar = next((p for p in (root / src.archive, root.parent / src.archive) if p.exists()), None) if src.archive else None
    if tar is None:
        return {}
    out = {}
    try:
        with tarfile.open(tar, "r:*") as t:
            for m in t.getmembers():
                base = Path(m.name).name
                if m.isfile() and base in wanted:
                    out[base] = t.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{tar} is not a readable archive ({e}); delete it and fetch it again") from None
    return out


def where_to_put(name: str, data_dir) -> str:
    src, root = SOURCES[name], Path(data_dir) / name
    files = ", ".join(src.checksums)
    return (f"put {files} (gzipped or not{', or ' + src.archive if src.archive else ''}) in {root / src.folder}/ "
            f"(torchvision's layout) or {root}/")


def missing_files(name: str, data_dir) -> list[str]:
    src, root = SOURCES[name], Path(data_dir) / name
    tar = src.archive and any(p.exists() for p in (root / src.archive, root.parent / src.archive))
    return [] if tar else [f for f in src.checksums if not any(p.exists() for p in _candidates(root, src, f))]


def prepare(name: str, data_dir, checksums: dict[str, str] | None = None) -> Path:
    """Find every file, verify its decompressed content, and place it (extracted) in
    torchvision's layout; returns the dataset root.  ``checksums`` replaces the
    recorded ones (tests use small files in the real formats)."""
    src, root = SOURCES[name], Path(data_dir) / name
    expected = {**src.checksums, **(checksums or {})}
    packed = None
    for fname, check in expected.items():
        algo, want = check.split(":", 1)
        target = root / src.folder / fname
        path = next((p for p in _candidates(root, src, fname) if p.exists()), None)
        if path is None:
            packed = _from_archive(root, src, set(expected)) if packed is None else packed
            if fname not in packed:
                raise DataError(f"dataset {name!r}: {fname} is missing; run `normbench download {name} "
                                f"--data-dir {data_dir}` on a machine with network, or {where_to_put(name, data_dir)}")
            content, shown = packed[fname], f"{src.archive}:{fname}"
        else:
            content, shown = _content(path), str(path)
        if digest(content, algo) != want:
            raise DataError(f"dataset {name!r}: {shown} fails its checksum ({algo} of the decompressed content); "
                            f"it is truncated, corrupt or another dataset: delete it and fetch it again")
        if path != target:
            with atomic_path(target) as tmp:
                tmp.write_bytes(content)
    return root


def download(name: str, data_dir) -> None:
    """The real download: torchvision's own code and mirrors; then our verification."""
    import torchvision  # lazy: only downloads pay for it

    root = Path(data_dir) / name
    root.mkdir(parents=True, exist_ok=True)
    cls = getattr(torchvision.datasets, SOURCES[name].tv_class)
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as e:  # urllib, socket, torchvision's RuntimeError after every mirror failed
        raise DataError(f"dataset {name!r}: cannot download it ({type(e).__name__}: {e}); on a machine without "
                        f"network, {where_to_put(name, data_dir)}") from None
    prepare(name, data_dir)


def ensure(name: str, data_dir, allow_download: bool, marker) -> None:
    """Verify the files (downloading them first if allowed and missing), then write
    ``marker`` listing what was verified."""
    if missing_files(name, data_dir) and allow_download:
        print(f"{name}: downloading into {Path(data_dir) / name}", flush=True)
        download(name, data_dir)
    prepare(name, data_dir)
    write_text(json.dumps(SOURCES[name].checksums, indent=1), marker)
    print(f"{name}: verified", flush=True)


def _read(name: str, root: Path) -> dict[str, torch.Tensor]:
    import torchvision

    cls = getattr(torchvision.datasets, SOURCES[name].tv_class)
    if hasattr(cls, "train_list"):  # CIFAR: verified above by our checksums, not again by torchvision's
        unchecked = lambda files: [[f, None] for f, _ in files]  # noqa: E731
        cls = type(cls.__name__, (cls,), {"train_list": unchecked(cls.train_list), "test_list": unchecked(cls.test_list),
                                          "meta": {**cls.meta, "md5": None}})
    out = {}
    for split, train in (("train", True), ("test", False)):
        try:
            ds = cls(str(root), train=train, download=False)
        except Exception as e:  # torchvision's messages do not name the file
            raise DataError(f"dataset {name!r}: cannot read the files under {root}: {e}") from e
        x = torch.as_tensor(np.asarray(ds.data))
        out[f"x_{split}"] = (x.permute(0, 3, 1, 2) if x.dim() == 4 else x.unsqueeze(1)).contiguous()  # NHWC / NHW
        out[f"y_{split}"] = torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)
    return out


def load_arrays(name: str, data_dir, checksums: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """uint8 images and labels of both splits, from the verified files (cached)."""
    return cached_tensors(name, data_dir, lambda: _read(name, prepare(name, data_dir, checksums)))


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
