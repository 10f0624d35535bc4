"""Inference end to end: plan, shard, compile once, run batches, collect the last layer.

One code path for one device and many: a single device is the plan of the trivial partition
(no exchange rounds) on a ``1 x 1`` mesh.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np
import scipy.sparse as sp
from jax.experimental import multihost_utils

from jaxsdnn import plan as plan_lib
from jaxsdnn import sharded
from jaxsdnn.network import SparseNetwork
from jaxsdnn.reference import categories as categories_of

__all__ = ["InferenceResult", "run_inference", "to_host"]


@dataclasses.dataclass(frozen=True)
class InferenceResult:
    """What :func:`run_inference` returns.

    Attributes:
        scores: ``[images, n_L]`` float32, the last layer's activations.
        categories: 1-based rows of ``scores`` with any nonzero (Graph Challenge categories).
        seconds: wall time of the forward passes on the devices only (no file reading, host
            layout, transfers or compilation), summed over batches; the median over repeats.
        compile_seconds: tracing and compilation.
        edges_per_second: ``images * total_nnz / seconds``.
        stats: the plan's statistics (``Plan.stats()``) plus ``data_parallel`` and ``batch_size``.
    """

    scores: np.ndarray
    categories: np.ndarray
    seconds: float
    compile_seconds: float
    edges_per_second: float
    stats: dict


def to_host(y) -> np.ndarray:
    """A (possibly multi-host) global array as one host array on every process."""
    if jax.process_count() > 1:
        return np.asarray(multihost_utils.process_allgather(y, tiled=True))
    return np.asarray(jax.device_get(y))


def run_inference(
    network: SparseNetwork,
    images,
    *,
    partition=None,
    mesh=None,
    batch_size: int | None = None,
    repeats: int = 1,
) -> InferenceResult:
    """Runs ``network`` on ``images`` (``[images, n_0]``, dense or scipy.sparse).

    Args:
        network: the network.
        images: inputs; fewer columns than ``n_0`` are zero-padded, more are an error.
        partition: a ``Partition`` (or ``L+1`` owner arrays); ``None`` puts everything on one device.
        mesh: a ``(model, data)`` mesh from :func:`jaxsdnn.sharded.make_mesh`; by default
            ``parts x 1`` over the first devices.
        batch_size: images per forward call (default: all); rounded up to a multiple of the data
            axis; the last batch is zero-padded and its padding dropped.
        repeats: time this many passes over all batches and report the median.
    """
    images = sp.csr_array(images, dtype=np.float32) if sp.issparse(images) else np.asarray(images, np.float32)
    if images.ndim != 2:
        raise ValueError(f"images must be 2-D [images, features], got shape {images.shape}")
    n_img, width = images.shape
    if width > network.sizes[0]:
        raise ValueError(f"images have {width} features but the network has {network.sizes[0]} input neurons")
    if width < network.sizes[0]:
        pad = sp.csr_array((n_img, network.sizes[0] - width), dtype=np.float32)
        images = sp.hstack([images, pad], format="csr") if sp.issparse(images) else np.pad(
            images, ((0, 0), (0, network.sizes[0] - width))
        )
    if n_img == 0:
        raise ValueError("no images to run")
    parts = plan_lib.parts_single_device(network) if partition is None else partition
    plan = plan_lib.build_plan(network, parts)
    if mesh is None:
        mesh = sharded.make_mesh(plan.num_parts, 1)
    data = mesh.shape[sharded.DATA_AXIS]
    batch = n_img if batch_size is None else min(int(batch_size), n_img)
    if batch < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch = -(-batch // data) * data
    sn = sharded.shard_network(plan, network, mesh)
    forward = sharded.sharded_forward(sn)

    def batch_input(start: int) -> jax.Array:
        chunk = images[start : start + batch]
        if chunk.shape[0] < batch:
            fill = batch - chunk.shape[0]
            chunk = (
                sp.vstack([chunk, sp.csr_array((fill, chunk.shape[1]), dtype=np.float32)], format="csr")
                if sp.issparse(chunk)
                else np.pad(chunk, ((0, fill), (0, 0)))
            )
        return sharded.put_inputs(sn, plan_lib.inputs_to_local(plan, chunk))

    starts = range(0, n_img, batch)
    t0 = time.perf_counter()
    compiled = forward.lower(sn.params, sn.tables, batch_input(0)).compile()
    compile_seconds = time.perf_counter() - t0

    # One batch in flight at a time: only one batch's inputs live on the devices (the images stay
    # sparse on the host), and the CPU backend's cross-device rendezvous never sees hundreds of
    # queued collectives (which it aborts). ``seconds`` counts device time only.
    times, scores = [], None
    for _ in range(max(1, repeats)):
        elapsed, outs = 0.0, []
        for start in starts:
            x = batch_input(start)
            jax.block_until_ready(x)
            t0 = time.perf_counter()
            y = jax.block_until_ready(compiled(sn.params, sn.tables, x))
            elapsed += time.perf_counter() - t0
            outs.append(plan_lib.outputs_from_local(plan, to_host(y)))
        times.append(elapsed)
        scores = np.concatenate(outs)[:n_img]
    seconds = float(np.median(times))
    stats = dict(plan.stats(), data_parallel=int(data), batch_size=int(batch))
    return InferenceResult(
        scores=scores,
        categories=categories_of(scores),
        seconds=seconds,
        compile_seconds=compile_seconds,
        edges_per_second=n_img * network.total_nnz / seconds if seconds > 0 else float("inf"),
        stats=stats,
    )
