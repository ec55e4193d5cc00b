"""Datasets: bundled, generated, and the downloadable ones read from fixture files
in their real formats, as mirrors ship them."""

import gzip
import pickle
import urllib.error

import numpy as np
import pytest
import torch

from fixtures import IDX, mnist_files, write_cifar10, write_mnist
from normbench import mirrors
from normbench.data import DATASETS, BatchSchedule, load_dataset, load_downloaded
from normbench.errors import ConfigError, DataError


def test_digits_split_is_fixed_and_standardized():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.x_train.shape == (1437, 1, 8, 8) and a.x_test.shape == (360, 1, 8, 8)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert abs(float(a.x_train.mean())) < 1e-5 and float(a.x_train.std()) == pytest.approx(1, abs=1e-3)
    assert set(a.y_train.tolist()) == set(range(10))


def test_digits16_is_the_same_digits_resized():
    small, big = load_dataset("digits"), load_dataset("digits16")
    assert big.x_train.shape == (1437, 1, 16, 16) and torch.equal(small.y_train, big.y_train)
    # resizing back down (2×2 average) recovers the 8×8 image's pattern: the same examples, same order
    down = torch.nn.functional.avg_pool2d(big.x_train, 2).flatten(1)
    corr = torch.nn.functional.cosine_similarity(down - down.mean(1, keepdim=True),
                                                 small.x_train.flatten(1) - small.x_train.flatten(1).mean(1, keepdim=True))
    assert float(corr.min()) > 0.9


def test_specs_agree_with_what_loads():
    for name in ("digits", "digits16", "synthetic", "synthetic_linear", "two_scale"):
        spec, d = DATASETS.get(name), load_dataset(name)
        assert (spec.input_shape, spec.task, spec.num_outputs, spec.n_train, spec.n_test) == (
            d.input_shape, d.task, d.num_outputs, len(d.x_train), len(d.x_test))


def test_synthetic_linear_is_y_equals_ax():
    d = load_dataset("synthetic_linear")
    a = torch.linalg.lstsq(d.x_train, d.y_train).solution.T
    torch.testing.assert_close(d.x_test @ a.T, d.y_test, rtol=1e-4, atol=1e-4)
    assert d.task == "regression" and d.x_train.shape == (1000, 10)


def test_float64_data_for_float64_runs():
    d = load_dataset("synthetic_linear", dtype=torch.float64)
    assert d.x_train.dtype == d.y_train.dtype == torch.float64
    c = load_dataset("digits", dtype=torch.float64)
    assert c.x_train.dtype == torch.float64 and c.y_train.dtype == torch.long  # labels stay labels


def test_cifar10_reads_the_real_format(tmp_path):
    sums = write_cifar10(tmp_path)
    d = load_downloaded("cifar10", tmp_path, checksums=sums)
    assert d.x_train.shape == (30, 3, 32, 32) and d.x_test.shape == (6, 3, 32, 32)
    raw = pickle.loads((tmp_path / "cifar10/cifar-10-batches-py/data_batch_1").read_bytes())
    first = torch.tensor(raw["data"][0].reshape(3, 32, 32), dtype=torch.float32) / 255
    xs = torch.cat([torch.tensor(pickle.loads((tmp_path / f"cifar10/cifar-10-batches-py/data_batch_{i}")
                                              .read_bytes())["data"].reshape(-1, 3, 32, 32)) for i in range(1, 6)]).float() / 255
    mean, std = xs.mean((0, 2, 3)), xs.std((0, 2, 3))
    torch.testing.assert_close(d.x_train[0], (first - mean[:, None, None]) / std[:, None, None], rtol=1e-4, atol=1e-4)
    assert d.y_train[:6].tolist() == raw["labels"]
    assert (tmp_path / "cifar10/normbench-cache.pt").exists()  # the second load comes from the tensor cache
    torch.testing.assert_close(load_downloaded("cifar10", tmp_path, checksums=sums).x_train, d.x_train)


def test_cifar10_as_distributed_tarball(tmp_path):
    sums = write_cifar10(tmp_path, as_tarball=True)
    d = load_downloaded("cifar10", tmp_path, checksums=sums)
    assert d.x_train.shape == (30, 3, 32, 32)
    assert (tmp_path / "cifar10/cifar-10-batches-py/data_batch_3").exists()  # placed in torchvision's layout


