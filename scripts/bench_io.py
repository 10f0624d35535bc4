"""Times reading the real 120-layer Graph Challenge network (neuron1024) with jaxsdnn.io.

Prints one markdown table row: median of 3 runs of ``read_network`` against a baseline measured
in the same run (gunzip + ``np.loadtxt`` of every file, no checks, no network), plus the machine.

    python scripts/bench_io.py [directory]
"""

from __future__ import annotations

import gzip
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import scipy

from jaxsdnn.io import find_layer_files, read_network

DEFAULT = Path(__file__).resolve().parent.parent / "data" / "graphchallenge" / "neuron1024"
RUNS = 3


def _baseline(paths: list[Path]) -> None:
    for p in paths:
        np.loadtxt(gzip.decompress(p.read_bytes()).decode().split("\n"), delimiter="\t", ndmin=2, comments=None)


def _median_seconds(fn, runs: int = RUNS) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(directory: Path) -> None:
    _, paths = find_layer_files(directory)
    read_network(directory, num_layers=1)  # warm-up: imports, page cache
    network = read_network(directory)
    load = _median_seconds(lambda: read_network(directory))
    base = _median_seconds(lambda: _baseline(paths))
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"NumPy {np.__version__}, SciPy {scipy.__version__}"
    )
    print("| network | layers | nnz | read_network (median of 3) | per layer | gunzip+loadtxt baseline | ratio | machine |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {directory.name} | {network.num_layers} | {network.total_nnz} | {load:.2f} s | "
        f"{load / network.num_layers * 1e3:.1f} ms | {base:.2f} s | {load / base:.2f}x | {machine} |"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT)
