"""Driving KaHyPar and Mt-KaHyPar on one layer's hypergraph (host side; private).

Measured with kahypar 1.3.7 and mtkahypar 1.7 (see ``partition.py`` for the whole method):

* both tools get vertex weights ``max(fan-in, 1)`` (KaHyPar rejects weight 0, Mt-KaHyPar
  silently frees fixed vertices of weight 0), anchors (fixed vertices) weigh 1, and every
  block's cap is raised by that 1;
* both may overshoot the caps when vertices are fixed: callers repair each layer afterwards;
* KaHyPar ignores nets with a single free pin (here: a neuron plus the anchors of its readers'
  devices), so it only sees a layer's incoming nets; callers refine each layer afterwards;
* Mt-KaHyPar runs its DETERMINISTIC preset (DEFAULT and QUALITY were measured not to
  reproduce); its partition is the same for 1 and 2 threads. It ignores the seed, so the seed
  permutes the vertex order instead. It is 5 to 10x slower than KaHyPar on these layers;
* the kahypar wheel ships no ``.ini``: :data:`KM1_CONFIG` is KaHyPar's published direct k-way
  km1 configuration (``km1_kKaHyPar_sea20.ini``, with fewer initial-partitioning runs); a
  missing or misspelled key ends the Python process, so the tests run it in a subprocess.

References:
    Schlag et al., "High-Quality Hypergraph Partitioning", ACM JEA 2022 (KaHyPar, the sea20
    configurations). Gottesbüren et al., "Scalable High-Quality Hypergraph Partitioning",
    ACM TOPS 2024 (Mt-KaHyPar).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import numpy as np

from jaxsdnn.hypergraph import LayerHypergraph, build_hypergraph
from jaxsdnn.network import SparseNetwork

__all__ = ["KM1_CONFIG", "TOOLS", "partition_unconstrained", "solve_layer"]

TOOLS = ("kahypar", "mtkahypar")

# KaHyPar's km1_kKaHyPar_sea20.ini (direct k-way, km1 objective, flow-based refinement) with
# i-runs=5 initial-partitioning runs instead of 20: measured on the 1024 x 24 and 4096 x 8
# networks, 2.2 to 2.8x faster for volumes within 0.1 %. seed=-1 is overridden by setSeed.
KM1_CONFIG = """\
# general
mode=direct
objective=km1
seed=-1
cmaxnet=1000
vcycles=0
# preprocessing: min-hash sparsifier
p-use-sparsifier=true
p-sparsifier-min-median-he-size=28
p-sparsifier-max-hyperedge-size=1200
p-sparsifier-max-cluster-size=10
p-sparsifier-min-cluster-size=2
p-sparsifier-num-hash-func=5
p-sparsifier-combined-num-hash-func=100
# preprocessing: community detection
p-detect-communities=true
p-detect-communities-in-ip=true
p-reuse-communities=false
p-max-louvain-pass-iterations=100
p-min-eps-improvement=0.0001
p-louvain-edge-weight=hybrid
p-large-he-threshold=1000
# preprocessing: large hyperedge removal
p-smallest-maxnet-threshold=50000
p-maxnet-removal-factor=0.01
# coarsening
c-type=ml_style
c-s=1
c-t=160
c-rating-score=heavy_edge
c-rating-use-communities=true
c-rating-heavy_node_penalty=no_penalty
c-rating-acceptance-criterion=best_prefer_unmatched
c-fixed-vertex-acceptance-criterion=fixed_vertex_allowed
# initial partitioning
i-mode=recursive
i-technique=multi
i-c-type=ml_style
i-c-s=1
i-c-t=150
i-c-rating-score=heavy_edge
i-c-rating-use-communities=true
i-c-rating-heavy_node_penalty=no_penalty
i-c-rating-acceptance-criterion=best_prefer_unmatched
i-c-fixed-vertex-acceptance-criterion=fixed_vertex_allowed
i-algo=pool
i-runs=5
i-bp-algorithm=worst_fit
i-bp-heuristic-prepacking=false
i-bp-early-restart=true
i-bp-late-restart=true
i-r-type=twoway_fm
i-r-runs=-1
i-r-fm-stop=simple
i-r-fm-stop-i=50
# local search
r-type=kway_fm_hyperflow_cutter_km1
r-runs=-1
r-fm-stop=adaptive_opt
r-fm-stop-alpha=1
r-fm-stop-i=350
r-flow-execution-policy=exponential
r-hfc-size-constraint=mf-style
r-hfc-scaling=16
r-hfc-distance-based-piercing=true
r-hfc-mbc=true
"""

_STATE: dict = {}  # "mt": the Mt-KaHyPar Initializer (once per process), "ini": the config path


def _config_path() -> str:
    """Writes :data:`KM1_CONFIG` once per process to a private temporary directory."""
    if "ini" not in _STATE:
        directory = tempfile.mkdtemp(prefix="jaxsdnn-kahypar-")
        atexit.register(shutil.rmtree, directory, True)
        path = os.path.join(directory, "km1_kKaHyPar_sea20.ini")
        with open(path, "w", encoding="utf-8") as f:
            f.write(KM1_CONFIG)
        _STATE["ini"] = path
    return _STATE["ini"]


def _mt_initializer(threads: int):
    """Mt-KaHyPar may be initialised once per process: the first call's thread count stays."""
    if "mt" not in _STATE:
        import mtkahypar

        _STATE["mt"] = mtkahypar.initialize(int(threads), False)
        _STATE["mt_threads"] = int(threads)
    return _STATE["mt"]


