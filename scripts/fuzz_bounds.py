"""Fuzz jaxsdnn.bounds.device_chain_bound against brute-force optima of small networks.

Draws small networks (random sparse; block networks whose layers share input sets, with rows and
columns shuffled so read groups and compute groups disagree; uneven layers with unread neurons and
neurons without inputs), a device count and an epsilon, and checks for several tracked ranges
that the bound never exceeds the exact optimum (``tests/test_bounds.py::_exact_min_volume``), with
no prices, with :func:`jaxsdnn.bounds.class_assignment_prices` where they exist, and with random
prices (the bound must hold for any).
Exits 1 on the first violation, printing the network.

    python scripts/fuzz_bounds.py --seconds 300 --seed 7
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from test_bounds import _exact_min_volume  # noqa: E402  (also sets up conftest's CPU devices)

from jaxsdnn import bounds  # noqa: E402
from jaxsdnn.network import SparseNetwork  # noqa: E402


def _network(mats) -> SparseNetwork:
    mats = [sp.csr_array(np.asarray(m, dtype=float)) for m in mats]
    return SparseNetwork.from_scipy(mats, [np.zeros(m.shape[1]) for m in mats])


def draw(rng: np.random.Generator, num_parts: int) -> SparseNetwork:
    most = {2: 8, 3: 6, 4: 5}[num_parts]  # keeps the brute force to a few seconds at worst
    layers = int(rng.integers(2, 5))
    kind = rng.integers(4)
    mats = []
    if kind == 0:  # random sparse, every neuron with an input
        sizes = rng.integers(2, most + 1, layers + 1)
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            m = rng.random((n_in, n_out)) < rng.uniform(0.15, 0.6)
            m[rng.integers(0, n_in, n_out), np.arange(n_out)] = True
            mats.append(m)
    elif kind == 1:  # groups sharing inputs: kron(base, ones), shuffled
        groups = rng.integers(1, 4, layers + 1)
        copies = np.minimum(rng.integers(1, 4, layers + 1), np.maximum(most // groups, 1))
        groups = np.minimum(groups, most // copies)
        for k in range(layers):
            base = rng.random((groups[k], groups[k + 1])) < 0.5
            base[rng.integers(0, groups[k], groups[k + 1]), np.arange(groups[k + 1])] = True
            m = np.kron(base, np.ones((copies[k], copies[k + 1])))
            if rng.random() < 0.6:
                m = m[rng.permutation(m.shape[0])]
            if rng.random() < 0.6:
                m = m[:, rng.permutation(m.shape[1])]
            mats.append(m)
    elif kind == 2:  # equal layers of whole classes, so class_assignment_prices apply
        unit = {2: 2, 3: 2, 4: 1}[num_parts]
        copies = unit * int(rng.integers(1, 3 if num_parts < 4 else 2))
        groups = max(1, (unit * num_parts) // copies)
        for k in range(layers):
            base = rng.random((groups, groups)) < 0.5
            base[rng.integers(0, groups, groups), np.arange(groups)] = True
            m = np.kron(base, np.ones((copies, copies)))
            if rng.random() < 0.6:
                m = m[rng.permutation(m.shape[0])]
            if rng.random() < 0.6:
                m = m[:, rng.permutation(m.shape[1])]
            mats.append(m)
    else:  # uneven, unread neurons, neurons without inputs, repeated rows and columns
        sizes = rng.integers(1, most + 1, layers + 1)
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            m = rng.random((n_in, n_out)) < rng.uniform(0.1, 0.8)
            if n_out > 1:
                m[:, rng.integers(n_out)] = m[:, rng.integers(n_out)]
            if n_in > 1:
                m[rng.integers(n_in)] = m[rng.integers(n_in)]
            mats.append(m)
    return _network(mats)


def random_prices(rng: np.random.Generator, net: SparseNetwork) -> tuple:
    """Per-layer prices of either sign for both roles, one per compute group."""
    counts = [None] + [int(net.input_classes(k).max()) + 1 for k in range(1, net.num_layers + 1)]
    scale = float(rng.choice([0.1, 0.5, 2.0]))
    return tuple([None] + [rng.normal(0.0, scale, n) for n in counts[1:]] for _ in range(2))


def climbed_prices(rng, net, num_parts, epsilon, max_inputs, steps: int = 12) -> tuple:
    """Prices pushed uphill by random moves that raise the bound: an adversary for its validity,
    since a mistake in the priced terms shows where the prices make the bound tight."""
    best = bounds.class_assignment_prices(net, num_parts) or random_prices(rng, net)
    value = bounds.device_chain_bound(net, num_parts, epsilon, max_inputs, best)
    for _ in range(steps):
        scale = float(rng.choice([0.05, 0.3, 1.0]))
        trial = tuple([None] + [p + rng.normal(0.0, scale, p.size) for p in side[1:]] for side in best)
        bound = bounds.device_chain_bound(net, num_parts, epsilon, max_inputs, trial)
        if bound >= value:
            best, value = trial, bound
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    start, cases, positive = time.perf_counter(), 0, 0
    while time.perf_counter() - start < args.seconds:
        num_parts = int(rng.choice([2, 3, 4]))
        epsilon = float(rng.choice([0.0, 0.03, 0.1, 0.3, 0.6]))
        net = draw(rng, num_parts)
        exact = _exact_min_volume(net, num_parts, epsilon)
        for max_inputs in (None, 0, 2, 5, 40):
            climbed = climbed_prices(rng, net, num_parts, epsilon, max_inputs)
            for prices in (None, "auto", random_prices(rng, net), climbed):
                bound = bounds.device_chain_bound(net, num_parts, epsilon, max_inputs, prices)
                cases += 1
                positive += bound > 0
                if bound <= exact:
                    continue
                kind = prices if prices is None or isinstance(prices, str) else "random or climbed"
                print(f"VIOLATION: P={num_parts} epsilon={epsilon} max_inputs={max_inputs} prices={kind}: bound {bound} > optimum {exact}")
                print([m.toarray().astype(int).tolist() for m in net.to_scipy()])
                sys.exit(1)
    print(f"{cases} (network, range, prices) cases, {positive} with a positive bound, none above the optimum")


if __name__ == "__main__":
    main()
