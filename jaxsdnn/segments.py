"""Stacked segments on the devices: one ``fori_loop`` per segment, alive counts, compaction.

The device half of :mod:`jaxsdnn.stacking`. A segment's layers run as one loop over its stacked
tables (``lax.fori_loop`` with traced bounds), so one compiled program serves every layer range
of the segment and every depth. The jitted functions are cached per (mesh, exchange rounds,
ReLU cap) and jit specialises them on the table and batch shapes; the tables are arguments, not
constants, so JAX's persistent compilation cache serves a second process running the same
network shapes.

Each chunk also returns, per sample, the number of nonzero activations summed over the model axis
(a ``psum`` of one int per sample, never the activations) and the count of non-finite values:
what :mod:`jaxsdnn.engine` needs to drop dead samples and to stop on overflow.

With ``overlap`` (:func:`shard_stacked`) a layer's product over the device's own rows does not
wait for its exchange; the edges that read received entries are added after
(:func:`overlapped_spmm`).

Pytrees:
    params: per segment ``{"w": per bucket [P, S, rows_b, width_b], "b": [P, S, n_rows]}`` float32.
    tables: per segment a :class:`jaxsdnn.stacking.StackedTables` of int32 arrays.
    activations: feature-major ``[P, n_rows, batch]``, batch split over the data axis.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as Spec

from jaxsdnn import kernels
from jaxsdnn.plan import layout_values
from jaxsdnn.sharded import DATA_AXIS, MODEL_AXIS, _exchange, _global_array, _put_by_model, _send_receive
from jaxsdnn.stacking import RemoteTables, StackedPlan, StackedTables, remote_tables, stack_values

__all__ = ["StackedNetwork", "compact_columns", "insert_columns", "overlapped_spmm", "pad_rows", "put_activations", "scalar",
           "segment_chunk", "shard_stacked"]

jax.tree_util.register_dataclass(StackedTables, data_fields=["index", "send", "group_cols", "remote"], meta_fields=[])
jax.tree_util.register_dataclass(RemoteTables, data_fields=["row", "src", "wpos"], meta_fields=[])

ACTIVATION_SPEC = Spec(MODEL_AXIS, None, DATA_AXIS)


@dataclasses.dataclass(frozen=True)
class StackedNetwork:
    """A stacked plan on a mesh.

    Attributes:
        splan: the host :class:`jaxsdnn.stacking.StackedPlan`.
        mesh: the ``(MODEL_AXIS, DATA_AXIS)`` mesh.
        params: per segment, its values (module docstring), sharded over the model axis.
        tables: per segment, its :class:`StackedTables`, sharded over the model axis; with
            ``overlap`` they hold their :class:`jaxsdnn.stacking.RemoteTables`.
        exchange_dtype: the type activations cross devices in (None: float32).
        overlap: whether each layer's own-row product is free of its exchange, so that the
            backend may run the two together (:func:`local_segment`).
    """

    splan: StackedPlan
    mesh: Mesh
    params: tuple[dict, ...]
    tables: tuple[StackedTables, ...]
    exchange_dtype: str | None = None
    overlap: bool = False


def shard_stacked(splan: StackedPlan, network, mesh: Mesh, exchange_dtype=None, overlap: bool = False) -> StackedNetwork:
    """Puts the stacked values and tables of ``network`` on ``mesh`` (model axis = partition).

    ``exchange_dtype``: activations cross devices in this type (None: float32), see
    :func:`jaxsdnn.sharded._send_receive`. ``overlap``: split each layer so that the exchange is in
    flight while the product over the device's own rows runs (see :func:`local_segment`); the
    results equal the plain order's up to float32 rounding (the two halves are summed apart).
    """
    values = stack_values(splan, layout_values(splan.plan, network))
    tables = splan.tables
    if overlap:
        tables = tuple(dataclasses.replace(t, remote=remote_tables(seg, t)) if seg.rounds else t
                       for seg, t in zip(splan.segments, tables))
    return StackedNetwork(splan, mesh, *_put_by_model(mesh, splan.num_parts, values, tables),
                          exchange_dtype=check_exchange_dtype(exchange_dtype), overlap=bool(overlap))


EXCHANGE_DTYPES = ("float32", "bfloat16", "float16")


def check_exchange_dtype(dtype) -> str | None:
    """The exchange type's name (None for float32, the default), or a ValueError naming the choices."""
    if dtype is None:
        return None
    try:
        name = jnp.dtype(dtype).name
    except TypeError:
        name = str(dtype)
    if name not in EXCHANGE_DTYPES:
        raise ValueError(f"exchange_dtype={dtype!r} is not one of {EXCHANGE_DTYPES}")
    return None if name == "float32" else name


