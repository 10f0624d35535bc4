"""Lower bounds on the communication volume of layer-balanced partitions.

A partitioner's volume means little without knowing how low any partition could go. This module
gives two bounds, both for partitions that keep every layer ``k >= 1`` within
``partition.layer_cap(weights, P, epsilon)``; layer 0 (the input features) is left free. A
device may hold every neuron without inputs (they weigh nothing) and may be empty in a layer
where the other devices can carry all of it.

The identity both rest on (:func:`receive_volume`): with ``S_d^k`` the neurons device ``d`` owns
in layer ``k`` and ``In(T)`` the neurons of layer ``k`` that some neuron of ``T`` (in layer
``k + 1``) reads, the connectivity-minus-one volume is

    sum over d and k = 0 .. L-1 of |In(S_d^{k+1}) minus S_d^k|,

the entries each device receives: one per input it needs and does not own.

:func:`device_chain_bound` holds for **every** such partition. Neurons of layer ``k`` that read
the same inputs form a *compute group*; neurons of layer ``k - 1`` read by the same readers form a
*read group*, and ``In`` of any set is a union of whole read groups. For one device, write
``a_k = |In(S^k)|``. Its receive count at layer ``k + 1`` is ``a_{k+1} - |S^k cap In(S^{k+1})|``,
and the overlap is at most ``phi_k(a_k, a_{k+1})``: the most neurons that a set of compute groups
of layer ``k`` whose inputs total ``<= a_k`` shares with the inputs of a set of compute groups of
layer ``k + 1`` whose inputs total ``<= a_{k+1}``, capped by how many neurons a device may hold.
``phi`` is bounded from above by knapsacks over connected sets of compute groups (*supports*): on
each side, and, as a second bound, over single read groups. So a shortest path over the states
``a_k`` (dynamic programming over layers) bounds one device's receives from below, and ``P``
times it bounds the volume. Every device also carries at least
the load the other ``P - 1`` caps leave over, so states whose input sets cannot reach that load
(:func:`_reachable`) are excluded; on the real 1024 x 120 network this lifts the bound at
``P = 8`` from 0 to 68,632. States above ``max_inputs`` are lumped,
with the trivial overlap bound, so the result stays a valid bound for any ``max_inputs``.

Alone, that path lets every device take the best pair of groups in every layer, as if devices did
not compete for them. *Prices* make them compete (Lagrangian relaxation of "each neuron on exactly
one device"): for any price ``p_g`` per neuron of group ``g``,
``V = sum_d (receives_d - p . load_d) + sum_g p_g |g|``, so ``P`` times one device's least priced
chain plus the constant is again a bound. :func:`class_assignment_prices` takes them from the
duals of :func:`class_preserving_bound`'s assignments; with them a device that keeps one class
unit per layer pays at least what that bound charges, and mixing classes is what is left to the
path. On the real 1024 x 120 network at ``P = 64`` this gives 217,292 (0.0701 x random), against
199,168 before both changes; the best partition found is 2.0 % above it.

:func:`class_preserving_bound` is tighter but narrower: it holds for partitions in which no device
mixes two input classes within a layer, for networks whose classes divide into devices exactly.

    python scripts/partition_bound.py --parts 64
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment, linprog

from jaxsdnn import partition as _partition
from jaxsdnn.network import SparseNetwork

__all__ = ["class_assignment_prices", "class_preserving_bound", "device_chain_bound", "receive_volume"]

# Connected sets of compute groups enumerated per layer before device_chain_bound halves the range
# of input counts it tracks exactly in that layer.
_SUPPORT_LIMIT = 50_000
# Values of the multiplier on a device's neuron count tried per layer pair (_gain).
_MULTIPLIERS = 12


def receive_volume(network: SparseNetwork, parts: Sequence[np.ndarray]) -> int:
    """``sum_d sum_k |In(S_d^{k+1}) - S_d^k|``: the entries devices receive per sample.

    Equals ``hypergraph.connectivity_volume(network, parts)[0]`` for every partition; kept as a
    separate, direct count because the bounds here are derived from this form.
    """
    total = 0
    num_parts = int(max(int(p.max()) for p in parts if p.size)) + 1
    for k in range(network.num_layers):
        w = network.weights[k]  # [n_k, n_{k+1}]: row x lists the neurons reading x
        src = np.repeat(np.arange(w.shape[0], dtype=np.int64), np.diff(w.indptr))
        needed = np.unique(src * num_parts + parts[k + 1][w.indices])  # (x, device reading x)
        total += int(np.count_nonzero(parts[k][needed // num_parts] != needed % num_parts))
    return total


def _group_inputs(network: SparseNetwork, k: int) -> tuple[np.ndarray, list, np.ndarray]:
    """Layer ``k``'s compute groups (``[n_k]`` ids), each group's inputs as read-group ids of layer
    ``k - 1``, and those read groups (``[n_{k-1}]`` ids, :meth:`SparseNetwork.reader_classes`)."""
    w = network.weights[k - 1].tocsc()
    groups = network.input_classes(k)
    read = network.reader_classes(k)
    first = np.unique(groups, return_index=True)[1]
    inputs = [np.unique(read[w.indices[w.indptr[j] : w.indptr[j + 1]]]) for j in first]
    return groups, inputs, read


def _connected_supports(inputs: list, read_sizes: np.ndarray, limit: int) -> list | None:
    """Connected sets of compute groups (linked by a shared read group) whose inputs total at most
    ``limit`` neurons, as ``(input total, frozenset of groups)``; None past ``_SUPPORT_LIMIT``."""
    holders: dict[int, list[int]] = {}
    for g, reads in enumerate(inputs):
        for h in reads.tolist():
            holders.setdefault(h, []).append(g)
    sets = [frozenset(r.tolist()) for r in inputs]
    rs = read_sizes.tolist()
    size = lambda reads: sum(rs[h] for h in reads)  # noqa: E731
    seen: set = set()
    out = []
    frontier = [(frozenset([g]), sets[g]) for g in range(len(sets)) if size(sets[g]) <= limit]
    while frontier:
        grown = []
        for support, reads in frontier:
            if support in seen:
                continue
            seen.add(support)
            out.append((size(reads), support))
            for g in {g for h in reads for g in holders[h]} - support:
                bigger = reads | sets[g]
                if size(bigger) <= limit and (support | {g}) not in seen:
                    grown.append((support | {g}, bigger))
            if len(seen) + len(grown) > _SUPPORT_LIMIT:
                return None
        frontier = grown
    return out


def _tracked(inputs: list, read_sizes: np.ndarray, max_inputs: int) -> tuple[int, int, int, list]:
    """``(step, smallest, states, supports)`` of one layer: ``|In(S)|`` is a multiple of ``step``
    (the gcd of the read-group sizes), at least ``smallest`` unless ``S`` is empty, and tracked
    exactly up to ``states * step <= max_inputs``, halved until the connected supports within that
    range number at most ``_SUPPORT_LIMIT``."""
    positive = read_sizes[read_sizes > 0]
    step = int(np.gcd.reduce(positive)) if positive.size else 1
    smallest = min((int(read_sizes[r].sum()) for r in inputs), default=0)
    limit = max(max_inputs, smallest)
    while True:
        supports = _connected_supports(inputs, read_sizes, limit)
        if supports is not None:
            return step, smallest, limit // step, supports
        if limit <= smallest:
            raise ValueError(
                f"more than {_SUPPORT_LIMIT} sets of compute groups read only {limit} inputs; "
                "this bound does not fit such a layer"
            )
        limit = max(limit // 2, smallest)


def _reachable(
    supports: list, group_loads: np.ndarray, step: int, states: int, least: int
) -> np.ndarray:
    """``[states + 1]``: whether a device's ``|In(S^k)|`` can be ``s * step`` while it carries at
    least ``least`` load. ``S^k`` touches a set of compute groups whose connected parts are
    supports with disjoint inputs, so ``|In(S^k)|`` is the sum of their input totals and the load
    is at most the sum of their groups' loads. An unbounded knapsack over the supports (a support
    may repeat, which only adds states) gives the most load for each exact input total."""
    most = np.full(states + 1, -1, np.int64)  # -1: no union of supports has this input total
    most[0] = 0
    items = {}
    for total, support in supports:
        s = total // step
        if 0 < s <= states:
            items[s] = max(items.get(s, 0), int(group_loads[list(support)].sum()))
    for s in range(1, states + 1):
        for size, load in items.items():
            if size <= s and most[s - size] >= 0:
                most[s] = max(most[s], most[s - size] + load)
    reachable = most >= least
    reachable[0] = False  # the caller decides whether S^k may need no inputs
    return reachable


def _knapsack(values: np.ndarray, weights: np.ndarray, states: int) -> np.ndarray:
    """``[rows, states + 1]``: per row, the most value of items (each used at most once) whose
    weights total at most ``c``, for each ``c``. ``values`` is ``[rows, items]`` (non-negative),
    ``weights`` ``[items]``; items of weight 0 always count, heavier than ``states`` never. Items of
    one weight are taken best first, so each weight is one step of the dynamic programme."""
    rows = values.shape[0]
    best = np.zeros((rows, states + 1))
    best += values[:, weights == 0].sum(1, keepdims=True)
    for wt in np.unique(weights[(weights > 0) & (weights <= states)]).tolist():
        take = -np.sort(-values[:, weights == wt], axis=1)[:, : states // wt]
        prefix = np.cumsum(take, axis=1)
        new = best.copy()
        for j in range(1, prefix.shape[1] + 1):
            new[:, j * wt :] = np.maximum(new[:, j * wt :], best[:, : states + 1 - j * wt] + prefix[:, j - 1 : j])
        best = new
    return np.maximum.accumulate(best, axis=1)


def _unions(value: np.ndarray) -> np.ndarray:
    """``phi[a, c]`` from ``value[s, c]`` (one connected support with inputs ``s``): the most any
    union of disjoint supports with inputs totalling at most ``a`` can have, each part seeing the
    whole budget ``c`` (an unbounded knapsack over ``s``, elementwise in ``c``)."""
    phi = np.zeros_like(value)
    phi[0] = value[0]
    for a in range(1, value.shape[0]):
        phi[a] = np.maximum(phi[a - 1], value[a])
        for s in range(1, a + 1):
            phi[a] = np.maximum(phi[a], phi[a - s] + value[s])
    return phi


def _top_load(prices: np.ndarray, sizes: np.ndarray, support, most: int) -> float:
    """The most price ``most`` neurons of a support's groups can carry (best groups first; a
    negative price is never taken, which only raises this upper bound)."""
    g = np.fromiter(support, np.int64)
    order = np.argsort(-prices[g])
    take = np.minimum(np.cumsum(sizes[g][order]), most)
    return float(np.diff(take, prepend=0) @ np.maximum(prices[g][order], 0.0))


def _checked_prices(prices, tables, num_layers: int):
    """Each layer's prices as floats, with 0 on groups that read nothing (:func:`_group_inputs`)."""
    out = [None]
    for k in range(1, num_layers + 1):
        groups, inputs, read = tables[k]
        n = int(groups.max()) + 1
        p = np.zeros(n) if prices is None or prices[k] is None else np.asarray(prices[k], float).copy()
        if p.shape != (n,) or not np.all(np.isfinite(p)):
            raise ValueError(f"layer {k} prices: expected {n} finite values (one per compute group)")
        out.append(np.where([r.size > 0 for r in inputs], p, 0.0))
    return out


