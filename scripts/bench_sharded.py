"""Sharded inference and training on the real Graph Challenge network (1024 neurons, 120 layers).

For 1, 2, 4 and 8 simulated CPU devices and every partitioner: edges/s of the sharded engine next
to the single-device engine (measured in this same run), the plan statistics (needed and padded
volume per sample, rounds), and padded / needed volume. Then one training step (forward, backward,
optimizer update) against the forward pass alone, on 1 and 4 devices at batch 1000.

The simulated devices share this machine's cores: the ratio to one device bounds the overhead of
the exchange machinery, it is not a speed-up. Timings are medians after a warm-up; compilation is
reported apart.

    python scripts/bench_sharded.py [--quick] [--repeats 3] [--out bench_out]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import jax

jax.config.update("jax_num_cpu_devices", 8)

import numpy as np  # noqa: E402

from jaxsdnn import engine, io, partition, sharded  # noqa: E402

from _report import write_report  # noqa: E402  (scripts/_report.py)
from _timing import train_vs_forward  # noqa: E402  (scripts/_timing.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GC = os.path.join(ROOT, "data", "graphchallenge")


def get_partition(net, parts, method, cache_dir):
    path = os.path.join(cache_dir, f"partition-gc1024-{net.num_layers}-{method}-{parts}.npz")
    if os.path.exists(path):
        return partition.load_partition(path, net), float("nan")
    t0 = time.perf_counter()
    p = partition.partition_network(net, parts, method=method, seed=0)
    seconds = time.perf_counter() - t0
    partition.save_partition(path, p)
    return p, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="24 layers, P in {1, 4}, kahypar and random only")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--skip-train", action="store_true", help="inference only")
    ap.add_argument("--train-only", action="store_true", help="the training step table only (1 and 4 devices)")
    ap.add_argument("--devices", type=int, nargs="*", help="device counts of the inference table (default 1 2 4 8)")
    ap.add_argument("--methods", nargs="*", choices=partition.METHODS, help="partitioners (default all)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    layers = 24 if args.quick else 120
    net = io.read_network(os.path.join(GC, "neuron1024"), num_layers=layers)
    images = io.read_images(os.path.join(GC, "sparse-images-1024_subset.mtx"), num_features=1024)
    truth = io.read_categories(os.path.join(GC, "neuron1024-l120-categories_subset.mtx"))
    device_counts = (1, 4) if args.quick else (1, 2, 4, 8)
    methods = ("random", "kahypar") if args.quick else partition.METHODS

    device_counts = args.devices or device_counts
    methods = args.methods or methods
    info = (f"machine: {platform.machine()}, {os.cpu_count()} cpus, jax {jax.__version__} "
            f"({jax.default_backend()}, {len(jax.devices())} simulated devices); network 1024 x {layers}, "
            f"{images.shape[0]} images")
    lines, rows = [], []
    if not args.train_only:
        base = engine.run_inference(net, images, repeats=args.repeats)
        rows.append({"devices": 1, "method": "single-device engine", "edges_per_second": base.edges_per_second,
                     "ratio": 1.0, "compile_s": base.compile_seconds, "volume": 0, "padded": 0, "rounds": 0,
                     "partition_s": 0.0, "correct": bool(layers < 120 or np.array_equal(base.categories, truth))})
        for P in device_counts:
            if P == 1:
                continue
            for method in methods:
                part, part_s = get_partition(net, P, method, args.out)
                r = engine.run_inference(net, images, partition=part, mesh=sharded.make_mesh(P, 1), repeats=args.repeats)
                rows.append({
                    "devices": P, "method": method, "edges_per_second": r.edges_per_second,
                    "ratio": r.edges_per_second / base.edges_per_second, "compile_s": r.compile_seconds,
                    "volume": r.stats["volume_per_sample"], "padded": r.stats["padded_volume_per_sample"],
                    "rounds": r.stats["rounds"], "partition_s": part_s,
                    "correct": bool(np.array_equal(r.categories, base.categories)),
                })
                print(f"P={P} {method}: {r.edges_per_second:.3g} edges/s", file=sys.stderr)
        lines += [f"# Sharded inference ({info})", "",
                  "| devices | partition | edges/s | vs 1 device | volume/sample | padded/sample | padded/needed | rounds | compile s | partition s | same categories |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            pn = r["padded"] / r["volume"] if r["volume"] else float("nan")
            lines.append(f"| {r['devices']} | {r['method']} | {r['edges_per_second']:.3g} | {r['ratio']:.2f}x | {r['volume']} | "
                         f"{r['padded']} | {pn:.3f} | {r['rounds']} | {r['compile_s']:.1f} | {r['partition_s']:.1f} | {r['correct']} |")
        lines.append("")

    if not args.skip_train:  # always 1 device and 4 devices with the kahypar partition
        lines += [f"## One training step vs the forward pass (batch 1000, {layers} layers, SGD; {info})", "",
                  "| devices | partition | forward s | train step s | step / forward (median of per-repeat ratios) | step compile s |", "|---|---|---|---|---|---|"]
        for P in (1, 4):
            part = None if P == 1 else get_partition(net, P, "kahypar", args.out)[0]
            t_fwd, t_step, ratio, c = train_vs_forward(net, images, part, P, 1000, args.repeats)
            lines.append(f"| {P} | {'-' if P == 1 else 'kahypar'} | {t_fwd:.3f} | {t_step:.3f} | {ratio:.2f}x | {c:.1f} |")
            rows.append({"devices": P, "method": "train step", "forward_s": t_fwd, "step_s": t_step, "ratio": ratio})
            print(f"train P={P}: step/forward {ratio:.2f}", file=sys.stderr)

    write_report(args.out, "bench_sharded", "\n".join(lines), rows)


if __name__ == "__main__":
    main()
