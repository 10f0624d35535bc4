"""Neuron-partitioned execution: ``shard_map`` layers, the targeted exchange, backprop, SGD.

The mesh has two axes: :data:`MODEL_AXIS` splits the neurons of every layer (the partition) and
:data:`DATA_AXIS` splits the batch. Before each layer every device receives, by
``jax.lax.ppermute`` rounds precomputed in :mod:`jaxsdnn.plan`, exactly the activation entries
its neurons read and does not own; nothing is all-gathered. The backward pass runs the same
exchange transposed (partial sums go back to the owners and are folded in by gather tables) and
the weight gradients stay on the device that owns the weights. The loss head (softmax
cross-entropy over the last layer, spread over devices) reduces per-sample scalars only.

Arrays that enter :func:`jax.shard_map` carry a leading ``[P]`` device axis and a matching
``NamedSharding`` (:func:`shard_network` puts them there).

Pytrees:
    params: ``{"w": per layer a tuple of [P, rows_b, width_b] float32 buckets, "b": per layer
        [P, n_local[k]] float32}``: the only thing ``jax.grad`` and optax see.
    tables: :class:`DeviceTables` of int32 index arrays.
    activations: feature-major ``[P, n_local[k], batch]``, batch split over :data:`DATA_AXIS`.
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
from jaxsdnn.plan import LayerTables, Plan, layout_values

__all__ = [
    "DATA_AXIS",
    "MODEL_AXIS",
    "DeviceTables",
    "ShardedNetwork",
    "make_mesh",
    "shard_network",
    "sharded_forward",
    "sharded_loss_and_grads",
    "sharded_predict",
]

MODEL_AXIS = "model"
DATA_AXIS = "data"

jax.tree_util.register_dataclass(
    LayerTables,
    data_fields=["index", "send", "t_row", "t_weight", "t_perm", "fold", "group_cols"],
    meta_fields=[],
)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["layers", "out_ids", "label_row"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class DeviceTables:
    """Integer tables on the devices (leading axis ``[P]``, sharded over the model axis).

    Attributes:
        layers: per layer ``k = 1..L``, its :class:`jaxsdnn.plan.LayerTables`.
        out_ids: ``[P, n_local[L]]`` int32: global id of each last-layer row, -1 for padding.
        label_row: ``[P, n_L]`` int32: local row of every last-layer neuron (class) on its owner;
            sentinel ``n_local[L]`` on the other devices.
    """

    layers: tuple[LayerTables, ...]
    out_ids: jax.Array
    label_row: jax.Array


@dataclasses.dataclass(frozen=True)
class ShardedNetwork:
    """A network laid out on a mesh: params and tables on devices, plus the static schedule.

    Attributes:
        plan: the host plan it came from.
        mesh: the ``(MODEL_AXIS, DATA_AXIS)`` mesh.
        params: trainable values (see module docstring), sharded over the model axis.
        tables: :class:`DeviceTables`, sharded over the model axis.
    """

    plan: Plan
    mesh: Mesh
    params: dict
    tables: DeviceTables

    @property
    def rounds(self):
        return self.plan.rounds

    @property
    def cap(self):
        return self.plan.cap


def make_mesh(model: int, data: int = 1, devices=None) -> Mesh:
    """A ``(model, data)`` mesh over the first ``model * data`` devices."""
    devices = jax.devices() if devices is None else devices
    if model * data > len(devices):
        raise ValueError(
            f"a {model} x {data} mesh needs {model * data} devices, only {len(devices)} are available "
            "(on CPU set jax_num_cpu_devices, see `jaxsdnn --devices`)"
        )
    grid = np.asarray(devices[: model * data], dtype=object).reshape(model, data)
    return Mesh(grid, (MODEL_AXIS, DATA_AXIS))


def _global_array(a: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from a host array every process holds (works across hosts too)."""
    a = np.asarray(a)
    return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])


def _device_tables(plan: Plan) -> DeviceTables:
    ids = plan.local_ids[-1]
    P, n_last = ids.shape
    label_row = np.full((P, plan.sizes[-1]), n_last, dtype=np.int32)
    dev, row = np.nonzero(ids >= 0)
    label_row[dev, ids[dev, row]] = row
    return DeviceTables(plan.tables, ids.astype(np.int32), label_row)


