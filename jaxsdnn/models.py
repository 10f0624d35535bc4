"""Sparse networks to train (host side): topologies, pruning masks and fan-in scaled initialisation.

Every model maps ``features`` inputs (``n_0``, one per pixel) through sparse hidden layers with a
plain ReLU (``cap=None``) to a ``num_classes`` output layer whose pre-activations are the logits
(see :func:`jaxsdnn.sharded.sharded_loss_and_grads`). Layers follow the Y.W convention of
:mod:`jaxsdnn.network`: layer ``k`` is ``[n_{k-1}, n_k]``, row = input neuron, column = output.

Initialisation (:func:`init_values`) is He-style per neuron: the incoming weights of output neuron
``j`` are ``N(0, gain / fan_in_j)`` with its *actual* fan-in (the stored edges of column ``j``), so
a sparse layer keeps the activation variance of a dense one; ``gain = 2`` for ReLU layers and
``1`` for the linear logits layer. Biases start at 0.

References:
    He et al., "Delving deep into rectifiers", ICCV 2015. Kepner & Robinett, "RadiX-Net:
    Structured sparse matrices for deep neural networks", IPDPSW 2019. Han et al., "Learning both
    weights and connections for efficient neural networks", NeurIPS 2015 (magnitude pruning).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from jaxsdnn.network import SparseNetwork

__all__ = [
    "build_model",
    "from_masks",
    "graphchallenge_mlp",
    "init_values",
    "layer_density",
    "magnitude_prune",
    "radix_mask",
    "radixnet_mlp",
    "random_fanin",
    "random_fanin_mask",
]

MODEL_KINDS = ("radixnet", "random_fanin", "graphchallenge")


# ----------------------------------------------------------------------------------------------
# masks (structure only, values 1)
# ----------------------------------------------------------------------------------------------
def random_fanin_mask(n_in: int, n_out: int, fan_in: int, rng: np.random.Generator) -> sp.csr_array:
    """``[n_in, n_out]`` pattern where every output neuron reads ``min(fan_in, n_in)`` distinct inputs
    drawn uniformly (fan-in ``0`` or ``>= n_in``: dense)."""
    k = n_in if fan_in <= 0 or fan_in >= n_in else int(fan_in)
    if k == n_in:
        rows = np.tile(np.arange(n_in), n_out)
    else:
        rows = np.argsort(rng.random((n_out, n_in)), axis=1)[:, :k].reshape(-1)
    cols = np.repeat(np.arange(n_out), k)
    return sp.csr_array((np.ones(rows.size, np.float32), (rows, cols)), shape=(n_in, n_out))


def radix_mask(width: int, copies: int, shift: int, residues: np.ndarray | None = None) -> sp.csr_array:
    """One RadiX-Net layer ``kron(ones(c, c), I_n + S_shift)[residues]`` as a ``[width, width]`` pattern.

    With ``n = width / copies`` and ``S_s[p, q] = 1`` iff ``p = q + s (mod n)``, input ``i`` feeds the
    ``2 c`` outputs ``a n + q``, ``q in {r_i mod n, (r_i - shift) mod n}``, ``a = 0..c-1``: fan-in
    and fan-out ``2 c``, density ``2 / n``. ``copies = 16`` gives :func:`jaxsdnn.radixnet.radixnet`'s layers.

    Args:
        width: ``N``, a multiple of ``copies``.
        copies: ``c``.
        shift: ``2^(j-1)`` for layer ``j`` of a block.
        residues: ``[N]`` ints (``arange(N)`` by default, a permutation for a permuted block).
    """
    n = width // copies
    p = (np.arange(width) if residues is None else np.asarray(residues, dtype=np.int64)) % n
    q = np.stack([p, (p - shift) % n], axis=1)  # [N, 2] the two residues of row p of I_n + S_shift
    cols = (np.arange(copies)[None, :, None] * n + q[:, None, :]).reshape(width, -1)
    rows = np.repeat(np.arange(width), cols.shape[1])
    m = sp.coo_array((np.ones(rows.size, np.float32), (rows, cols.reshape(-1))), shape=(width, width)).tocsr()
    m.sum_duplicates()
    m.data[:] = 1.0  # shift = 0 (mod n) would repeat entries; keep a pattern of ones
    return m


def _radix_masks(width: int, layers: int, copies: int, rng: np.random.Generator) -> list[sp.csr_array]:
    if width % copies or width // copies < 2 or (width // copies) & (width // copies - 1):
        raise ValueError(
            f"radixnet: width={width} must be copies * 2^m with m >= 1 (copies={copies}), e.g. {copies * 32}"
        )
    m = (width // copies).bit_length() - 1  # layers per block: shifts 1, 2, ..., n/2
    order, out = np.arange(width), []
    for t in range(layers):
        block, j = divmod(t, m)
        if j == 0 and block > 0:
            order = rng.permutation(width)
        out.append(radix_mask(width, copies, 2**j, order))
    return out


def layer_density(network: SparseNetwork) -> list[float]:
    """Stored edges over ``n_{k-1} n_k`` for every layer."""
    return [w.nnz / (w.shape[0] * w.shape[1]) for w in network.weights]


# ----------------------------------------------------------------------------------------------
# values
# ----------------------------------------------------------------------------------------------
def init_values(masks: Sequence, seed: int = 0, linear_last: bool = True) -> SparseNetwork:
    """A network with the patterns of ``masks`` and He-style values scaled by each neuron's fan-in.

    Args:
        masks: ``L`` scipy sparse ``[n_{k-1}, n_k]``; only the positions of stored entries count.
        seed: seeds the normal draws (layer by layer, in CSR order).
        linear_last: the last layer feeds a softmax (gain 1) rather than a ReLU (gain 2).

    Returns:
        ``SparseNetwork`` with ``cap=None`` and zero biases.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x1417]))
    mats = []
    L = len(masks)
    for k, m in enumerate(masks):
        w = sp.csr_array(m, dtype=np.float32)
        w.sum_duplicates()
        w.sort_indices()
        fan_in = np.bincount(w.indices, minlength=w.shape[1])
        gain = 1.0 if (linear_last and k == L - 1) else 2.0
        std = np.sqrt(gain / np.maximum(fan_in, 1))[w.indices]
        w.data = (rng.standard_normal(w.nnz) * std).astype(np.float32)
        mats.append(w)
    return SparseNetwork.from_scipy(mats, 0.0, None)


