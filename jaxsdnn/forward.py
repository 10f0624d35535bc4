"""The public forward: ``apply(model, params, x)``, batch-major, with the fast backward as its VJP.

A user composes ``loss(apply(model, params, x))`` with ``jax.value_and_grad``, optax and ``jit``,
like any JAX model::

    model, params = jaxsdnn.shard_model(network, partition, mesh)

    @jax.jit
    def step(model, params, opt_state, x, y):
        loss, grads = jax.value_and_grad(
            lambda p: jaxsdnn.losses.softmax_cross_entropy(jaxsdnn.apply(model, p, x), y))(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

* ``x`` is ``[batch, n_0]`` float32 (split over :data:`~jaxsdnn.sharded.DATA_AXIS`, or plain);
  the output ``[batch, n_L]``. The device-local, feature-major layout (``[n_local, batch]`` per
  device) is built inside the program: each device gathers the input columns it owns, and the
  outputs are scattered back to their global columns and summed over the model axis (one
  all-reduce of ``[batch, n_L]``).
* The reverse-mode derivative is a ``jax.custom_vjp``: the transposed exchange (partial sums go
  back to their owners) and the grouped weight-gradient kernels of :mod:`jaxsdnn.sharded`, so any
  loss costs what the built-in cross-entropy backward costs. The gradient with respect to ``x``
  is computed only when ``x`` is differentiated (``symbolic_zeros``).
* :class:`Model` is a pytree (integer tables as leaves, the static schedule as metadata), so it is
  passed to ``jit``-ted functions as an argument (not closed over, which would bake the tables in
  as constants); :class:`SparseParams` is the parameter pytree optax sees.
* ReLU derivative: 0 at ties (``z == 0``, ``z == cap``), as ``jax.nn.relu``, on every path.
* Padding (sentinel slots and rows of the buckets) never changes an output: padded slots read a
  zero row and padded rows are read by nobody, so their gradients are 0 and noise there is
  harmless; :func:`num_params` counts real entries only and :func:`param_mask` marks them.

References:
    Demirci & Ferhatosmanoglu, "Partitioning sparse deep neural networks for scalable training
    and inference", ICS 2021 (arXiv 2104.11805).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as Spec

from jaxsdnn import kernels
from jaxsdnn.network import SparseNetwork
from jaxsdnn.plan import LayerTables, Plan, build_plan, layout_values, values_to_network
from jaxsdnn.sharded import (DATA_AXIS, MODEL_AXIS, _check_batch, _exchange, _global_array, _put_by_model, _return_partials,
                             _transposed_spmm)

__all__ = ["Model", "SparseParams", "apply", "num_params", "param_mask", "shard_batch", "shard_model", "to_network"]


@functools.partial(jax.tree_util.register_dataclass, data_fields=["w", "b"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class SparseParams:
    """The trainable values of a sharded network (a pytree; optax's moments take its type too).

    Attributes:
        w: per layer ``k = 1..L``, a tuple of forward buckets ``[P, rows_b, width_b]`` float32;
            0 at padding slots and rows (values there never reach an output).
        b: per layer, ``[P, n_local[k]]`` float32 biases; 0 at padding rows.

    ``params["w"]`` / ``params["b"]`` read the fields too.
    """

    w: tuple
    b: tuple

    def __getitem__(self, key: str):
        if key not in ("w", "b"):
            raise KeyError(key)
        return getattr(self, key)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["layers", "row_ids"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class ModelTables:
    """Integer tables of a :class:`Model` (leading ``[P]``, split over the model axis).

    Attributes:
        layers: per layer ``k = 1..L``, its :class:`jaxsdnn.plan.LayerTables`.
        row_ids: per layer ``k = 0..L``, ``[P, n_local[k]]`` int32: the global neuron of each
            local row; sentinel ``n_k`` for padding rows.
    """

    layers: tuple[LayerTables, ...]
    row_ids: tuple[jax.Array, ...]


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The static half of a :class:`Model` (hashable: jit specialises on it).

    Attributes:
        mesh: the ``(MODEL_AXIS, DATA_AXIS)`` mesh.
        rounds: per layer, its exchange rounds (tuples of ``(source, destination)`` pairs).
        cap: ReLU cap (None: plain ReLU).
        sizes: ``(n_0, ..., n_L)``.
        plan, network: the host plan and network (not compared: the program depends on the
            fields above and on the table shapes only).
    """

    mesh: Mesh
    rounds: tuple
    cap: float | None
    sizes: tuple[int, ...]
    plan: Plan = dataclasses.field(compare=False, repr=False)
    network: SparseNetwork = dataclasses.field(compare=False, repr=False)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["tables"], meta_fields=["schedule"])
