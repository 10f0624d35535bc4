"""A lower bound on the volume of class-preserving, exactly balanced partitions.

Applies where every layer ``1..L`` has ``n`` neurons of equal load and ``u = n / P`` neurons fit
one device exactly (so every device holds exactly ``u`` per layer, as ``epsilon * u < 1``
forces), and considers partitions in which no device mixes two *input classes* (neurons reading
the same inputs, :meth:`SparseNetwork.input_classes`) within a layer: the class the kahypar
sweep nearly stays in (it keeps 99.7 % of the Graph Challenge network's classes whole).

For a neuron ``x`` of layer ``k - 1`` read by ``r(x)`` neurons, its readers span at least
``ceil(r(x) / u)`` devices, so its cost (devices holding it or a reader, minus one) is at least
``ceil(r(x) / u) - [its owner holds a reader]``. A device holding a unit of class ``h`` in layer
``k - 1`` and one of class ``G`` in layer ``k`` keeps at most ``min(u, N[h, G])`` of its neurons
local (``N[h, G]``: neurons of ``h`` that ``G`` reads), so the local ones sum to at most the best
assignment of units to units (``scipy.optimize.linear_sum_assignment``). Summing the per-layer
bounds relaxes the consistency between layers, so the total is a valid lower bound. Layer 0
(no classes assumed) contributes ``sum(ceil(r(x) / u) - 1)``.

    python scripts/partition_bound.py --parts 64 [--layers 120]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from scipy.optimize import linear_sum_assignment

from jaxsdnn import hypergraph, io, partition

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def class_preserving_bound(net, num_parts: int) -> int:
    sizes = net.sizes[1:]
    if len(set(sizes)) != 1 or sizes[0] % num_parts:
        sys.exit("the bound needs equal layer sizes divisible by the number of parts")
    u = sizes[0] // num_parts
    classes = [None] + [net.input_classes(k) for k in range(1, net.num_layers + 1)]
    if any(np.any(np.bincount(c) % u) for c in classes[1:]):
        sys.exit(f"some input class is not a multiple of {u} neurons: no class-preserving balanced partition")
    total = 0
    for k in range(1, net.num_layers + 1):
        w = net.weights[k - 1]  # [n_{k-1}, n_k], CSR: row x lists its readers
        readers = np.diff(w.indptr)
        spread = -(-readers // u)  # devices the readers span at least
        if k == 1:
            total += int(np.sum(np.maximum(spread - 1, 0)))
            continue
        cls, prev = classes[k], classes[k - 1]
        N = partition.read_counts(w, prev, cls)  # neurons of class h read by class G
        rows = np.repeat(np.arange(N.shape[0]), np.bincount(prev) // u)
        cols = np.repeat(np.arange(N.shape[1]), np.bincount(cls) // u)
        local = np.minimum(N[rows][:, cols], u)
        r, c = linear_sum_assignment(local, maximize=True)
        total += int(spread.sum() - local[r, c].sum())
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--network", default=os.path.join(ROOT, "data", "graphchallenge", "neuron1024"))
    ap.add_argument("--layers", type=int, default=120)
    ap.add_argument("--parts", type=int, default=64)
    args = ap.parse_args()
    net = io.read_network(args.network, num_layers=args.layers)
    bound = class_preserving_bound(net, args.parts)
    rnd = hypergraph.connectivity_volume(net, partition.partition_network(net, args.parts, "random", seed=0).parts)[0]
    print(f"P={args.parts}: class-preserving lower bound {bound} = {bound / rnd:.4f} x random ({rnd})")


if __name__ == "__main__":
    main()
