"""Synthetic networks and inputs: RadiX-Net layers as in the Sparse DNN Graph Challenge.

A RadiX-Net of ``N = 16 * 2^m`` neurons per layer (``m >= 1``) is a chain of blocks of ``m``
layers. With ``n = N / 16`` and ``S_s`` the ``n x n`` cyclic shift with ``S_s[p, q] = 1`` iff
``p = q + s (mod n)``, layer ``j`` (1-based) of a block is, in the Y.W convention
(row = input neuron, column = output neuron)::

    B_j = kron(ones(16, 16), I_n + S_{2^(j-1)}) / 16

so input ``i`` feeds the 32 outputs ``a * n + q`` with ``q in {i mod n, (i - 2^(j-1)) mod n}``,
``a = 0..15``: 32 edges per neuron in and out, weights ``1/16``. The first block is used as is;
every later block permutes its input neurons by one random permutation ``P`` shared by the
block's layers (``W = B_j[P]``, row ``i`` of ``W`` is row ``P[i]`` of ``B_j``).

For ``N = 1024`` layers 1..6 equal the challenge's ``n1024-l1..l6`` bit for bit. Every later
challenge block is ``B_j`` with its rows permuted by a block-wide permutation as above; the
permutations themselves come from an unknown generator, so only the structure matches.

References:
    Kepner, Robinett, "RadiX-Net: Structured Sparse Matrices for Deep Neural Networks",
    IEEE IPDPSW 2019. Kepner et al., "Sparse Deep Neural Network Graph Challenge", HPEC 2019.
"""

from __future__ import annotations

import os

import numpy as np
import scipy.ndimage
import scipy.sparse as sp

from jaxsdnn.io import graphchallenge_bias
from jaxsdnn.network import SparseNetwork

__all__ = ["challenge_images", "radixnet", "random_images"]

_COPIES = 16  # the kron(ones(16, 16), .) factor: 2 * 16 = 32 edges per neuron