def local_segment(params, tables: StackedTables, x, i0, i1, *, rounds, cap, axis=MODEL_AXIS, exchange_dtype=None):
    """Layers ``i0 .. i1`` (half open, counted within the segment) of a segment on one device.

    Args:
        params, tables: the segment's values and tables with the device axis removed
            (``[S, ...]``).
        x: ``[n_rows, batch]``, the activation before layer ``i0`` of the segment.
        i0, i1: int32 scalars, ``0 <= i0 <= i1 <= S`` (traced: one program for every range).
        rounds: the segment's static exchange rounds.

    With the segment's :class:`jaxsdnn.stacking.RemoteTables` in ``tables.remote`` each layer runs
    :func:`overlapped_spmm` instead of assembling the extended input first.

    Returns:
        ``(y, bad)``: the activation after layer ``i1`` and the number of non-finite
        pre-activations on the way (int32).
    """

    def layer(i, carry):
        x, bad = carry
        pick = functools.partial(jax.lax.dynamic_index_in_dim, index=i, axis=0, keepdims=False)
        index, w, gc = [pick(a) for a in tables.index], [pick(a) for a in params["w"]], [pick(a) for a in tables.group_cols]
        if tables.remote is None or not rounds:
            xext = _exchange(x, [pick(s) for s in tables.send], rounds, axis, exchange_dtype)
            z = kernels.bucketed_spmm(xext, index, w, gc)
        else:
            z = overlapped_spmm(x, [pick(s) for s in tables.send], rounds, index, w, gc,
                                jax.tree.map(pick, tables.remote), axis, exchange_dtype)
        z = pad_to(z, x.shape[0]) + pick(params["b"])[:, None]
        # checked before the cap, which would turn an overflow (inf) into a plausible 32
        return kernels.activation(z, cap), bad + jnp.sum(~jnp.isfinite(z), dtype=jnp.int32)

    none = jnp.sum(x[:0, :0] != 0, dtype=jnp.int32)  # 0, typed like x (varying over the mesh axes)
    return jax.lax.fori_loop(i0, i1, layer, (x, none))


def overlapped_spmm(x, sends, rounds, index, w, group_cols, remote: RemoteTables, axis=MODEL_AXIS, exchange_dtype=None):
    """One layer's product with its exchange overlapped: ``bucketed_spmm`` of the extended input.

    The buckets first run on the device's own rows ``x`` alone (a slot that reads a received row
    reads out of range, so 0): that needs nothing from the exchange, so the backend can run it
    while the rounds are in flight. The edges that read a received entry (``remote``, one layer's
    :class:`jaxsdnn.stacking.RemoteTables`) are then added, a gather and a scatter-add over those
    edges only. No extended input is assembled.
    """
    x, recv = _send_receive(x, sends, rounds, axis, exchange_dtype)
    recv = recv[0] if len(recv) == 1 else jnp.concatenate(recv, axis=0)
    own = jax.lax.optimization_barrier(kernels.bucketed_spmm(x, index, w, group_cols))
    wflat = jnp.concatenate([a.reshape(-1) for a in w])
    value = jnp.take(wflat, remote.wpos, mode="fill", fill_value=0)
    return own.at[remote.row].add(value[:, None] * kernels.gather_rows(recv, remote.src), mode="drop")


def pad_to(z, n_rows: int):
    """A layer's bucket outputs ``[rows, batch]`` zero-padded to the carried ``n_rows`` (a layer
    narrower than its input; see :mod:`jaxsdnn.stacking`)."""
    return z if z.shape[0] == n_rows else jnp.pad(z, ((0, n_rows - z.shape[0]), (0, 0)))


