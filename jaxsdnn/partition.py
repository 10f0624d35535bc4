"""Who owns each neuron: partitions of every layer of a network, each layer balanced.

The load of a layer-``k`` neuron is its fan-in; a layer-0 neuron (an input feature) weighs 1,
the cost of loading it. A partition keeps *every* layer's imbalance (largest device load over
mean load, minus 1) within ``epsilon``: a device idle in one layer and overloaded in the next
gives no parallelism, however small the communication volume.

Methods (:data:`METHODS`):

* ``block``: contiguous neuron ranges, cut at the fan-in prefix sums;
* ``random``: a seeded random permutation, then cut the same way (the baseline volume);
* ``kahypar`` / ``mtkahypar``: a layer sweep with the neighbouring layers fixed, then
  coordinate-descent passes (see :func:`partition_network`).

What was measured (real Graph Challenge network, 1024 neurons x 120 layers, and 4096-neuron
RadiX-Nets) and chosen:

* one hypergraph of all layers under a single balance constraint (``_kahypar.
  partition_unconstrained``, benchmark only) cuts between layers and puts whole layers on one
  device (layer imbalance ``P - 1``): no parallelism;
* columns (one neuron position contracted over all layers, or over one RadiX-Net block) keep
  every layer balanced under one constraint but cost 1.45x the sweep's volume; look-ahead nets
  for the next layer in the sweep did not help;
* the sweep, then coordinate descent, each layer solved with its neighbours' devices as fixed
  anchors, then :func:`refine_layer`: chosen. Coordinate descent gains 1 to 3 % here, and a
  group-level simulated annealing started from its result found only 1.7 % more: in these
  networks the 16 neurons that read the same 32 inputs stay together, and what is left is
  how well each layer's groups line up with the next layer's (random) grouping;
* when every device holds one whole input class per layer (P = 64 there), the layers'
  matchings are independent linear assignment problems (:func:`unit_chains`): exact, and
  within 0.5 % of that class's lower bound (0.0712 x random), and 2.0 % above the bound for
  every layer-balanced partition (:func:`jaxsdnn.bounds.device_chain_bound`, 0.0701 x random);
  re-solving windows of two consecutive layers jointly with KaHyPar (per-layer balance repaired
  afterwards) gained 0.02 % at P = 8.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import heapq
import os
import weakref
import zipfile
import zlib

import numpy as np

from jaxsdnn import _kahypar
from jaxsdnn._atomic import atomic_write
from jaxsdnn.hypergraph import LayerHypergraph, connectivity_volume, contract, layer_hypergraph, layer_volume
from jaxsdnn.network import SparseNetwork

__all__ = ["METHODS", "Partition", "load_partition", "partition_network", "save_partition"]

METHODS = ("block", "random", "kahypar", "mtkahypar")
_FORMAT = 1
_META = ("format", "num_parts", "method", "epsilon", "seed", "fingerprint")
_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fingerprint(network: SparseNetwork) -> str:
    """``network.fingerprint()``, hashed once per network object (0.1 s for 1024 x 120)."""
    if network not in _FINGERPRINTS:
        _FINGERPRINTS[network] = network.fingerprint()
    return _FINGERPRINTS[network]


@dataclasses.dataclass(frozen=True, eq=False)
class Partition:
    """The owning device of every neuron of every layer.

    Attributes:
        parts: ``L + 1`` read-only int32 arrays, ``parts[k]`` of shape ``[n_k]`` with values in
            ``[0, num_parts)``; ``parts[0]`` places the input features.
        num_parts: ``P``, the number of devices.
        method: the method that made it (one of :data:`METHODS`, or any label).
        epsilon: the per-layer imbalance bound it was made for.
        seed: the seed it was made with.
        fingerprint: ``network.fingerprint()`` of the network it belongs to.
    """

    parts: tuple[np.ndarray, ...]
    num_parts: int
    method: str
    epsilon: float
    seed: int
    fingerprint: str

    def __post_init__(self):
        if int(self.num_parts) != self.num_parts or self.num_parts < 1:
            raise ValueError(f"num_parts={self.num_parts} must be an integer >= 1")
        parts = []
        for k, p in enumerate(self.parts):
            p = np.asarray(p)
            if p.ndim != 1 or not (np.issubdtype(p.dtype, np.integer) or p.size == 0):
                raise ValueError(f"layer{k}: expected a 1-D integer array, got {p.dtype} {p.shape}")
            bad = np.flatnonzero((p < 0) | (p >= self.num_parts))
            if bad.size:
                raise ValueError(
                    f"layer{k}: neuron {int(bad[0])} has device {int(p[bad[0]])}, expected [0, {self.num_parts})"
                )
            p = p.astype(np.int32)
            p.setflags(write=False)
            parts.append(p)
        if not parts:
            raise ValueError("a partition needs at least layer0 and layer1")
        object.__setattr__(self, "parts", tuple(parts))
        object.__setattr__(self, "num_parts", int(self.num_parts))
        object.__setattr__(self, "epsilon", float(self.epsilon))
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "method", str(self.method))
        object.__setattr__(self, "fingerprint", str(self.fingerprint))

    @property
    def num_layers(self) -> int:
        return len(self.parts) - 1

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(p.size) for p in self.parts)

    def validate_for(self, network: SparseNetwork) -> None:
        """Raises ``ValueError`` unless this partition was made for ``network``'s structure."""
        if self.num_layers != network.num_layers:
            raise ValueError(
                f"partition has {self.num_layers} layers (layer0..layer{self.num_layers}) but the network "
                f"has {network.num_layers}"
            )
        for k, (have, want) in enumerate(zip(self.sizes, network.sizes)):
            if have != want:
                raise ValueError(f"partition layer{k} has {have} neurons but the network's layer {k} has {want}")
        if self.fingerprint != _fingerprint(network):
            raise ValueError(
                f"partition fingerprint {self.fingerprint[:16]}... does not match the network's "
                f"{_fingerprint(network)[:16]}...: it was made for another network"
            )


