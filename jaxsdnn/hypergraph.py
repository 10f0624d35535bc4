"""The hypergraph model of a sparse DNN: what a partition of its neurons costs in communication.

One vertex per neuron of every layer, layer 0 (the input features) included. A layer-``k``
vertex (``k >= 1``) weighs its fan-in, the multiply-adds it costs; a layer-0 vertex weighs 1, the
cost of loading one input feature. One net per neuron ``i`` of layers ``0 .. L-1``: ``i`` itself
plus every neuron of the next layer that reads it. Under a partition of the vertices into
devices, net ``i`` spans ``lambda_i`` devices, and ``lambda_i - 1`` is the number of devices that
need a copy of neuron ``i``'s activation from its owner. Summed over nets, this connectivity
metric is the number of entries sent per input sample in one forward pass (and again, reversed,
in the backward pass).

References:
    Catalyurek and Aykanat, "Hypergraph-partitioning-based decomposition for parallel
    sparse-matrix vector multiplication", IEEE TPDS 1999 (the column-net model).
    Demirci and Ferhatosmanoglu, "Partitioning sparse deep neural networks for scalable
    training and inference", ICS 2021 (the model applied to sparse DNNs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from jaxsdnn.network import SparseNetwork

__all__ = [
    "Hypergraph",
    "LayerHypergraph",
    "build_hypergraph",
    "connectivity_volume",
    "contract",
    "layer_hypergraph",
    "layer_pairs",
    "layer_volume",
]

# Above this many (neuron, device) cells, distinct pairs are counted with np.unique, not a bitmap.
_BITMAP_LIMIT = 1 << 26


@dataclasses.dataclass(frozen=True, eq=False)
class Hypergraph:
    """The column-net hypergraph of a network, all layers at once (host-side NumPy).

    Vertex ``offsets[k] + i`` is neuron ``i`` of layer ``k``; net ``e`` (for ``e <
    num_nets``) is the net of vertex ``e``, i.e. of a neuron of layers ``0 .. L-1``.

    Attributes:
        offsets: ``[L + 2]`` int64, ``offsets[k]`` is the first vertex of layer ``k`` and
            ``offsets[L + 1]`` the number of vertices.
        vertex_weights: ``[num_vertices]`` int64; 1 for layer 0, the fan-in for layer ``k >= 1``.
        net_ptr: ``[num_nets + 1]`` int64, CSR row pointer of the nets.
        net_pins: ``[num_pins]`` int64 vertex ids; net ``e``'s pins are
            ``net_pins[net_ptr[e]:net_ptr[e + 1]]``, its source neuron first, then its readers
            in ascending order.
    """

    offsets: np.ndarray
    vertex_weights: np.ndarray
    net_ptr: np.ndarray
    net_pins: np.ndarray

    @property
    def num_layers(self) -> int:
        return int(self.offsets.size - 2)

    @property
    def num_vertices(self) -> int:
        return int(self.offsets[-1])

    @property
    def num_nets(self) -> int:
        return int(self.net_ptr.size - 1)

    @property
    def num_pins(self) -> int:
        return int(self.net_pins.size)

    def layer_of(self, vertices: np.ndarray) -> np.ndarray:
        """Layer of every vertex id, ``[n]`` int64."""
        return np.searchsorted(self.offsets, vertices, side="right") - 1


def build_hypergraph(network: SparseNetwork) -> Hypergraph:
    """Builds the column-net hypergraph of every layer of ``network``.

    Args:
        network: the network; only its structure is read.

    Returns:
        The :class:`Hypergraph`, with ``sum(sizes)`` vertices and ``sum(sizes[:-1])`` nets of
        ``sum(nnz) + sum(sizes[:-1])`` pins in all.
    """
    sizes = np.asarray(network.sizes, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    weights = [np.ones(sizes[0], dtype=np.int64)]
    weights += [network.fan_in(k) for k in range(1, network.num_layers + 1)]
    ptrs, pins = [np.zeros(1, dtype=np.int64)], []
    for k, w in enumerate(network.weights):
        n_in = w.shape[0]
        degree = np.diff(w.indptr).astype(np.int64) + 1  # readers plus the source itself
        ptr = np.cumsum(degree) + ptrs[-1][-1]
        layer_pins = np.empty(int(degree.sum()), dtype=np.int64)
        starts = ptr - degree - ptrs[-1][-1]
        layer_pins[starts] = offsets[k] + np.arange(n_in)
        reader = np.ones(layer_pins.size, dtype=bool)
        reader[starts] = False
        layer_pins[reader] = offsets[k + 1] + w.indices.astype(np.int64)
        ptrs.append(ptr)
        pins.append(layer_pins)
    return Hypergraph(
        offsets=offsets,
        vertex_weights=np.concatenate(weights),
        net_ptr=np.concatenate(ptrs),
        net_pins=np.concatenate(pins) if pins else np.zeros(0, dtype=np.int64),
    )


def _distinct_pairs(rows: np.ndarray, cols: np.ndarray, num_rows: int, num_cols: int) -> tuple:
    """Unique ``(row, col)`` pairs, sorted by row then col, as two int64 arrays."""
    if num_rows * num_cols <= _BITMAP_LIMIT:
        seen = np.zeros(num_rows * num_cols, dtype=bool)
        seen[rows * num_cols + cols] = True
        keys = np.flatnonzero(seen)
    else:
        keys = np.unique(rows * num_cols + cols)
    return keys // num_cols, keys % num_cols


def layer_pairs(network: SparseNetwork, parts: Sequence[np.ndarray], k: int, num_parts: int) -> tuple:
    """The ``(neuron of layer k-1, device that needs it)`` pairs before layer ``k`` is computed.

    Args:
        network: the network.
        parts: ``L + 1`` arrays, ``parts[k]`` of shape ``[n_k]`` holding device ids in
            ``[0, num_parts)``.
        k: the layer (1-based).
        num_parts: the number of devices.

    Returns:
        ``(neuron, device)``: two int64 arrays of the same length, one entry per distinct pair,
        the owner's own pair included (sorted by neuron, then device).
    """
    w = network.weights[k - 1]
    n_in = w.shape[0]
    src = np.repeat(np.arange(n_in, dtype=np.int64), np.diff(w.indptr))
    rows = np.concatenate([src, np.arange(n_in, dtype=np.int64)])
    cols = np.concatenate([np.asarray(parts[k], np.int64)[w.indices], np.asarray(parts[k - 1], np.int64)])
    return _distinct_pairs(rows, cols, n_in, num_parts)


def layer_volume(network: SparseNetwork, parts: Sequence[np.ndarray], k: int, num_parts: int) -> int:
    """Entries of layer ``k - 1`` sent to other devices before layer ``k`` is computed."""
    neuron, _ = layer_pairs(network, parts, k, num_parts)
    return int(neuron.size - network.sizes[k - 1])


def connectivity_volume(network: SparseNetwork, parts: Sequence[np.ndarray]) -> tuple[int, np.ndarray]:
    """The connectivity-minus-one volume of a partition of every layer.

    Args:
        network: the network.
        parts: ``L + 1`` integer arrays, ``parts[k]`` of shape ``[n_k]`` giving the device (a
            non-negative id) of every neuron of layer ``k``, layer 0 included; or a
            :class:`~jaxsdnn.partition.Partition`.

    Returns:
        ``(total, per_layer)``: ``per_layer`` is ``[L]`` int64, ``per_layer[k-1]`` the number of
        (neuron of layer ``k-1``, other device reading it) pairs, i.e. the entries sent per
        input sample before computing layer ``k``; ``total`` its sum (a Python int).

    Raises:
        ValueError: if ``parts`` does not have one array of the right size per layer, or holds a
            negative id.
    """
    sizes = network.sizes
    parts = getattr(parts, "parts", parts)
    if len(parts) != len(sizes):
        raise ValueError(
            f"got {len(parts)} part arrays, expected {len(sizes)} (layer0..layer{len(sizes) - 1}, inputs included)"
        )
    arrays = []
    for k, (p, n) in enumerate(zip(parts, sizes)):
        p = np.asarray(p)
        if p.shape != (n,):
            raise ValueError(f"layer {k}: parts shape {p.shape} does not match n_{k}={n}")
        if not np.issubdtype(p.dtype, np.integer):
            raise ValueError(f"layer {k}: parts dtype {p.dtype} is not an integer type")
        if p.size and p.min() < 0:
            raise ValueError(f"layer {k}: negative device id {int(p.min())} at neuron {int(np.argmin(p))}")
        arrays.append(p.astype(np.int64))
    num_parts = int(max(int(p.max()) for p in arrays if p.size) + 1)
    per_layer = np.array(
        [layer_volume(network, arrays, k, num_parts) for k in range(1, network.num_layers + 1)], dtype=np.int64
    )
    return int(per_layer.sum()), per_layer


@dataclasses.dataclass(frozen=True, eq=False)
class LayerHypergraph:
    """The hypergraph of one layer with its neighbouring layers fixed (host-side NumPy).

    Vertices ``0 .. n_k - 1`` are the neurons of layer ``k`` (free); vertex ``n_k + q`` is the
    anchor of device ``q``, standing for every fixed neuron of layers ``k - 1`` and ``k + 1``
    on ``q``. Replacing fixed pins by their device's anchor keeps every net's connectivity.
    Identical nets are merged into one net whose weight counts them.

    Attributes:
        num_free: ``n_k``.
        num_parts: ``P``, the number of anchors.
        net_ptr: ``[num_nets + 1]`` int64 CSR row pointer.
        net_pins: ``[num_pins]`` int64 vertex ids in ``[0, n_k + P)``; no net has fewer than 2 pins.
        net_weights: ``[num_nets]`` int64, how many nets of the network each net stands for.
    """

    num_free: int
    num_parts: int
    net_ptr: np.ndarray
    net_pins: np.ndarray
    net_weights: np.ndarray

    @property
    def num_nets(self) -> int:
        return int(self.net_ptr.size - 1)

    def pin_nets(self) -> np.ndarray:
        """The net of every pin, ``[num_pins]`` int64."""
        return np.repeat(np.arange(self.num_nets, dtype=np.int64), np.diff(self.net_ptr))

    def _counts(self, parts: np.ndarray) -> np.ndarray:
        """``[num_nets, P]`` pins of each net on each device (anchors on their own devices)."""
        P = self.num_parts
        every = np.concatenate([np.asarray(parts, np.int64), np.arange(P, dtype=np.int64)])
        keys = self.pin_nets() * P + every[self.net_pins]
        return np.bincount(keys, minlength=self.num_nets * P).reshape(self.num_nets, P)

    def volume(self, parts: np.ndarray) -> int:
        """Connectivity-minus-one volume for ``parts`` (``[num_free]`` devices of the free vertices)."""
        spans = np.count_nonzero(self._counts(parts), axis=1)
        return int(((spans - 1) * self.net_weights).sum())

    def move_gains(self, parts: np.ndarray) -> np.ndarray:
        """``[num_free, P]`` float64: the volume decrease if free vertex ``v`` alone moved to ``q``.

        The entry of ``v``'s own device is 0. Moves of vertices that share no net add up exactly.
        """
        n = self.num_free
        parts = np.asarray(parts, np.int64)
        counts = self._counts(parts)
        nets = self.pin_nets()
        free = self.net_pins < n
        v, e = self.net_pins[free], nets[free]
        w = self.net_weights[e].astype(np.float64)
        leave = np.bincount(v, weights=w * (counts[e, parts[v]] == 1), minlength=n)
        incidence = sp.csr_array((w, (v, e)), shape=(n, self.num_nets))
        gains = leave[:, None] - incidence @ (counts == 0).astype(np.float64)
        gains[np.arange(n), parts] = 0.0
        return gains


def _merge_identical(ptr: np.ndarray, pins: np.ndarray, extra: np.ndarray, seed: int = 0x5EED) -> tuple:
    """Merges rows of a CSR pin list that have the same pins and the same ``extra`` key.

    Rows are compared by two independent 64-bit sum hashes of their pins (a collision can only
    merge two nets, costing partition quality, never correctness of a volume computed later).

    Returns:
        ``(first, counts)``: the index of one representative row per class and the class sizes.
    """
    rng = np.random.default_rng(seed)
    num_rows = ptr.size - 1
    top = int(pins.max()) + 1 if pins.size else 1
    keys = []
    for _ in range(2):
        h = rng.integers(0, 1 << 62, size=top, dtype=np.int64)
        keys.append(_sum_by_row(ptr, h[pins]))
    order = np.lexsort((extra, keys[1], keys[0]))
    k0, k1, ex = keys[0][order], keys[1][order], extra[order]
    new = np.ones(num_rows, dtype=bool)
    new[1:] = (k0[1:] != k0[:-1]) | (k1[1:] != k1[:-1]) | (ex[1:] != ex[:-1])
    starts = np.flatnonzero(new)
    counts = np.diff(np.append(starts, num_rows))
    return order[starts], counts


def _sum_by_row(ptr: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Wrapping int64 sum of the CSR rows of ``values`` (exact, unlike a float bincount)."""
    out = np.zeros(ptr.size - 1, dtype=np.int64)
    nonempty = np.flatnonzero(np.diff(ptr) > 0)
    if nonempty.size:
        with np.errstate(over="ignore"):
            out[nonempty] = np.add.reduceat(values, ptr[nonempty])
    return out


