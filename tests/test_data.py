"""Datasets: bundled, generated, and torchvision formats read from fixture files."""

import pickle

import numpy as np
import pytest
import torch

from fixtures import write_cifar10, write_mnist
from normbench.data import DataError, load_dataset, load_torchvision, verify_files
from normbench.norms import ConfigError
from normbench.data import BatchSchedule


def test_digits_split_is_fixed_and_standardized():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.x_train.shape == (1437, 1, 8, 8) and a.x_test.shape == (360, 1, 8, 8)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert abs(float(a.x_train.mean())) < 1e-5 and float(a.x_train.std()) == pytest.approx(1, abs=1e-3)
    assert set(a.y_train.tolist()) == set(range(10))


def test_synthetic_is_seeded_and_learnable_shape():
    a, b = load_dataset("synthetic"), load_dataset("synthetic")
    assert torch.equal(a.x_train, b.x_train) and a.num_outputs == 10 and a.input_shape == (1, 8, 8)


def test_synthetic_linear_is_y_equals_ax():
    d = load_dataset("synthetic_linear")
    a = torch.linalg.lstsq(d.x_train, d.y_train).solution.T
    torch.testing.assert_close(d.x_test @ a.T, d.y_test, rtol=1e-4, atol=1e-4)
    assert d.task == "regression" and d.x_train.shape == (1000, 10)


def test_cifar10_reads_the_real_format(tmp_path):
    sums = write_cifar10(tmp_path)
    d = load_torchvision("cifar10", tmp_path, checksums=sums)
    assert d.x_train.shape == (30, 3, 32, 32) and d.x_test.shape == (6, 3, 32, 32)
    raw = pickle.loads((tmp_path / "cifar10/cifar-10-batches-py/data_batch_1").read_bytes())
    first = torch.tensor(raw["data"][0].reshape(3, 32, 32), dtype=torch.float32) / 255
    # standardized per channel from the training split: invert with the train statistics
    xs = torch.cat([torch.tensor(pickle.loads((tmp_path / f"cifar10/cifar-10-batches-py/data_batch_{i}")
                                              .read_bytes())["data"].reshape(-1, 3, 32, 32)) for i in range(1, 6)]).float() / 255
    mean, std = xs.mean((0, 2, 3)), xs.std((0, 2, 3))
    torch.testing.assert_close(d.x_train[0], (first - mean[:, None, None]) / std[:, None, None], rtol=1e-4, atol=1e-4)
    assert d.y_train[:6].tolist() == raw["labels"]
    # second load comes from the tensor cache, same values
    assert (tmp_path / "cifar10/normbench-cache.pt").exists()
    torch.testing.assert_close(load_torchvision("cifar10", tmp_path, checksums=sums).x_train, d.x_train)


def test_cifar_with_wrong_checksum_names_the_file(tmp_path):
    write_cifar10(tmp_path)
    with pytest.raises(DataError, match="data_batch_1 fails its checksum"):
        load_torchvision("cifar10", tmp_path)  # the published md5s do not match fixture files


def test_truncated_cifar_batch_is_rejected_before_unpickling(tmp_path):
    sums = write_cifar10(tmp_path)
    f = tmp_path / "cifar10/cifar-10-batches-py/test_batch"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(DataError, match="test_batch fails its checksum"):
        verify_files("cifar10", tmp_path, sums)


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_family_reads_idx_files(tmp_path, name, folder):
    raw = write_mnist(tmp_path, name, folder)
    d = load_torchvision(name, tmp_path)
    assert d.x_train.shape == (8, 1, 28, 28) and d.x_test.shape == (4, 1, 28, 28)
    labels = np.frombuffer((raw / "train-labels-idx1-ubyte").read_bytes()[8:], dtype=np.uint8)
    assert d.y_train.tolist() == labels.tolist()


def test_truncated_idx_file_names_the_file(tmp_path):
    raw = write_mnist(tmp_path)
    f = raw / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(DataError, match="train-images-idx3-ubyte is truncated"):
        load_torchvision("mnist", tmp_path)


def test_missing_files_say_where_to_put_them(tmp_path):
    with pytest.raises(DataError, match="missing.*normbench download cifar10"):
        load_dataset("cifar10", tmp_path)


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