def _block_size(neurons: int) -> int:
    """``m = log2(N / 16)``: layers per block. Raises for an ``N`` that is not ``16 * 2^m``."""
    n = int(neurons)
    if n != neurons or n < 2 * _COPIES or n % _COPIES or (n // _COPIES) & (n // _COPIES - 1):
        raise ValueError(f"RadiX-Net needs neurons = 16 * 2^m with m >= 1 (32, 64, ..., 1024, ...), got {neurons}")
    return (n // _COPIES).bit_length() - 1


def _radix_layer(neurons: int, shift: int, residues: np.ndarray) -> sp.csr_array:
    """``B[residues]`` for the layer with cyclic shift ``shift``: ``[N, N]`` float32 CSR.

    Args:
        neurons: ``N``.
        shift: ``2^(j-1)`` for layer ``j`` of a block.
        residues: ``[N]`` int, ``residues[i] mod n`` is the row of ``I_n + S_shift`` that row ``i`` of the
            layer uses (``arange(N)`` for the unpermuted block, a permutation for the others).
    """
    n = neurons // _COPIES
    p = np.asarray(residues, dtype=np.int64) % n
    q = np.stack([p, (p - shift) % n], axis=1)  # [N, 2] the two columns of I_n + S_shift in row p
    cols = (np.arange(_COPIES, dtype=np.int64)[None, :, None] * n + q[:, None, :]).reshape(neurons, 2 * _COPIES)
    cols.sort(axis=1)
    indptr = np.arange(0, neurons * 2 * _COPIES + 1, 2 * _COPIES, dtype=np.int64)
    data = np.full(cols.size, 1.0 / _COPIES, dtype=np.float32)
    return sp.csr_array((data, cols.reshape(-1), indptr), shape=(neurons, neurons))


def radixnet(
    neurons: int, layers: int, seed: int = 0, bias: float | None = None, cap: float | None = 32.0
) -> SparseNetwork:
    """A Graph Challenge style RadiX-Net.

    Args:
        neurons: ``N = 16 * 2^m``, ``m >= 1``.
        layers: ``L >= 1``; blocks of ``m`` layers, the last one possibly partial.
        seed: seeds the permutations of blocks 2, 3, ... (one per block, drawn in order, so the
            first ``L'`` layers of a deeper network equal the ``L'``-layer network).
        bias: every neuron's bias; ``None`` is :func:`jaxsdnn.io.graphchallenge_bias` of ``N``
            (defined for 1024, 4096, 16384, 65536 only).
        cap: ReLU cap, ``None`` for a plain ReLU.

    Returns:
        ``L`` layers ``[N, N]`` with 32 edges per row and per column, weights ``1/16``.
    """
    m = _block_size(neurons)
    if int(layers) != layers or layers < 1:
        raise ValueError(f"radixnet: layers must be an integer >= 1, got {layers}")
    if bias is None:
        bias = graphchallenge_bias(neurons)
    rng = np.random.default_rng(seed)
    order = np.arange(neurons)
    matrices = []
    for t in range(int(layers)):
        block, j = divmod(t, m)
        if j == 0 and block > 0:
            order = rng.permutation(neurons)
        matrices.append(_radix_layer(neurons, 2**j, order))
    return SparseNetwork.from_scipy(matrices, bias, cap)


def random_images(neurons: int, count: int, density: float, seed: int = 0) -> sp.csr_array:
    """Random binary input images.

    Args:
        neurons: features per image (the network's input neurons).
        count: images.
        density: fraction of ones, in ``[0, 1]`` (``round(density * count * neurons)`` of them,
            at distinct positions chosen uniformly).
        seed: seeds the positions.

    Returns:
        ``[count, neurons]`` float32 CSR of ones.
    """
    if int(neurons) != neurons or neurons < 1 or int(count) != count or count < 0:
        raise ValueError(f"random_images: neurons must be >= 1 and count >= 0, got {neurons=} {count=}")
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"random_images: density must be in [0, 1], got {density}")
    images = sp.random_array(
        (int(count), int(neurons)),
        density=density,
        format="csr",
        dtype=np.float32,
        rng=np.random.default_rng(seed),
        data_sampler=lambda size: np.ones(size, dtype=np.float32),
    )
    images.sort_indices()
    return images


_DIGITS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_assets", "mnist32_subset.npz")
MAX_SHIFT = 2
"""Largest translation (pixels of the 32 x 32 original) of the copies beyond the first 1,200."""


def _base_digits() -> np.ndarray:
    """The challenge's first 1,200 input images (MNIST digits at 32 x 32, binary): ``[1200, 32, 32]``
    bool. Packed from ``data/graphchallenge/sparse-images-1024_subset.mtx`` (see its SOURCES.md)."""
    with np.load(_DIGITS) as f:
        count, width = (int(v) for v in f["shape"])
        return np.unpackbits(f["bits"], axis=1, count=width).astype(bool).reshape(count, 32, 32)


def challenge_images(neurons: int, count: int, seed: int = 0) -> sp.csr_array:
    """Graph Challenge style inputs for a network of ``neurons`` inputs: MNIST digits, resized.

    The challenge made its inputs for ``N = 1024, 4096, 16384, 65536`` by resizing MNIST digits to
    ``sqrt(N) x sqrt(N)`` binary images, so that a small fraction survives its networks (3 % of the
    60,000 at ``N = 1024``). This does the same from the 1,200 real 32 x 32 images shipped with the
    package: image ``i`` is digit ``i mod 1200``, translated by up to :data:`MAX_SHIFT` pixels (drawn
    from ``seed``) for ``i >= 1200``, resized to ``s x s`` with ``s = floor(sqrt(N))`` (bilinear, then
    thresholded at 0.5) and zero-padded to ``N`` features when ``N`` is not a square. For
    ``N = 1024`` the first 1,200 images are the real ones, bit for bit.

    Args:
        neurons: features per image.
        count: images.
        seed: seeds the translations.

    Returns:
        ``[count, neurons]`` float32 CSR of ones.
    """
    if int(neurons) != neurons or neurons < 1 or int(count) != count or count < 0:
        raise ValueError(f"challenge_images: neurons must be >= 1 and count >= 0, got {neurons=} {count=}")
    digits = _base_digits().astype(np.float32)
    side = int(np.floor(np.sqrt(neurons)))
    if side != 32:
        digits = scipy.ndimage.zoom(digits, (1, side / 32, side / 32), order=1, grid_mode=True, mode="grid-constant")
    digits = digits > 0.5
    rng = np.random.default_rng(seed)
    shifts = rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, size=(int(count), 2)) * side // 32
    shifts[: digits.shape[0]] = 0
    rows = []
    for start in range(0, int(count), digits.shape[0]):
        block = digits[: min(int(count) - start, digits.shape[0])].copy()
        for j, (dy, dx) in enumerate(shifts[start : start + block.shape[0]]):
            if dy or dx:
                block[j] = np.roll(block[j], (dy, dx), axis=(0, 1))
        rows.append(sp.csr_array(block.reshape(block.shape[0], side * side)))
    images = sp.vstack(rows, format="csr") if rows else sp.csr_array((0, side * side))
    if side * side < neurons:
        images = sp.hstack([images, sp.csr_array((images.shape[0], neurons - side * side))], format="csr")
    images = sp.csr_array(images, dtype=np.float32)
    images.sort_indices()
    return images
