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
  km1 configuration (``km1_kKaHyPar_sea20.ini``, with one initial-partitioning run); a
  missing or misspelled key ends the process (the worker's, see below).

References:
    Schlag et al., "High-Quality Hypergraph Partitioning", ACM JEA 2022 (KaHyPar, the sea20
    configurations). Gottesbüren et al., "Scalable High-Quality Hypergraph Partitioning",
    ACM TOPS 2024 (Mt-KaHyPar).
"""

from __future__ import annotations

import atexit
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the worker process loads this file alone, without the package
    from jaxsdnn.hypergraph import LayerHypergraph
    from jaxsdnn.network import SparseNetwork

__all__ = ["KM1_CONFIG", "TOOLS", "ToolError", "partition_unconstrained", "solve_layer"]

TOOLS = ("kahypar", "mtkahypar")

# KaHyPar's km1_kKaHyPar_sea20.ini (direct k-way, km1 objective, flow-based refinement) with
# i-runs=1 initial-partitioning run instead of 20: measured on the 1024 x 24 and 4096 x 8
# networks, 5 runs were 2.2 to 2.8x faster than 20 for volumes within 0.1 %; 1 run against 5
# (contracted layers, one core): real 1024 x 120 at P = 8, 16, 64 4.8 / 7.8 / 23.8 s against
# 7.8 / 11.4 / 57.5 s, volumes +0.08 %, -0.02 %, equal; 4096 x 24 at P = 16 6.6 s against 9.7 s,
# -0.4 %; 16384 x 24 at P = 64 26.3 s against 45.3 s, -0.08 %. seed=-1 is overridden by setSeed.
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
i-runs=1
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
    total = int(w.sum())
    # Raising zero weights to 1 can lift the total above P times the caller's cap (computed on
    # the real weights): KaHyPar then exits the process ("Sum of individual part weights is
    # less than sum of vertex weights"). Every cap is at least ceil(total / P), so they sum to
    # at least the total.
    cap = max(int(caps), int(np.floor((1.0 + epsilon) * total / num_parts)), -(-total // num_parts),
              int(w.max(initial=1)))
    return w.tolist() + [1] * num_parts, [cap + 1] * num_parts


def _solve_mtkahypar(h, vertex_weights, block_caps, epsilon, seed, threads) -> np.ndarray:
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


def _solve_kahypar(h, vertex_weights, block_caps, epsilon, seed) -> np.ndarray:
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


class _Layer:
    """The parts of a :class:`LayerHypergraph` the tools read (what crosses to the worker)."""

    def __init__(self, num_free, num_parts, net_ptr, net_pins, net_weights):
        self.num_free, self.num_parts = int(num_free), int(num_parts)
        self.net_ptr, self.net_pins, self.net_weights = net_ptr, net_pins, net_weights
        self.num_nets = int(net_ptr.size - 1)


def _solve_here(request: dict) -> np.ndarray:
    """Runs one tool call in this process (the worker's side)."""
    h = _Layer(*request["layer"])
    if request["tool"] == "mtkahypar":
        return _solve_mtkahypar(h, request["vertex_weights"], request["block_caps"], request["epsilon"],
                                request["seed"], request["threads"])
    return _solve_kahypar(h, request["vertex_weights"], request["block_caps"], request["epsilon"], request["seed"])


# -- the worker process --------------------------------------------------------------------
# Both tools end the whole process on input they reject (KaHyPar: exit(255), its message on
# stdout; Mt-KaHyPar: a multi-line coloured message, then exit), and a native crash cannot be
# caught. Every call therefore runs in one long-lived worker process (started on first use,
# ~0.2 s: it loads only this file, NumPy and the tools, not the package or JAX); requests and
# answers are pickles over pipes. When the worker dies, the call raises a ValueError carrying
# the tool's own message on one line, and the next call starts a fresh worker.
# JAXSDNN_PARTITION_WORKER=0 runs the tools in this process instead (debugging only).

_WORKER_LOCK = threading.Lock()
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_TOOL_NAMES = {"kahypar": "KaHyPar", "mtkahypar": "Mt-KaHyPar"}
_BOOT = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('_jaxsdnn_kahypar_worker', sys.argv[1])\n"
    "module = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(module)\n"
    "module._serve()\n"
)


class ToolError(ValueError):
    """KaHyPar or Mt-KaHyPar ended its worker process (the tool rejected the input, or crashed)."""


def _send(f, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(struct.pack("<Q", len(data)))
    f.write(data)
    f.flush()


def _recv(f):
    head = f.read(8)
    if len(head) < 8:
        raise EOFError
    (size,) = struct.unpack("<Q", head)
    data = f.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


def _serve() -> None:
    """The worker's loop: answers requests on stdin until it closes. Native output goes to stderr."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    requests = os.fdopen(0, "rb")
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # what the tools print (KaHyPar's reason for exiting) lands in the parent's log
    sys.stdout = sys.stderr
    while True:
        try:
            request = _recv(requests)
        except EOFError:
            return
        try:
            answer = ("ok", _solve_here(request))
        except Exception as e:  # a Python-level failure of the bindings: the parent raises it
            answer = ("error", f"{type(e).__name__}: {e}")
        sys.stderr.flush()
        _send(answers, answer)


class _Worker:
    def __init__(self):
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, os.path.abspath(__file__)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
        )
        self.threads = None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()

    def message(self) -> str:
        """The tool's output since the worker started, as one line."""
        self.log.seek(0)
        return _one_line(self.log.read()[-4000:].decode("utf-8", "replace"))


def _one_line(text: str) -> str:
    """A tool's (possibly multi-line, colour-coded) message as one plain line."""
    lines = [" ".join(x.split()) for x in _ANSI.sub("", text).splitlines()]
    return "; ".join(x for x in lines if x)[-600:]


_IDLE: list = []  # workers not serving a call; several callers (threads) get one each


def _close_worker() -> None:
    """Ends every idle worker, keeping the peak memory they reached."""
    with _WORKER_LOCK:
        while _IDLE:
            worker = _IDLE.pop()
            _STATE["worker_peak_kb"] = max(_STATE.get("worker_peak_kb", 0), _peak_kb(worker.proc.pid))
            worker.close()


def _peak_kb(pid: int) -> int:
    """A live process's peak resident set (``VmHWM``, kB; 0 where /proc cannot tell)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def worker_peak_rss_mb() -> float:
    """The largest peak resident memory of a tool worker process so far, in MB (idle workers
    included; 0 off Linux)."""
    with _WORKER_LOCK:
        live = [_peak_kb(w.proc.pid) for w in _IDLE if w.alive()]
    return max(live + [_STATE.get("worker_peak_kb", 0)]) / 1024


atexit.register(_close_worker)


def _call_worker(request: dict) -> np.ndarray:
    name = _TOOL_NAMES[request["tool"]]
    with _WORKER_LOCK:
        worker = _IDLE.pop() if _IDLE else None
    if worker is not None and not worker.alive():
        worker.kill()  # reaps it and closes its log
        worker = None
    if worker is None:
        worker = _Worker()
    try:
        _send(worker.proc.stdin, request)
        status, value = _recv(worker.proc.stdout)
    except (EOFError, OSError, pickle.UnpicklingError):
        code = worker.proc.wait()
        message = worker.message()
        worker.kill()
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        raise ToolError(f"{name} {how}" + (f": {message}" if message else "")) from None
    except BaseException:  # Ctrl-C mid-call: the worker's state is unknown, start afresh next time
        worker.kill()
        raise
    with _WORKER_LOCK:
        _IDLE.append(worker)
    if status != "ok":
        raise ToolError(f"{name} failed: {_one_line(value)}")
    return value


def solve_layer(
    h: LayerHypergraph, weights: np.ndarray, cap: int, tool: str, epsilon: float, seed: int, threads: int = 1
) -> np.ndarray:
    """Partitions the free vertices of a layer hypergraph with KaHyPar or Mt-KaHyPar.

    The tool runs in a worker process, so that its exit on input it rejects cannot end this one.

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

    Raises:
        ToolError: (a ``ValueError``) the tool ended its process or raised; the message is the tool's.
    """
    if tool not in TOOLS:
        raise ValueError(f"unknown tool {tool!r}, expected one of {TOOLS}")
    vertex_weights, block_caps = _tool_weights(weights, cap, h.num_parts, epsilon)
    request = {
        "tool": tool,
        "layer": (h.num_free, h.num_parts, np.asarray(h.net_ptr, np.int64), np.asarray(h.net_pins, np.int64),
                  np.asarray(h.net_weights, np.int64)),
        "vertex_weights": vertex_weights,
        "block_caps": block_caps,
        "epsilon": float(epsilon),
        "seed": int(seed),
        "threads": int(threads),
    }
    if os.environ.get("JAXSDNN_PARTITION_WORKER", "1") == "0":
        return _solve_here(request)
    result = np.asarray(_call_worker(request), dtype=np.int64)
    if result.shape != (h.num_free,) or (result.size and (result.min() < 0 or result.max() >= h.num_parts)):
        raise ToolError(f"{_TOOL_NAMES[tool]} returned an invalid partition (shape {result.shape})")
    return result


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

    from jaxsdnn.hypergraph import build_hypergraph

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
