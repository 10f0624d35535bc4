"""Inference end to end: plan, stack, shard, stream batches, drop dead samples, collect survivors.

One code path for one device and many: a single device is the plan of the trivial partition
(no exchange rounds) on a ``1 x 1`` mesh. The layers run as stacked segments
(:mod:`jaxsdnn.stacking`, :mod:`jaxsdnn.segments`), so compilation does not grow with depth.

**Dead-sample compaction.** In the Graph Challenge most samples die early (the embedded subset:
1,098 of 1,200 alive after layer 1, 56 after layer 6, 19 from layer 14 on). A sample whose
activations are all zero after layer ``k`` stays zero if no later layer has a positive bias
(``relu(0 @ W + b) = 0`` for ``b <= 0``), so it is dropped there: the batch shrinks to the next
bucket (``data * 2^j`` samples), so only a few programs compile per segment. Liveness comes from
one nonzero count per sample summed over the model axis (never the activations); compacting
re-splits the survivors evenly over the data axis. Where a later layer has a positive bias, the
network runs without dropping until that layer has passed (exact results, no revival lost).
Checks run after every layer up to layer :data:`DENSE_CHECKS`, then every :data:`CHECK_EVERY`
layers, each a device-to-host copy of one int per sample.

**The tail on each process's own device.** Past the first layers only a few samples live (19 of 1,200 from
layer 14 on), and on several devices each of the remaining layers still waits for its exchange
rounds: two `jax.distributed` processes on one core each spent 0.32 s of a 0.60 s pass on the last
110 layers of the 1024 x 120 network (12,000 images), one process 0.05 s. With ``tail="local"`` a
batch compacted to ``1 / POOL_SHRINK`` of the batch size is not parked on the mesh but gathered
(one collective) into host memory. At the end of the pass process ``i`` of ``n`` runs every
``n``-th of those survivors through the remaining layers on its own first device, with a replica
of the network and the same compaction and no exchange, and the results are gathered again
(three collectives), so every process holds all of them. The price: each process holds the whole
network once more (``LOCAL_TAIL_BYTES`` bounds what ``tail=None`` replicates). Survival counts,
scores and categories are those of the sharded run (``tests/test_tail.py``). On a mesh without a
model axis and one device per process (``--devices 1 --data-parallel n``) the whole pass runs so:
process ``i`` takes images ``i, i + n, ...`` (no collective until the results are gathered; on the
mesh every liveness check and every compaction is one).

Memory is bounded by the batch: images stay sparse on the host and stream one batch at a time,
and only the survivors' last-layer rows come back, as a sparse matrix.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np
import scipy.sparse as sp
from jax.experimental import multihost_utils

from jaxsdnn import _compile_stats
from jaxsdnn import plan as plan_lib
from jaxsdnn import segments, sharded, stacking
from jaxsdnn.network import SparseNetwork

__all__ = ["CHECK_EVERY", "DENSE_CHECKS", "LOCAL_TAIL_BYTES", "TAILS", "InferenceResult", "default_batch_size",
           "run_inference", "to_host"]

DENSE_CHECKS = 16
"""Liveness is checked after every layer up to this one."""
CHECK_EVERY = 8
"""... and after every this many layers from there on (and after the last layer)."""
MIN_BUCKET = 8
"""Fewest samples per data-axis device a compacted batch is padded to."""
POOL_SHRINK = 8
"""A batch compacted to ``1 / POOL_SHRINK`` of the batch size waits in a pool for others."""
TAILS = ("local", "sharded")
"""Where the survivors of a compacted batch run on (see the module docstring)."""
LOCAL_TAIL_BYTES = 1 << 30
"""``tail=None`` runs the tail locally on several processes when the network's arrays (values,
indices, row pointers, biases) take at most this many bytes (the replica every process then
holds)."""


@dataclasses.dataclass(frozen=True)
class InferenceResult:
    """What :func:`run_inference` returns.

    Attributes:
        scores: ``[images, n_L]`` float32 ``scipy.sparse.csr_array``, the last layer's activations;
            rows of dead samples are empty (no stored entries).
        categories: 1-based rows of ``scores`` with any nonzero (Graph Challenge categories).
        seconds: wall time of the batched run without compilation (host layout of each batch,
            transfers, compaction, liveness checks included; file reading excluded); the median
            over ``repeats`` passes.
        compile_seconds: tracing, lowering and compilation (first pass).
        edges_per_second: ``images * total_nnz / seconds`` (the challenge's rate: dead samples count).
        survival: ``[(layer, alive)]`` samples alive after each checked layer (1-based), summed over
            batches; empty with compaction off.
        stats: the plan's statistics (``Plan.stats()``), the stacking's, ``data_parallel``,
            ``batch_size``, ``compact``, ``computed_edge_fraction`` (edges computed, padding
            included, over ``images * total_nnz``), ``compiles`` and ``cache_hits``.
    """

    scores: sp.csr_array
    categories: np.ndarray
    seconds: float
    compile_seconds: float
    edges_per_second: float
    survival: list
    stats: dict


def to_host(y) -> np.ndarray:
    """A (possibly multi-host) global array as one host array on every process.

    A replicated array (the alive counts without a data axis) is read from a local copy; only
    one split over processes is gathered, which is a collective.
    """
    if jax.process_count() > 1 and not y.is_fully_replicated:
        return np.asarray(multihost_utils.process_allgather(y, tiled=True))
    return np.asarray(jax.device_get(y))


def default_batch_size(network: SparseNetwork, images: int, data: int = 1) -> int:
    """Samples per batch: the whole set up to about 32 MiB of activation per layer (8,192 at
    ``n = 1024``, 512 at 16,384), a multiple of the data axis. Measured on the challenge work, one
    core: batches of 8,192 ran faster than 60,000 at once (the gathers stay in cache)."""
    n = max(network.sizes)
    batch = max(MIN_BUCKET, 1 << max(0, int(np.floor(np.log2(8 * 2**20 / n)))))
    batch = min(batch, images)
    return -(-batch // data) * data


def _bucket(alive: int, data: int, batch: int) -> int:
    """Smallest ``data * 2^j`` (at least ``data * MIN_BUCKET``) holding ``alive`` samples, or ``batch``."""
    per = max(MIN_BUCKET, 1 << int(np.ceil(np.log2(max(1, -(-alive // data))))))
    return min(batch, per * data)


def _check_layers(num_layers: int) -> np.ndarray:
    """Layers (1-based) after which liveness is checked."""
    late = np.arange(DENSE_CHECKS + CHECK_EVERY, num_layers, CHECK_EVERY)
    return np.unique(np.concatenate([np.arange(1, min(DENSE_CHECKS, num_layers) + 1), late, [num_layers]]))


def _can_drop_after(network: SparseNetwork) -> np.ndarray:
    """``[L + 1]`` bool: after layer ``k`` an all-zero sample stays zero to the end (no later
    layer has a positive bias)."""
    positive = np.array([bool((b > 0).any()) for b in network.biases] + [False])
    # safe[k] = no positive bias in layers k+1..L, i.e. positive[k:] (0-based) all False
    return ~np.flip(np.logical_or.accumulate(np.flip(positive)))


def _as_images(images, n0: int):
    images = sp.csr_array(images, dtype=np.float32) if sp.issparse(images) else np.asarray(images, np.float32)
    if images.ndim != 2:
        raise ValueError(f"images must be 2-D [images, features], got shape {images.shape}")
    n_img, width = images.shape
    if width > n0:
        raise ValueError(f"images have {width} features but the network has {n0} input neurons")
    if width < n0:
        images = sp.hstack([sp.csr_array(images), sp.csr_array((n_img, n0 - width), dtype=np.float32)], format="csr")
    if n_img == 0:
        raise ValueError("no images to run")
    return images


def _batch_input(plan, images, start: int, batch: int, n_rows: int) -> np.ndarray:
    """Images ``start .. start + batch`` as feature-major ``[P, n_rows, batch]`` (zero-padded).

    Sparse images are transposed and gathered into the local layout as sparse rows, and only
    the result is made dense (one pass over the batch, no dense transpose).
    """
    chunk = sp.csr_array(images[start : start + batch])
    ids = plan.local_ids[0]  # [P, n_local0], -1 = padding
    n0 = plan.sizes[0]
    rows = sp.vstack([sp.csr_array(chunk.T), sp.csr_array((1, chunk.shape[0]), dtype=np.float32)], format="csr")
    gathered = rows[np.where(ids >= 0, ids, n0).reshape(-1)]  # padding reads the empty last row
    out = np.zeros((ids.shape[0], n_rows, batch), dtype=np.float32)
    out[:, : ids.shape[1], : chunk.shape[0]] = gathered.toarray().reshape(ids.shape[0], ids.shape[1], -1)
    return out


class _Pass:
    """One pass over all images; accumulates survivors, survival counts and work done.

    A batch compacted to at most ``1 / POOL_SHRINK`` of its size is parked in a pool of its
    layer (a device buffer of ``batch`` columns) instead of running on alone; a pool runs on
    once it holds half a batch of live samples, or at the end. The deep layers thus run on a
    few full batches of survivors instead of many small ones. With a :class:`_LocalTail` such a
    batch goes to host memory instead and finishes in :meth:`_run_tail`, and on a data-only mesh
    :meth:`run_local` runs the whole pass (module docstring).
    """

    def __init__(self, sn: segments.StackedNetwork, network: SparseNetwork, compact: bool, batch: int,
                 tail: _LocalTail | None = None):
        self.sn, self.batch, self.network, self.compact = sn, batch, network, compact
        self.tail = tail
        self.tail_pools: dict[int, list] = {}  # layer -> [(activations [n_k, b] host, ids [b])]
        self.tail_samples = 0
        self.data = sn.mesh.shape[sharded.DATA_AXIS]
        self.L = network.num_layers
        self.can_drop = _can_drop_after(network) if compact else np.zeros(self.L + 1, bool)
        self.checks = _check_layers(self.L) if compact else np.zeros(0, np.int64)
        self.cum_nnz = np.concatenate([[0], np.cumsum(network.nnz)])
        self.survival: dict[int, int] = {}
        self.edges = 0
        self.rounds_run = self.moved = self.calls = 0  # exchange rounds entered, entries sent (padding too)
        self.rows, self.values = [], []
        self.pools: dict[int, tuple] = {}  # layer -> (buffer [P, n_rows, batch], ids [batch], fill)
        self.seg_of = np.concatenate([np.full(s.num_layers, i) for i, s in enumerate(sn.splan.segments)])

    def _chunk(self, x, layer: int, stop: int):
        s = int(self.seg_of[layer])
        seg = self.sn.splan.segments[s]
        stop = min(stop, seg.stop)
        if x.shape[1] != seg.n_rows:  # entering a wider segment
            x = segments.pad_rows(self.sn.mesh, x, seg.n_rows)
        f = segments.segment_chunk(self.sn, s)
        m = self.sn.mesh
        y, alive, bad = f(self.sn.params[s], self.sn.tables[s], x, segments.scalar(m, layer - seg.start),
                          segments.scalar(m, stop - seg.start))
        per_layer = sum(len(pairs) * int(send.shape[2]) for pairs, send in zip(seg.rounds, self.sn.splan.tables[s].send))
        self.calls += 1
        self.rounds_run += len(seg.rounds) * (stop - layer)
        self.moved += per_layer * (stop - layer) * int(x.shape[2])
        return x, y, alive, bad, stop

    def run(self, x, ids: np.ndarray, layer: int = 0) -> None:
        """Runs ``x`` (``[P, n_rows, batch]`` after ``layer``; ``ids``: the image of each column,
        -1 for padding) to the last layer, or parks it in a pool."""
        mesh = self.sn.mesh
        while layer < self.L:
            later = self.checks[self.checks > layer]
            x_in, x, alive, bad, stop = self._chunk(x, layer, int(later[0]) if later.size else self.L)
            self.edges += int(x.shape[2]) * int(self.cum_nnz[stop] - self.cum_nnz[layer])
            if int(bad):
                self._raise_non_finite(x_in, layer, stop)
            layer = stop
            if layer not in self.checks:
                continue
            alive = (to_host(alive) > 0) & (ids >= 0)
            n_alive = int(alive.sum())
            self.survival[layer] = self.survival.get(layer, 0) + n_alive
            if not self.can_drop[layer]:
                continue
            if n_alive == 0:
                return
            new = _bucket(n_alive, self.data, x.shape[2])
            if new < x.shape[2]:
                keep = np.flatnonzero(alive)
                x = segments.compact_columns(mesh, x, np.concatenate([keep, np.full(new - keep.size, x.shape[2])]))
                ids = np.concatenate([ids[keep], np.full(new - keep.size, -1)])
                if new * POOL_SHRINK <= self.batch and layer < self.L:
                    self._park(x, ids, layer)
                    return
        self._collect(x, ids)

    def _park(self, x, ids: np.ndarray, layer: int) -> None:
        if self.tail is not None:
            keep = ids >= 0
            self.tail_pools.setdefault(layer, []).append((self.tail.full_rows(to_host(x), layer)[:, keep], ids[keep]))
            self.tail_samples += int(keep.sum())
            return
        buffer, pool_ids, fill = self.pools.get(layer) or (None, np.full(self.batch, -1), 0)
        if fill + x.shape[2] > self.batch:
            self.flush(layer)
            buffer, pool_ids, fill = None, np.full(self.batch, -1), 0
        buffer = segments.insert_columns(self.sn.mesh, buffer, x, fill, self.batch)
        pool_ids[fill : fill + x.shape[2]] = ids
        self.pools[layer] = (buffer, pool_ids, fill + x.shape[2])
        if 2 * int((pool_ids >= 0).sum()) >= self.batch:
            self.flush(layer)

    def flush(self, layer: int | None = None) -> None:
        """Runs the pool of ``layer`` on (every pool, in layer order, when ``None``)."""
        if layer is None:
            while self.pools:
                self.flush(min(self.pools))
            if self.tail_pools:
                self._run_tail()
            return
        buffer, ids, _ = self.pools.pop(layer)
        keep = np.flatnonzero(ids >= 0)
        new = _bucket(keep.size, self.data, self.batch)
        cols = np.concatenate([keep, np.full(new - keep.size, self.batch)])
        self.run(segments.compact_columns(self.sn.mesh, buffer, cols),
                 np.concatenate([ids[keep], np.full(new - keep.size, -1)]), layer)

    def _run_tail(self) -> None:
        """Runs the gathered survivors on the processes' own devices (:class:`_LocalTail`): process
        ``i`` of ``n`` takes every ``n``-th sample; the results are gathered again."""
        me, procs = jax.process_index(), jax.process_count()

        def chunks():
            for layer in sorted(self.tail_pools):
                a = np.concatenate([v for v, _ in self.tail_pools[layer]], axis=1)[:, me::procs]
                ids = np.concatenate([i for _, i in self.tail_pools[layer]])[me::procs]
                for start in range(0, ids.size, self.batch):
                    cols = ids[start : start + self.batch]
                    b = _bucket(cols.size, 1, self.batch)
                    yield self.tail.local_rows(a[:, start : start + cols.size], layer, b), cols, layer

        self._run_locally(chunks())
        self.tail_pools = {}

    def run_local(self, images) -> None:
        """The whole pass on the processes' own devices (a mesh without a model axis, one device per
        process): process ``i`` of ``n`` runs images ``i, i + n, ...``; the results are gathered."""
        mine = np.arange(jax.process_index(), images.shape[0], jax.process_count())
        n_rows = self.tail.dst.segments[0].n_rows
        self._run_locally((_batch_input(self.tail.dst.plan, images[cols], 0, self.batch, n_rows), cols, 0)
                          for cols in np.array_split(mine, range(self.batch, mine.size, self.batch)) if cols.size)
        self.tail_samples += int(images.shape[0])  # every image, over all processes

    def _run_locally(self, chunks) -> None:
        """Runs ``(x [1, n_rows, b] host, image ids [<= b], layer)`` chunks through the rest of the
        network on this process's device (:class:`_LocalTail`), then adds the results of every
        process to this pass's."""
        local = _Pass(self.tail.sn, self.network, self.compact, self.batch)
        for x, cols, layer in chunks:
            local.run(segments.put_activations(self.tail.sn.mesh, x),
                      np.concatenate([cols, np.full(x.shape[2] - cols.size, -1)]), layer)
        local.flush()
        self._absorb(local)

    def _absorb(self, local: _Pass) -> None:
        """Adds a local pass's results, gathered over the processes, to this pass's."""
        procs = jax.process_count()
        survival = np.zeros(self.L + 1, np.int64)
        for k, n in local.survival.items():
            survival[k] = n
        rows = np.concatenate(local.rows) if local.rows else np.zeros(0, np.int64)
        n_out = self.sn.splan.plan.sizes[-1]
        values = np.concatenate(local.values) if local.values else np.zeros((0, n_out), np.float32)
        if procs > 1:
            survival, rows, values, edges = _gather_tail(survival, rows, values, local.edges)
        else:
            edges = local.edges
        for k in np.flatnonzero(survival):
            self.survival[int(k)] = self.survival.get(int(k), 0) + int(survival[k])
        self.edges += edges
        self.calls += local.calls
        self.rows.append(rows)
        self.values.append(values)

    def _collect(self, x, ids: np.ndarray) -> None:
        y = to_host(x)  # [P, n_rows, batch]
        out_ids = self.sn.splan.out_ids
        valid = out_ids >= 0
        scores = np.zeros((y.shape[2], self.sn.splan.plan.sizes[-1]), dtype=np.float32)
        scores[:, out_ids[valid]] = y[valid].T
        keep = (ids >= 0) & scores.any(axis=1)
        self.rows.append(ids[keep])
        self.values.append(scores[keep])

    def _raise_non_finite(self, x, layer: int, stop: int):
        for k in range(layer, stop):  # find the first layer (an error path: cost does not matter)
            _, x, _, bad, _ = self._chunk(x, k, k + 1)
            if int(bad):
                raise ValueError(
                    f"layer {k + 1}: activations are not finite (float32 overflow past 3.4e38, or NaN); the "
                    "categories would be wrong"
                )

    def scores(self, n_img: int) -> sp.csr_array:
        n_out = self.sn.splan.plan.sizes[-1]
        rows = np.concatenate(self.rows) if self.rows else np.zeros(0, np.int64)
        survivors = sp.coo_array(np.concatenate(self.values) if self.values else np.zeros((0, n_out), np.float32))
        return sp.csr_array((survivors.data, (rows[survivors.row], survivors.col)), shape=(n_img, n_out))