@functools.lru_cache(maxsize=256)
def _chunk_fn(mesh: Mesh, rounds, cap, exchange_dtype=None):
    def per_device(params, tables, x, i0, i1):
        y, bad = local_segment(jax.tree.map(lambda a: a[0], params), jax.tree.map(lambda a: a[0], tables), x[0],
                               i0, i1, rounds=rounds, cap=cap, exchange_dtype=exchange_dtype)
        alive = jax.lax.psum(jnp.sum(y != 0, axis=0, dtype=jnp.int32), MODEL_AXIS)
        bad = jax.lax.psum(bad, (MODEL_AXIS, DATA_AXIS))
        return y[None], alive, bad

    by_model = Spec(MODEL_AXIS)
    return jax.jit(
        jax.shard_map(
            per_device,
            mesh=mesh,
            in_specs=(by_model, by_model, ACTIVATION_SPEC, Spec(), Spec()),
            out_specs=(ACTIVATION_SPEC, Spec(DATA_AXIS), Spec()),
        )
    )


def segment_chunk(sn: StackedNetwork, s: int):
    """The jitted chunk of segment ``s``: ``f(params_s, tables_s, x, i0, i1) -> (y, alive, bad)``.

    Runs the segment's layers ``i0 .. i1`` (within the segment). ``x``, ``y``: ``[P, n_rows,
    batch]``; ``alive``: ``[batch]`` int32 nonzero activations per sample after the chunk;
    ``bad``: int32, non-finite activations after it. One function per (mesh, exchange rounds,
    ReLU cap), so segments of one shape share their compiled programs.
    """
    return _chunk_fn(sn.mesh, sn.splan.segments[s].rounds, sn.splan.plan.cap, sn.exchange_dtype)


@functools.lru_cache(maxsize=64)
def _compact_fn(mesh: Mesh):
    return jax.jit(lambda x, columns: jnp.take(x, columns, axis=2, mode="fill", fill_value=0),
                   out_shardings=NamedSharding(mesh, ACTIVATION_SPEC))


@functools.lru_cache(maxsize=64)
def _pad_fn(mesh: Mesh, n_rows: int):
    return jax.jit(lambda x: jnp.pad(x, ((0, 0), (0, n_rows - x.shape[1]), (0, 0))),
                   out_shardings=NamedSharding(mesh, ACTIVATION_SPEC))


def pad_rows(mesh: Mesh, x: jax.Array, n_rows: int) -> jax.Array:
    """``x`` ``[P, rows, batch]`` zero-padded to ``n_rows`` rows (entering a wider segment)."""
    return _pad_fn(mesh, int(n_rows))(x)


def compact_columns(mesh: Mesh, x: jax.Array, columns: np.ndarray) -> jax.Array:
    """``x[:, :, columns]`` (out-of-range columns give zeros), the batch split evenly over the
    data axis again (samples move between data shards)."""
    cols = _global_array(np.asarray(columns, np.int32), NamedSharding(mesh, Spec()))
    return _compact_fn(mesh)(x, cols)


@functools.lru_cache(maxsize=64)
def _insert_fn(mesh: Mesh, batch: int):
    def f(buffer, x, offset):
        if buffer is None:
            buffer = jnp.zeros(x.shape[:2] + (batch,), x.dtype)
        return jax.lax.dynamic_update_slice_in_dim(buffer, x, offset, axis=2)

    return jax.jit(f, out_shardings=NamedSharding(mesh, ACTIVATION_SPEC))


def insert_columns(mesh: Mesh, buffer: jax.Array | None, x: jax.Array, offset: int, batch: int) -> jax.Array:
    """``buffer[:, :, offset : offset + x.shape[2]] = x`` for a ``[P, n_rows, batch]`` buffer
    (a new zero buffer when ``None``)."""
    return _insert_fn(mesh, int(batch))(buffer, x, scalar(mesh, offset))


def put_activations(mesh: Mesh, x: np.ndarray) -> jax.Array:
    """Feature-major ``[P, n_rows, batch]`` host activations onto the mesh (batch over the data axis)."""
    return _global_array(x, NamedSharding(mesh, ACTIVATION_SPEC))


def scalar(mesh: Mesh, value: int) -> jax.Array:
    """An int32 scalar every process holds (for the traced layer bounds)."""
    return _global_array(np.asarray(value, np.int32), NamedSharding(mesh, Spec()))