def _put_by_model(mesh: Mesh, num_parts: int, *trees):
    """Host ``[P, ...]`` pytrees onto ``mesh``, split over the model axis (which must have ``P`` devices)."""
    if mesh.shape[MODEL_AXIS] != num_parts:
        raise ValueError(
            f"the partition has {num_parts} parts but the mesh's model axis has {mesh.shape[MODEL_AXIS]} devices"
        )
    by_model = NamedSharding(mesh, Spec(MODEL_AXIS))
    return tuple(jax.tree.map(lambda a: _global_array(a, by_model), tree) for tree in trees)


def shard_network(plan: Plan, network, mesh: Mesh) -> ShardedNetwork:
    """Puts the network's values and the plan's tables on ``mesh`` (model axis = partition)."""
    return ShardedNetwork(plan, mesh, *_put_by_model(mesh, plan.num_parts, layout_values(plan, network),
                                                     _device_tables(plan)))


def _check_batch(mesh: Mesh, batch: int, what: str) -> None:
    data = mesh.shape[DATA_AXIS]
    if batch % data:
        raise ValueError(f"{what}: a batch of {batch} samples cannot be split over the {data} devices of the "
                         f"{DATA_AXIS!r} axis; use a multiple of {data}")


def put_inputs(sn: ShardedNetwork, x_local: np.ndarray) -> jax.Array:
    """Feature-major inputs ``[P, n_local[0], batch]`` onto the mesh (batch over the data axis)."""
    _check_batch(sn.mesh, np.shape(x_local)[-1], "put_inputs")
    return _global_array(x_local, NamedSharding(sn.mesh, Spec(MODEL_AXIS, None, DATA_AXIS)))


def put_labels(sn: ShardedNetwork, labels: np.ndarray) -> jax.Array:
    """Labels ``[batch]`` int32 onto the mesh (split over the data axis)."""
    _check_batch(sn.mesh, np.shape(labels)[0], "put_labels")
    return _global_array(np.asarray(labels, np.int32), NamedSharding(sn.mesh, Spec(DATA_AXIS)))


# ----------------------------------------------------------------------------------------------
# per-device functions (what runs inside shard_map; also the single-device engine)
# ----------------------------------------------------------------------------------------------
def _send_receive(x_prev, sends, rounds, axis, dtype=None):
    """The exchange's rounds: ``(x_prev, received)``, ``received[r]`` what round ``r`` brings.

    ``sends[r]`` are the local rows sent in round ``r`` (``LayerTables.send`` or one layer of
    ``StackedTables.send``), ``rounds[r]`` its static ``(source, destination)`` pairs. With
    ``dtype`` (for example ``jnp.bfloat16``) the sent rows travel in that type and are widened
    back on arrival: fewer bytes, the received entries rounded to it. The returned ``x_prev`` is
    the one to compute with (behind the barrier below).
    """
    # Materialise the layer output once: without the barrier XLA fuses the previous layer's
    # whole spmm into both the send gathers and the concatenation (measured 8x slower).
    x_prev = jax.lax.optimization_barrier(x_prev)
    narrow = (lambda a: a) if dtype is None or jnp.dtype(dtype) == x_prev.dtype else (lambda a: a.astype(dtype))
    return x_prev, [
        jax.lax.ppermute(narrow(kernels.gather_rows(x_prev, send)), axis, pairs).astype(x_prev.dtype)
        for send, pairs in zip(sends, rounds)
    ]


def _received(x_prev, sends, rounds, axis, dtype=None):
    """What the rounds bring, concatenated in round order: ``[n_ext - n_rows, batch]``."""
    recv = _send_receive(x_prev, sends, rounds, axis, dtype)[1]
    return recv[0] if len(recv) == 1 else jnp.concatenate(recv, axis=0)


def _exchange(x_prev, sends, rounds, axis, dtype=None):
    """Extended input: own rows, then what each round brings (``[n_ext, batch]``; see
    :func:`_send_receive`)."""
    if not rounds:
        return x_prev
    x_prev, recv = _send_receive(x_prev, sends, rounds, axis, dtype)
    return jax.lax.optimization_barrier(jnp.concatenate([x_prev, *recv], axis=0))


def _return_partials(dxext, n_prev, t: LayerTables, rounds, axis):
    """Transposed exchange: partial sums for received rows go back to their owners and fold in."""
    dx = dxext[:n_prev]
    if not rounds:
        return dx
    back, off = [], n_prev
    for send, pairs in zip(t.send, rounds):
        m = send.shape[0]
        back.append(jax.lax.ppermute(dxext[off : off + m], axis, [(q, p) for p, q in pairs]))
        off += m
    returned = jnp.concatenate(back, axis=0)
    for f in range(t.fold.shape[1]):
        dx = dx + kernels.gather_rows(returned, t.fold[:, f])
    return dx


