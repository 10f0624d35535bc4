"""RadiX-Net generator: structure, reproducibility, and agreement with the real challenge layers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jaxsdnn.io import read_layer
from jaxsdnn.radixnet import radixnet, random_images

LAYERS = Path(__file__).resolve().parent.parent / "data" / "graphchallenge" / "neuron1024"


def radix_oracle(neurons: int, shift: int) -> np.ndarray:
    """Dense ``kron(ones(16, 16), I_n + S_shift) / 16`` with ``S_shift[p, q] = 1`` iff ``p = q + shift``."""
    n = neurons // 16
    small = np.eye(n) + np.roll(np.eye(n), shift, axis=0)
    return np.kron(np.ones((16, 16)), small).astype(np.float32) / 16


def block_residues(first_layer, neurons: int) -> np.ndarray:
    """Row ``i`` of a block whose first layer (shift 1) is ``B_1[P]``: ``P[i] mod n``, ``[N]``."""
    n = neurons // 16
    cols = first_layer.tocsr().indices.reshape(neurons, 32) % n
    lo, hi = cols.min(axis=1), cols.max(axis=1)
    assert np.all((cols == lo[:, None]) | (cols == hi[:, None]))  # two residues per row: {p, p - 1}
    return np.where(hi - lo == 1, hi, 0)  # {p - 1, p} -> p; {0, n - 1} -> p = 0


def assert_permuted_block(layers, neurons: int) -> np.ndarray:
    """Asserts ``layers[j-1] == B_j[P]`` for one input permutation ``P`` shared by the block."""
    p = block_residues(layers[0], neurons)
    np.testing.assert_array_equal(np.bincount(p, minlength=neurons // 16), 16)  # P is a permutation mod n
    for j, w in enumerate(layers, start=1):
        np.testing.assert_array_equal(w.toarray(), radix_oracle(neurons, 2 ** (j - 1))[p], err_msg=f"layer {j}")
    return p


def test_first_block_equals_real_layers_bit_for_bit():
    net = radixnet(1024, 6)
    for k, w in enumerate(net.weights, start=1):
        real = read_layer(LAYERS / f"n1024-l{k}.tsv.gz", 1024, 1024).tocsr()
        real.sort_indices()
        np.testing.assert_array_equal(w.indptr, real.indptr)
        np.testing.assert_array_equal(w.indices, real.indices)
        assert w.data.dtype == real.data.dtype == np.float32
        np.testing.assert_array_equal(w.data, real.data)
    assert net.biases[0][0] == np.float32(-0.3) and net.cap == 32.0


@pytest.mark.parametrize("block", [2, 20])
def test_real_later_blocks_are_radix_blocks_with_permuted_inputs(block):
    layers = [read_layer(LAYERS / f"n1024-l{k}.tsv.gz", 1024, 1024) for k in range(6 * block - 5, 6 * block + 1)]
    p = assert_permuted_block(layers, 1024)
    assert not np.array_equal(p, np.arange(1024) % 64)  # really permuted


@pytest.mark.parametrize("neurons, layers", [(64, 5), (256, 9)])
def test_every_generated_block_is_a_permuted_radix_block(neurons, layers):
    net = radixnet(neurons, layers, seed=3, bias=-0.3)
    m = int(np.log2(neurons // 16))
    for w in net.weights:
        np.testing.assert_array_equal(np.diff(w.indptr), 32)  # fan-out
        np.testing.assert_array_equal(np.bincount(w.indices, minlength=neurons), 32)  # fan-in
        np.testing.assert_array_equal(w.data, np.float32(1 / 16))
    for start in range(0, layers, m):
        p = assert_permuted_block(net.weights[start : start + m], neurons)
        identity = np.array_equal(p, np.arange(neurons) % (neurons // 16))
        assert identity == (start == 0)


def test_seed_reproducible_and_prefix_stable():
    a, b, c = radixnet(64, 6, seed=1, bias=-0.3), radixnet(64, 6, seed=1, bias=-0.3), radixnet(64, 6, seed=2, bias=-0.3)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert radixnet(64, 3, seed=1, bias=-0.3).fingerprint() == a.truncated(3).fingerprint()


@pytest.mark.parametrize("neurons", [16, 48, 100, 1000, 64.5])
def test_rejects_sizes_that_are_not_16_times_a_power_of_two(neurons):
    with pytest.raises(ValueError, match=r"16 \* 2\^m"):
        radixnet(neurons, 2, bias=-0.3)


def test_rejects_bad_layers_and_missing_default_bias():
    with pytest.raises(ValueError, match="layers must be an integer >= 1"):
        radixnet(64, 0, bias=-0.3)
    with pytest.raises(ValueError, match="no Graph Challenge bias for 64 neurons.*pass bias="):
        radixnet(64, 2)


def test_random_images_binary_reproducible():
    a = random_images(128, 50, 0.1, seed=4)
    assert a.shape == (50, 128) and a.dtype == np.float32 and a.nnz == 640
    np.testing.assert_array_equal(a.data, 1.0)
    assert a.has_canonical_format
    b, c = random_images(128, 50, 0.1, seed=4), random_images(128, 50, 0.1, seed=5)
    assert (a != b).nnz == 0 and (a != c).nnz > 0
    with pytest.raises(ValueError, match="density"):
        random_images(128, 5, 1.5)


def test_input_classes_are_the_dense_blocks():
    net = radixnet(1024, 6)
    for k in range(1, 7):
        classes = net.input_classes(k)
        size = 32 if k == 6 else 16  # the last stage of a block pairs residues p and p + 32
        np.testing.assert_array_equal(np.bincount(classes), np.full(1024 // size, size))
        cols = net.weights[k - 1].tocsc()
        for c in range(3):
            members = np.flatnonzero(classes == c)
            sets = {tuple(np.sort(cols.indices[cols.indptr[j] : cols.indptr[j + 1]])) for j in members}
            assert len(sets) == 1
        first = [np.flatnonzero(classes == c)[0] for c in range(classes.max() + 1)]
        sets = {tuple(np.sort(cols.indices[cols.indptr[j] : cols.indptr[j + 1]])) for j in first}
        assert len(sets) == len(first)  # different classes read different sets
