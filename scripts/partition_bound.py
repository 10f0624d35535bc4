"""Lower bounds on the volume of layer-balanced partitions of a network, against random.

Prints :func:`jaxsdnn.bounds.device_chain_bound` (every partition whose layers stay within
``epsilon``) and, where it applies, :func:`jaxsdnn.bounds.class_preserving_bound` (partitions that
keep input classes whole), each as a ratio to a random partition's volume. The arguments are in
``jaxsdnn/bounds.py``.

    python scripts/partition_bound.py --parts 64 [--layers 120] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import time

from jaxsdnn import bounds, hypergraph, io, partition

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--network", default=os.path.join(ROOT, "data", "graphchallenge", "neuron1024"))
    ap.add_argument("--layers", type=int, default=120)
    ap.add_argument("--parts", type=int, nargs="+", default=[64])
    ap.add_argument("--epsilon", type=float, default=0.03)
    ap.add_argument("--max-inputs", type=int, default=None, help="largest |In(S)| tracked exactly")
    ap.add_argument("--json", action="store_true", help="end with one JSON line of the results")
    args = ap.parse_args()
    net = io.read_network(args.network, num_layers=args.layers)
    rows = []
    for num_parts in args.parts:
        rnd = hypergraph.connectivity_volume(net, partition.partition_network(net, num_parts, "random", seed=0).parts)[0]
        t = time.perf_counter()
        every = bounds.device_chain_bound(net, num_parts, args.epsilon, args.max_inputs)
        seconds = time.perf_counter() - t
        try:
            whole = bounds.class_preserving_bound(net, num_parts)
        except ValueError as err:
            whole, why = None, str(err)
        row = {"parts": num_parts, "random": int(rnd), "every_partition": every, "every_vs_random": every / rnd,
               "class_preserving": whole, "class_preserving_vs_random": None if whole is None else whole / rnd,
               "seconds": round(seconds, 2)}
        rows.append(row)
        print(f"P={num_parts}: every partition >= {every} = {every / rnd:.4f} x random ({rnd}), {seconds:.1f} s")
        if whole is None:
            print(f"       class-preserving bound does not apply: {why}")
        else:
            print(f"       class-preserving partitions >= {whole} = {whole / rnd:.4f} x random")
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