def test_cifar_with_wrong_checksum_names_the_file(tmp_path):
    write_cifar10(tmp_path)
    with pytest.raises(DataError, match="data_batch_1 fails its checksum"):
        load_downloaded("cifar10", tmp_path)  # the published md5s do not match fixture files


def test_truncated_cifar_batch_is_rejected_before_unpickling(tmp_path):
    sums = write_cifar10(tmp_path)
    f = tmp_path / "cifar10/cifar-10-batches-py/test_batch"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(DataError, match="test_batch fails its checksum"):
        mirrors.prepare("cifar10", tmp_path, sums)


@pytest.mark.parametrize("layout", ["extracted", "gz", "flat", "flat_gz"])
@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_family_in_every_layout_mirrors_use(tmp_path, name, folder, layout):
    sums = write_mnist(tmp_path, name, folder, gz="gz" in layout, flat="flat" in layout)
    d = load_downloaded(name, tmp_path, checksums=sums)
    assert d.x_train.shape == (8, 1, 28, 28) and d.x_test.shape == (4, 1, 28, 28)
    labels = np.frombuffer(mnist_files()["train-labels-idx1-ubyte"][8:], dtype=np.uint8)
    assert d.y_train.tolist() == labels.tolist()


def test_recompressed_gz_is_verified_by_its_content(tmp_path):
    """A mirror that recompressed the archives: other .gz bytes, the same content, accepted."""
    sums = write_mnist(tmp_path, "fashion_mnist", "FashionMNIST", gz=True, gzip_level=1)
    a = (tmp_path / "fashion_mnist/FashionMNIST/raw/train-labels-idx1-ubyte.gz").read_bytes()
    assert a != gzip.compress(mnist_files()["train-labels-idx1-ubyte"], compresslevel=9, mtime=0)
    mirrors.prepare("fashion_mnist", tmp_path, sums)


def test_corrupt_content_names_the_file(tmp_path):
    sums = write_mnist(tmp_path, gz=True)
    f = tmp_path / "mnist/MNIST/raw/train-images-idx3-ubyte.gz"
    f.write_bytes(gzip.compress(gzip.decompress(f.read_bytes())[:-10]))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz fails its checksum .*decompressed content"):
        mirrors.prepare("mnist", tmp_path, sums)


def test_recorded_checksums_are_of_the_decompressed_files():
    """MNIST's recorded SHA-256s are of the idx files; a shape check on what they name."""
    for name in ("mnist", "fashion_mnist"):
        assert set(mirrors.SOURCES[name].checksums) == set(IDX)
        assert all(v.startswith("sha256:") and len(v) == 7 + 64 for v in mirrors.SOURCES[name].checksums.values())
    assert all(v.startswith("md5:") for v in mirrors.SOURCES["cifar10"].checksums.values())


def test_missing_files_say_where_to_put_them(tmp_path):
    with pytest.raises(DataError, match=r"missing; run `normbench download cifar10.*put data_batch_1.*cifar-10-batches-py"):
        load_dataset("cifar10", tmp_path)


def test_unreachable_network_is_one_clear_line(tmp_path, monkeypatch):
    import torchvision

    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", offline)
    with pytest.raises(DataError) as e:
        mirrors.download("fashion_mnist", tmp_path)
    msg = str(e.value)
    assert "cannot download it" in msg and "name resolution" in msg and "\n" not in msg
    assert f"{tmp_path}/fashion_mnist/FashionMNIST/raw/" in msg and "gzipped or not" in msg


def test_unknown_dataset():
    with pytest.raises(ConfigError, match="valid: .*digits"):
        load_dataset("imagenet")


def test_batches_are_seeded_permutations_and_drop_last():
    b = BatchSchedule(10, 3, seed=1, device="cpu")
    assert b.per_epoch == 3
    epoch0 = torch.cat([b(s)[1] for s in range(3)])
    assert len(set(epoch0.tolist())) == 9
    assert b(3)[0] == 1 and not torch.equal(b(3)[1], b(0)[1])
    assert torch.equal(BatchSchedule(10, 3, 1, "cpu")(4)[1], b(4)[1])
    with pytest.raises(ConfigError, match="batch_size"):
        BatchSchedule(10, 11, 0, "cpu")