def from_masks(masks, seed: int = 0, keep_values: bool = False, biases=None) -> SparseNetwork:
    """A trainable network from user-supplied layer patterns (e.g. :func:`magnitude_prune` output).

    Args:
        masks: ``L`` scipy sparse ``[n_{k-1}, n_k]`` that chain; ``masks[0]`` has ``features`` rows
            and ``masks[-1]`` ``num_classes`` columns. A :class:`SparseNetwork` gives its layers,
            and its biases unless ``biases`` is given.
        seed: seeds :func:`init_values`.
        keep_values: start from the masks' stored values (e.g. the surviving pruned weights)
            instead of a fresh He initialisation.
        biases: per layer a ``[n_k]`` array or a scalar (as :meth:`SparseNetwork.from_scipy`), or
            one scalar for all; ``None``: a network's own biases, else 0.
    """
    if isinstance(masks, SparseNetwork):
        biases = masks.biases if biases is None else biases
        masks = masks.weights
    biases = 0.0 if biases is None else biases
    if len(masks) == 0:
        raise ValueError("from_masks: need at least one layer")
    for k, m in enumerate(masks):
        if not sp.issparse(m):
            raise ValueError(f"from_masks: layer {k + 1} is a {type(m).__name__}, expected a scipy.sparse matrix")
        if k and m.shape[0] != masks[k - 1].shape[1]:
            raise ValueError(
                f"from_masks: layer {k + 1} has {m.shape[0]} inputs but layer {k} has {masks[k - 1].shape[1]} outputs"
            )
    if keep_values:
        return SparseNetwork.from_scipy([sp.csr_array(m, dtype=np.float32) for m in masks], biases, None)
    fresh = init_values(masks, seed)
    return SparseNetwork.from_scipy(fresh.weights, biases, None)


