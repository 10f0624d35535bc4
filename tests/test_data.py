"""Datasets: the embedded digits, the IDX reader (and its errors), splits, resizing and batch order."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from jaxsdnn import data


def write_idx(path, array: np.ndarray, type_byte: int = 0x08, dtype=">u1") -> None:
    raw = bytes([0, 0, type_byte, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += np.asarray(array, dtype=dtype).tobytes()
    if str(path).endswith(".gz"):
        raw = gzip.compress(raw)
    path.write_bytes(raw)


def mnist_dir(tmp_path, n_train=7, n_test=3, gz=True, side=(4, 5)):
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    files = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, *side), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
        files[prefix] = (images, labels)
    return files


@pytest.fixture(scope="module")
def digits():
    return data.load_digits()


def test_digits_embedded(digits):
    assert digits.images.shape == (1797, 64) and digits.images.dtype == np.float32
    assert digits.labels.dtype == np.int32 and digits.num_classes == 10 and digits.shape == (8, 8)
    assert digits.images.min() == 0.0 and digits.images.max() == 1.0
    np.testing.assert_array_equal(np.unique(digits.labels), np.arange(10))


def test_split_stratified_and_reproducible(digits):
    train, test = data.split(digits, 0.2, seed=3)
    train2, test2 = data.split(digits, 0.2, seed=3)
    _, test_other = data.split(digits, 0.2, seed=4)
    assert len(train) + len(test) == len(digits)
    np.testing.assert_array_equal(test.images, test2.images)
    assert not np.array_equal(test.labels, test_other.labels) or not np.array_equal(test.images, test_other.images)
    counts = np.bincount(test.labels, minlength=10)
    expected = np.round(0.2 * np.bincount(digits.labels)).astype(int)
    np.testing.assert_array_equal(counts, expected)
    # disjoint: every digits row lands in exactly one part
    rows = {r.tobytes() for r in digits.images}
    assert {r.tobytes() for r in train.images} | {r.tobytes() for r in test.images} == rows


def test_epoch_order_and_resumed_batches(digits):
    o1, o2 = data.epoch_order(100, seed=5, epoch=2), data.epoch_order(100, seed=5, epoch=2)
    np.testing.assert_array_equal(o1, o2)
    np.testing.assert_array_equal(np.sort(o1), np.arange(100))
    assert not np.array_equal(o1, data.epoch_order(100, seed=5, epoch=3))
    full = list(data.batches(digits, 64, seed=1, epoch=4))
    assert len(full) == data.steps_per_epoch(len(digits), 64) == 1797 // 64  # last partial batch dropped
    tail = list(data.batches(digits, 64, seed=1, epoch=4, start=10))
    assert len(tail) == len(full) - 10
    for (i1, x1, y1), (i2, x2, y2) in zip(full[10:], tail):
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(x1, digits.images[i1])
        np.testing.assert_array_equal(y1, digits.labels[i1])
    seen = np.concatenate([i for i, _, _ in full])
    assert np.unique(seen).size == seen.size


def test_eval_batches_pad_last(digits):
    sub = digits.subset(np.arange(10))
    out = list(data.eval_batches(sub, 4))
    assert [v for _, _, v in out] == [4, 4, 2]
    x, y, _ = out[-1]
    assert x.shape == (4, 64) and np.all(x[2:] == 0)
    np.testing.assert_array_equal(y[:2], sub.labels[8:])


def test_check_batch_size():
    data.check_batch_size(64, 4)
    with pytest.raises(ValueError, match="batch_size=30 must be a positive multiple of the data-parallel axis \\(4\\)"):
        data.check_batch_size(30, 4)


def test_resize_images(digits):
    big = data.resize_images(digits.subset(np.arange(3)), 32)
    assert big.shape == (32, 32) and big.features == 1024
    img = big.images.reshape(3, 32, 32)
    np.testing.assert_array_equal(img[:, ::4, ::4], digits.images[:3].reshape(3, 8, 8))
    padded = data.resize_images(data.Dataset(np.ones((2, 28 * 28)), [0, 1], 10, (28, 28)), 32)
    p = padded.images.reshape(2, 32, 32)
    assert p[:, 2:30, 2:30].min() == 1 and p.sum() == 2 * 28 * 28
    with pytest.raises(ValueError, match="smaller than the 8x8"):
        data.resize_images(digits, 6)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader(tmp_path, gz):
    files = mnist_dir(tmp_path, gz=gz)
    train, test = data.load_dataset("mnist", tmp_path)
    assert train.images.shape == (7, 20) and test.images.shape == (3, 20) and train.shape == (4, 5)
    np.testing.assert_allclose(train.images, files["train"][0].reshape(7, 20) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(test.labels, files["t10k"][1])
    arr = np.arange(6, dtype=np.int32).reshape(2, 3) - 2
    write_idx(tmp_path / "ints.idx", arr, 0x0C, ">i4")
    np.testing.assert_array_equal(data.read_idx(tmp_path / "ints.idx"), arr)


def test_idx_missing_file(tmp_path):
    mnist_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte\\[.gz\\]: no such file"):
        data.load_dataset("mnist", tmp_path)
    with pytest.raises(ValueError, match="needs data.path"):
        data.load_dataset("fashion_mnist", None)


def test_idx_truncated_and_trailing(tmp_path):
    mnist_dir(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    raw = path.read_bytes()
    path.write_bytes(raw[:-5])
    with pytest.raises(ValueError, match=f"{path.name}: truncated: {len(raw) - 5} bytes"):
        data.load_idx_dataset(tmp_path, "train")
    path.write_bytes(raw + b"\0")
    with pytest.raises(ValueError, match="has trailing bytes"):
        data.load_idx_dataset(tmp_path, "train")
    path.write_bytes(raw[:6])
    with pytest.raises(ValueError, match="truncated header"):
        data.read_idx(path)


def test_idx_bad_magic_and_gzip(tmp_path):
    mnist_dir(tmp_path, gz=False)
    path = tmp_path / "train-labels-idx1-ubyte"
    raw = bytearray(path.read_bytes())
    raw[0] = 7
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=f"{path.name}: bad IDX magic 07000801"):
        data.load_idx_dataset(tmp_path, "train")
    bad = tmp_path / "x-idx.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="not a valid gzip file"):
        data.read_idx(bad)


def test_idx_count_mismatch(tmp_path):
    mnist_dir(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(6, np.uint8))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte: 6 labels but .*train-images-idx3-ubyte holds 7 images"):
        data.load_idx_dataset(tmp_path, "train")


def test_idx_wrong_rank(tmp_path):
    mnist_dir(tmp_path, gz=False)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((7, 20), np.uint8))
    with pytest.raises(ValueError, match="expected 3-D uint8 images"):
        data.load_idx_dataset(tmp_path, "train")


def test_dataset_validation():
    with pytest.raises(ValueError, match="label of sample 1 is 10, expected \\[0, 10\\)"):
        data.Dataset(np.zeros((2, 4)), [0, 10], 10, (2, 2), "toy")
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        data.load_dataset("cifar")