# -- balance -------------------------------------------------------------------------------


def layer_weights(network: SparseNetwork) -> list[np.ndarray]:
    """The load of every neuron: 1 for layer 0, the fan-in for layers ``1..L`` (int64)."""
    return [np.ones(network.sizes[0], np.int64)] + [network.fan_in(k) for k in range(1, network.num_layers + 1)]


def _lpt_makespan(weights: np.ndarray, num_parts: int) -> int:
    """Largest device load of the longest-processing-time-first packing (an achievable load)."""
    loads = [0] * num_parts
    for w in np.sort(weights)[::-1].tolist():
        heapq.heapreplace(loads, loads[0] + int(w))
    return max(loads)


def layer_cap(weights: np.ndarray, num_parts: int, epsilon: float) -> int:
    """The largest load a device may carry: ``floor((1 + epsilon) * total / P)``.

    When that is not achievable (a 10-class output layer on 4 devices, 37 inputs on 4 devices at
    3 %), the cap is the largest load of a heaviest-first packing instead, the smallest load this
    module can guarantee; ``partition_metrics`` then reports the layer's real imbalance.
    """
    total = int(weights.sum())
    cap = int(np.floor((1.0 + epsilon) * total / num_parts + 1e-9))
    if weights.size and cap < total / num_parts + int(weights.max()):  # list scheduling may not fit
        cap = max(cap, _lpt_makespan(weights, num_parts))
    return cap


def _contiguous(weights: np.ndarray, num_parts: int) -> np.ndarray:
    """Cuts a sequence into ``P`` ranges at the midpoints of the weight prefix sums."""
    n, total = weights.size, int(weights.sum())
    if total == 0:
        return (np.arange(n, dtype=np.int64) * num_parts) // n
    mid = np.cumsum(weights) - weights / 2.0
    return np.minimum((mid * num_parts / total).astype(np.int64), num_parts - 1)