def magnitude_prune(dense_weights: Sequence[np.ndarray], density: float, keep_per_output: int = 1) -> list[sp.csr_array]:
    """Keeps the largest-magnitude weights of each dense layer.

    Args:
        dense_weights: ``L`` dense ``[n_{k-1}, n_k]`` arrays (Y.W convention).
        density: share of each layer's entries kept, in ``(0, 1]`` (``round(density * size)``, at least 1).
        keep_per_output: also keep the ``keep_per_output`` largest incoming weights of every output
            neuron, so none is cut off (the kept count may then exceed ``density`` slightly).

    Returns:
        ``L`` CSR arrays holding the surviving weights (usable as masks or, with
        ``from_masks(..., keep_values=True)``, as starting values).
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"magnitude_prune: density must be in (0, 1], got {density}")
    out = []
    for k, w in enumerate(dense_weights):
        w = np.asarray(w, dtype=np.float32)
        if w.ndim != 2:
            raise ValueError(f"magnitude_prune: layer {k + 1} has shape {w.shape}, expected [n_in, n_out]")
        keep = np.zeros(w.shape, dtype=bool)
        count = max(1, int(round(density * w.size)))
        flat = np.argsort(-np.abs(w), axis=None, kind="stable")[:count]
        keep.flat[flat] = True
        if keep_per_output > 0:
            top = np.argsort(-np.abs(w), axis=0, kind="stable")[: min(keep_per_output, w.shape[0])]
            keep[top, np.arange(w.shape[1])[None, :]] = True
        rows, cols = np.nonzero(keep)
        out.append(sp.csr_array((w[rows, cols], (rows, cols)), shape=w.shape))
    return out


# ----------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------
def radixnet_mlp(features: int, num_classes: int, width: int = 256, hidden_layers: int = 5, copies: int = 8,
                 input_fan_in: int = 16, head_fan_in: int = 0, seed: int = 0) -> SparseNetwork:
    """Input layer, RadiX-Net hidden layers, classifier head.

    Layers: ``features -> width`` (random fan-in ``input_fan_in``), then ``hidden_layers`` RadiX-Net
    layers ``width -> width`` (fan-in ``2 * copies``, density ``2 * copies / width``; blocks of
    ``log2(width / copies)`` layers mix every input into every output, later blocks are randomly
    permuted), then ``width -> num_classes`` (random fan-in ``head_fan_in``, 0 = dense).

    Args:
        features: ``n_0``.
        num_classes: ``n_L``.
        width: ``copies * 2^m``, ``m >= 1``.
        hidden_layers: RadiX-Net layers (``>= 0``).
        copies: RadiX-Net's ``c`` (16 in the Graph Challenge).
        input_fan_in: inputs read by each first-layer neuron (0: dense).
        head_fan_in: hidden neurons read by each class (0: dense).
        seed: seeds the random layers, block permutations and values.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x4AD1]))
    masks = [random_fanin_mask(features, width, input_fan_in, rng)]
    masks += _radix_masks(width, hidden_layers, copies, rng)
    masks.append(random_fanin_mask(width, num_classes, head_fan_in, rng))
    return init_values(masks, seed)


