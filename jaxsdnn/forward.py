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
  back to their owners) and the grouped weight-gradient kernels (:mod:`jaxsdnn.segment_ad`), so any
  loss costs what the built-in cross-entropy backward costs. The gradient with respect to ``x``
  is computed only when ``x`` is differentiated (``symbolic_zeros``).
* :class:`Model` is a pytree (integer tables as leaves, the static schedule as metadata), so it is
  passed to ``jit``-ted functions as an argument (not closed over, which would bake the tables in
  as constants); :class:`SparseParams` is the parameter pytree optax sees.
* Depth costs no compilation: consecutive layers of one shape are a segment
  (:mod:`jaxsdnn.stacking`), run forward and backward as one ``lax.scan`` each
  (:mod:`jaxsdnn.segment_ad`); on several devices a segment shares one padded exchange schedule
  (``max_padding``, 5 % of its edges by default).
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

from jaxsdnn.network import SparseNetwork
from jaxsdnn.segments import check_exchange_dtype
from jaxsdnn.plan import Plan, build_plan, layout_values, values_to_network
from jaxsdnn.segment_ad import Piece, keeps_stack, piece_backward, piece_forward, pieces
from jaxsdnn.sharded import DATA_AXIS, MODEL_AXIS, _check_batch, _global_array, _put_by_model, _squeeze
from jaxsdnn.stacking import (Segment, StackedPlan, StackedTables, TransposedTables, stack_plan, stack_values,
                              transposed_tables, unstack_values)

__all__ = ["Model", "SparseParams", "apply", "num_params", "param_mask", "param_shapes", "shard_batch", "shard_model",
           "to_network"]


