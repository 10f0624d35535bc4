"""Labelled images for training (host side, NumPy only): loading, splitting, batching.

Two sources, neither downloads anything at run time:

* ``digits``: scikit-learn's handwritten digits (:func:`sklearn.datasets.load_digits`, shipped
  inside scikit-learn): 1797 images of 8 x 8 pixels, values scaled from ``0..16`` to ``[0, 1]``,
  10 classes. It has no official test set: :func:`split` makes one by seed.
* ``mnist`` / ``fashion_mnist``: the IDX files of MNIST or Fashion-MNIST in a local directory
  (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte``, each optionally ``.gz``), pixels scaled from ``0..255`` to ``[0, 1]``.

Batching policy (:func:`batches`): the training order of epoch ``e`` is a permutation drawn from
``(seed, e)`` alone, so a run resumed at ``(epoch, position)`` sees exactly the batches an
uninterrupted run would. The last partial batch of an epoch is **dropped** (every step has the same
shape, so one compilation; a different permutation each epoch means no sample is always left out).
Evaluation (:func:`eval_batches`) instead **pads** the last batch with zero images and reports how
many rows are real, so every sample is scored exactly once.

References:
    LeCun et al., "Gradient-based learning applied to document recognition", Proc. IEEE 1998 (the
    IDX format). Xiao et al., "Fashion-MNIST", arXiv 1708.07747.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from jaxsdnn.io import read_bytes

__all__ = [
    "Dataset",
    "batches",
    "check_batch_size",
    "epoch_order",
    "eval_batches",
    "load_dataset",
    "load_digits",
    "load_idx_dataset",
    "read_idx",
    "resize_images",
    "split",
    "steps_per_epoch",
]

DATASETS = ("digits", "mnist", "fashion_mnist")

# IDX type byte -> big-endian NumPy dtype
_IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Labelled images, flattened.

    Attributes:
        images: ``[n, features]`` float32 in ``[0, 1]``; ``features = height * width``, row-major.
        labels: ``[n]`` int32 in ``[0, num_classes)``.
        num_classes: number of classes.
        shape: ``(height, width)`` of one image.
        name: where it came from (for logs).
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    shape: tuple[int, int]
    name: str = ""

    def __post_init__(self):
        images = np.ascontiguousarray(self.images, dtype=np.float32)
        labels = np.asarray(self.labels, dtype=np.int32)
        if images.ndim != 2 or labels.shape != (images.shape[0],):
            raise ValueError(f"dataset {self.name!r}: {images.shape=} and {labels.shape=} do not match [n, features], [n]")
        if images.shape[1] != self.shape[0] * self.shape[1]:
            raise ValueError(f"dataset {self.name!r}: {images.shape[1]} features but image shape {self.shape}")
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            bad = int(np.flatnonzero((labels < 0) | (labels >= self.num_classes))[0])
            raise ValueError(
                f"dataset {self.name!r}: label of sample {bad} is {labels[bad]}, expected [0, {self.num_classes})"
            )
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "shape", (int(self.shape[0]), int(self.shape[1])))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def features(self) -> int:
        return int(self.images.shape[1])

    def subset(self, index: np.ndarray, name: str | None = None) -> Dataset:
        """The samples ``index`` (``[m]`` ints), in that order."""
        index = np.asarray(index, dtype=np.int64)
        return Dataset(self.images[index], self.labels[index], self.num_classes, self.shape, name or self.name)


# ----------------------------------------------------------------------------------------------
# sources
# ----------------------------------------------------------------------------------------------
def load_digits() -> Dataset:
    """scikit-learn's 8 x 8 handwritten digits (1797 images, 10 classes), pixels in ``[0, 1]``."""
    from sklearn.datasets import load_digits as _sk_digits  # shipped with scikit-learn, no download

    bunch = _sk_digits()
    return Dataset(bunch.data / 16.0, bunch.target, 10, (8, 8), "digits")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one IDX file (``.gz`` is gunzipped).

    Format: two zero bytes, a type byte (``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16, ``0x0C``
    int32, ``0x0D`` float32, ``0x0E`` float64), a byte ``ndim``, ``ndim`` big-endian uint32 sizes,
    then the values, big-endian, row-major.

    Returns:
        the array, shape the sizes of the header, native byte order.

    Raises:
        ValueError: missing file, bad gzip, bad magic, or a size that does not match the header
            (truncated or trailing bytes); the message starts with the path.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    raw = read_bytes(path)
    if len(raw) < 4:
        raise ValueError(f"{path}: {len(raw)} bytes, too short for an IDX header (4 bytes of magic)")
    zero, kind, ndim = raw[0:2], raw[2], raw[3]
    if zero != b"\x00\x00" or kind not in _IDX_TYPES or ndim == 0:
        raise ValueError(
            f"{path}: bad IDX magic {raw[:4].hex()} (expected 0000 then a type byte in "
            f"{{{', '.join(f'{t:02x}' for t in _IDX_TYPES)}}} and ndim >= 1, e.g. 00000803 for images)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated header ({len(raw)} bytes, expected {header} for {ndim} dimensions)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_TYPES[kind]
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise ValueError(f"{path}: {what}: {len(raw)} bytes, the header {dims} of {dtype.name} needs {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(directory: Path, prefix: str, kind: str) -> Path:
    """``{prefix}-{kind}`` or ``{prefix}-{kind}.gz`` (also the ``images.idx3`` dotted spelling)."""
    names = [f"{prefix}-{kind}", f"{prefix}-{kind.replace('-idx', '.idx')}"]
    for name in names:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise ValueError(f"{directory / names[0]}[.gz]: no such file (an IDX file of MNIST / Fashion-MNIST is expected)")


def load_idx_dataset(directory: str | os.PathLike, split_name: str = "train", name: str = "mnist") -> Dataset:
    """MNIST-style IDX images and labels from ``directory``.

    Args:
        directory: holds ``{train,t10k}-images-idx3-ubyte[.gz]`` and ``{train,t10k}-labels-idx1-ubyte[.gz]``.
        split_name: ``"train"`` or ``"test"`` (the ``t10k`` files).
        name: recorded in the dataset.

    Returns:
        the dataset, ``features = rows * cols``, pixels scaled by 1/255, ``num_classes = 10``.

    Raises:
        ValueError: naming the file: missing, truncated, bad magic, not 3-D images / 1-D labels,
            or image and label counts that differ.
    """
    if split_name not in ("train", "test"):
        raise ValueError(f"split_name must be 'train' or 'test', got {split_name!r}")
    directory = Path(directory)
    prefix = "train" if split_name == "train" else "t10k"
    images_path = _find_idx(directory, prefix, "images-idx3-ubyte")
    labels_path = _find_idx(directory, prefix, "labels-idx1-ubyte")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{images_path}: expected 3-D uint8 images (magic 00000803), got {images.ndim}-D {images.dtype}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(f"{labels_path}: expected 1-D uint8 labels (magic 00000801), got {labels.ndim}-D {labels.dtype}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{labels_path}: {labels.shape[0]} labels but {images_path} holds {images.shape[0]} images"
        )
    if labels.size and labels.max() >= 10:
        bad = int(np.flatnonzero(labels >= 10)[0])
        raise ValueError(f"{labels_path}: label of sample {bad} is {labels[bad]}, expected 0..9")
    n, h, w = images.shape
    return Dataset(images.reshape(n, h * w) / np.float32(255.0), labels, 10, (h, w), f"{name}/{split_name}")


def load_dataset(name: str = "digits", path: str | os.PathLike | None = None, test_fraction: float = 0.2,
                 seed: int = 0) -> tuple[Dataset, Dataset]:
    """A ``(train, test)`` pair.

    Args:
        name: ``"digits"`` (embedded), ``"mnist"`` or ``"fashion_mnist"`` (IDX files in ``path``).
        path: directory of the IDX files (ignored for digits).
        test_fraction: digits only: the share of samples held out as the test set.
        seed: digits only: seeds the held-out split (see :func:`split`).
    """
    if name == "digits":
        return split(load_digits(), test_fraction, seed)
    if name in ("mnist", "fashion_mnist"):
        if not path:
            raise ValueError(f"dataset {name!r} needs data.path: a directory with its IDX files")
        return load_idx_dataset(path, "train", name), load_idx_dataset(path, "test", name)
    raise ValueError(f"unknown dataset {name!r}, expected one of {DATASETS}")


# ----------------------------------------------------------------------------------------------
# transforms
# ----------------------------------------------------------------------------------------------
def split(dataset: Dataset, fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Stratified split into ``(rest, held_out)``, reproducible from ``seed``.

    Each class puts ``round(fraction * count)`` of its samples (drawn by a permutation seeded by
    ``seed``) into the held-out part; both parts keep the original sample order.

    Args:
        dataset: the samples.
        fraction: held-out share, in ``[0, 1)``.
        seed: seeds the draw.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"split: fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED]))
    held = np.zeros(len(dataset), dtype=bool)
    for c in range(dataset.num_classes):
        idx = np.flatnonzero(dataset.labels == c)
        take = int(round(fraction * idx.size))
        held[rng.permutation(idx)[:take]] = True
    return (dataset.subset(np.flatnonzero(~held), f"{dataset.name}/train"),
            dataset.subset(np.flatnonzero(held), f"{dataset.name}/test"))


def resize_images(dataset: Dataset, side: int) -> Dataset:
    """Images as ``side x side``: nearest-neighbour upsampling by the largest integer factor that fits,
    then centred zero padding (e.g. digits 8x8 -> x4 -> 32x32 = 1024 features; MNIST 28x28 -> pad 2
    -> 32x32).

    Raises:
        ValueError: if an image is larger than ``side`` in either dimension.
    """
    h, w = dataset.shape
    if side < max(h, w):
        raise ValueError(f"resize_images: side={side} is smaller than the {h}x{w} images of {dataset.name!r}")
    f = side // max(h, w)
    img = dataset.images.reshape(-1, h, w)
    img = np.repeat(np.repeat(img, f, axis=1), f, axis=2)
    top, left = (side - h * f) // 2, (side - w * f) // 2
    out = np.zeros((len(dataset), side, side), dtype=np.float32)
    out[:, top : top + h * f, left : left + w * f] = img
    return Dataset(out.reshape(len(dataset), side * side), dataset.labels, dataset.num_classes, (side, side),
                   dataset.name)


# ----------------------------------------------------------------------------------------------
# batching
# ----------------------------------------------------------------------------------------------
def check_batch_size(batch_size: int, data_parallel: int, where: str = "batch_size") -> None:
    """Raises a ValueError unless ``batch_size`` is a positive multiple of ``data_parallel``."""
    if int(batch_size) != batch_size or batch_size < 1 or batch_size % data_parallel:
        raise ValueError(f"{where}={batch_size} must be a positive multiple of the data-parallel axis ({data_parallel})")


def steps_per_epoch(num_samples: int, batch_size: int) -> int:
    """Full batches per epoch (the last partial batch is dropped)."""
    return num_samples // batch_size


def epoch_order(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The training order of ``epoch``: ``[num_samples]`` int64 permutation, a function of ``(seed, epoch)`` only."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch)]))
    return rng.permutation(num_samples)


def batches(dataset: Dataset, batch_size: int, seed: int, epoch: int, start: int = 0,
            ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The training batches of one epoch, from batch ``start`` on (to resume mid-epoch).

    Yields:
        ``(index [batch_size] int64, images [batch_size, features] float32, labels [batch_size] int32)``;
        the last partial batch is dropped.
    """
    n = steps_per_epoch(len(dataset), batch_size)
    if n == 0:
        raise ValueError(f"batch_size={batch_size} is larger than the {len(dataset)} training samples of {dataset.name!r}")
    order = epoch_order(len(dataset), seed, epoch)
    for b in range(int(start), n):
        idx = order[b * batch_size : (b + 1) * batch_size]
        yield idx, dataset.images[idx], dataset.labels[idx]


def eval_batches(dataset: Dataset, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Every sample once, in order; the last batch is padded with zero images (label 0).

    Yields:
        ``(images [batch_size, features], labels [batch_size], valid)``: the first ``valid`` rows are real.
    """
    for lo in range(0, len(dataset), batch_size):
        x = dataset.images[lo : lo + batch_size]
        y = dataset.labels[lo : lo + batch_size]
        valid = x.shape[0]
        if valid < batch_size:
            x = np.concatenate([x, np.zeros((batch_size - valid, x.shape[1]), np.float32)])
            y = np.concatenate([y, np.zeros(batch_size - valid, np.int32)])
        yield x, y, valid