@dataclasses.dataclass(frozen=True)
class Model:
    """A network laid out on a mesh, without its values: what :func:`apply` needs besides params.

    A pytree: pass it to ``jit``-ted functions as an argument. Two models of the same schedule
    (mesh, rounds, cap, sizes) and table shapes share compiled programs.

    Attributes:
        tables: :class:`ModelTables` on the devices.
        schedule: :class:`Schedule` (static).
    """

    tables: ModelTables
    schedule: Schedule

    @property
    def mesh(self) -> Mesh:
        return self.schedule.mesh

    @property
    def plan(self) -> Plan:
        return self.schedule.plan

    @property
    def sizes(self) -> tuple[int, ...]:
        return self.schedule.sizes

    @property
    def num_layers(self) -> int:
        return len(self.schedule.sizes) - 1

    @property
    def batch_sharding(self) -> NamedSharding:
        """How a ``[batch, features]`` array is best placed: batch over the data axis."""
        return NamedSharding(self.mesh, Spec(DATA_AXIS, None))


def _model_tables(plan: Plan) -> ModelTables:
    row_ids = tuple(np.where(ids >= 0, ids, n).astype(np.int32) for ids, n in zip(plan.local_ids, plan.sizes))
    return ModelTables(plan.tables, row_ids)


def shard_model(network: SparseNetwork, partition, mesh: Mesh, *, max_buckets: int = 6) -> tuple[Model, SparseParams]:
    """Plans ``network`` under ``partition`` and puts it on ``mesh``.

    Args:
        network: the :class:`~jaxsdnn.network.SparseNetwork` (structure and initial values).
        partition: a :class:`~jaxsdnn.partition.Partition` or ``L+1`` owner arrays, with as many
            parts as the mesh's model axis has devices; or a :class:`~jaxsdnn.plan.Plan` of it.
        mesh: a ``(MODEL_AXIS, DATA_AXIS)`` mesh (:func:`~jaxsdnn.sharded.make_mesh`).
        max_buckets: forward buckets per layer (see :func:`~jaxsdnn.plan.build_plan`).

    Returns:
        ``(model, params)``: the :class:`Model` and its :class:`SparseParams`, both on ``mesh``.
    """
    plan = partition if isinstance(partition, Plan) else build_plan(network, partition, max_buckets=max_buckets)
    values = layout_values(plan, network)
    tables, params = _put_by_model(mesh, plan.num_parts, _model_tables(plan), SparseParams(values["w"], values["b"]))
    schedule = Schedule(mesh, plan.rounds, plan.cap, tuple(plan.sizes), plan, network)
    return Model(tables, schedule), params


def shard_batch(model: Model, *arrays):
    """Host arrays ``[batch, ...]`` onto the model's mesh, the batch split over the data axis and
    replicated over the model axis (what :func:`apply` reads). Every process passes the whole
    batch (multi-host too). Returns one array, or a tuple for several.

    Raises:
        ValueError: a batch the data axis cannot split.
    """
    out = []
    for a in arrays:
        a = np.asarray(a)
        _check_batch(model.mesh, a.shape[0], "shard_batch")
        out.append(_global_array(a, NamedSharding(model.mesh, Spec(DATA_AXIS, *([None] * (a.ndim - 1))))))
    return out[0] if len(out) == 1 else tuple(out)


def to_network(model: Model, params) -> SparseNetwork:
    """The host :class:`~jaxsdnn.network.SparseNetwork` holding ``params``' values (padding dropped)."""
    host = jax.tree.map(np.asarray, jax.device_get(params))
    return values_to_network(model.plan, model.schedule.network, {"w": host["w"], "b": host["b"]})


def num_params(model: Model) -> int:
    """Trainable values without padding: stored edges plus biases."""
    return int(model.schedule.network.total_nnz + sum(model.sizes[1:]))