class _LocalTail:
    """The network stacked for one device (this process's first), and the row maps between the
    sharded plan's layout and it."""

    def __init__(self, network: SparseNetwork, sn: segments.StackedNetwork, max_padding: float | None):
        splan = self.src = sn.splan
        one = sharded.make_mesh(1, 1, devices=jax.local_devices()[:1])
        if splan.plan.num_parts == 1:  # a data-only mesh: every device holds the network already
            self.dst = splan
            mine = (lambda a: a.addressable_data(0))
            self.sn = dataclasses.replace(sn, mesh=one, params=jax.tree.map(mine, sn.params),
                                          tables=jax.tree.map(mine, sn.tables))
        else:
            self.dst = stacking.stack_plan(plan_lib.build_plan(network, plan_lib.parts_single_device(network)),
                                           max_padding=max_padding)
            self.sn = segments.shard_stacked(self.dst, network, one)
        self.seg_of = np.concatenate([np.full(seg.num_layers, i) for i, seg in enumerate(self.dst.segments)])

    def full_rows(self, x: np.ndarray, layer: int) -> np.ndarray:
        """``[n_layer, batch]`` activations after ``layer`` in neuron order, from the sharded
        layout ``x`` ``[P, n_rows, batch]``."""
        ids = self.src.plan.local_ids[layer]
        p, r = np.nonzero(ids >= 0)
        out = np.zeros((self.src.plan.sizes[layer], x.shape[2]), np.float32)
        out[ids[p, r]] = x[p, self.src.row_maps[layer][p, r]]
        return out

    def local_rows(self, a: np.ndarray, layer: int, batch: int) -> np.ndarray:
        """``[1, n_rows, batch]``: ``a`` ``[n_layer, b <= batch]`` in the one-device layout of the
        segment that runs the layer after ``layer``."""
        ids = self.dst.plan.local_ids[layer][0]
        n_rows = self.dst.segments[int(self.seg_of[layer])].n_rows
        out = np.zeros((1, n_rows, batch), np.float32)
        valid = ids >= 0
        out[0, self.dst.row_maps[layer][0, valid], : a.shape[1]] = a[ids[valid]]
        return out


