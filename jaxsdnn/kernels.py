"""Per-device sparse kernels over padded-row blocks (pure JAX functions).

A layer's stored edges live in *buckets*: a bucket is a padded-row block, ``index`` and
``value`` of shape ``[rows, slots]``: row ``r`` of the block is one output neuron, slot ``s`` one of
its incoming edges, ``index[r, s]`` the row of the input activation it reads. Rows shorter than
``slots`` are padded with the out-of-range sentinel ``index == n_in`` (and value 0), which
``jnp.take(..., mode="fill")`` reads as zero. Rows are grouped into buckets by length so that a
pruned network with a few long rows does not pay for the longest row everywhere.

Activations are feature-major, ``[neurons, batch]``: a slot gathers *whole rows* of the input,
which measured 1.2-2.5x faster than scipy CSR on this machine at 32 edges per neuron
(``scripts/bench_kernels.py``, BENCHMARKS.md), while
``bcoo_dot_general`` and a dense matmul were slower than scipy.

These functions see one device's arrays; ``engine`` calls them directly and ``sharded`` calls them
inside ``shard_map``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

SLOT_CHUNK = 4
"""Slots gathered per fused step of :func:`padded_spmm`."""
ROW_BLOCK = 8
"""Rows per step of :func:`sampled_dense_dense`."""
SLOT_BLOCK_BYTES = 512 * 1024
"""Gathered input bytes per step of :func:`grouped_sampled_dense_dense` (about half this
machine's 1 MiB L2): a challenge layer at batch 1000 runs 4 slots a step, a digits layer at
batch 128 per device all of its slots in one step."""

__all__ = [
    "activation",
    "activation_mask",
    "as_bcoo",
    "bucketed_spmm",
    "gather_rows",
    "grouped_sampled_dense_dense",
    "fold_rows",
    "grouped_spmm",
    "grouped_transposed_spmm",
    "padded_spmm",
    "sampled_dense_dense",
]


def gather_rows(x: jax.Array, index: jax.Array) -> jax.Array:
    """``x[index]`` along axis 0 with zeros for sentinel (out-of-range) indices.

    Args:
        x: ``[n, batch]``.
        index: ``[m]`` int32; entries ``>= n`` are padding and give zero rows.

    Returns:
        ``[m, batch]``.
    """
    return jnp.take(x, index, axis=0, mode="fill", fill_value=0)


def padded_spmm(x: jax.Array, index: jax.Array, value: jax.Array) -> jax.Array:
    """One padded-row block times a feature-major activation.

    ``out[r, :] = sum_s value[r, s] * x[index[r, s], :]``: each slot gathers whole rows of ``x``.
    Slots run in chunks of :data:`SLOT_CHUNK` inside a ``fori_loop``: a fully unrolled loop let
    XLA split or duplicate the gathers once exchanges surround the layer (measured up to 8x
    slower, and minutes of compilation for 120 layers); a chunk of 4 stays one fused pass.

    Args:
        x: ``[n_in, batch]`` input activation.
        index: ``[rows, slots]`` int32, sentinel ``n_in`` (or larger) for padding.
        value: ``[rows, slots]`` float, 0 at padding.

    Returns:
        ``[rows, batch]``.
    """
    rows, slots = index.shape
    if slots == 0:
        return jnp.zeros((rows, x.shape[1]), x.dtype)

    def chunk(acc, start, stop):
        for s in range(start, stop):
            term = value[:, s, None] * gather_rows(x, index[:, s])
            acc = term if acc is None else acc + term
        return acc

    head = min(slots, SLOT_CHUNK)
    acc = chunk(None, 0, head)  # peeled: the carry starts with the inputs' sharding type
    loops = (slots - head) // SLOT_CHUNK
    if loops:

        def body(c, acc):
            start = head + c * SLOT_CHUNK
            for u in range(SLOT_CHUNK):
                i = jax.lax.dynamic_index_in_dim(index, start + u, 1, keepdims=False)
                v = jax.lax.dynamic_index_in_dim(value, start + u, 1, keepdims=False)
                acc = acc + v[:, None] * gather_rows(x, i)
            return acc

        acc = jax.lax.fori_loop(0, loops, body, acc)
    return chunk(acc, head + loops * SLOT_CHUNK, slots)


def grouped_spmm(x: jax.Array, group_cols: jax.Array, value: jax.Array) -> jax.Array:
    """:func:`padded_spmm` of a *grouped* bucket: ``G`` slots of ``R`` rows reading the same inputs.

    A slot is a dense ``R x width`` block over its ``width`` shared inputs, so the bucket is one
    gather of ``G * width`` input rows (instead of ``G * R * width``) and a batched GEMM. Measured
    on the challenge layer (``R = 16``, ``width = 32``, one core): 1.4x :func:`padded_spmm` at
    batch 1024 and 1.9x at batch 8192 and 60000.

    Args:
        x: ``[n_in, batch]``.
        group_cols: ``[G, width]`` int32, the slot's shared input rows (sentinel ``n_in``).
        value: ``[G * R, width]``, rows slot by slot; 0 at padding rows and slots.

    Returns:
        ``[G * R, batch]``, equal to ``padded_spmm(x, index, value)`` for the bucket's ``index``.
    """
    G, width = group_cols.shape
    rows = value.shape[0]
    xg = jnp.take(x, group_cols, axis=0, mode="fill", fill_value=0)  # [G, width, batch]
    z = jnp.einsum("grw,gwb->grb", value.reshape(G, rows // G, width), xg)
    return z.reshape(rows, x.shape[1])


def grouped_transposed_spmm(dz: jax.Array, value: jax.Array, groups: int) -> jax.Array:
    """The transpose of :func:`grouped_spmm` before its gather: ``W_g^T dz_g`` for every slot.

    Args:
        dz: ``[G * R, batch]``, the bucket's output cotangent, rows slot by slot.
        value: ``[G * R, width]`` the bucket's weights.
        groups: ``G``.

    Returns:
        ``[G * width, batch]``: row ``g * width + c`` is the cotangent of slot ``g``'s ``c``-th
        shared input; :func:`fold_rows` sums them into the input rows. Measured on the challenge
        layer (one core, batch 1000): 0.6 ms with the fold against 0.9 ms for the gather-only
        transposed product.
    """
    rows, width = value.shape
    R = rows // groups
    # [G, width, R] weights behind a barrier, so the contraction is over the last dimension of the
    # left operand: XLA folds a plain transpose back into the dot, whose transposed-operand form
    # missed XNNPACK: in Eigen it took 7 ms a challenge layer (one device, 162 ms over 23 layers
    # of a step's profile), and the 24-layer step / forward went 4.48x -> 4.12x without it
    vt = jax.lax.optimization_barrier(jnp.swapaxes(value.reshape(groups, R, width), 1, 2))
    return jnp.einsum("gwr,grb->gwb", vt, dz.reshape(groups, R, dz.shape[1])).reshape(groups * width, dz.shape[1])


def fold_rows(x: jax.Array, fold: jax.Array) -> jax.Array:
    """``out[r] = sum_f x[fold[r, f]]`` (sentinel ``>= len(x)`` adds 0): ``[rows, batch]``."""
    out = gather_rows(x, fold[:, 0])
    for f in range(1, fold.shape[1]):
        out = out + gather_rows(x, fold[:, f])
    return out


def as_bcoo(index: jax.Array, value: jax.Array, n_in: int):
    """A padded-row block as a ``jax.experimental.sparse.BCOO`` ``[rows, n_in]`` with one batch
    dimension over rows: ``as_bcoo(index, value, n_in) @ x == padded_spmm(x, index, value)``.

    The block's sentinel indices (``>= n_in``) are BCOO's own padding. For interoperation and
    inspection: the generic BCOO product was measured 9x slower than :func:`padded_spmm` here.
    """
    from jax.experimental import sparse

    return sparse.BCOO((value, index[..., None]), shape=(index.shape[0], int(n_in)))


def bucketed_spmm(x: jax.Array, index: Sequence[jax.Array], value: Sequence[jax.Array],
                  group_cols: Sequence[jax.Array] | None = None) -> jax.Array:
    """Several buckets, outputs stacked in bucket order: ``[sum of rows, batch]``.

    A bucket whose ``group_cols`` has slots (``shape[0] > 0``) runs :func:`grouped_spmm`, the
    others :func:`padded_spmm`.
    """
    group_cols = [None] * len(index) if group_cols is None else group_cols
    outs = [
        grouped_spmm(x, g, v) if g is not None and g.shape[0] else padded_spmm(x, i, v)
        for i, v, g in zip(index, value, group_cols)
    ]
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=0)


def sampled_dense_dense(dz: jax.Array, x: jax.Array, index: jax.Array) -> jax.Array:
    """Weight gradient of one bucket: ``g[r, s] = sum_b dz[r, b] * x[index[r, s], b]``.

    Runs over blocks of :data:`ROW_BLOCK` rows in a ``fori_loop``: each block gathers its
    ``[rows, slots, batch]`` inputs (cache-sized) and contracts the batch. Measured 2x faster than
    one reduction per slot and 5x faster than gathering all rows at once.

    Args:
        dz: ``[rows, batch]`` gradient of the bucket's pre-activations.
        x: ``[n_in, batch]`` the input activation the forward pass read.
        index: ``[rows, slots]`` the bucket's indices (sentinel reads zero, so padded slots get 0).

    Returns:
        ``[rows, slots]``.
    """
    rows, slots = index.shape
    if rows == 0 or slots == 0:
        return jnp.zeros(index.shape, dz.dtype)
    block = min(ROW_BLOCK, rows)
    blocks = -(-rows // block)
    pad = blocks * block - rows
    if pad:
        dz = jnp.pad(dz, ((0, pad), (0, 0)))
        index = jnp.pad(index, ((0, pad), (0, 0)), constant_values=x.shape[0])

    def body(i, out):
        idx = jax.lax.dynamic_slice_in_dim(index, i * block, block, 0)
        d = jax.lax.dynamic_slice_in_dim(dz, i * block, block, 0)
        g = jnp.einsum("rsb,rb->rs", jnp.take(x, idx, axis=0, mode="fill", fill_value=0), d)
        return jax.lax.dynamic_update_slice_in_dim(out, g, i * block, 0)

    first = body(0, jnp.zeros((blocks * block, slots), dz.dtype) * jnp.sum(dz[:1, :1]))
    out = jax.lax.fori_loop(1, blocks, body, first) if blocks > 1 else first
    return out[:rows]


def grouped_sampled_dense_dense(dz: jax.Array, x: jax.Array, group_cols: jax.Array) -> jax.Array:
    """:func:`sampled_dense_dense` for a bucket laid out as ``G`` slots of ``R`` rows reading the same inputs.

    A slot of ``R`` rows sharing ``width`` inputs is a dense block, so its weight gradient is one
    small GEMM, ``dz[slot] @ x[cols].T`` (RadiX-Net / Graph Challenge layers: 16 rows share 32
    inputs). The slots run in blocks of about :data:`SLOT_BLOCK_BYTES` gathered inputs in a ``fori_loop``, so that each block's
    gathered inputs stay in cache: measured 1.5x faster than one gather of every slot's inputs
    and one batched GEMM in isolation (challenge-shaped layer, batch 1000, one core), about 1.1x
    within a whole training step. The plan lays such buckets out
    slot by slot, so ``dz`` needs no gather, only a reshape.

    Args:
        dz: ``[G * R, batch]``, rows slot by slot (padding rows inside a slot carry zeros).
        x: ``[n_in, batch]``.
        group_cols: ``[G, width]`` the shared inputs of each slot (sentinel ``n_in``).

    Returns:
        ``[G * R, width]``, equal to ``sampled_dense_dense(dz, x, index)`` when the real rows of
        every slot share their ``index`` row and padding rows of ``dz`` are zero (both hold for
        the plan's grouped buckets: padding rows have no readers and a zero activation).
    """
    G, width = group_cols.shape
    rows, batch = dz.shape
    if G == 1:  # one dense block (a dense head): a plain GEMM, 0.58 against 0.69 ms batched (8 x 1024, batch 1000)
        return jnp.einsum("rb,wb->rw", dz, jnp.take(x, group_cols[0], axis=0, mode="fill", fill_value=0))
    R = rows // G
    blk = int(min(G, max(1, SLOT_BLOCK_BYTES // max(1, width * batch * dz.dtype.itemsize))))
    nb = -(-G // blk)
    pad = nb * blk - G
    d = dz.reshape(G, R, batch)
    if pad:
        d = jnp.pad(d, ((0, pad), (0, 0), (0, 0)))
        group_cols = jnp.pad(group_cols, ((0, pad), (0, 0)), constant_values=x.shape[0])
    d = d.reshape(nb, blk, R, batch)
    cols = group_cols.reshape(nb, blk, width)

    def block(i):
        xg = jnp.take(x, cols[i], axis=0, mode="fill", fill_value=0)  # [blk, width, batch]
        return jnp.einsum("grb,gwb->grw", d[i], xg)

    first = block(0)
    if nb > 1:
        out = jnp.zeros((nb,) + first.shape, first.dtype).at[0].set(first)
        out = jax.lax.fori_loop(1, nb, lambda i, out: out.at[i].set(block(i)), out)
    else:
        out = first[None]
    return out.reshape(nb * blk * R, width)[:rows]


def activation(z: jax.Array, cap: float | None) -> jax.Array:
    """ReLU, capped at ``cap`` when it is not None (Graph Challenge: 32).

    Written with ``where`` so that its derivative under ``jax.grad`` is :func:`activation_mask`:
    0 at the ties ``z == 0`` and ``z == cap``, like ``jax.nn.relu`` and the hand-written backward
    (``jnp.maximum`` / ``jnp.clip`` give 0.5 there).
    """
    y = jnp.where(z > 0, z, jnp.zeros_like(z))
    return y if cap is None else jnp.where(z < cap, y, jnp.full_like(z, cap))


def activation_mask(z: jax.Array, cap: float | None, dtype=None) -> jax.Array:
    """Derivative of :func:`activation` (1 where it passes ``z`` through, else 0), in ``dtype``
    (default: that of ``z``; ``bool`` for a compact mask)."""
    mask = z > 0 if cap is None else (z > 0) & (z < cap)
    return mask.astype(z.dtype if dtype is None else dtype)