def _tool_weights(weights: np.ndarray, caps: int, num_parts: int, epsilon: float) -> tuple[list, list]:
    """Vertex weights (free vertices, then one per anchor) and block caps the tools accept."""
    w = np.maximum(weights, 1)
    cap = max(int(caps), int(np.floor((1.0 + epsilon) * w.sum() / num_parts)), int(w.max(initial=1)))
    return w.tolist() + [1] * num_parts, [cap + 1] * num_parts


def _solve_mtkahypar(h: LayerHypergraph, vertex_weights, block_caps, epsilon, seed, threads) -> np.ndarray:
    import mtkahypar

    init = _mt_initializer(threads)
    n, P = h.num_free, h.num_parts
    # DETERMINISTIC ignores the seed: relabel the free vertices by a seeded permutation instead.
    order = np.random.default_rng(seed).permutation(n) if seed else np.arange(n)
    label = np.concatenate([np.argsort(order), np.arange(n, n + P)])  # old id -> new id
    pins = label[h.net_pins]
    nets = [a.tolist() for a in np.split(pins, h.net_ptr[1:-1])]
    weights = np.asarray(vertex_weights, dtype=np.int64)
    weights = np.concatenate([weights[:n][order], weights[n:]]).tolist()
    ctx = init.context_from_preset(mtkahypar.PresetType.DETERMINISTIC)
    ctx.set_partitioning_parameters(P, float(epsilon), mtkahypar.Objective.KM1)
    ctx.logging = False
    ctx.set_individual_target_block_weights(block_caps)
    mtkahypar.set_seed(int(seed))
    hg = init.create_hypergraph(ctx, n + P, len(nets), nets, weights, h.net_weights.tolist())
    hg.add_fixed_vertices([-1] * n + list(range(P)), P)
    result = np.asarray(hg.partition(ctx).get_partition(), dtype=np.int64)
    if not np.array_equal(result[n:], np.arange(P)):
        raise RuntimeError(f"Mt-KaHyPar moved fixed anchors: {result[n:].tolist()}")
    return result[label[:n]]


def _solve_kahypar(h: LayerHypergraph, vertex_weights, block_caps, epsilon, seed) -> np.ndarray:
    import kahypar

    n, P = h.num_free, h.num_parts
    hg = kahypar.Hypergraph(
        n + P, h.num_nets, h.net_ptr.tolist(), h.net_pins.tolist(), P, h.net_weights.tolist(), list(vertex_weights)
    )
    for q in range(P):
        hg.fixNodeToBlock(n + q, q)
    ctx = kahypar.Context()
    ctx.loadINIconfiguration(_config_path())
    ctx.setK(P)
    ctx.setEpsilon(float(epsilon))
    ctx.setSeed(int(seed))
    ctx.suppressOutput(True)
    ctx.setCustomTargetBlockWeights(block_caps)
    kahypar.partition(hg, ctx)
    result = np.array([hg.blockID(v) for v in range(n + P)], dtype=np.int64)
    if not np.array_equal(result[n:], np.arange(P)):
        raise RuntimeError(f"KaHyPar moved fixed anchors: {result[n:].tolist()}")
    return result[:n]


def solve_layer(
    h: LayerHypergraph, weights: np.ndarray, cap: int, tool: str, epsilon: float, seed: int, threads: int = 1
) -> np.ndarray:
    """Partitions the free vertices of a layer hypergraph with KaHyPar or Mt-KaHyPar.

    Args:
        h: the layer's hypergraph (``h.num_parts >= 2``, at least one net).
        weights: ``[n]`` int64 vertex weights of the free vertices (fan-in; may be 0).
        cap: the largest load any device may carry (the caller repairs any overshoot).
        tool: ``"kahypar"`` or ``"mtkahypar"``.
        epsilon: the imbalance the tool is told.
        seed: random seed (``>= 0``).
        threads: Mt-KaHyPar threads (only the first call in a process counts).

    Returns:
        ``[n]`` int64 device of every free vertex, in ``[0, P)``; loads may exceed ``cap``.
    """
    vertex_weights, block_caps = _tool_weights(weights, cap, h.num_parts, epsilon)
    if tool == "mtkahypar":
        return _solve_mtkahypar(h, vertex_weights, block_caps, epsilon, seed, threads)
    if tool == "kahypar":
        return _solve_kahypar(h, vertex_weights, block_caps, epsilon, seed)
    raise ValueError(f"unknown tool {tool!r}, expected one of {TOOLS}")


def partition_unconstrained(
    network: SparseNetwork, num_parts: int, seed: int = 0, threads: int = 1, epsilon: float = 0.03
) -> list[np.ndarray]:
    """The whole multi-layer hypergraph partitioned at once under one balance constraint.

    Only for benchmarks: this reaches the lowest volume but balances the total load, not each
    layer's, so whole layers can land on one device (no parallelism).

    Returns:
        ``L + 1`` int64 arrays, the device of every neuron of every layer.
    """
    import mtkahypar

    hg = build_hypergraph(network)
    init = _mt_initializer(threads)
    ctx = init.context_from_preset(mtkahypar.PresetType.DETERMINISTIC)
    ctx.set_partitioning_parameters(int(num_parts), float(epsilon), mtkahypar.Objective.KM1)
    ctx.logging = False
    mtkahypar.set_seed(int(seed))
    nets = [a.tolist() for a in np.split(hg.net_pins, hg.net_ptr[1:-1])]
    h = init.create_hypergraph(
        ctx, hg.num_vertices, hg.num_nets, nets, np.maximum(hg.vertex_weights, 1).tolist(), [1] * hg.num_nets
    )
    result = np.asarray(h.partition(ctx).get_partition(), dtype=np.int64)
    return [result[hg.offsets[k] : hg.offsets[k + 1]] for k in range(network.num_layers + 1)]