def _gather_tail(survival: np.ndarray, rows: np.ndarray, values: np.ndarray, edges: int):
    """Every process's tail results, on every process: survival counts and edges summed, the
    survivors' rows and scores concatenated (three collectives: the counts, then the padded rows
    and their scores)."""
    head = multihost_utils.process_allgather(np.concatenate([survival, [edges, rows.size]]).astype(np.int64))
    sizes = head[:, -1]
    m = max(1, int(sizes.max()))
    pad_rows = np.full(m, -1, np.int64)
    pad_rows[: rows.size] = rows
    pad_values = np.zeros((m, values.shape[1]), np.float32)
    pad_values[: rows.size] = values
    all_rows = multihost_utils.process_allgather(pad_rows)
    all_values = multihost_utils.process_allgather(pad_values)
    keep = [slice(0, int(n)) for n in sizes]
    return (head[:, :-2].sum(axis=0), np.concatenate([r[k] for r, k in zip(all_rows, keep)]),
            np.concatenate([v[k] for v, k in zip(all_values, keep)]), int(head[:, -2].sum()))


def _network_bytes(network: SparseNetwork) -> int:
    return sum(int(w.data.nbytes + w.indices.nbytes + w.indptr.nbytes) for w in network.weights) + sum(
        int(np.asarray(b).nbytes) for b in network.biases)