def _swap_once(weights: np.ndarray, parts: np.ndarray, loads: np.ndarray, cap: int, gains: np.ndarray) -> bool:
    """Swaps a heavier neuron of the most loaded device with a lighter one elsewhere that has room.

    Picks, over all devices ``q``, the weight pair ``a > b`` (``a`` on the overloaded device,
    ``b`` on ``q``) with ``loads[q] + a - b <= cap`` that removes the most excess, then the two
    neurons of those weights with the best summed move gains. Returns whether it swapped.
    """
    p = int(np.argmax(loads))
    excess = loads[p] - cap
    on_p = np.flatnonzero(parts == p)
    best = None
    for q in np.flatnonzero(loads < cap):
        on_q = np.flatnonzero(parts == q)
        a = np.unique(weights[on_p])[:, None]
        b = np.unique(weights[on_q])[None, :]
        d = a - b
        ok = (d > 0) & (loads[q] + d <= cap)
        if not ok.any():
            continue
        score = np.where(ok, np.minimum(d, excess), -1)
        i, j = np.unravel_index(np.argmax(score), score.shape)
        if best is None or score[i, j] > best[0]:
            best = (score[i, j], q, a[i, 0], b[0, j], on_q)
    if best is None:
        return False
    _, q, a, b, on_q = best
    u = on_p[weights[on_p] == a]
    v = on_q[weights[on_q] == b]
    u = u[np.argmax(gains[u, q])]
    v = v[np.argmax(gains[v, p])]
    parts[u], parts[v] = q, p
    loads[p] += b - a
    loads[q] += a - b
    return True


def _greedy_pack(weights: np.ndarray, parts: np.ndarray, cap: int, num_parts: int, sticky: bool = True):
    """Heaviest first: a neuron stays where it fits (``sticky``), else goes to the least loaded device.

    With ``sticky=False`` this is the LPT packing whose largest load :func:`layer_cap` allows.
    """
    out = parts.copy()
    loads = np.zeros(num_parts, np.int64)
    for v in np.argsort(-weights, kind="stable"):
        p = out[v] if sticky and loads[out[v]] + weights[v] <= cap else int(np.argmin(loads))
        out[v] = p
        loads[p] += weights[v]
    return out


def repair_balance(weights: np.ndarray, parts: np.ndarray, cap: int, num_parts: int, gains=None, layer: int = 0):
    """Moves neurons out of devices loaded above ``cap``, cheapest moves first.

    Args:
        weights: ``[n]`` int64 loads.
        parts: ``[n]`` int64 devices.
        cap: the largest allowed load.
        num_parts: ``P``.
        gains: ``None`` or a function ``parts -> [n, P]`` volume decrease of each move.
        layer: for the error message.

    Returns:
        ``[n]`` int64 devices with every load ``<= cap``.

    Raises:
        ValueError: if no such assignment was found (e.g. one neuron outweighs ``cap``).
    """
    parts = np.asarray(parts, np.int64).copy()
    loads = np.bincount(parts, weights=weights, minlength=num_parts).astype(np.int64)
    for _ in range(200):
        if loads.max() <= cap:
            return parts
        cand = np.flatnonzero((loads[parts] > cap) & (weights > 0))
        every = gains(parts) if gains is not None else np.zeros((parts.size, num_parts))
        fits = weights[cand, None] <= (cap - loads)[None, :]
        if not fits.any():
            if _swap_once(weights, parts, loads, cap, every):
                continue
            break
        g = np.where(fits, every[cand], -np.inf)
        g[np.arange(cand.size), parts[cand]] = -np.inf
        target = np.argmax(g, axis=1)
        best = g[np.arange(cand.size), target]
        moved = False
        for i in np.lexsort((-weights[cand], -best)):
            v, q = cand[i], target[i]
            if not np.isfinite(best[i]) or loads[parts[v]] <= cap or loads[q] + weights[v] > cap:
                continue
            loads[parts[v]] -= weights[v]
            loads[q] += weights[v]
            parts[v] = q
            moved = True
        if not moved:
            break
    for sticky in (True, False):
        packed = _greedy_pack(weights, parts, cap, num_parts, sticky)
        loads = np.bincount(packed, weights=weights, minlength=num_parts)
        if loads.max() <= cap:
            return packed
    raise ValueError(
        f"layer {layer}: cannot balance {weights.size} neurons (total load {int(weights.sum())}, heaviest "
        f"{int(weights.max())}) over {num_parts} devices with at most {cap} each; use a larger epsilon "
        "or fewer parts"
    )


