"""Fuzz the partitioners on random small and irregular networks.

Draws networks the format allows but the tools find awkward: 0 to 6 inputs per neuron (neurons
without inputs, neurons nobody reads), layers without any edge, layers of a few neurons (fewer
than the device count, too), uneven layer sizes, blocks of neurons sharing their inputs; then a
device count ``P`` in 2..8, an epsilon and a method. Every case must end in one of two ways:

* a :class:`~jaxsdnn.partition.Partition` with every id in ``[0, P)``, one array per layer of
  the right size, and every layer's largest load within its cap
  (:func:`jaxsdnn.partition.layer_cap`: ``(1 + epsilon)`` times the mean, or the best packing);
* a ``ValueError`` on one line that is not the tool giving up (``ToolError``): e.g. a layer
  smaller than ``P``, or a neuron heavier than any device may carry.

Anything else (a native exit, which the worker process turns into a ``ToolError``, a traceback,
a partition over its cap) is a failure: the script prints the case and exits 1.

    python scripts/fuzz_partition.py --seconds 300 --seed 7

``tests/test_partition_fuzz.py`` runs :func:`run` for a few seconds with a fixed seed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxsdnn import partition  # noqa: E402
from jaxsdnn._kahypar import ToolError  # noqa: E402
from jaxsdnn.network import SparseNetwork  # noqa: E402

METHODS = ("kahypar", "mtkahypar", "kahypar", "mtkahypar", "block", "random")


def _layer(rng: np.random.Generator, n_in: int, n_out: int, kind: int) -> sp.csr_array:
    if kind == 0:  # 0..most inputs per neuron, chosen at random
        most = int(rng.integers(1, 7))
        rows, cols = [], []
        for j in range(n_out):
            k = int(rng.integers(0, min(most, n_in) + 1))
            r = rng.choice(n_in, size=k, replace=False)
            rows += r.tolist()
            cols += [j] * k
        mask = sp.coo_array((np.ones(len(rows)), (rows, cols)), shape=(n_in, n_out))
    elif kind == 1:  # no edge at all
        mask = sp.coo_array((n_in, n_out))
    elif kind == 2:  # groups of neurons reading the same inputs
        g_in, g_out = max(1, n_in // int(rng.integers(1, 5))), max(1, n_out // int(rng.integers(1, 5)))
        base = rng.random((g_in, g_out)) < rng.uniform(0.1, 0.7)
        dense = base[np.arange(n_in) * g_in // n_in][:, np.arange(n_out) * g_out // n_out]
        mask = sp.coo_array(dense[rng.permutation(n_in)][:, rng.permutation(n_out)])
    else:  # dense-ish
        mask = sp.coo_array(rng.random((n_in, n_out)) < rng.uniform(0.3, 1.0))
    values = rng.standard_normal(mask.nnz).astype(np.float32)
    return sp.csr_array((values, (mask.row, mask.col)), shape=(n_in, n_out))


def draw(rng: np.random.Generator) -> tuple[SparseNetwork, int, float, str]:
    """One case: ``(network, P, epsilon, method)``."""
    layers = int(rng.integers(1, 5))
    shape = rng.integers(4)
    if shape == 0:  # square, N = 8 .. 64 (the Graph Challenge shape, small)
        sizes = [int(rng.choice([8, 16, 32, 64]))] * (layers + 1)
    elif shape == 1:  # tiny
        sizes = [int(rng.integers(1, 9))] * (layers + 1)
    else:  # uneven
        sizes = rng.integers(1, 48, layers + 1).tolist()
    kinds = rng.choice(4, size=layers, p=[0.55, 0.15, 0.15, 0.15])
    mats = [_layer(rng, a, b, int(t)) for a, b, t in zip(sizes[:-1], sizes[1:], kinds)]
    net = SparseNetwork.from_scipy(mats, 0.0, None)
    num_parts = int(rng.choice([2, 2, 3, 4, 5, 8]))
    epsilon = float(rng.choice([0.01, 0.03, 0.1, 0.5]))
    return net, num_parts, epsilon, str(rng.choice(METHODS))


def check(net: SparseNetwork, num_parts: int, epsilon: float, method: str, seed: int = 0) -> str | None:
    """``None`` if the case ends well (a valid partition or a one-line refusal), else what went wrong."""
    try:
        part = partition.partition_network(net, num_parts, method=method, epsilon=epsilon, seed=seed)
    except ToolError as e:
        return f"the tool failed: {e}"
    except ValueError as e:
        return None if "\n" not in str(e) and str(e) else f"refusal is not one line: {e!r}"
    except Exception as e:  # noqa: BLE001 - any other exception is the failure being looked for
        return f"{type(e).__name__}: {e}"
    if len(part.parts) != net.num_layers + 1:
        return f"{len(part.parts)} layer arrays for {net.num_layers} layers"
    for k, (p, w) in enumerate(zip(part.parts, partition.layer_weights(net))):
        if p.shape != (net.sizes[k],) or (p.size and (p.min() < 0 or p.max() >= num_parts)):
            return f"layer {k}: ids out of range or wrong shape {p.shape}"
        cap = partition.layer_cap(w, num_parts, epsilon)
        load = np.bincount(p, weights=w, minlength=num_parts).max(initial=0)
        if load > cap:
            return f"layer {k}: largest load {load} > cap {cap}"
    return None


def describe(net: SparseNetwork, num_parts: int, epsilon: float, method: str) -> str:
    layers = "; ".join(f"{w.shape[0]}x{w.shape[1]} nnz {w.nnz} fan-in {np.diff(w.tocsc().indptr).tolist()}"
                       for w in net.weights)
    return f"P={num_parts} epsilon={epsilon} method={method} layers: {layers}"


def run(seconds: float, seed: int, max_cases: int | None = None) -> tuple[int, int, list[str]]:
    """Cases until ``seconds`` pass (or ``max_cases``): ``(cases, refusals, failures)``."""
    rng = np.random.default_rng(seed)
    deadline = time.monotonic() + seconds
    cases = refused = 0
    failures: list[str] = []
    while time.monotonic() < deadline and (max_cases is None or cases < max_cases):
        net, num_parts, epsilon, method = draw(rng)
        cases += 1
        if any(n < num_parts for n in net.sizes):
            refused += 1
        problem = check(net, num_parts, epsilon, method)
        if problem is not None:
            failures.append(f"case {cases}: {problem}\n  {describe(net, num_parts, epsilon, method)}")
    return cases, refused, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cases, refused, failures = run(args.seconds, args.seed)
    print(f"{cases} cases ({refused} with a layer smaller than P), {len(failures)} failures")
    for f in failures[:20]:
        print(f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