@functools.partial(jax.tree_util.register_dataclass, data_fields=["w", "b"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class SparseParams:
    """The trainable values of a sharded network (a pytree; optax's moments take its type too).

    Attributes:
        w: per segment (:mod:`jaxsdnn.stacking`), a tuple of buckets ``[P, S, rows_b, width_b]``
            float32 (``S`` layers); 0 at padding slots and rows (values there never reach an output).
        b: per segment, ``[P, S, n_rows]`` float32 biases; 0 at padding rows.

    ``params["w"]`` / ``params["b"]`` read the fields too.
    """

    w: tuple
    b: tuple

    def __getitem__(self, key: str):
        if key not in ("w", "b"):
            raise KeyError(key)
        return getattr(self, key)


jax.tree_util.register_dataclass(TransposedTables, data_fields=["rev_row", "rev_w", "fold", "back"], meta_fields=[])


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["segments", "transposed", "row_ids", "in_ids"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class ModelTables:
    """Integer tables of a :class:`Model` (leading ``[P]``, split over the model axis).

    Attributes:
        segments: per segment, its :class:`~jaxsdnn.stacking.StackedTables`.
        transposed: per segment, its :class:`~jaxsdnn.stacking.TransposedTables`.
        row_ids: per segment, ``[P, S, n_rows]`` int32: the global neuron of each output row of
            each layer; -1 for padding rows.
        in_ids: ``[P, n_rows]`` int32 (the first segment's rows): the input feature of each row
            of the first layer's input; -1 for padding.
    """

    segments: tuple[StackedTables, ...]
    transposed: tuple[TransposedTables, ...]
    row_ids: tuple[jax.Array, ...]
    in_ids: jax.Array


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The static half of a :class:`Model` (hashable: jit specialises on it).

    Attributes:
        mesh: the ``(MODEL_AXIS, DATA_AXIS)`` mesh.
        segments: the :class:`~jaxsdnn.stacking.Segment` s (layer ranges, exchange rounds, rows).
        cap: ReLU cap (None: plain ReLU).
        sizes: ``(n_0, ..., n_L)``.
        splan, network: the host stacked plan and network (not compared: the program depends on
            the fields above and on the table shapes only).
        exchange_dtype: the type activations cross devices in (None: float32; ``"bfloat16"``,
            ``"float16"``: half the bytes, the received entries rounded). The backward's partial
            sums travel in float32.
    """

    mesh: Mesh
    segments: tuple[Segment, ...]
    cap: float | None
    sizes: tuple[int, ...]
    splan: StackedPlan = dataclasses.field(compare=False, repr=False)
    network: SparseNetwork = dataclasses.field(compare=False, repr=False)
    exchange_dtype: str | None = None


@functools.partial(jax.tree_util.register_dataclass, data_fields=["tables"], meta_fields=["schedule"])
@dataclasses.dataclass(frozen=True)
class Model:
    """A network laid out on a mesh, without its values: what :func:`apply` needs besides params.

    A pytree: pass it to ``jit``-ted functions as an argument. Two models of the same schedule
    (mesh, segments, cap, sizes) and table shapes share compiled programs.

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
        """The host :class:`~jaxsdnn.plan.Plan` (per-layer tables and exchange volumes)."""
        return self.schedule.splan.plan

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

    def stats(self) -> dict:
        """The plan's exchange statistics and the segments' (padded volume, rounds)."""
        return {**self.plan.stats(), **self.schedule.splan.stats()}


def _model_tables(splan: StackedPlan) -> ModelTables:
    plan = splan.plan
    row_ids = []
    for seg in splan.segments:
        ids = np.full((plan.num_parts, seg.num_layers, seg.n_rows), -1, np.int32)
        for i, k in enumerate(range(seg.start + 1, seg.stop + 1)):
            np.put_along_axis(ids[:, i], splan.row_maps[k], plan.local_ids[k], axis=1)
        row_ids.append(ids)
    in_ids = np.full((plan.num_parts, splan.segments[0].n_rows), -1, np.int32)
    in_ids[:, : plan.n_local[0]] = plan.local_ids[0]
    transposed = tuple(transposed_tables(seg, t) for seg, t in zip(splan.segments, splan.tables))
    return ModelTables(splan.tables, transposed, tuple(row_ids), in_ids)


def _host_params(model: Model, network: SparseNetwork) -> SparseParams:
    """``network``'s values in ``model``'s layout (host NumPy)."""
    values = stack_values(model.schedule.splan, layout_values(model.plan, network))
    return SparseParams(tuple(v["w"] for v in values), tuple(v["b"] for v in values))


def _network_of(model: Model, host: SparseParams) -> SparseNetwork:
    """The network of ``model``'s structure holding the host values ``host`` (padding dropped)."""
    return values_to_network(model.plan, model.schedule.network, unstack_values(model.schedule.splan, host))


def param_shapes(model: Model) -> SparseParams:
    """The shapes of ``model``'s :class:`SparseParams` leaves (tuples), without building them."""
    splan = model.schedule.splan
    P = splan.num_parts
    return SparseParams(tuple(tuple(i.shape for i in t.index) for t in splan.tables),
                        tuple((P, seg.num_layers, seg.n_rows) for seg in splan.segments))


def shard_model(network: SparseNetwork, partition, mesh: Mesh, *, max_buckets: int = 6,
                max_padding: float | None = None, exchange_dtype=None) -> tuple[Model, SparseParams]:
    """Plans ``network`` under ``partition`` and puts it on ``mesh``.

    Args:
        network: the :class:`~jaxsdnn.network.SparseNetwork` (structure and initial values).
        partition: a :class:`~jaxsdnn.partition.Partition` or ``L+1`` owner arrays, with as many
            parts as the mesh's model axis has devices; or a :class:`~jaxsdnn.plan.Plan` of it.
        mesh: a ``(MODEL_AXIS, DATA_AXIS)`` mesh (:func:`~jaxsdnn.sharded.make_mesh`).
        max_buckets: forward buckets per layer (see :func:`~jaxsdnn.plan.build_plan`).
        max_padding: how much exchange padding a segment may add to share one schedule
            (:func:`~jaxsdnn.stacking.stack_plan`; 0: segments only where the schedules agree;
            None: by depth).
        exchange_dtype: None / ``"float32"`` (exact), ``"bfloat16"`` or ``"float16"``: the forward
            sends the activations that cross devices in that type (:attr:`Schedule.exchange_dtype`).

    Returns:
        ``(model, params)``: the :class:`Model` and its :class:`SparseParams`, both on ``mesh``.
    """
    plan = partition if isinstance(partition, Plan) else build_plan(network, partition, max_buckets=max_buckets)
    splan = stack_plan(plan, max_padding=max_padding)
    schedule = Schedule(mesh, splan.segments, plan.cap, tuple(plan.sizes), splan, network,
                        check_exchange_dtype(exchange_dtype))
    (tables,) = _put_by_model(mesh, plan.num_parts, _model_tables(splan))
    model = Model(tables, schedule)
    return model, _put_by_model(mesh, plan.num_parts, _host_params(model, network))[0]


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
    return _network_of(model, host)


def num_params(model: Model) -> int:
    """Trainable values without padding: stored edges plus biases."""
    return int(model.schedule.network.total_nnz + sum(model.sizes[1:]))


def param_mask(model: Model) -> SparseParams:
    """A :class:`SparseParams` of float32 1 at real entries and 0 at padding, on the mesh (for
    ``optax.masked``, or to count: ``sum(jax.tree.leaves(tree_map(jnp.sum, mask)))``)."""
    ones = model.schedule.network
    ones = ones.with_values([np.ones_like(w.data) for w in ones.weights], [np.ones(n) for n in model.sizes[1:]])
    return _put_by_model(model.mesh, model.plan.num_parts, _host_params(model, ones))[0]


# ----------------------------------------------------------------------------------------------
# per device (inside shard_map)
# ----------------------------------------------------------------------------------------------
# Both conversions scatter / gather whole rows of the feature-major array and transpose once:
# scattering into (or gathering from) the columns of the batch-major array directly was measured
# 3.7x (scatter) and 1.2x (gather) slower ([1024, 1000], one core).
def _to_batch_major(x, ids, n):
    """Local ``[n_rows, b]`` rows -> ``[b, n]`` global columns (summed over the model axis)."""
    ids = jnp.where(ids >= 0, ids, n)
    out = jax.lax.optimization_barrier(jnp.zeros((n, x.shape[1]), x.dtype).at[ids].set(x, mode="drop")).T
    return jax.lax.psum(out, MODEL_AXIS)


def _from_batch_major(g, ids):
    """``[b, n]`` -> this device's ``[n_rows, b]`` rows (0 at padding, ``ids == -1``)."""
    ids = jnp.where(ids >= 0, ids, g.shape[1])
    return jnp.take(g.T, ids, axis=0, mode="fill", fill_value=0)


@dataclasses.dataclass(frozen=True)
class _Static:
    """What one compiled forward / backward pair is specialised on (hashable)."""

    schedule: Schedule
    linear_last: bool
    capture: tuple[int, ...] | None  # None: no intermediate outputs and no counts

    @functools.cached_property  # read in every trace's loops; not a field, so not hashed
    def pieces(self) -> tuple[Piece, ...]:
        return pieces(self.schedule.segments, self.linear_last, self.capture or ())


def _local_forward(params, tables: ModelTables, xb, st: _Static, keep: bool):
    """One device's forward from its batch slice ``xb`` ``[b, n_0]``.

    Returns ``(y, captured, nnz, residuals)``: ``[b, n_L]``, the chosen layers' ``[b, n_k]``
    outputs (layer ``L``: ``y``), ``[b, L]`` nonzero counts (None without ``capture``) and, with
    ``keep``, per piece its residuals (extended inputs and output).
    """
    segs, cap, sizes, L = st.schedule.segments, st.schedule.cap, st.schedule.sizes, len(st.schedule.sizes) - 1
    count = st.capture is not None
    x = _from_batch_major(xb, tables.in_ids)
    res, captured, nnz = [], {}, []
    for pc in st.pieces:
        seg = segs[pc.seg]
        if x.shape[0] < seg.n_rows:  # entering a wider segment
            x = jnp.pad(x, ((0, seg.n_rows - x.shape[0]), (0, 0)))
        seg_params = {"w": params.w[pc.seg], "b": params.b[pc.seg]}
        x, piece_res, counts = piece_forward(x, seg_params, tables.segments[pc.seg], tables.row_ids[pc.seg], pc,
                                             seg, cap=cap, keep=keep, count=count,
                                             exchange_dtype=st.schedule.exchange_dtype)
        res.append(piece_res)
        nnz.append(counts)
        if count and pc.layer in st.capture and pc.layer < L:
            captured[pc.layer] = _to_batch_major(x, tables.row_ids[pc.seg][pc.i1 - 1], sizes[pc.layer])
    y = _to_batch_major(x, tables.row_ids[-1][-1], sizes[-1])
    captured = tuple(y if k == L else captured[k] for k in st.capture) if count else ()
    nnz = jnp.concatenate(nnz, axis=0).T if count else None
    return y, captured, nnz, (tuple(res) if keep else ())


def _local_backward(params, tables: ModelTables, res, dy, dcaptured: dict, st: _Static, want_dx: bool):
    """One device's backward: ``(grads, dx [b, n_0] or None)`` from the output cotangent ``dy``
    ``[b, n_L]`` and ``dcaptured`` (layer -> ``[b, n_k]`` cotangent of a captured output)."""
    segs, L = st.schedule.segments, len(st.schedule.sizes) - 1
    if dcaptured.get(L) is not None:
        dy = dy + dcaptured[L]
    dx = _from_batch_major(dy, tables.row_ids[-1][-1])
    gw = [[] for _ in segs]
    gb = [[] for _ in segs]
    for j in range(len(st.pieces) - 1, -1, -1):
        pc = st.pieces[j]
        seg = segs[pc.seg]
        if pc.layer < L and dcaptured.get(pc.layer) is not None:
            dx = dx + _from_batch_major(dcaptured[pc.layer], tables.row_ids[pc.seg][pc.i1 - 1])
        dx = dx[: seg.n_rows]
        dx, w, b = piece_backward(dx, res[j], {"w": params.w[pc.seg]}, tables.segments[pc.seg],
                                  tables.transposed[pc.seg], pc, seg, cap=st.schedule.cap, want_dx=want_dx or j > 0)
        gw[pc.seg].insert(0, w)
        gb[pc.seg].insert(0, b)
        if dx is not None and pc.i0 == 0 and pc.seg > 0:  # leaving the wider segment: the previous one's rows
            dx = dx[: segs[pc.seg - 1].n_rows]
    cat = (lambda parts: parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=0))
    grads = SparseParams(tuple(tuple(cat([p[bk] for p in ws]) for bk in range(len(ws[0]))) for ws in gw),
                         tuple(cat(bs) for bs in gb))
    grads = jax.lax.psum(grads, DATA_AXIS)
    if not want_dx:
        return grads, None
    ids = jnp.where(tables.in_ids >= 0, tables.in_ids, st.schedule.sizes[0])
    dx0 = jax.lax.optimization_barrier(
        jnp.zeros((st.schedule.sizes[0], dx.shape[1]), dx.dtype).at[ids].add(dx, mode="drop")).T
    return grads, jax.lax.psum(dx0, MODEL_AXIS)


# ----------------------------------------------------------------------------------------------
# the compiled pair and its custom_vjp
# ----------------------------------------------------------------------------------------------
_BY_MODEL = Spec(MODEL_AXIS)
_BATCH = Spec(DATA_AXIS, None)
_STACKED_ACT = Spec(MODEL_AXIS, None, None, DATA_AXIS)
_ACT = Spec(MODEL_AXIS, None, DATA_AXIS)


def _values(tree):
    return jax.tree.map(lambda p: p.value, tree, is_leaf=lambda p: hasattr(p, "perturbed"))


def _specs_like(tree, spec):
    return jax.tree.map(lambda _: spec, tree)


@functools.lru_cache(maxsize=128)
def _core(st: _Static):
    """The custom_vjp function ``(params, tables, x) -> outputs`` for ``st`` (cached: one per model
    schedule, so every call and every ``jit`` around it reuses the same compiled pieces)."""
    mesh = st.schedule.mesh
    n_cap = 0 if st.capture is None else len(st.capture)
    out_specs = (_BATCH,) if st.capture is None else (_BATCH, (_BATCH,) * n_cap, _BATCH)
    res_specs = tuple(_STACKED_ACT if keeps_stack(pc) else (_STACKED_ACT, None if pc.linear else _ACT)
                      for pc in st.pieces)

    def mapped(keep):
        def body(params, tables, xb):
            y, captured, nnz, res = _local_forward(_squeeze(params), _squeeze(tables), xb, st, keep)
            out = (y,) if st.capture is None else (y, captured, nnz)
            return out, jax.tree.map(lambda a: a[None], res)

        def run(params, tables, x):
            specs = (_specs_like(params, _BY_MODEL), _specs_like(tables, _BY_MODEL), _BATCH)
            return jax.shard_map(body, mesh=mesh, in_specs=specs,
                                 out_specs=(out_specs, res_specs if keep else ()))(params, tables, x)

        return run

    primal_run, fwd_run = mapped(False), mapped(True)

    @jax.custom_vjp
    def core(params, tables, x):
        return primal_run(params, tables, x)[0]

    def fwd(params, tables, x):  # with symbolic_zeros every leaf comes as a CustomVJPPrimal
        params, tables, perturbed = _values(params), _values(tables), x.perturbed
        out, res = fwd_run(params, tables, x.value)
        flag = jnp.zeros((1 if perturbed else 0,), jnp.float32)  # its shape says whether dx is needed
        return out, (params, tables, res, flag)

    def bwd(saved, cts):
        params, tables, res, flag = saved
        want_dx = flag.shape[0] == 1
        dy = cts[0]
        if isinstance(dy, SymbolicZero):  # only intermediate outputs were used
            dy = jnp.zeros(dy.aval.shape, dy.aval.dtype)
        dcap = tuple(cts[1]) if st.capture is not None else ()
        used = tuple(not isinstance(c, SymbolicZero) for c in dcap)  # static
        dcap = tuple(c for c, u in zip(dcap, used) if u)
        capture = tuple(k for k, u in zip(st.capture or (), used) if u)

        def body(params, tables, res, dy, dcap):
            grads, dx = _local_backward(_squeeze(params), _squeeze(tables), _squeeze(res), dy,
                                        dict(zip(capture, dcap)), st, want_dx)
            grads = jax.tree.map(lambda g: g[None], grads)
            return (grads, dx) if want_dx else (grads,)

        pspec = _specs_like(params, _BY_MODEL)
        in_specs = (pspec, _specs_like(tables, _BY_MODEL), res_specs, _BATCH, (_BATCH,) * len(dcap))
        out_specs = (pspec, _BATCH) if want_dx else (pspec,)
        out = jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=out_specs)(params, tables, res, dy, dcap)
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