def _gather_rows(ptr: np.ndarray, pins: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The CSR sub-list of ``rows``: ``(new_ptr, new_pins)``."""
    lengths = ptr[rows + 1] - ptr[rows]
    new_ptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    offsets = np.repeat(ptr[rows] - new_ptr[:-1], lengths)
    return new_ptr, pins[np.arange(new_ptr[-1], dtype=np.int64) + offsets]


def _append_anchor(ptr: np.ndarray, pins: np.ndarray, anchor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Appends ``anchor[r]`` to every row ``r`` of a CSR pin list."""
    lengths = np.diff(ptr) + 1
    new_ptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    new_pins = np.empty(int(new_ptr[-1]), dtype=np.int64)
    last = new_ptr[1:] - 1
    keep = np.ones(new_pins.size, dtype=bool)
    keep[last] = False
    new_pins[keep] = pins
    new_pins[last] = anchor
    return new_ptr, new_pins


def layer_hypergraph(
    network: SparseNetwork, parts: Sequence[np.ndarray | None], k: int, num_parts: int
) -> LayerHypergraph:
    """The nets that a re-partition of layer ``k`` changes, with layers ``k - 1``, ``k + 1`` fixed.

    * the nets of layer ``k - 1`` (``k >= 1``): the readers of neuron ``i`` in layer ``k`` plus
      the anchor of ``i``'s device (no anchor while ``parts[k - 1]`` is ``None``: the net then
      only asks that the readers of one neuron stay together);
    * the nets of layer ``k`` (``k < L`` and ``parts[k + 1]`` known): neuron ``j`` plus the
      anchors of the devices of its readers.

    Args:
        network: the network.
        parts: ``L + 1`` entries, ``parts[l]`` an ``[n_l]`` int array of device ids, or ``None``
            for a layer not partitioned yet; ``parts[k]`` itself is not read.
        k: the free layer, ``0 <= k <= L``.
        num_parts: ``P``.

    Returns:
        The :class:`LayerHypergraph`; its connectivity-minus-one volume under a partition of
        layer ``k`` equals ``layer_volume(k) + layer_volume(k + 1)`` for the known neighbours.
    """
    n = network.sizes[k]
    ptrs, pins, weights = [], [], []
    if k >= 1:
        w = network.weights[k - 1]
        ptr, pin = w.indptr.astype(np.int64), w.indices.astype(np.int64)
        left = parts[k - 1]
        anchor = np.full(w.shape[0], -1, dtype=np.int64) if left is None else n + np.asarray(left, np.int64)
        first, counts = _merge_identical(ptr, pin, anchor)
        ptr, pin = _gather_rows(ptr, pin, first)
        if left is not None:
            ptr, pin = _append_anchor(ptr, pin, anchor[first])
        ptrs.append(ptr), pins.append(pin), weights.append(counts.astype(np.int64))
    if k < network.num_layers and parts[k + 1] is not None:
        w = network.weights[k]
        src = np.repeat(np.arange(n, dtype=np.int64), np.diff(w.indptr))
        neuron, device = _distinct_pairs(src, np.asarray(parts[k + 1], np.int64)[w.indices], n, num_parts)
        ptr = np.concatenate([[0], np.cumsum(np.bincount(neuron, minlength=n))]).astype(np.int64)
        ptr, pin = _append_anchor(ptr, n + device, np.arange(n, dtype=np.int64))
        ptrs.append(ptr), pins.append(pin), weights.append(np.ones(n, dtype=np.int64))
    net_ptr, net_pins, net_weights = [np.zeros(1, np.int64)], [], []
    offset = 0  # pins so far (a layer without edges adds no net: net_ptr[-1] may be empty)
    for ptr, pin, wt in zip(ptrs, pins, weights):
        keep = np.flatnonzero(np.diff(ptr) >= 2)
        ptr, pin = _gather_rows(ptr, pin, keep)
        net_ptr.append(ptr[1:] + offset), net_pins.append(pin), net_weights.append(wt[keep])
        offset += int(pin.size)
    return LayerHypergraph(
        num_free=int(n),
        num_parts=int(num_parts),
        net_ptr=np.concatenate(net_ptr),
        net_pins=np.concatenate(net_pins) if net_pins else np.zeros(0, np.int64),
        net_weights=np.concatenate(net_weights) if net_weights else np.zeros(0, np.int64),
    )


def contract(h: LayerHypergraph, groups: np.ndarray) -> LayerHypergraph:
    """The hypergraph with free vertex ``v`` replaced by vertex ``groups[v]`` (anchors kept).

    Every net keeps its set of blocks: for a partition ``pc`` of the contracted vertices,
    ``contract(h, groups).volume(pc) == h.volume(pc[groups])`` (the volume identity). Pins that
    fall together are kept once, nets left with one pin are dropped (they can never cross) and
    identical nets are merged with their weights summed, so the tool sees a much smaller problem
    where many neurons share their inputs (16 per class in the Graph Challenge layers).

    Args:
        h: a layer hypergraph.
        groups: ``[h.num_free]`` int64 ids ``0 .. m - 1``, every id used.
    """
    groups = np.asarray(groups, np.int64)
    P = h.num_parts
    m = int(groups.max()) + 1 if groups.size else 0
    relabel = np.concatenate([groups, m + np.arange(P, dtype=np.int64)])
    nets = h.pin_nets()
    pins = relabel[h.net_pins]
    top = m + P
    keys = np.unique(nets * top + pins)  # distinct (net, pin), sorted by net then pin
    nets, pins = keys // top, keys % top
    sizes = np.bincount(nets, minlength=h.num_nets)
    ptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    keep = np.flatnonzero(sizes >= 2)
    ptr, pins = _gather_rows(ptr, pins, keep)
    weights = h.net_weights[keep]
    if keep.size:  # merge identical nets (two independent 64-bit sum hashes, as _merge_identical)
        rng = np.random.default_rng(0x5EED)
        hashes = np.stack([_sum_by_row(ptr, rng.integers(0, 1 << 62, size=top, dtype=np.int64)[pins])
                           for _ in range(2)], axis=1)
        _, first, cls = np.unique(hashes, axis=0, return_index=True, return_inverse=True)
        weights = np.bincount(cls.reshape(-1), weights=weights, minlength=first.size).astype(np.int64)
        ptr, pins = _gather_rows(ptr, pins, first)
    return LayerHypergraph(num_free=m, num_parts=P, net_ptr=ptr, net_pins=pins, net_weights=weights)