def device_chain_bound(
    network: SparseNetwork,
    num_parts: int,
    epsilon: float = 0.03,
    max_inputs: int | None = None,
    prices: tuple | str | None = "auto",
) -> int:
    """A lower bound on the volume of every partition into ``num_parts`` devices that keeps each
    layer ``1..L`` within its ``epsilon`` cap (module docstring). ``max_inputs`` (default: twice
    the largest, over layers, of the smallest input set of a compute group, plus twice the most
    neurons a device may hold) is the largest
    ``|In(S^k)|`` tracked exactly; a layer with too many small input sets tracks less, which
    only loosens the bound.

    ``prices`` are the Lagrange multipliers of "every neuron on exactly one device": a pair
    ``(readers, sources)`` of per-layer arrays (index ``k`` = layer ``k``, one value per compute
    group, a price per neuron). The bound holds for any prices; good ones make devices compete for
    the groups every device would like. ``"auto"`` (default) also tries
    :func:`class_assignment_prices` where they exist and returns the larger bound; ``None`` uses
    none."""
    if isinstance(prices, str) and prices == "auto":
        dual = class_assignment_prices(network, num_parts)
        return _chain_bound(network, num_parts, epsilon, max_inputs, [None] if dual is None else [None, dual])
    return _chain_bound(network, num_parts, epsilon, max_inputs, [prices])


