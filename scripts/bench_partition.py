"""Partition benchmark: volume, balance and time of every method, against random and unconstrained.

For the real Graph Challenge network (1024 neurons, 120 layers) and a generated 4096-neuron
RadiX-Net, at P in {4, 8, 16, 64}: every method's volume relative to the random partition and
to the unconstrained whole-network run (one balance constraint over all layers, see
``jaxsdnn._kahypar.partition_unconstrained``), the worst layer imbalance, and seconds. Writes
``partition_bench.md``, ``partition_bench.json`` and ``partition_bench.png`` to ``--out``.

    python scripts/bench_partition.py              # the full run (about an hour on 2 cores)
    python scripts/bench_partition.py --quick      # 12 + 16 layers, P in {4, 16}
    python scripts/bench_partition.py --networks radix4096 --layers 120 --parts 16 --methods kahypar
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxsdnn._kahypar import partition_unconstrained  # noqa: E402
from jaxsdnn.bounds import device_chain_bound  # noqa: E402
from jaxsdnn.hypergraph import connectivity_volume  # noqa: E402
from jaxsdnn.metrics import partition_metrics  # noqa: E402
from jaxsdnn.network import SparseNetwork  # noqa: E402
from jaxsdnn.partition import METHODS, layer_weights, partition_network  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_DIR = os.path.join(REPO, "data", "graphchallenge", "neuron1024")
COLUMNS = ("network", "P", "method", "volume", "vs random", "vs unconstrained", "proven bound", "gap to bound",
           "worst layer imbalance", "seconds", "peak RSS MB (process, tool)")


def load_network(name: str, layers: int | None) -> SparseNetwork:
    if name == "real1024":
        from jaxsdnn.io import read_network

        return read_network(REAL_DIR, num_layers=layers or 120)
    if name.startswith("radix"):
        from jaxsdnn.radixnet import radixnet

        return radixnet(int(name[len("radix") :]), layers or 24, seed=0, bias=-0.3)  # bias: not read here
    raise SystemExit(f"unknown network {name!r}: expected real1024 or radix<N> (e.g. radix4096)")


def machine() -> str:
    from importlib.metadata import version

    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, load average "
        f"{load[0]:.2f} at start; Python {platform.python_version()}, numpy {np.__version__}, "
        f"kahypar {version('kahypar')}, mtkahypar {version('mtkahypar')}"
    )


def worst_imbalance(network: SparseNetwork, parts, num_parts: int) -> float:
    out = 0.0
    for w, p in zip(layer_weights(network)[1:], parts[1:]):
        loads = np.bincount(p, weights=w, minlength=num_parts)
        out = max(out, float(loads.max() / (w.sum() / num_parts) - 1.0))
    return out


def peak_rss_mb() -> tuple[float, float]:
    """Peak RSS so far of this process and of the partitioning tool's worker process."""
    import resource

    from jaxsdnn import _kahypar

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, _kahypar.worker_peak_rss_mb()


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [
            r["network"],
            str(r["P"]),
            r["method"],
            str(r["volume"]),
            f"{r['vs_random']:.4f}",
            f"{r['vs_unconstrained']:.2f}",
            "not computed" if r["bound"] is None else str(r["bound"]),
            "-" if r["gap"] is None else f"{100 * r['gap']:+.1f} %",
            f"{r['imbalance']:.3f}",
            f"{r['seconds']:.1f}",
            f"{r['rss_mb'][0]:.0f}, {r['rss_mb'][1]:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    networks = sorted({r["network"] for r in rows})
    fig, axes = plt.subplots(1, len(networks), figsize=(5.5 * len(networks), 4.2), squeeze=False)
    for ax, name in zip(axes[0], networks):
        for method in sorted({r["method"] for r in rows if r["network"] == name}):
            pts = sorted((r["P"], r["vs_random"]) for r in rows if r["network"] == name and r["method"] == method)
            ax.plot([p for p, _ in pts], [v for _, v in pts], marker="o", label=method)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("parts P")
        ax.set_ylabel("volume / random partition's volume")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--networks", nargs="+", default=["real1024", "radix4096"])
    ap.add_argument("--layers", type=int, default=None, help="layers of every network (default 120 real, 24 radix)")
    ap.add_argument("--parts", type=int, nargs="+", default=[4, 8, 16, 64])
    ap.add_argument(
        "--methods", nargs="+", default=["unconstrained", *METHODS], choices=["unconstrained", *METHODS],
        help="methods to run; 'unconstrained' is the whole-network run the table compares against",
    )
    ap.add_argument("--epsilon", type=float, default=0.03)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="Mt-KaHyPar threads")
    ap.add_argument("--quick", action="store_true", help="12 real / 16 RadiX-Net layers, P in {4, 16}")
    ap.add_argument("--no-contract", action="store_true", help="give the tools every neuron (no contraction)")
    ap.add_argument("--workers", type=int, default=1, help="tool processes for a pass's independent layers")
    ap.add_argument("--no-bound", action="store_true", help="skip jaxsdnn.bounds.device_chain_bound")
    ap.add_argument("--out", default="bench_out")
    args = ap.parse_args(argv)
    if args.quick:
        args.parts = [4, 16]
    os.makedirs(args.out, exist_ok=True)
    header = (f"Machine: {machine()}; threads={args.threads}, workers={args.workers}, epsilon={args.epsilon}, "
              f"seed={args.seed}, contract={not args.no_contract}")
    print(header, flush=True)
    rows: list[dict] = []
    for name in args.networks:
        layers = args.layers or ((12 if name == "real1024" else 16) if args.quick else None)
        network = load_network(name, layers)
        label = f"{name} x {network.num_layers}"
        for P in args.parts:
            random = partition_network(network, P, method="random", epsilon=args.epsilon, seed=args.seed)
            base = connectivity_volume(network, random.parts)[0]
            free_volume = float("nan")
            bound = None if args.no_bound else 0 if P < 2 else int(device_chain_bound(network, P, args.epsilon))

            def record(method, parts, volume, seconds):
                ratio = volume / max(free_volume, 1) if free_volume == free_volume else float("nan")
                row = dict(network=label, P=P, method=method, volume=int(volume), vs_random=volume / base)
                row.update(vs_unconstrained=ratio, imbalance=worst_imbalance(network, parts, P), seconds=seconds,
                           bound=bound, gap=(volume / bound - 1) if bound else None, rss_mb=peak_rss_mb())
                rows.append(row)
                print(markdown(rows[-1:]).splitlines()[-1], flush=True)

            if "unconstrained" in args.methods:
                t = time.perf_counter()
                free = partition_unconstrained(network, P, seed=args.seed, threads=args.threads, epsilon=args.epsilon)
                free_volume = connectivity_volume(network, free)[0]
                record("unconstrained", free, free_volume, time.perf_counter() - t)
            for method in [m for m in args.methods if m != "unconstrained"]:
                t = time.perf_counter()
                part = partition_network(
                    network, P, method=method, epsilon=args.epsilon, seed=args.seed, threads=args.threads,
                    contract=not args.no_contract, workers=args.workers,
                )
                seconds = time.perf_counter() - t
                record(method, part.parts, partition_metrics(network, part)["volume"], seconds)
            table = markdown(rows)
            with open(os.path.join(args.out, "partition_bench.md"), "w", encoding="utf-8") as f:
                f.write(f"{header}\n\n{table}\n")
            with open(os.path.join(args.out, "partition_bench.json"), "w", encoding="utf-8") as f:
                json.dump({"machine": header, "rows": rows}, f, indent=1)
    plot(rows, os.path.join(args.out, "partition_bench.png"))
    print(f"\n{header}\n\n{markdown(rows)}\n\nwrote {args.out}/partition_bench.{{md,json,png}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
