"""One device's forward and reverse passes over stacked segments (inside ``shard_map``).

The network's layers are the segments of :mod:`jaxsdnn.stacking`; here they run as *pieces*: a
piece is a static range of one segment's layers, a ``lax.scan`` over the stacked tables, so the
program has one loop body per piece whatever the depth. Pieces end where a caller wants a layer's
output (captured activations), before a linear last layer and after the first layer.

Forward: each layer exchanges (``ppermute`` rounds of the segment's schedule), multiplies its
buckets and applies the ReLU; with ``keep`` a rolled scan carries the residuals, one stack of
every layer's extended input and the piece's output, written in place (an unrolled piece returns
the extended inputs and its output). Reverse: a reversed scan over the same tables; per layer
the weight gradients (:func:`jaxsdnn.kernels.sampled_dense_dense`, or the grouped GEMM), ``W^T dz``
through the :class:`jaxsdnn.stacking.TransposedTables` (gathers for ungrouped buckets, one batched
GEMM and a fold for grouped ones) and the transposed exchange: each received row's partial sum goes
back to its owner, which adds it into the row it sent. The ReLU's derivative is read off the layer's
output ``y = clip(z, 0, cap)`` (the own rows of the next layer's extended input): 1 where
``0 < y < cap``, so 0 at the ties ``z == 0`` and ``z == cap``, exactly as ``jax.nn.relu``.
Nothing but the extended inputs and the output is kept.

Arrays (device axis removed): activations ``[n_rows, batch]``; a segment's params
``{"w": per bucket [S, rows_b, width_b], "b": [S, n_rows]}``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxsdnn import kernels
from jaxsdnn.segments import pad_to
from jaxsdnn.sharded import MODEL_AXIS, _exchange, _received
from jaxsdnn.stacking import Segment

__all__ = ["UNROLL_LAYERS", "Piece", "keeps_stack", "pieces", "piece_forward", "piece_backward"]


@dataclasses.dataclass(frozen=True)
class Piece:
    """Layers ``i0 .. i1`` (half open, within segment ``seg``) run as one scan.

    Attributes:
        seg, i0, i1: the segment and the layer range in it.
        linear: the piece is the network's last layer, returned without the ReLU.
        layer: the network layer number (1-based) of the piece's last layer.
    """

    seg: int
    i0: int
    i1: int
    linear: bool
    layer: int


def pieces(segments: tuple[Segment, ...], linear_last: bool, capture: tuple[int, ...] = ()) -> tuple[Piece, ...]:
    """Splits the segments at the captured layers, before a linear last layer and after the first
    layer (whose input cotangent is often not wanted: see :func:`piece_backward`)."""
    L = segments[-1].stop
    cuts = set(capture) | {1} | ({L - 1} if linear_last else set())
    out = []
    for s, seg in enumerate(segments):
        i0 = 0
        for k in range(seg.start + 1, seg.stop + 1):  # network layer k is segment layer k - 1 - start
            if k in cuts or k == seg.stop:
                out.append(Piece(s, i0, k - seg.start, linear_last and k == L, k))
                i0 = k - seg.start
    return tuple(out)


UNROLL_LAYERS = 8
"""Pieces of at most this many layers run unrolled: on short pieces the loop's per-iteration cost
(carried buffers, dynamic slices of the stacked tables) outweighs the compile time it saves
(digits RadiX-Net, 7 layers, 4 devices: a step through ``apply`` took 1.45x the built-in fused
step as loops, 1.2x unrolled)."""


def keeps_stack(piece: Piece) -> bool:
    """Whether :func:`piece_forward` keeps its residuals as one in-place stack (pieces run as a
    rolled scan) rather than as ``(xexts, y)`` (pieces of at most :data:`UNROLL_LAYERS`)."""
    return piece.i1 - piece.i0 > UNROLL_LAYERS


def _unroll(piece: Piece):
    return 1 if keeps_stack(piece) else True


def _slice(tree, i0, i1):
    return jax.tree.map(lambda a: a[i0:i1], tree)


def piece_forward(x, params, tables, row_ids, piece: Piece, seg: Segment, *, cap, keep: bool, count: bool,
                  exchange_dtype=None):
    """Runs ``piece`` from its input ``x`` ``[n_rows, batch]``.

    Args:
        params: the segment's values ``{"w": per bucket [S, ...], "b": [S, n_rows]}``.
        tables: the segment's :class:`~jaxsdnn.stacking.StackedTables` (``[S, ...]``).
        row_ids: ``[S, n_rows]`` int32 global neuron of each output row, -1 for padding (counts).

    Returns:
        ``(y, residuals, nnz)``: the piece's output; with ``keep``, for a piece that
        :func:`keeps_stack`, the ``[len + 1, n_ext, batch]`` stack of every layer's extended input
        followed by the piece's output (in the first ``n_rows`` rows of the last slot), for a
        shorter one ``(xexts, y)``: the ``[len, n_ext, batch]`` extended inputs and the output
        (None for a linear piece); None without ``keep``; ``[len, batch]`` int32 nonzero outputs
        per layer and sample summed over the model axis (None without ``count``).

    A stacked piece's scan carries the stack itself: each layer reads its input from its slot,
    writes the received rows after it and its output into the next slot, in place (carrying the
    activation and stacking the inputs as scan outputs cost two more copies of every layer's
    activation: 26 % of a challenge training step on one core). Unrolled pieces keep the plain
    form, which XLA schedules better there (digits step 1.03x the built-in's, against 1.28x with
    the stack).
    """
    sl = (_slice(tables, piece.i0, piece.i1), _slice(params["w"], piece.i0, piece.i1),
          params["b"][piece.i0 : piece.i1], row_ids[piece.i0 : piece.i1])

    def out(t, w, b, ids, xext, n):
        z = pad_to(kernels.bucketed_spmm(xext, t.index, w, t.group_cols), n) + b[:, None]
        y = z if piece.linear else kernels.activation(z, cap)
        nnz = jax.lax.psum(jnp.sum((y != 0) & (ids >= 0)[:, None], axis=0, dtype=jnp.int32), MODEL_AXIS) if count \
            else None
        return y, nnz

    if not (keep and keeps_stack(piece)):
        def body(x, layer):
            t, w, b, ids = layer
            xext = _exchange(x, t.send, seg.rounds, MODEL_AXIS, exchange_dtype)
            y, nnz = out(t, w, b, ids, xext, x.shape[0])
            return y, (xext if keep else None, nnz)

        y, (xexts, nnz) = jax.lax.scan(body, x, sl, unroll=_unroll(piece))
        return y, ((xexts, None if piece.linear else y) if keep else None), nnz

    n, length = x.shape[0], piece.i1 - piece.i0
    # dynamic_update_slice, not ``.at[].set`` (a scatter): 377 against 410 ms of thread time
    # filling the [115, n_ext, 1000] stacks of a 4-device challenge step
    zeros = jnp.zeros((length + 1, seg.n_ext, x.shape[1]), x.dtype)
    stack = jax.lax.dynamic_update_slice(zeros, x[None], (0, 0, 0))

    def kept(stack, layer):
        (t, w, b, ids), i = layer
        if seg.rounds:
            recv = _received(jax.lax.dynamic_index_in_dim(stack, i, 0, keepdims=False)[:n], t.send, seg.rounds,
                             MODEL_AXIS, exchange_dtype)
            stack = jax.lax.dynamic_update_slice(stack, recv[None], (i, n, 0))
        y, nnz = out(t, w, b, ids, jax.lax.dynamic_index_in_dim(stack, i, 0, keepdims=False), n)
        return jax.lax.dynamic_update_slice(stack, y[None], (i + 1, 0, 0)), nnz

    stack, nnz = jax.lax.scan(kept, stack, (sl, jnp.arange(length)), unroll=_unroll(piece))
    return stack[length, :n], stack, nnz


def _by_bucket(dz, t):
    """``dz``'s rows of each forward bucket, materialised once for the weight gradients and the
    transposed product (each slicing for itself copied them twice: 3 % of a 4-device challenge
    step)."""
    offs = [0]
    for idx in t.index:
        offs.append(offs[-1] + idx.shape[0])
    if len(t.index) == 1 and offs[1] == dz.shape[0]:
        return (dz,)
    return jax.lax.optimization_barrier(tuple(dz[a:b] for a, b in zip(offs[:-1], offs[1:])))


def _transposed(dz, dzs, w, tt, t):
    """``W^T dz`` ``[n_ext, batch]`` of one layer: gathers for ungrouped buckets, a batched GEMM
    and a fold for grouped ones (``tt``: the layer's :class:`~jaxsdnn.stacking.TransposedTables`;
    ``dzs``: :func:`_by_bucket` of ``dz``)."""
    out = None
    if tt.rev_row.shape[1]:
        wflat = jnp.concatenate([a.reshape(-1) for a in w])
        out = kernels.padded_spmm(dz, tt.rev_row, jnp.take(wflat, tt.rev_w, mode="fill", fill_value=0))
    if tt.fold.shape[1]:
        parts = [kernels.grouped_transposed_spmm(d, wb, gc.shape[0])
                 for d, wb, gc in zip(dzs, w, t.group_cols) if gc.shape[0]]
        folded = kernels.fold_rows(jnp.concatenate(parts, axis=0) if len(parts) > 1 else parts[0], tt.fold)
        out = folded if out is None else out + folded
    if out is None:  # a layer without stored edges: nothing flows back (typed like dz)
        out = jnp.broadcast_to(dz[:1] * 0, (tt.rev_row.shape[0], dz.shape[1]))
    return out


def _return_partials(dxext, n_rows, back, sends, rounds):
    """Transposed exchange: the partial sums of received rows go back to their owners, which fold
    them into the rows they sent (``back``: :attr:`~jaxsdnn.stacking.TransposedTables.back`)."""
    if not rounds:
        return dxext[:n_rows]
    returned, off = [], n_rows
    for send, pairs in zip(sends, rounds):
        m = send.shape[0]
        returned.append(jax.lax.ppermute(dxext[off : off + m], MODEL_AXIS, [(q, p) for p, q in pairs]))
        off += m
    return dxext[:n_rows] + kernels.fold_rows(jnp.concatenate(returned, axis=0), back)


def _weight_grads(dzs, xext, t):
    return tuple(kernels.grouped_sampled_dense_dense(d, xext, gc) if gc.shape[0]
                 else kernels.sampled_dense_dense(d, xext, idx) for d, idx, gc in zip(dzs, t.index, t.group_cols))


def piece_backward(dy, res, params, tables, ttables, piece: Piece, seg: Segment, *, cap, want_dx: bool = True):
    """The reverse of :func:`piece_forward`.

    Args:
        dy: ``[n_rows, batch]`` cotangent of the piece's output.
        res: the forward's residuals (see :func:`piece_forward`: a stack, read in place by layer,
            or ``(xexts, y)``).
        cap: the ReLU's cap (None: plain ReLU).
        ttables: the segment's :class:`~jaxsdnn.stacking.TransposedTables` (``[S, ...]``).
        want_dx: False skips the cotangent of the piece's input, its transposed product and return
            exchange (the network's first layer when the input is not differentiated; a one-layer
            piece, as :func:`pieces` makes it).

    Returns:
        ``(dx, gw, gb)``: the cotangent of the piece's input (None without ``want_dx``), per bucket
        ``[len, rows_b, width_b]`` weight gradients and ``[len, n_rows]`` bias gradients (summed
        over the local batch).
    """
    sl = (_slice(tables, piece.i0, piece.i1), _slice(ttables, piece.i0, piece.i1),
          _slice(params["w"], piece.i0, piece.i1))
    n, length = seg.n_rows, piece.i1 - piece.i0

    def grads(dx, y, xext, t):
        """``(dz, dz by bucket)`` and the layer's gradients; ``y``: its output (unused for a linear
        piece)."""
        dz = dx if piece.linear else jnp.where(kernels.activation_mask(y, cap, bool), dx, 0)
        dzs = _by_bucket(dz, t)
        return (dz, dzs), (_weight_grads(dzs, xext, t), jnp.sum(dz, axis=1))

    def back(dz, t, tt, w):
        return _return_partials(_transposed(*dz, w, tt, t), n, tt.back, t.send, seg.rounds)

    if keeps_stack(piece):
        stack = res
        at = (lambda j: jax.lax.dynamic_index_in_dim(stack, j, 0, keepdims=False))
        flat, n_ext = stack.reshape(-1, stack.shape[2]), stack.shape[1]

        def in_slot(t, i):
            """``t`` reading slot ``i`` of the flattened stack (sentinels stay out of range): the
            weight-gradient gathers read the stack in place, not a copy of the slot (measured 3 %
            of a 4-device challenge step)."""
            shift = (lambda a: jnp.where(a < n_ext, a + i * n_ext, flat.shape[0]))
            return dataclasses.replace(t, index=tuple(map(shift, t.index)), group_cols=tuple(map(shift, t.group_cols)))

        def body(dx, layer):  # layer i reads slot i, its output is slot i + 1
            (t, tt, w), i = layer
            dz, g = grads(dx, None if piece.linear else at(i + 1)[:n], flat, in_slot(t, i))
            return back(dz, t, tt, w), g

        dx, (gw, gb) = jax.lax.scan(body, dy, (sl, jnp.arange(length)), reverse=True, unroll=_unroll(piece))
        return (dx if want_dx else None), gw, gb

    xexts, y_out = res
    if not want_dx:  # the network's first layer, a piece of its own: its gradients only
        if length != 1:
            raise ValueError(f"piece_backward: want_dx=False needs a one-layer piece, got layers {piece.i0}..{piece.i1}")
        _, (gw, gb) = grads(dy, y_out, xexts[0], jax.tree.map(lambda a: a[0], sl[0]))
        return None, tuple(a[None] for a in gw), gb[None]

    def body(carry, layer):  # carry: the cotangent and this layer's output
        dx, y = carry
        (t, tt, w), xext = layer
        dz, g = grads(dx, y, xext, t)
        return (back(dz, t, tt, w), None if y is None else xext[:n]), g  # own rows of its input: the output before

    (dx, _), (gw, gb) = jax.lax.scan(body, (dy, y_out), (sl, xexts), reverse=True, unroll=_unroll(piece))
    return dx, gw, gb