def run_inference(
    network: SparseNetwork,
    images,
    *,
    partition=None,
    mesh=None,
    batch_size: int | None = None,
    repeats: int = 1,
    compact: bool = True,
    max_padding: float | None = None,
    exchange_dtype=None,
    overlap: bool = False,
    tail: str | None = None,
) -> InferenceResult:
    """Runs ``network`` on ``images`` (``[images, n_0]``, dense or scipy.sparse).

    Args:
        network: the network.
        images: inputs; fewer columns than ``n_0`` are zero-padded, more are an error.
        partition: a ``Partition`` (or ``L+1`` owner arrays); ``None`` puts everything on one device.
        mesh: a ``(model, data)`` mesh from :func:`jaxsdnn.sharded.make_mesh`; by default
            ``parts x 1`` over the first devices.
        batch_size: images per batch (default :func:`default_batch_size`); rounded up to a multiple
            of the data axis; the last batch is zero-padded and its padding dropped.
        repeats: run this many timed passes after the first (compiling) one and report the median;
            ``1`` times the first pass less its compilation.
        compact: drop dead samples where that is exact (see the module docstring).
        max_padding: stacking tolerance (:func:`jaxsdnn.stacking.stack_plan`).
        exchange_dtype: ``"bfloat16"`` or ``"float16"`` sends the activations that cross devices
            in that type (half the bytes); None or ``"float32"`` sends them exactly. See
            BENCHMARKS.md for the measured error and categories.
        overlap: each layer computes its own rows' product while its exchange is in flight
            (:func:`jaxsdnn.segments.overlapped_spmm`); equal to the plain order up to float32
            rounding. Measured slower on the challenge network (BENCHMARKS.md, "Real processes").
        tail: ``"local"``: a batch compacted to ``1 / POOL_SHRINK`` of the batch size finishes on
            every process's own device (module docstring); ``"sharded"``: on the mesh. None:
            ``"local"`` when several processes run and the network takes at most
            :data:`LOCAL_TAIL_BYTES`, else ``"sharded"``. Only with ``compact``. ``"local"`` on
            a data-only mesh of one device per process runs every image so (module docstring).
    """
    segments.check_exchange_dtype(exchange_dtype)
    images = _as_images(images, network.sizes[0])
    n_img = images.shape[0]
    parts = plan_lib.parts_single_device(network) if partition is None else partition
    plan = plan_lib.build_plan(network, parts)
    splan = stacking.stack_plan(plan, max_padding=max_padding)
    if mesh is None:
        mesh = sharded.make_mesh(plan.num_parts, 1)
    data = mesh.shape[sharded.DATA_AXIS]
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch = default_batch_size(network, n_img, data) if batch_size is None else min(int(batch_size), n_img)
    batch = -(-batch // data) * data
    sn = segments.shard_stacked(splan, network, mesh, exchange_dtype, overlap=overlap)
    n_rows0 = splan.segments[0].n_rows
    if tail is None:
        tail = "local" if jax.process_count() > 1 and _network_bytes(network) <= LOCAL_TAIL_BYTES else "sharded"
    if tail not in TAILS:
        raise ValueError(f"tail={tail!r} is not one of {TAILS}")
    local = _LocalTail(network, sn, max_padding) if tail == "local" and compact and mesh.size > 1 else None

    # data parallelism over processes: each runs its own share of the images, with no collective
    # until the results are gathered (a check or a compaction on the mesh is one each)
    whole = local is not None and mesh.shape[sharded.MODEL_AXIS] == 1 and jax.process_count() > 1 \
        and mesh.size == jax.process_count()

    def one_pass() -> _Pass:
        p = _Pass(sn, network, compact, batch, local)
        if whole:
            p.run_local(images)
            return p
        for start in range(0, n_img, batch):
            ids = np.arange(start, start + batch)
            ids[ids >= n_img] = -1
            p.run(segments.put_activations(mesh, _batch_input(plan, images, start, batch, n_rows0)), ids)
        p.flush()
        return p

    with _compile_stats.counting() as compiled:
        t0 = time.perf_counter()
        first = one_pass()
        wall = time.perf_counter() - t0
    def timed() -> float:
        t0 = time.perf_counter()
        one_pass()
        return time.perf_counter() - t0

    times = [max(wall - compiled.seconds, 0.0)] if repeats <= 1 else [timed() for _ in range(repeats)]
    seconds = float(np.median(times))
    scores = first.scores(n_img)
    stats = dict(
        plan.stats(),
        **splan.stats(),
        data_parallel=int(data),
        batch_size=int(batch),
        compact=bool(compact),
        overlap=bool(overlap),
        exchange_rounds_run=first.rounds_run,
        exchanged_entries=first.moved,
        tail="local" if local is not None else "sharded",
        tail_samples=first.tail_samples,
        device_calls=first.calls,
        computed_edge_fraction=first.edges / (n_img * network.total_nnz),
        compiles=compiled.compiles,
        cache_hits=compiled.cache_hits,
    )
    return InferenceResult(
        scores=scores,
        categories=np.flatnonzero(np.diff(scores.indptr) > 0) + 1,
        seconds=seconds,
        compile_seconds=compiled.seconds,
        edges_per_second=n_img * network.total_nnz / seconds if seconds > 0 else float("inf"),
        survival=sorted(first.survival.items()),
        stats=stats,
    )