def random_fanin(features: int, num_classes: int, width: int = 256, hidden_layers: int = 5, fan_in: int = 16,
                 input_fan_in: int = 16, head_fan_in: int = 0, seed: int = 0) -> SparseNetwork:
    """Random sparse layers with a fixed fan-in: ``features -> width -> ... -> width -> num_classes``.

    Args:
        features: ``n_0``.
        num_classes: ``n_L``.
        width: hidden neurons per layer.
        hidden_layers: ``width -> width`` layers after the input layer (``>= 0``).
        fan_in: incoming edges of every hidden-layer neuron (density ``fan_in / width``).
        input_fan_in: inputs read by each first-layer neuron (0: dense).
        head_fan_in: hidden neurons read by each class (0: dense).
        seed: seeds the patterns and the values.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xFA41]))
    masks = [random_fanin_mask(features, width, input_fan_in, rng)]
    masks += [random_fanin_mask(width, width, fan_in, rng) for _ in range(hidden_layers)]
    masks.append(random_fanin_mask(width, num_classes, head_fan_in, rng))
    return init_values(masks, seed)


def graphchallenge_mlp(path: str | os.PathLike, layers: int, num_classes: int, head_fan_in: int = 0,
                       init: str = "he", seed: int = 0) -> SparseNetwork:
    """The first ``layers`` Graph Challenge layers (``N x N``, input ``N`` features) plus a class head.

    Args:
        path: a Graph Challenge network directory (``n{N}-l{k}.tsv[.gz]``).
        layers: challenge layers to read.
        num_classes: outputs of the added ``N -> num_classes`` head (random fan-in ``head_fan_in``).
        init: ``"he"`` re-initialises every value (fan-in scaled, biases 0); ``"keep"`` keeps the
            challenge's weights (1/16) and biases for the challenge layers. Either way ``cap=None``.
        seed: seeds the head pattern and the values.
    """
    from jaxsdnn.io import read_network

    if init not in ("he", "keep"):
        raise ValueError(f"graphchallenge_mlp: init must be 'he' or 'keep', got {init!r}")
    net = read_network(path, num_layers=layers, cap=None)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x6C]))
    head = random_fanin_mask(net.sizes[-1], num_classes, head_fan_in, rng)
    fresh = init_values(list(net.weights) + [head], seed)
    if init == "he":
        return fresh
    return SparseNetwork(net.weights + fresh.weights[-1:], net.biases + fresh.biases[-1:], None)


def build_model(cfg, features: int, num_classes: int, base_dir: str | os.PathLike | None = None) -> SparseNetwork:
    """The network a :class:`jaxsdnn.config.NetworkConfig` describes.

    Args:
        cfg: the ``network`` section (``kind`` in ``radixnet``, ``random_fanin``, ``graphchallenge``).
        features: ``n_0`` of the data.
        num_classes: ``n_L``.
        base_dir: relative ``cfg.path`` is looked up here when it does not exist under the cwd.
    """
    if cfg.kind == "radixnet":
        return radixnet_mlp(features, num_classes, cfg.width, cfg.hidden_layers, cfg.copies, cfg.input_fan_in,
                            cfg.head_fan_in, cfg.seed)
    if cfg.kind == "random_fanin":
        return random_fanin(features, num_classes, cfg.width, cfg.hidden_layers, cfg.fan_in, cfg.input_fan_in,
                            cfg.head_fan_in, cfg.seed)
    if cfg.kind == "graphchallenge":
        if not cfg.path:
            raise ValueError("network.path: a Graph Challenge network directory is needed for kind 'graphchallenge'")
        path = cfg.path
        if not os.path.isabs(path) and not os.path.exists(path) and base_dir is not None:
            path = os.path.join(base_dir, path)
        net = graphchallenge_mlp(path, cfg.layers, num_classes, cfg.head_fan_in, cfg.init, cfg.seed)
        if net.sizes[0] != features:
            raise ValueError(
                f"network.path: {cfg.path} has {net.sizes[0]} input neurons but the data has {features} "
                f"features; set data.image_side so that side^2 = {net.sizes[0]}"
            )
        return net
    raise ValueError(f"network.kind: unknown model {cfg.kind!r}, expected one of {MODEL_KINDS}")