def refine_layer(h: LayerHypergraph, weights: np.ndarray, parts: np.ndarray, cap: int, rounds: int = 8):
    """Balanced greedy local search on one layer: independent improving moves and swaps.

    Each round computes every move's gain, keeps the vertices whose best move improves and
    that win (highest gain) in every net they share, so their gains add up exactly, and applies
    those moves that fit under ``cap`` (best first); a vertex whose target is full swaps with one
    that wants to move the other way. The volume strictly drops in every round that moves.
    This catches what the tools miss: KaHyPar ignores nets with a single free pin (a neuron and
    the anchors of its readers), and with no slack under ``cap`` neither tool can move at all.

    Args:
        h: the layer's hypergraph.
        weights: ``[n]`` int64 loads.
        parts: ``[n]`` int64 devices, every load ``<= cap``.
        cap: the largest allowed load.
        rounds: the most rounds.

    Returns:
        ``[n]`` int64 devices, every load still ``<= cap``.
    """
    n, P = h.num_free, h.num_parts
    parts = np.asarray(parts, np.int64).copy()
    loads = np.bincount(parts, weights=weights, minlength=P).astype(np.int64)
    free = h.net_pins < n
    pin_vertex, pin_net = h.net_pins[free], h.pin_nets()[free]
    tiebreak = np.random.default_rng(n).random(n) * 1e-3  # gains are integers: only breaks ties
    for _ in range(rounds):
        gains = h.move_gains(parts)
        gains[np.arange(n), parts] = -np.inf
        target = np.argmax(gains, axis=1)
        best = gains[np.arange(n), target]
        priority = np.where(best > 0, best + tiebreak, -np.inf)
        top = np.full(h.num_nets, -np.inf)
        np.maximum.at(top, pin_net, priority[pin_vertex])
        beaten = np.bincount(pin_vertex, weights=priority[pin_vertex] < top[pin_net], minlength=n) > 0
        chosen = np.flatnonzero((best > 0) & ~beaten)
        waiting: dict = {}
        moved = 0
        for v in chosen[np.argsort(-best[chosen], kind="stable")]:
            p, q = parts[v], target[v]
            if loads[q] + weights[v] <= cap:
                loads[p] -= weights[v]
                loads[q] += weights[v]
                parts[v] = q
                moved += 1
                continue
            partners = waiting.get((q, p), [])
            for i, u in enumerate(partners):
                if loads[q] + weights[v] - weights[u] <= cap and loads[p] + weights[u] - weights[v] <= cap:
                    loads[p] += weights[u] - weights[v]
                    loads[q] += weights[v] - weights[u]
                    parts[v], parts[u] = q, p
                    del partners[i]
                    moved += 2
                    break
            else:
                waiting.setdefault((p, q), []).append(v)
        if moved == 0:
            break
    return parts


# -- methods -------------------------------------------------------------------------------


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check_arguments(network: SparseNetwork, num_parts, method, epsilon, seed, threads) -> None:
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {METHODS}")
    if not _is_int(num_parts) or num_parts < 1:
        raise ValueError(f"num_parts={num_parts!r} must be an integer >= 1")
    for k, n in enumerate(network.sizes):
        if num_parts > n:
            what = f"layer {k} (the input features)" if k == 0 else f"layer {k}"
            raise ValueError(f"num_parts={num_parts} is larger than {what}, which has {n} neurons")
    if not (isinstance(epsilon, (int, float, np.floating)) and 0.0 < float(epsilon) < 1.0):
        raise ValueError(f"epsilon={epsilon!r} must be in (0, 1)")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed={seed!r} must be an integer >= 0")
    if not _is_int(threads) or threads < 1:
        raise ValueError(f"threads={threads!r} must be an integer >= 1")


def contraction_groups(network: SparseNetwork, k: int, num_parts: int, per_part: int = 4,
                       classes: dict | None = None) -> np.ndarray | None:
    """Chunks of layer ``k``'s neurons that the tool may treat as one vertex: ``[n_k]`` ids, or None.

    Neurons reading the same inputs (:meth:`~jaxsdnn.network.SparseNetwork.input_classes`; for
    layer 0, inputs read by the same neurons) are cut into chunks of at most ``n_k / (P *
    per_part)`` neurons, so that every device's share is at least ``per_part`` chunks and the tool
    can still balance. Within a class, neurons are ordered by the smallest next-layer class
    reading them, so that neurons read together tend to share a chunk. None where chunks would
    not halve the vertex count. ``classes``: a dict that memoises ``input_classes`` by layer
    across calls.
    """
    n = network.sizes[k]
    size = n // (int(num_parts) * per_part)
    if size < 2:
        return None
    classes = {} if classes is None else classes

    def inputs(j):
        if j not in classes:
            classes[j] = network.input_classes(j)
        return classes[j]

    key = inputs(k) if k >= 1 else network.reader_classes(1)
    sig = np.full(n, -1, np.int64)
    if k < network.num_layers:
        w = network.weights[k]
        rows = np.flatnonzero(np.diff(w.indptr) > 0)
        if rows.size:
            sig[rows] = np.minimum.reduceat(inputs(k + 1)[w.indices], w.indptr[rows])
    order = np.lexsort((np.arange(n), sig, key))
    sorted_key = key[order]
    rank = np.arange(n) - np.searchsorted(sorted_key, sorted_key)  # position inside the class
    chunk = rank // size
    new = np.ones(n, bool)
    new[1:] = (sorted_key[1:] != sorted_key[:-1]) | (chunk[1:] != chunk[:-1])
    groups = np.empty(n, np.int64)
    groups[order] = np.cumsum(new) - 1
    return groups if 2 * (int(groups.max()) + 1) <= n else None