def _transposed_spmm(dz, w_buckets, t: LayerTables):
    """``dxext = W_local^T dz`` through the transposed tables (gathers only)."""
    wflat = jnp.concatenate([w.reshape(-1) for w in w_buckets])
    parts = [
        kernels.padded_spmm(dz, row, jnp.take(wflat, wi, mode="fill", fill_value=0))
        for row, wi in zip(t.t_row, t.t_weight)
    ]
    stacked = jnp.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
    if t.t_perm.shape[0] == 0:
        return stacked
    if stacked.shape[0] == 0:  # a layer without stored edges: nothing flows back
        return jnp.zeros((t.t_perm.shape[0], dz.shape[1]), dz.dtype)
    return kernels.gather_rows(stacked, t.t_perm)


def local_forward(params, tables: DeviceTables, x0, *, rounds, cap, linear_last=False, axis=MODEL_AXIS):
    """Forward pass on one device's shard: ``[n_local[0], batch] -> [n_local[L], batch]``.

    With ``linear_last`` the last layer returns its pre-activation (logits for training).
    """
    x = x0
    L = len(tables.layers)
    for k, t in enumerate(tables.layers):
        xext = _exchange(x, t.send, rounds[k], axis)
        z = kernels.bucketed_spmm(xext, t.index, params["w"][k], t.group_cols) + params["b"][k][:, None]
        x = z if (linear_last and k == L - 1) else kernels.activation(z, cap)
    return x


def _softmax_head(logits, tables: DeviceTables, labels, global_batch, axis):
    """Cross-entropy over logits spread over the model axis; returns (loss sum, dlogits)."""
    valid = (tables.out_ids >= 0)[:, None]
    neg = jnp.asarray(-jnp.inf, logits.dtype)
    masked = jnp.where(valid, logits, neg)
    m = jax.lax.pmax(jax.lax.stop_gradient(jnp.max(masked, axis=0)), axis)
    e = jnp.where(valid, jnp.exp(logits - m[None, :]), 0)
    s = jax.lax.psum(jnp.sum(e, axis=0), axis)
    label_row = jnp.take(tables.label_row, labels)  # [batch], sentinel if not on this device
    rows = jnp.arange(logits.shape[0])[:, None]
    onehot = (rows == label_row[None, :]).astype(logits.dtype)
    picked = jax.lax.psum(jnp.sum(onehot * logits, axis=0), axis)
    loss_sum = jnp.sum(m + jnp.log(s) - picked)
    dlogits = (e / s[None, :] - onehot) / global_batch
    return loss_sum, dlogits


def local_loss_and_grads(params, tables: DeviceTables, x0, labels, *, rounds, cap, global_batch,
                         model_axis=MODEL_AXIS, data_axis=DATA_AXIS):
    """Mean softmax cross-entropy and its gradients w.r.t. ``params`` on one device's shard.

    Forward keeps each layer's extended input only (the ReLU's derivative is read off its output);
    backward runs the transposed kernels and the transposed exchange. Gradients are summed over
    the data axis.
    """
    xs = []
    x = x0
    L = len(tables.layers)
    for k, t in enumerate(tables.layers):
        xext = _exchange(x, t.send, rounds[k], model_axis)
        z = kernels.bucketed_spmm(xext, t.index, params["w"][k], t.group_cols) + params["b"][k][:, None]
        xs.append(xext)
        x = kernels.activation(z, cap) if k < L - 1 else z
    loss_sum, dz = _softmax_head(x, tables, labels, global_batch, model_axis)
    gw, gb = [None] * L, [None] * L
    for k in range(L - 1, -1, -1):
        t = tables.layers[k]
        offs = np.cumsum([0] + [i.shape[0] for i in t.index])
        gw[k] = tuple(
            kernels.grouped_sampled_dense_dense(dz[offs[b] : offs[b + 1]], xs[k], gc)
            if gc.shape[0]
            else kernels.sampled_dense_dense(dz[offs[b] : offs[b + 1]], xs[k], idx)
            for b, (idx, gc) in enumerate(zip(t.index, t.group_cols))
        )
        gb[k] = jnp.sum(dz, axis=1)
        if k > 0:
            n_prev = sum(i.shape[0] for i in tables.layers[k - 1].index)
            y_prev = xs[k][:n_prev]  # layer k-1's output: the own rows of layer k's extended input
            dxext = _transposed_spmm(dz, params["w"][k], t)
            dx = _return_partials(dxext, n_prev, t, rounds[k], model_axis)
            # the ReLU's derivative from its output (no pre-activations kept): y = clip(z, 0, cap)
            dz = dx * kernels.activation_mask(y_prev, cap)
    grads = {"w": tuple(gw), "b": tuple(gb)}
    if data_axis is not None:
        grads = jax.lax.psum(grads, data_axis)
        loss_sum = jax.lax.psum(loss_sum, data_axis)
    return loss_sum / global_batch, grads