def param_mask(model: Model) -> SparseParams:
    """A :class:`SparseParams` of float32 1 at real entries and 0 at padding, on the mesh (for
    ``optax.masked``, or to count: ``sum(jax.tree.leaves(tree_map(jnp.sum, mask)))``)."""
    plan = model.plan
    ws = []
    for k in range(plan.num_layers):
        shapes = [t.shape for t in plan.tables[k].index]
        flat = np.zeros(sum(int(np.prod(s)) for s in shapes), np.float32)
        flat[plan.edge_slot[k]] = 1.0
        offs = np.cumsum([0] + [int(np.prod(s)) for s in shapes])
        ws.append(tuple(flat[a:b].reshape(s) for a, b, s in zip(offs[:-1], offs[1:], shapes)))
    bs = tuple((ids >= 0).astype(np.float32) for ids in plan.local_ids[1:])
    return _put_by_model(model.mesh, plan.num_parts, SparseParams(tuple(ws), bs))[0]


# ----------------------------------------------------------------------------------------------
# per device (inside shard_map)
# ----------------------------------------------------------------------------------------------
def _to_batch_major(x, ids, n):
    """Local ``[n_local, b]`` rows -> ``[b, n]`` global columns (summed over the model axis)."""
    out = jnp.zeros((x.shape[1], n), x.dtype).at[:, ids].set(x.T, mode="drop")
    return jax.lax.psum(out, MODEL_AXIS)


def _from_batch_major(g, ids):
    """``[b, n]`` -> this device's ``[n_local, b]`` rows (0 at padding)."""
    return jnp.take(g, ids, axis=1, mode="fill", fill_value=0).T


def _local_forward(params, tables: ModelTables, xb, *, st: "_Static", keep: bool):
    """One device's forward from its batch slice ``xb`` ``[b, n_0]``.

    Returns ``(x_L, captured, nnz, xs)``: the last layer's local output ``[n_local[L], b]``, the
    chosen layers' ``[b, n_k]`` outputs, ``[b, L]`` nonzero counts (None without ``capture``) and,
    with ``keep``, every layer's extended input (the backward's residuals).
    """
    rounds, cap, sizes = st.schedule.rounds, st.schedule.cap, st.sizes
    L = len(tables.layers)
    x = _from_batch_major(xb, tables.row_ids[0])
    xs, captured, nnz = [], [], []
    for k, t in enumerate(tables.layers):
        xext = _exchange(x, t.send, rounds[k], MODEL_AXIS)
        z = kernels.bucketed_spmm(xext, t.index, params["w"][k], t.group_cols) + params["b"][k][:, None]
        if keep:
            xs.append(xext)
        x = z if (st.linear_last and k == L - 1) else kernels.activation(z, cap)
        if st.capture is not None:
            ids = tables.row_ids[k + 1]
            real = (ids < sizes[k + 1])[:, None]
            nnz.append(jax.lax.psum(jnp.sum((x != 0) & real, axis=0, dtype=jnp.int32), MODEL_AXIS))
            if k + 1 in st.capture and k + 1 < L:
                captured.append(_to_batch_major(x, ids, sizes[k + 1]))
    return x, captured, (jnp.stack(nnz, axis=1) if nnz else None), tuple(xs)


@dataclasses.dataclass(frozen=True)
class _Static:
    """What one compiled forward / backward pair is specialised on (hashable)."""

    schedule: Schedule
    linear_last: bool
    capture: tuple[int, ...] | None  # None: no intermediate outputs and no counts

    @property
    def sizes(self):
        return self.schedule.sizes


def _forward_body(st: _Static, keep: bool):
    L = len(st.sizes) - 1

    def body(params, tables, xb):
        params, tables = _squeeze(params), _squeeze(tables)
        x, captured, nnz, xs = _local_forward(params, tables, xb, st=st, keep=keep)
        y = _to_batch_major(x, tables.row_ids[L], st.sizes[L])
        if st.capture is None:
            out = (y,)
        else:  # layer L's capture is y itself
            captured = iter(captured)
            out = (y, tuple(y if k == L else next(captured) for k in st.capture), nnz)
        res = (tuple(a[None] for a in xs), x[None]) if keep else ()
        return out, res

    return body