def _solve(network, parts, k, weights, cap, num_parts, tool, epsilon, seed, threads,
           groups=None, h=None) -> tuple[np.ndarray, int]:
    """Partitions layer ``k`` with the known neighbours fixed; returns (devices, local volume).

    With ``groups`` (:func:`contraction_groups`) the tool partitions the contracted hypergraph;
    the result is expanded, then repaired and refined neuron by neuron on the full one. ``h``:
    the layer's hypergraph, if the caller has built it already.
    """
    h = layer_hypergraph(network, parts, k, num_parts) if h is None else h
    if h.num_nets == 0:  # nothing to gain: any balanced assignment will do
        p = _contiguous(weights, num_parts)
    else:
        small, w = (h, weights) if groups is None else (
            contract(h, groups), np.bincount(groups, weights=weights).astype(np.int64))
        try:
            p = _kahypar.solve_layer(small, w, cap, tool, epsilon, seed, threads)
        except _kahypar.ToolError as e:
            raise _kahypar.ToolError(
                f"layer {k} ({weights.size} neurons, {h.num_nets} nets, {num_parts} parts): {e}"
            ) from None
        if groups is not None:
            p = p[groups]
    p = repair_balance(weights, p, cap, num_parts, gains=h.move_gains, layer=k)
    if h.num_nets:
        p = refine_layer(h, weights, p, cap, rounds=8)
    return p, h.volume(p)


def _sweep_and_descend(network, weights, caps, num_parts, tool, epsilon, seed, threads, passes, tol,
                       contract_: bool = True, progress=None, workers: int = 1):
    """The forward sweep, then coordinate-descent passes.

    A pass re-solves every layer against its two neighbours, first the layers of one parity
    (alternating by pass), then the others: layers of one parity share no neighbour, so each half
    is a set of independent problems, solved ``workers`` at a time in separate tool processes.
    The result does not depend on ``workers``.

    ``progress(stage, done, total, volume)``, if given, is called after every layer: ``volume`` is
    the volume of the layers placed so far (exact: a pass changes it by each accepted gain).
    """
    L = network.num_layers
    memo: dict = {}  # input classes by layer, shared by neighbouring layers' groups
    groups = [contraction_groups(network, k, num_parts, classes=memo) if contract_ else None for k in range(L + 1)]
    parts: list = [None] * (L + 1)
    volume = 0
    for i, k in enumerate([1, 0] + list(range(2, L + 1))):  # layer 1 first: its readers-of-one-input nets
        parts[k], _ = _solve(network, parts, k, weights[k], caps[k], num_parts, tool, epsilon, seed, threads,
                             groups[k])
        if progress is not None:
            volume += layer_volume(network, parts, max(k, 1), num_parts) if k != 1 else 0
            progress("sweep", i + 1, L + 1, volume)

    def attempt(k, t):
        h = layer_hypergraph(network, parts, k, num_parts)
        before = h.volume(parts[k])
        if before == 0:
            return k, None, before, before
        p, after = _solve(network, parts, k, weights[k], caps[k], num_parts, tool, epsilon, seed + 1 + t,
                          threads, groups[k], h)
        return k, p, before, after

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        for t in range(passes):
            gained, total, done, stalled = 0, 0, 0, False
            for parity in (t % 2, 1 - t % 2):
                layers = list(range(parity, L + 1, 2))
                results = list(pool.map(lambda k: attempt(k, t), layers)) if pool else (attempt(k, t) for k in layers)
                half_gained, half_total = 0, 0
                for k, p, before, after in results:
                    half_total += before
                    if p is not None and after < before:
                        parts[k] = p
                        half_gained += before - after
                        volume -= before - after
                    done += 1
                    if progress is not None:
                        progress(f"pass {t + 1}", done, L + 1, volume)
                gained, total = gained + half_gained, total + half_total
                if half_gained <= tol * half_total:  # a half that gains nothing ends the descent
                    stalled = True
                    break
            if stalled or gained <= tol * total:
                break
    finally:
        if pool is not None:
            pool.shutdown()
    return parts