def local_predict(params, tables: DeviceTables, x0, *, rounds, cap, axis=MODEL_AXIS):
    """Predicted class (global id of the largest logit) per sample: ``[batch]`` int32."""
    logits = local_forward(params, tables, x0, rounds=rounds, cap=cap, linear_last=True, axis=axis)
    valid = (tables.out_ids >= 0)[:, None]
    masked = jnp.where(valid, logits, -jnp.inf)
    best = jnp.max(masked, axis=0)
    gid = jnp.take(tables.out_ids, jnp.argmax(masked, axis=0))
    top = jax.lax.pmax(best, axis)
    big = jnp.iinfo(jnp.int32).max
    return jax.lax.pmin(jnp.where(best == top, gid, big), axis)


# ----------------------------------------------------------------------------------------------
# shard_map wrappers
# ----------------------------------------------------------------------------------------------
def _squeeze(tree):
    return jax.tree.map(lambda a: a[0], tree)


def _specs(sn: ShardedNetwork):
    return jax.tree.map(lambda _: Spec(MODEL_AXIS), sn.params), jax.tree.map(lambda _: Spec(MODEL_AXIS), sn.tables)


def sharded_forward(sn: ShardedNetwork, linear_last: bool = False):
    """A jitted ``f(params, tables, x) -> y`` with ``x`` ``[P, n_local[0], batch]`` and ``y``
    ``[P, n_local[L], batch]`` (both batch-split over the data axis)."""
    pspec, tspec = _specs(sn)
    body = functools.partial(local_forward, rounds=sn.rounds, cap=sn.cap, linear_last=linear_last)

    def per_device(params, tables, x):
        return body(_squeeze(params), _squeeze(tables), x[0])[None]

    act = Spec(MODEL_AXIS, None, DATA_AXIS)
    return jax.jit(jax.shard_map(per_device, mesh=sn.mesh, in_specs=(pspec, tspec, act), out_specs=act))


def sharded_loss_and_grads(sn: ShardedNetwork, global_batch: int | None = None):
    """A jitted ``f(params, tables, x, labels) -> (mean loss, grads)``; grads match ``params``.

    The batch size comes from ``labels`` (``[batch]``, split over the data axis) each time the
    function is traced, so one function serves every batch size. ``global_batch``, if given, is
    checked against it: a batch of another size is an error, never a silently rescaled loss.
    """
    pspec, tspec = _specs(sn)
    data = sn.mesh.shape[DATA_AXIS]

    def per_device(params, tables, x, labels):
        batch = labels.shape[0] * data
        if global_batch is not None and batch != global_batch:
            raise ValueError(f"the labels hold a batch of {batch} samples but this function was built for "
                             f"global_batch={global_batch}")
        loss, grads = local_loss_and_grads(_squeeze(params), _squeeze(tables), x[0], labels, rounds=sn.rounds,
                                           cap=sn.cap, global_batch=batch)
        return loss, jax.tree.map(lambda g: g[None], grads)

    act = Spec(MODEL_AXIS, None, DATA_AXIS)
    return jax.jit(
        jax.shard_map(
            per_device, mesh=sn.mesh, in_specs=(pspec, tspec, act, Spec(DATA_AXIS)), out_specs=(Spec(), pspec)
        )
    )


def sharded_predict(sn: ShardedNetwork):
    """A jitted ``f(params, tables, x) -> classes [batch]``."""
    pspec, tspec = _specs(sn)
    body = functools.partial(local_predict, rounds=sn.rounds, cap=sn.cap)

    def per_device(params, tables, x):
        return body(_squeeze(params), _squeeze(tables), x[0])

    act = Spec(MODEL_AXIS, None, DATA_AXIS)
    return jax.jit(jax.shard_map(per_device, mesh=sn.mesh, in_specs=(pspec, tspec, act), out_specs=Spec(DATA_AXIS)))
