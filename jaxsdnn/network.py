"""What a sparse DNN is: a chain of sparse layers, biases and a capped ReLU.

Convention (Y.W, as in the Sparse DNN Graph Challenge): layer ``k`` (1-based) is an
``n_{k-1} x n_k`` sparse matrix ``W_k``; its entry ``(i, j)`` is the edge from input neuron ``i``
(of layer ``k-1``) to output neuron ``j`` (of layer ``k``). With a batch of inputs ``Y_0`` of shape
``[batch, n_0]``::

    Y_k = min(max(Y_{k-1} @ W_k + b_k, 0), cap)

``cap=None`` means a plain ReLU. Layer 0 is the input features, not a weight matrix.

References:
    Kepner et al., "Sparse Deep Neural Network Graph Challenge", IEEE HPEC 2019.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

__all__ = ["SparseNetwork"]


def _as_csr(matrix, k: int) -> sp.csr_array:
    if not sp.issparse(matrix):
        raise ValueError(f"layer {k}: expected a scipy.sparse matrix, got {type(matrix).__name__}")
    coo = sp.coo_array(matrix)  # keeps duplicates, which CSR conversion would silently sum
    key = coo.row.astype(np.int64) * coo.shape[1] + coo.col
    order = np.argsort(key, kind="stable")
    dup = np.flatnonzero(np.diff(key[order]) == 0)
    if dup.size:
        i = order[dup[0]]
        raise ValueError(
            f"layer {k}: duplicate edge ({coo.row[i] + 1}, {coo.col[i] + 1}) (1-based); "
            "each edge must appear once"
        )
    csr = sp.csr_array(
        (coo.data.astype(np.float32)[order], (coo.row[order], coo.col[order])), shape=coo.shape
    )
    return csr


def _as_bias(bias, n_out: int, k: int) -> np.ndarray:
    b = np.asarray(bias, dtype=np.float32)
    if b.ndim == 0:
        b = np.full(n_out, b, dtype=np.float32)
    if b.shape != (n_out,):
        raise ValueError(f"layer {k}: bias shape {b.shape} does not match n_out={n_out} (or a scalar)")
    if not np.all(np.isfinite(b)):
        bad = int(np.flatnonzero(~np.isfinite(b))[0])
        raise ValueError(f"layer {k}: bias of neuron {bad + 1} (1-based) is {b[bad]}, expected a finite value")
    return b


def _identical_rows(csr) -> np.ndarray:
    """``[rows]`` int64 ids, equal exactly when two rows of ``csr`` hold the same column set
    (empty rows share one id). O(nnz) memory: one table per row length."""
    csr = sp.csr_array(csr)
    csr.sort_indices()
    length = np.diff(csr.indptr)
    ids = np.empty(csr.shape[0], dtype=np.int64)
    offset = 0
    for f in np.unique(length):
        rows = np.flatnonzero(length == f)
        if f == 0:
            local = np.zeros(rows.size, dtype=np.int64)
        else:
            table = csr.indices[(csr.indptr[rows][:, None] + np.arange(f)).ravel()].reshape(rows.size, f)
            local = np.unique(table, axis=0, return_inverse=True)[1].reshape(-1)
        ids[rows] = offset + local
        offset += int(local.max()) + 1
    return ids


@dataclasses.dataclass(frozen=True, eq=False)
class SparseNetwork:
    """A validated sparse DNN (host side: NumPy / scipy only).

    Attributes:
        weights: ``L`` CSR arrays, ``weights[k-1]`` has shape ``[n_{k-1}, n_k]``, float32, sorted
            indices, no duplicate edges. Stored zeros are kept: they are edges (trainable).
        biases: ``L`` float32 arrays, ``biases[k-1]`` has shape ``[n_k]``.
        cap: upper clip of the ReLU (32 in the Graph Challenge), or ``None`` for a plain ReLU.
    """

    weights: tuple[sp.csr_array, ...]
    biases: tuple[np.ndarray, ...]
    cap: float | None = None

    def __post_init__(self):
        if len(self.weights) == 0:
            raise ValueError("a network needs at least one layer")
        if len(self.biases) != len(self.weights):
            raise ValueError(f"{len(self.weights)} layers but {len(self.biases)} biases")
        weights = tuple(_as_csr(w, k + 1) for k, w in enumerate(self.weights))
        for k in range(1, len(weights)):
            if weights[k].shape[0] != weights[k - 1].shape[1]:
                raise ValueError(
                    f"layer {k + 1}: has {weights[k].shape[0]} input neurons but layer {k} has "
                    f"{weights[k - 1].shape[1]} output neurons; layer sizes must chain"
                )
        for k, w in enumerate(weights):
            if not np.all(np.isfinite(w.data)):
                bad = int(np.flatnonzero(~np.isfinite(w.data))[0])
                row = int(np.searchsorted(w.indptr, bad, side="right") - 1)
                raise ValueError(
                    f"layer {k + 1}: weight of edge ({row + 1}, {w.indices[bad] + 1}) (1-based) is "
                    f"{w.data[bad]}, expected a finite value"
                )
        biases = tuple(_as_bias(b, w.shape[1], k + 1) for k, (b, w) in enumerate(zip(self.biases, weights)))
        if self.cap is not None and not (np.isfinite(self.cap) and self.cap > 0):
            raise ValueError(f"cap must be a positive finite number or None, got {self.cap}")
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "biases", biases)
        object.__setattr__(self, "cap", None if self.cap is None else float(self.cap))

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_scipy(
        cls, matrices: Sequence, bias: float | Sequence = 0.0, cap: float | None = None
    ) -> SparseNetwork:
        """Builds a network from scipy.sparse matrices (each ``[n_{k-1}, n_k]``).

        Args:
            matrices: one sparse matrix per layer.
            bias: a scalar for every neuron of every layer, or one scalar / ``[n_k]`` array per layer.
            cap: ReLU cap, ``None`` for a plain ReLU.
        """
        if isinstance(bias, (int, float, np.number)) or (isinstance(bias, np.ndarray) and bias.ndim == 0):
            biases = [bias] * len(matrices)
        else:
            biases = list(bias)
        return cls(tuple(matrices), tuple(biases), cap)

    @classmethod
    def from_bcoo(cls, matrices: Sequence, bias: float | Sequence = 0.0, cap: float | None = None) -> SparseNetwork:
        """Builds a network from ``jax.experimental.sparse.BCOO`` matrices (e.g. pruned in JAX).

        Each matrix is a 2-D BCOO ``[n_{k-1}, n_k]`` without batch or dense dimensions; entries
        whose indices are out of range are padding (as BCOO itself pads) and are dropped; stored
        zeros are kept as edges; duplicate indices are an error (sum them first with
        ``bcoo_sum_duplicates`` if that is what they mean). ``bias`` and ``cap`` as
        :meth:`from_scipy`.
        """
        out = []
        for k, m in enumerate(matrices):
            if not (hasattr(m, "indices") and hasattr(m, "n_batch")) or m.ndim != 2 or m.n_batch or m.n_dense:
                raise ValueError(f"layer {k + 1}: expected a 2-D BCOO without batch or dense dimensions, got "
                                 f"{type(m).__name__} of shape {getattr(m, 'shape', None)}")
            idx, data = np.asarray(m.indices), np.asarray(m.data, dtype=np.float32)
            keep = (idx[:, 0] < m.shape[0]) & (idx[:, 1] < m.shape[1])
            out.append(sp.coo_array((data[keep], (idx[keep, 0], idx[keep, 1])), shape=m.shape))
        return cls.from_scipy(out, bias, cap)

    def to_bcoo(self) -> list:
        """The layers as ``jax.experimental.sparse.BCOO`` ``[n_{k-1}, n_k]`` (sorted, unique indices)."""
        from jax.experimental import sparse

        out = []
        for w in self.weights:
            coo = w.tocoo()  # CSR order: sorted by row, then column
            indices = np.stack([coo.row, coo.col], axis=1).astype(np.int32)
            out.append(sparse.BCOO((coo.data, indices), shape=w.shape, indices_sorted=True, unique_indices=True))
        return out

    def to_scipy(self) -> list[sp.csr_array]:
        """The layers as (copies of) scipy CSR arrays ``[n_{k-1}, n_k]``."""
        return [w.copy() for w in self.weights]

    def with_values(self, weights_data: Sequence[np.ndarray], biases: Sequence[np.ndarray]) -> SparseNetwork:
        """Same structure, new stored values (``weights_data[k]`` in this network's CSR order)."""
        new = []
        for k, (w, d) in enumerate(zip(self.weights, weights_data)):
            d = np.asarray(d, dtype=np.float32)
            if d.shape != w.data.shape:
                raise ValueError(f"layer {k + 1}: {d.shape=} does not match nnz={w.nnz}")
            new.append(sp.csr_array((d, w.indices, w.indptr), shape=w.shape))
        return SparseNetwork(tuple(new), tuple(biases), self.cap)

    def truncated(self, num_layers: int) -> SparseNetwork:
        """The first ``num_layers`` layers."""
        if not 1 <= num_layers <= self.num_layers:
            raise ValueError(f"num_layers={num_layers} must be in [1, {self.num_layers}]")
        return SparseNetwork(self.weights[:num_layers], self.biases[:num_layers], self.cap)

    # -- shape ------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.weights)

    @property
    def sizes(self) -> tuple[int, ...]:
        """``(n_0, n_1, ..., n_L)``: neurons of every layer, layer 0 (the inputs) included."""
        return (int(self.weights[0].shape[0]),) + tuple(int(w.shape[1]) for w in self.weights)

    @property
    def nnz(self) -> tuple[int, ...]:
        """Stored edges of every layer."""
        return tuple(int(w.nnz) for w in self.weights)

    @property
    def total_nnz(self) -> int:
        return int(sum(self.nnz))

    def fan_in(self, k: int) -> np.ndarray:
        """Incoming edges of every neuron of layer ``k`` (1-based), ``[n_k]`` int64."""
        w = self.weights[k - 1]
        return np.bincount(w.indices, minlength=w.shape[1]).astype(np.int64)

    def input_classes(self, k: int) -> np.ndarray:
        """``[n_k]`` int64 class ids of layer ``k`` (1-based): equal exactly when two neurons read
        the same set of inputs (RadiX-Net / Graph Challenge layers come in such dense blocks).
        Neurons without inputs form one class. Memory is O(edges): one table per fan-in."""
        return _identical_rows(self.weights[k - 1].T.tocsr())

    def reader_classes(self, k: int) -> np.ndarray:
        """``[n_{k-1}]`` int64 class ids of layer ``k - 1``: equal exactly when two neurons are read
        by the same set of layer-``k`` neurons (the mirror of :meth:`input_classes`). Neurons
        nobody reads form one class."""
        return _identical_rows(self.weights[k - 1])

    def fingerprint(self) -> str:
        """SHA-256 of the structure (sizes and edge positions, not values).

        A partition depends only on the structure, so it stays valid for a retrained network.
        """
        h = hashlib.sha256()
        h.update(np.asarray(self.sizes, dtype=np.int64).tobytes())
        for w in self.weights:
            h.update(w.indptr.astype(np.int64).tobytes())
            h.update(w.indices.astype(np.int64).tobytes())
        return h.hexdigest()

    def __repr__(self) -> str:
        return f"SparseNetwork(layers={self.num_layers}, sizes={self.sizes[:4]}{'...' if self.num_layers > 3 else ''}, nnz={self.total_nnz}, cap={self.cap})"