def _squeeze(tree):
    return jax.tree.map(lambda a: a[0], tree)


def _local_backward(params, tables: ModelTables, xs, y_local, dy, dcaptured: dict, *, st: _Static, want_dx: bool):
    """One device's backward: ``(grads, dx [b, n_0] or None)`` from the output cotangent ``dy``
    ``[b, n_L]`` and ``dcaptured`` (layer -> ``[b, n_k]`` cotangent of a captured output)."""
    rounds, cap, sizes = st.schedule.rounds, st.schedule.cap, st.sizes
    L = len(tables.layers)
    extra = dcaptured
    dx = _from_batch_major(dy, tables.row_ids[L])
    gw, gb = [None] * L, [None] * L
    for k in range(L - 1, -1, -1):
        t = tables.layers[k]
        if extra.get(k + 1) is not None:
            dx = dx + _from_batch_major(extra[k + 1], tables.row_ids[k + 1])
        out = y_local if k == L - 1 else xs[k + 1][: tables.row_ids[k + 1].shape[0]]
        dz = dx if (st.linear_last and k == L - 1) else dx * kernels.activation_mask(out, cap)
        offs = np.cumsum([0] + [i.shape[0] for i in t.index])
        gw[k] = tuple(
            kernels.grouped_sampled_dense_dense(dz[offs[b] : offs[b + 1]], xs[k], gc)
            if gc.shape[0]
            else kernels.sampled_dense_dense(dz[offs[b] : offs[b + 1]], xs[k], idx)
            for b, (idx, gc) in enumerate(zip(t.index, t.group_cols))
        )
        gb[k] = jnp.sum(dz, axis=1)
        if k > 0 or want_dx:
            n_prev = tables.row_ids[k].shape[0]
            dx = _return_partials(_transposed_spmm(dz, params["w"][k], t), n_prev, t, rounds[k], MODEL_AXIS)
    grads = jax.lax.psum(SparseParams(tuple(gw), tuple(gb)), DATA_AXIS)
    if not want_dx:
        return grads, None
    dx0 = jnp.zeros((dx.shape[1], sizes[0]), dx.dtype).at[:, tables.row_ids[0]].add(dx.T, mode="drop")
    return grads, jax.lax.psum(dx0, MODEL_AXIS)


# ----------------------------------------------------------------------------------------------
# the compiled pair and its custom_vjp
# ----------------------------------------------------------------------------------------------
_BY_MODEL = Spec(MODEL_AXIS)
_BATCH = Spec(DATA_AXIS, None)
_ACT = Spec(MODEL_AXIS, None, DATA_AXIS)


def _values(tree):
    return jax.tree.map(lambda p: p.value, tree, is_leaf=lambda p: hasattr(p, "perturbed"))


def _specs_like(tree, spec):
    return jax.tree.map(lambda _: spec, tree)