# -- unit chains (one identical-input unit per device and layer) ---------------------------


def _split_units(network: SparseNetwork, groups: list, k: int, size: int) -> np.ndarray:
    """Cuts every input class of layer ``k`` into units of ``size`` neurons; ``[n_k]`` unit ids.

    Within a class, neurons are ordered by the smallest next-layer class that reads them, so
    that neurons read by the same next-layer class tend to share a unit.
    """
    g = groups[k]
    n = g.size
    sig = np.full(n, -1, np.int64)
    if k < network.num_layers:
        w = network.weights[k]
        rows = np.flatnonzero(np.diff(w.indptr) > 0)
        if rows.size:
            sig[rows] = np.minimum.reduceat(groups[k + 1][w.indices], w.indptr[rows])
    order = np.lexsort((np.arange(n), sig, g))
    sorted_g = g[order]
    rank = np.arange(n) - np.searchsorted(sorted_g, sorted_g)  # position inside the class
    per_class = np.bincount(g) // size
    base = np.concatenate([[0], np.cumsum(per_class)[:-1]])
    units = np.empty(n, np.int64)
    units[order] = base[sorted_g] + rank // size
    return units


def read_counts(weight, prev_ids: np.ndarray, cur_ids: np.ndarray) -> np.ndarray:
    """``[prev_ids.max() + 1, cur_ids.max() + 1]``: how many distinct layer ``k - 1`` neurons with
    each id in ``prev_ids`` are read by some layer ``k`` neuron with each id in ``cur_ids``.

    ``weight`` is layer ``k``'s CSR ``[n_{k-1}, n_k]``; ids are classes, units or devices.
    """
    src = np.repeat(np.arange(weight.shape[0], dtype=np.int64), np.diff(weight.indptr))
    m = int(cur_ids.max()) + 1
    pairs = np.unique(src * m + cur_ids[weight.indices])  # distinct (neuron, reading id)
    counts = np.zeros((int(prev_ids.max()) + 1, m), dtype=np.int64)
    np.add.at(counts, (prev_ids[pairs // m], pairs % m), 1)
    return counts


def unit_chains(network: SparseNetwork, weights: list, num_parts: int):
    """One unit of identical-input neurons per device and layer, consecutive layers matched optimally.

    Applies when layers ``1..L`` all have ``n`` neurons of one load each, and every class of
    neurons with the same input set has a multiple of ``u = n / P`` neurons: each device then
    holds exactly one ``u``-unit of every layer (every layer exactly balanced). A device holding
    unit ``h`` of layer ``k - 1`` and unit ``G`` of layer ``k`` keeps the neurons of ``h`` that
    ``G`` reads local; the layers' matchings are independent (any sequence of matchings is
    realised by relabelling devices), so each is a linear assignment problem, solved exactly.
    Among partitions in which no device mixes two input classes in a layer, this is optimal
    for every layer whose previous layer's classes have exactly ``u`` neurons (measured on
    the 1024 x 120 Graph Challenge network at P = 64: 0.0715x random, within 0.5 % of that
    class's lower bound 0.0712x, against 0.0718x for the sweep). Layer 0 is then solved
    against layer 1 by the caller.

    Returns:
        ``L + 1`` arrays (``None`` for layer 0) of devices, or ``None`` where it does not apply.
    """
    from scipy.optimize import linear_sum_assignment

    L, P = network.num_layers, int(num_parts)
    sizes = network.sizes[1:]
    if P < 2 or L < 1 or len(set(sizes)) != 1 or sizes[0] % P:
        return None
    u = sizes[0] // P
    if any(w.size and w.min() != w.max() for w in weights[1:]):
        return None
    groups = [None]
    for k in range(1, L + 1):  # stop at the first layer whose classes do not cut into units
        groups.append(network.input_classes(k))
        if np.any(np.bincount(groups[k]) % u):
            return None
    units = [None] + [_split_units(network, groups, k, u) for k in range(1, L + 1)]
    parts: list = [None, units[1].copy()]
    for k in range(2, L + 1):
        local = read_counts(network.weights[k - 1], units[k - 1], units[k])  # [P, P]
        rows, cols = linear_sum_assignment(local, maximize=True)
        device_of_prev = np.empty(P, np.int64)
        device_of_prev[units[k - 1]] = parts[k - 1]
        device_of_unit = np.empty(P, np.int64)
        device_of_unit[cols] = device_of_prev[rows]
        parts.append(device_of_unit[units[k]])
    return parts


def partition_network(
    network: SparseNetwork,
    num_parts: int,
    method: str = "kahypar",
    epsilon: float = 0.03,
    seed: int = 0,
    threads: int = 1,
    *,
    passes: int = 3,
    tol: float = 0.001,
    contract: bool = True,
    progress=None,
    workers: int = 1,
) -> Partition:
    """Partitions every layer of ``network`` over ``num_parts`` devices, each layer balanced.

    ``kahypar`` and ``mtkahypar`` sweep the layers (layer 1 with only the nets "readers of one
    input together", then layer 0 against it, then layers 2..L each against the layer before),
    then run up to ``passes`` coordinate-descent passes, each over the layers of one parity and
    then the other (independent problems, ``workers`` at a time): each layer is re-partitioned
    against both neighbours and the result kept if the two adjacent layers' volume drops; the
    passes stop once one of them, or one half of one, gains less than ``tol`` of that volume
    (on generated RadiX-Net networks the first half gains nothing: 16384 x 120 at P = 64, a whole
    pass gained 0.01 % and cost more than the sweep).
    Fixed neighbours enter each layer's hypergraph as one anchor vertex per device. After every
    tool call the layer's balance is checked and repaired with the cheapest moves, then
    :func:`refine_layer` improves it under the same caps. Where :func:`unit_chains` applies
    (every device exactly one unit of identical-input neurons per layer), its partition, layer 0
    solved against it, replaces the sweep's if its volume is lower.

    Measured on the 1024 x 120 Graph Challenge network (``kahypar``, contracted, 2 workers on 2
    cores): 0.126 x the random partition's volume at P = 8 (3.9 s), 0.077 x at P = 16 (4.6 s),
    0.0715 x at P = 64 (20.1 s; unit chains, against 0.0718 x for the sweep); generated RadiX-Net
    16384 x 120 at P = 64 in 89.5 s and 65536 x 120 at P = 256 in 660 s; every layer within 3 %.

    Args:
        network: the network; only its structure is read.
        num_parts: ``P >= 1``, at most the size of the smallest layer.
        method: one of :data:`METHODS`.
        epsilon: allowed imbalance of every layer, in ``(0, 1)``.
        seed: seeds ``random`` and both tools (the partition is the same for the same seed).
        threads: Mt-KaHyPar threads (its first use in a process fixes the count; the result
            does not depend on it).
        passes: the most coordinate-descent passes (0: the sweep only).
        tol: the relative gain below which passes stop.
        contract: let the tool see chunks of identical-input neurons as single vertices
            (:func:`contraction_groups`, :func:`~jaxsdnn.hypergraph.contract`); every chunk is
            then refined neuron by neuron. Measured (one core): real 1024 x 120 at P = 8, 10.1 s
            against 25.8 s and volume 106,799 against 106,979; at P = 16, 10.6 s against 43.0 s
            and 124,928 against 124,877; generated 4096 x 24 at P = 16, 9.2 s against 21.3 s and
            78,743 against 79,052.
        workers: tool processes solving a pass's independent layers at once (2 on a 2-core
            machine); the partition does not depend on it.
        progress: ``progress(stage, layers_done, layers, volume_so_far)`` after every layer
            of the sweep and of every pass (``kahypar`` / ``mtkahypar``).

    Returns:
        The :class:`Partition`, every layer's largest load within ``(1 + epsilon)`` of its mean, or
        where no packing can do that (a 10-class head on 4 devices) within the best packing found
        (see :func:`layer_cap`).

    Raises:
        ValueError: for a bad argument.
    """
    _check_arguments(network, num_parts, method, epsilon, seed, threads)
    if not _is_int(workers) or workers < 1:
        raise ValueError(f"workers={workers!r} must be an integer >= 1")
    P = int(num_parts)
    weights = layer_weights(network)
    caps = [layer_cap(w, P, epsilon) for w in weights]
    for k, (w, cap) in enumerate(zip(weights, caps)):
        if w.size and w.max() > cap:
            raise ValueError(
                f"layer {k}: neuron {int(np.argmax(w))} has load {int(w.max())} but a device may carry at most "
                f"{cap} (epsilon={epsilon}, {P} parts); use a larger epsilon or fewer parts"
            )
    if P == 1:
        parts = [np.zeros(n, np.int64) for n in network.sizes]
    elif method == "block":
        parts = [_contiguous(w, P) for w in weights]
    elif method == "random":
        rng = np.random.default_rng(seed)
        parts = []
        for w in weights:
            order = rng.permutation(w.size)
            p = np.empty(w.size, np.int64)
            p[order] = _contiguous(w[order], P)
            parts.append(p)
    else:
        parts = _sweep_and_descend(network, weights, caps, P, method, float(epsilon), int(seed), threads, passes, tol,
                                   contract, progress, workers)
        chains = unit_chains(network, weights, P)
        if chains is not None:
            args = (weights[0], caps[0], P, method, float(epsilon), int(seed), threads)
            chains[0], _ = _solve(network, chains, 0, *args)
            if connectivity_volume(network, chains)[0] < connectivity_volume(network, parts)[0]:
                parts = chains
    parts = [repair_balance(w, p, cap, P, layer=k) for k, (w, p, cap) in enumerate(zip(weights, parts, caps))]
    return Partition(tuple(parts), P, method, float(epsilon), int(seed), _fingerprint(network))


# -- files ---------------------------------------------------------------------------------


def save_partition(path: str | os.PathLike, partition: Partition) -> None:
    """Writes ``partition`` to an ``.npz`` file atomically (the old file survives any failure).

    The file holds int32 arrays ``layer0 .. layerL`` and the metadata ``format``, ``num_parts``,
    ``method``, ``epsilon``, ``seed`` and ``fingerprint`` as 0-d arrays (no pickles).
    """
    arrays = {f"layer{k}": p for k, p in enumerate(partition.parts)}
    arrays.update(
        format=np.int64(_FORMAT),
        num_parts=np.int64(partition.num_parts),
        method=np.str_(partition.method),
        epsilon=np.float64(partition.epsilon),
        seed=np.int64(partition.seed),
        fingerprint=np.str_(partition.fingerprint),
    )
    with atomic_write(path, "wb") as f:
        np.savez(f, **arrays)


def load_partition(path: str | os.PathLike, network: SparseNetwork | None = None) -> Partition:
    """Reads a partition written by :func:`save_partition`.

    Args:
        path: the ``.npz`` file.
        network: if given, the partition is checked against it (:meth:`Partition.validate_for`).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: naming ``path``, for a file that is not a complete partition file, or one
            made for another network.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such partition file")
    try:
        with np.load(path, allow_pickle=False) as data:
            names = set(data.files)
            missing = [m for m in _META if m not in names]
            if missing or "layer0" not in names:
                raise ValueError(f"missing {', '.join(missing) or 'layer0'} (has {sorted(names)[:8]})")
            num_layers = len([n for n in names if n.startswith("layer")]) - 1
            layer_names = [f"layer{k}" for k in range(num_layers + 1)]
            if set(layer_names) - names:
                raise ValueError(f"layer arrays are not layer0..layer{num_layers}")
            if int(data["format"]) != _FORMAT:
                raise ValueError(f"format {int(data['format'])}, expected {_FORMAT}")
            partition = Partition(
                parts=tuple(data[name] for name in layer_names),
                num_parts=int(data["num_parts"]),
                method=str(data["method"]),
                epsilon=float(data["epsilon"]),
                seed=int(data["seed"]),
                fingerprint=str(data["fingerprint"]),
            )
    except (ValueError, OSError, EOFError, KeyError, TypeError, zipfile.BadZipFile, zlib.error) as e:
        raise ValueError(f"{path}: not a valid partition file: {e}") from e
    if network is not None:
        try:
            partition.validate_for(network)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
    return partition