def class_assignment_prices(network: SparseNetwork, num_parts: int) -> tuple | None:
    """Prices from :func:`class_preserving_bound`'s per-layer assignments: the optimal duals of
    each layer pair's transportation problem (units of ``n / P`` neurons of a class of layer
    ``k - 1`` matched to units of layer ``k``). With them, a device that keeps one unit of a class
    per layer pays at least what the class-preserving bound charges it, so the chain bound holds
    every partition to about that level unless mixing classes really is cheaper. None where the
    class-preserving bound does not apply (unequal layers, classes not multiples of a unit)."""
    sizes = network.sizes[1:]
    if network.num_layers < 2 or len(set(sizes)) != 1 or sizes[0] % num_parts:
        return None
    u = sizes[0] // num_parts
    classes = [None] + [network.input_classes(k) for k in range(1, network.num_layers + 1)]
    if u == 0 or any(np.any(np.bincount(c) % u) for c in classes[1:]):
        return None
    readers = [None] + [np.zeros(int(c.max()) + 1) for c in classes[1:]]
    sources = [None] + [np.zeros(int(c.max()) + 1) for c in classes[1:]]
    for k in range(2, network.num_layers + 1):
        local = np.minimum(_partition.read_counts(network.weights[k - 1], classes[k - 1], classes[k]), u)
        rows, cols = local.shape
        pairs = np.arange(rows * cols)
        # dual of max sum x L s.t. class supplies and demands: min s.u + d.v, u_h + v_G >= L[h, G]
        a_ub = sp.csr_array(
            (-np.ones(2 * pairs.size), (np.tile(pairs, 2), np.concatenate([pairs // cols, rows + pairs % cols]))),
            shape=(pairs.size, rows + cols),
        )
        cost = np.concatenate([np.bincount(classes[k - 1], minlength=rows), np.bincount(classes[k], minlength=cols)]) / u
        res = linprog(cost, A_ub=a_ub, b_ub=-local.ravel().astype(float), bounds=(None, None), method="highs")
        if res.status != 0:
            return None
        sources[k - 1] = -res.x[:rows] / u
        readers[k] = -res.x[rows:] / u
    # where every device holds exactly one unit per layer (epsilon * u < 1), a constant added to a
    # layer's prices changes nothing but makes them >= 0, where the bound sees that it holds the unit
    return tuple([None] + [p - p.min() for p in side[1:]] for side in (readers, sources))


def _chain_bound(network, num_parts, epsilon, max_inputs, price_sets: list) -> int:
    """The largest of the bounds for each of ``price_sets`` (None: no prices), from one pass over
    the layers: the groups, supports and reachable states do not depend on the prices."""
    if network.num_layers < 2:
        return 0
    num_layers = network.num_layers
    weights = _partition.layer_weights(network)
    most, may_be_empty, least = [None], [None], [None]
    for w in weights[1:]:
        cap = _partition.layer_cap(w, num_parts, epsilon)
        # the others carry at most (P - 1) caps, so every device carries the rest
        least.append(max(0, int(w.sum()) - (num_parts - 1) * cap))
        positive = w[w > 0]
        per_device = cap // int(positive.min()) if positive.size else 0
        # neurons without inputs weigh nothing: a device may hold all of them besides its share
        most.append(int(w.size - positive.size) + per_device)
        # a device may hold nothing in this layer only if the others can carry all of it
        may_be_empty.append(least[-1] == 0 and (num_parts - 1) * per_device >= positive.size)
    tables = [None] + [_group_inputs(network, k) for k in range(1, num_layers + 1)]
    if max_inputs is None:
        smallest_inputs = []
        for _, inputs, read in tables[1:]:
            read_sizes = np.bincount(read)
            smallest_inputs.append(min((int(read_sizes[r].sum()) for r in inputs), default=0))
        # past the cap a device's input set costs at least its excess, so track the range where
        # the overlap decides: twice the most neurons a device holds, plus a compute group's reach
        max_inputs = 2 * max(smallest_inputs) + 2 * max(most[1:])
    # Lagrange multipliers: V = sum_d (receives_d - price . load_d) + sum_g price_g |g| for any
    # prices, so P * (one device's least priced cost) + the constant bounds V. A layer's price is
    # split in two roles, each counted in one transition: `readers` when S^k reads (k-1 -> k),
    # `sources` when it is read (k -> k+1). Layer 1 never reads and layer L is never read here.
    priced = []  # per price set: (readers, sources, the constant sum_g price_g |g|)
    for prices in price_sets:
        readers = _checked_prices(None if prices is None else prices[0], tables, num_layers)
        sources = _checked_prices(None if prices is None else prices[1], tables, num_layers)
        readers[1][:] = 0.0
        sources[num_layers][:] = 0.0
        offset = sum(
            float((readers[k] + sources[k]) @ np.bincount(tables[k][0], minlength=readers[k].size))
            for k in range(1, num_layers + 1)
        )
        priced.append((readers, sources, offset))
    # per state s of layer k (|In(S^k)| == s * step, or above the tracked range: `lumped`), the
    # fewest (priced) entries one device receives up to layer k
    costs = [None] * len(priced)  # per price set: (cost per state, lumped cost)
    prev = None
    for k in range(1, num_layers + 1):
        groups, inputs, read = tables[k]  # read: layer k-1 neurons by their readers in layer k
        read_sizes = np.bincount(read)
        step, smallest, states, supports = _tracked(inputs, read_sizes, max_inputs)
        size_of = np.arange(states + 1) * step
        reachable = _reachable(supports, np.bincount(groups, weights[k]), step, states, least[k])
        # an empty S^k, or one of neurons without inputs only, needs no inputs
        reachable[0] = may_be_empty[k] or (smallest == 0 and least[k] == 0)
        above = (states + 1) * step  # the least a lumped state can need
        for i, (readers, sources, _) in enumerate(priced):
            if k == 1:  # layer 0 is free: the device may hold any of its inputs there
                costs[i] = (np.where(reachable, 0.0, np.inf), 0.0)
                continue
            cost, lumped_cost = costs[i]
            phi = _gain(network, k, prev, tables[k], (step, states, supports), most, readers[k], sources[k - 1])
            # no more than S^{k-1} or Y holds, plus the most price either side can carry
            carry = most[k - 1] * max(0.0, sources[k - 1].max()) + most[k] * max(0.0, readers[k].max())
            ceiling = np.minimum(most[k - 1], size_of) + carry
            phi = np.minimum(phi, ceiling[None, :])
            # receives at layer k from state a to state w: w - phi[a, w]; from the lumped state
            # the overlap is only capped
            via_states = (cost[:, None] + (size_of[None, :] - phi)).min(0)
            via_lumped = lumped_cost + size_of - ceiling
            new_lumped = min(cost.min(), lumped_cost) + above - (min(most[k - 1], above) + carry)
            costs[i] = (np.where(reachable, np.minimum(via_states, via_lumped), np.inf), new_lumped)
        prev = (groups, step, states, supports)
    best = 0
    for (cost, lumped_cost), (_, _, offset) in zip(costs, priced):
        raw = num_parts * min(cost.min(), lumped_cost) + offset
        # the volume is an integer at least `raw`; the margin absorbs float rounding of the prices
        best = max(best, int(np.ceil(raw - 1e-7 * max(1.0, abs(raw)))))
    return best


def _gain(network, k, prev, table, tracked, most, readers, sources) -> np.ndarray:
    """``phi[a, c]``: an upper bound on ``|S^{k-1} cap In(S^k)|`` plus the prices the two sets
    carry (``sources`` on S^{k-1}, ``readers`` on S^k), over every ``S^{k-1}`` with inputs
    ``<= a * prev_step`` and every ``S^k`` with inputs ``<= c * step``.

    ``In(S^k)`` is a union of the inputs of disjoint connected supports of layer ``k``, so the
    read groups it spans are a knapsack over those supports (each adding the reader prices its
    best ``most[k]`` neurons carry), bounded again by a knapsack over single read groups. The
    ``most[k-1]`` neurons S^{k-1} keeps are priced through a multiplier ``lam`` on that count:
    for any ``lam >= 0`` a neuron of group ``g`` in Y is worth at most ``(1 + p_g - lam)^+`` and
    one outside ``(p_g - lam)^+``, plus ``lam * most[k-1]`` once, which is linear in Y; the
    least over a few ``lam`` is kept."""
    groups, inputs, read = table
    step, states, supports = tracked
    prev_groups, prev_step, prev_states, prev_supports = prev
    read_sizes = np.bincount(read)
    has_readers = np.zeros(read_sizes.size, bool)
    has_readers[read[np.diff(network.weights[k - 1].indptr) > 0]] = True
    overlap = np.zeros((int(prev_groups.max()) + 1, int(read.max()) + 1))
    np.add.at(overlap, (prev_groups, read), 1.0)
    overlap *= has_readers[None, :]
    member = np.zeros((len(prev_supports), overlap.shape[0]))  # [supports of layer k-1, groups]
    for i, (_, support) in enumerate(prev_supports):
        member[i, list(support)] = 1.0
    totals = np.array([t // prev_step for t, _ in prev_supports], np.int64)
    spans = np.zeros((read_sizes.size, len(supports)))  # [read groups, supports of layer k]
    for j, (_, support) in enumerate(supports):
        for g in support:
            spans[inputs[g], j] = 1.0
    support_steps = np.array([t // step for t, _ in supports], np.int64)
    group_sizes = np.bincount(groups, minlength=readers.size)
    carried = np.array([_top_load(readers, group_sizes, s, most[k]) for _, s in supports])
    read_steps = read_sizes // step
    prev_sizes = np.bincount(prev_groups, minlength=sources.size)
    lams = np.unique(np.concatenate([[0.0], sources, 1.0 + sources]))
    lams = lams[lams >= 0]
    if lams.size > _MULTIPLIERS:
        lams = np.unique(np.concatenate([[0.0], np.quantile(lams, np.linspace(0, 1, _MULTIPLIERS))]))
    phi = None
    for lam in lams.tolist():
        worth = np.maximum(1.0 + sources - lam, 0.0) - np.maximum(sources - lam, 0.0)
        base = member @ (prev_sizes * np.maximum(sources - lam, 0.0))
        per_read = member @ (overlap * worth[:, None])  # [supports of layer k-1, read groups]
        by_support = _knapsack(per_read @ spans + carried[None, :], support_steps, states)
        by_read = _knapsack(per_read, read_steps, states) + most[k] * max(0.0, readers.max())
        value = np.zeros((prev_states + 1, states + 1))
        np.maximum.at(value, totals, np.minimum(by_support, by_read) + base[:, None])
        bound = _unions(value) + lam * most[k - 1]
        phi = bound if phi is None else np.minimum(phi, bound)
    return phi


def class_preserving_bound(network: SparseNetwork, num_parts: int) -> int:
    """A lower bound on the volume of exactly balanced partitions in which no device mixes two
    input classes within a layer.

    Applies where every layer ``1..L`` has ``n`` neurons of equal load and ``u = n / P`` neurons
    fit one device exactly (``epsilon * u < 1`` forces it) and every class is a multiple of
    ``u``. A neuron ``x`` of layer ``k - 1`` read by ``r(x)`` neurons costs at least
    ``ceil(r(x) / u) - [its owner holds a reader]``; a device holding a unit of class ``h`` in
    layer ``k - 1`` and one of class ``G`` in layer ``k`` keeps at most ``min(u, N[h, G])`` local,
    so the local ones sum to at most the best assignment of units to units. Summing the per-layer
    bounds relaxes the consistency between layers, so the total is a valid bound.
    """
    sizes = network.sizes[1:]
    if len(set(sizes)) != 1 or sizes[0] % num_parts:
        raise ValueError(f"the bound needs equal layer sizes divisible by {num_parts} parts, got {sizes[:4]}...")
    u = sizes[0] // num_parts
    classes = [None] + [network.input_classes(k) for k in range(1, network.num_layers + 1)]
    if any(np.any(np.bincount(c) % u) for c in classes[1:]):
        raise ValueError(f"some input class is not a multiple of {u} neurons: no class-preserving balanced partition")
    total = 0
    for k in range(1, network.num_layers + 1):
        w = network.weights[k - 1]
        spread = -(-np.diff(w.indptr) // u)  # devices the readers of each neuron span at least
        if k == 1:
            total += int(np.sum(np.maximum(spread - 1, 0)))
            continue
        cls, prev = classes[k], classes[k - 1]
        counts = _partition.read_counts(w, prev, cls)
        rows = np.repeat(np.arange(counts.shape[0]), np.bincount(prev) // u)
        cols = np.repeat(np.arange(counts.shape[1]), np.bincount(cls) // u)
        local = np.minimum(counts[rows][:, cols], u)
        r, c = linear_sum_assignment(local, maximize=True)
        total += int(spread.sum() - local[r, c].sum())
    return total