@functools.lru_cache(maxsize=128)
def _core(st: _Static):
    """The custom_vjp function ``(params, tables, x) -> outputs`` for ``st`` (cached: one per model
    schedule, so every call and every ``jit`` around it reuses the same compiled pieces)."""
    mesh, L = st.schedule.mesh, len(st.sizes) - 1
    n_cap = 0 if st.capture is None else len(st.capture)
    out_specs = (_BATCH,) if st.capture is None else (_BATCH, (_BATCH,) * n_cap, _BATCH)

    def mapped(keep):
        body = _forward_body(st, keep)

        def run(params, tables, x):
            specs = (_specs_like(params, _BY_MODEL), _specs_like(tables, _BY_MODEL), _BATCH)
            res_specs = ((_ACT,) * L, _ACT) if keep else ()
            return jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=(out_specs, res_specs))(params, tables, x)

        return run

    primal_run, fwd_run = mapped(False), mapped(True)

    @jax.custom_vjp
    def core(params, tables, x):
        return primal_run(params, tables, x)[0]

    def fwd(params, tables, x):  # with symbolic_zeros every leaf comes as a CustomVJPPrimal
        params, tables, perturbed = _values(params), _values(tables), x.perturbed
        out, (xs, y_local) = fwd_run(params, tables, x.value)
        flag = jnp.zeros((1 if perturbed else 0,), jnp.float32)  # its shape says whether dx is needed
        return out, (params, tables, xs, y_local, flag)

    def bwd(res, cts):
        params, tables, xs, y_local, flag = res
        want_dx = flag.shape[0] == 1
        dy = cts[0]
        if isinstance(dy, SymbolicZero):  # only intermediate outputs were used
            dy = jnp.zeros(dy.aval.shape, dy.aval.dtype)
        dcap = tuple(cts[1]) if st.capture is not None else ()
        used = tuple(not isinstance(c, SymbolicZero) for c in dcap)  # static
        dcap = tuple(c for c, u in zip(dcap, used) if u)
        capture = tuple(k for k, u in zip(st.capture or (), used) if u)

        def body(params, tables, xs, y_local, dy, dcap):
            grads, dx = _local_backward(_squeeze(params), _squeeze(tables), [a[0] for a in xs], y_local[0], dy,
                                        dict(zip(capture, dcap)), st=st, want_dx=want_dx)
            grads = jax.tree.map(lambda g: g[None], grads)
            return (grads, dx) if want_dx else (grads,)

        pspec = _specs_like(params, _BY_MODEL)
        in_specs = (pspec, _specs_like(tables, _BY_MODEL), (_ACT,) * L, _ACT, _BATCH, (_BATCH,) * len(dcap))
        out_specs = (pspec, _BATCH) if want_dx else (pspec,)
        out = jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=out_specs)(
            params, tables, xs, y_local, dy, dcap)
        return out[0], None, (out[1] if want_dx else None)

    core.defvjp(fwd, bwd, symbolic_zeros=True)
    return jax.jit(core)


def apply(model: Model, params, x, *, linear_last: bool = True, layers: Sequence[int] | str | None = None):
    """The network's output for a batch: ``[batch, n_0] -> [batch, n_L]``; differentiable.

    Args:
        model: the :class:`Model` (from :func:`shard_model`).
        params: its :class:`SparseParams` (or a pytree of the same shape, e.g. an optax update).
        x: ``[batch, n_0]`` float32; ``batch`` a multiple of the data axis's size.
        linear_last: return the last layer's pre-activation (logits, for a loss); False applies the
            ReLU (and cap) there too, as Graph Challenge inference does.
        layers: also return intermediate activations: a sequence of layer numbers ``1..L`` (or
            ``"all"``), from the same program.

    Returns:
        ``y`` ``[batch, n_L]``; with ``layers``, ``(y, acts, nnz)``: ``acts`` maps each chosen
        layer ``k`` to its ``[batch, n_k]`` output (layer ``L``: ``y``), ``nnz`` is ``[batch, L]``
        int32, the nonzero activations of every layer per sample. Gradients flow through ``y``
        and ``acts``, to ``params`` and to ``x``.

    Raises:
        ValueError: ``x`` of another width, rank or dtype, or a batch the data axis cannot split.
    """
    sched = model.schedule
    n0, L, data = sched.sizes[0], len(sched.sizes) - 1, sched.mesh.shape[DATA_AXIS]
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[1] != n0:
        raise ValueError(f"apply: x has shape {tuple(x.shape)}, the network expects [batch, {n0}]")
    if x.dtype != jnp.float32:
        raise ValueError(f"apply: x has dtype {x.dtype}, expected float32 (cast it: x.astype(jnp.float32))")
    if x.shape[0] % data:
        raise ValueError(f"apply: a batch of {x.shape[0]} samples cannot be split over the {data} devices of the "
                         f"{DATA_AXIS!r} axis; pad it to a multiple of {data} (jaxsdnn.losses.pad_batch)")
    if layers is None:
        return _core(_Static(sched, bool(linear_last), None))(params, model.tables, x)[0]
    chosen = tuple(range(1, L + 1)) if isinstance(layers, str) and layers == "all" else tuple(sorted(set(layers)))
    if isinstance(layers, str) and layers != "all" or any(not 1 <= int(k) <= L for k in chosen):
        raise ValueError(f"apply: layers must be layer numbers in 1..{L} or 'all', got {layers!r}")
    chosen = tuple(int(k) for k in chosen)
    y, captured, nnz = _core(_Static(sched, bool(linear_last), chosen))(params, model.tables, x)
    return y, dict(zip(chosen, captured)), nnz
