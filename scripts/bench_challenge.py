"""Graph Challenge inference at the challenge's own scale: jaxsdnn next to scipy and GraphBLAS.

Workloads (file reading excluded everywhere; each engine runs in its own process, pinned with
``taskset``):

* ``real1024``: the real 1024 x 120 network, 60,000 images (the embedded 1,200-image subset
  stacked 50 times: 950 survive);
* ``gen4096``, ``gen16384``: generated RadiX-Nets (``jaxsdnn.radixnet.radixnet``, seed 0, the
  challenge's bias for N) with 60,000 challenge-like images (``challenge_images``, seed 0).

Engines:

* ``scipy``: CSR ``Y @ W`` with sparse activations, the bias added to the stored entries and the
  explicit zeros dropped every layer (scipy's sparse product is single-threaded);
* ``graphblas``: python-graphblas (SuiteSparse:GraphBLAS) with sparse Y, plus_times, bias on the
  stored entries, select > 0, min 32; ``nthreads`` = the cores given;
* ``jaxsdnn``: :func:`jaxsdnn.run_inference` on one device (dead samples dropped); ``jaxsdnn-8dev``
  on 8 simulated devices with a kahypar partition (cached under ``--out``).

For every workload and core count the table gives seconds (median of ``--repeats`` passes; the
baselines have nothing to compile, jaxsdnn's first pass compiles and is not counted), edges/s
(``images * nnz / seconds``, the challenge's rate), the ratio to the faster baseline on the same
cores, survivors (checked equal across engines), compile seconds and peak RSS. ``--depth``
measures compile time alone on a generated 1024-neuron network of that depth. gen16384 runs one
pass per engine (scipy takes about 10 minutes a pass there) and no GraphBLAS (it held 20 GiB at
4096 and does not fit in this machine's 24 GiB at 16384).

Usage::

    python scripts/bench_challenge.py                       # everything (about an hour here)
    python scripts/bench_challenge.py --workloads real1024 --cores 1
    python scripts/bench_challenge.py --depth 1920 --workloads
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))
GC = os.path.join(REPO, "data", "graphchallenge")
IMAGES = 60000
LAYERS = 120
ONE_PASS = {"gen16384"}  # workloads timed in one pass
SKIP = {("graphblas", "gen16384")}  # (engine, workload) pairs that do not fit in memory


# ----------------------------------------------------------------------------------------------
# worker: one engine on one workload, in this process
# ----------------------------------------------------------------------------------------------
def _workload(name: str, layers: int = LAYERS):
    import scipy.sparse as sp

    from jaxsdnn import io, radixnet

    if name == "real1024":
        net = io.read_network(os.path.join(GC, "neuron1024"), num_layers=layers)
        subset = io.read_images(os.path.join(GC, "sparse-images-1024_subset.mtx"), num_features=1024)
        return net, sp.vstack([subset] * (IMAGES // subset.shape[0]), format="csr")
    neurons = int(name.removeprefix("gen"))
    return (radixnet.radixnet(neurons, layers, seed=0),
            radixnet.challenge_images(neurons, IMAGES if layers == LAYERS else 1200, seed=0))


def _scipy(net, images):
    import numpy as np
    import scipy.sparse as sp

    y = sp.csr_array(images, dtype=np.float32)
    for w, b in zip(net.weights, net.biases):
        z = sp.csr_array(y @ w)
        z.data += b[z.indices]
        np.clip(z.data, 0, net.cap, out=z.data)
        z.eliminate_zeros()
        y = z
    return np.flatnonzero(np.diff(y.indptr) > 0) + 1


def _graphblas_setup(net, threads: int):
    import graphblas as gb
    import numpy as np

    gb.ss.config["nthreads"] = threads
    biases = {float(b[0]) for b in net.biases}
    if len(biases) != 1 or any((b != b[0]).any() for b in net.biases):
        raise SystemExit("the graphblas baseline supports one bias for every neuron (the challenge's)")
    bias = biases.pop()
    ws = [gb.io.from_scipy_sparse(w) for w in net.weights]

    def run(images):
        y = gb.io.from_scipy_sparse(images)
        for w in ws:  # FP32 throughout (a Python float scalar would promote the matrices to FP64)
            z = y.mxm(w, gb.semiring.plus_times["FP32"]).new()
            z = z.apply(gb.binary.plus["FP32"], np.float32(bias)).new()  # the bias on the stored entries
            z = z.select(gb.select.valuegt["FP32"], np.float32(0)).new()
            y = z.apply(gb.binary.min["FP32"], np.float32(net.cap)).new()
        rows = gb.io.to_scipy_sparse(y, format="csr")
        return np.flatnonzero(np.diff(rows.indptr) > 0) + 1

    return run


def _partition(net, name: str, parts: int, out_dir: str):
    from jaxsdnn import partition

    path = os.path.join(out_dir, f"partition-{name}-{net.num_layers}-p{parts}-kahypar.npz")
    if os.path.exists(path):
        part = partition.load_partition(path)
        if part.fingerprint == net.fingerprint():
            return part
    part = partition.partition_network(net, parts, method="kahypar", seed=0)
    partition.save_partition(path, part)
    return part


def worker(args) -> dict:
    import numpy as np

    devices = 8 if args.engine == "jaxsdnn-8dev" else 1
    if args.engine.startswith("jaxsdnn"):
        import jax

        jax.config.update("jax_num_cpu_devices", devices)
    layers = args.depth or LAYERS
    net, images = _workload(args.workload, layers)
    out = {"engine": args.engine, "workload": args.workload, "layers": layers, "images": int(images.shape[0]),
           "nnz": net.total_nnz}
    if args.engine == "scipy":
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            cats = _scipy(net, images)
            times.append(time.perf_counter() - t0)
        out.update(seconds=float(np.median(times)), compile_seconds=0.0)
    elif args.engine == "graphblas":
        run = _graphblas_setup(net, args.threads)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            cats = run(images)
            times.append(time.perf_counter() - t0)
        out.update(seconds=float(np.median(times)), compile_seconds=0.0)
    else:
        import jaxsdnn as sd

        part = _partition(net, args.workload, devices, args.out) if devices > 1 else None
        result = sd.run_inference(net, images, partition=part, mesh=sd.make_mesh(devices, 1),
                                  repeats=args.repeats if args.repeats > 1 else 1)
        cats = result.categories
        out.update(seconds=result.seconds, compile_seconds=result.compile_seconds, compiles=result.stats["compiles"],
                   segments=result.stats["segments"], skipped_edge_fraction=1 - result.stats["computed_edge_fraction"],
                   batch_size=result.stats["batch_size"])
    out.update(survivors=int(cats.size), categories_sha=hashlib.sha256(np.asarray(cats, np.int64).tobytes()).hexdigest(),
               peak_rss_bytes=int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024)
    return out


# ----------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------
def _spawn(engine: str, workload: str, cores: int, args, depth: int | None = None) -> dict:
    cpus = ",".join(str(c) for c in range(cores))
    repeats = 1 if depth or workload in ONE_PASS else args.repeats
    cmd = ["taskset", "-c", cpus, sys.executable, os.path.abspath(__file__), "--worker", "--engine", engine,
           "--workload", workload, "--threads", str(cores), "--repeats", str(repeats), "--out", args.out]
    if depth:
        cmd += ["--depth", str(depth)]
    env = dict(os.environ, OMP_NUM_THREADS=str(cores), JAXSDNN_COMPILE_CACHE="off")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"{engine} on {workload} failed:\n{proc.stderr[-3000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["cores"] = cores
    print(f"  {engine:13s} {workload:9s} {cores} core(s): {row['seconds']:.2f} s, survivors {row['survivors']}, "
          f"compile {row['compile_seconds']:.1f} s, peak RSS {row['peak_rss_bytes'] / 2**30:.2f} GiB", file=sys.stderr)
    return row


def _table(rows) -> str:
    lines = ["| workload | cores | engine | seconds | edges/s | vs faster baseline | survivors | compile s | "
             "skipped edges | peak RSS GiB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = [b["seconds"] for b in rows if b["workload"] == r["workload"] and b["cores"] == r["cores"]
                and b["engine"] in ("scipy", "graphblas")]
        ratio = min(base) / r["seconds"] if base else float("nan")
        eps = r["images"] * r["nnz"] / r["seconds"]
        skipped = f"{r['skipped_edge_fraction']:.1%}" if "skipped_edge_fraction" in r else "-"
        lines.append(f"| {r['workload']} | {r['cores']} | {r['engine']} | {r['seconds']:.2f} | {eps:.3g} | "
                     f"{ratio:.2f}x | {r['survivors']} | {r['compile_seconds']:.1f} | {skipped} | "
                     f"{r['peak_rss_bytes'] / 2**30:.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", nargs="*", default=["real1024", "gen4096", "gen16384"])
    p.add_argument("--cores", nargs="+", type=int, default=[1, 2])
    p.add_argument("--engines", nargs="+", default=["scipy", "graphblas", "jaxsdnn", "jaxsdnn-8dev"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--depth", type=int, default=None, help="also time compilation on a 1024 x DEPTH network")
    p.add_argument("--out", default=os.path.join(REPO, "bench_out"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--engine", help=argparse.SUPPRESS)
    p.add_argument("--workload", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    from _report import write_report

    rows = []
    for workload in args.workloads:
        for cores in args.cores:
            for engine in args.engines:
                if (engine == "jaxsdnn-8dev" and workload != "real1024") or (engine, workload) in SKIP:
                    continue
                rows.append(_spawn(engine, workload, cores, args))
        shas = {r["categories_sha"] for r in rows if r["workload"] == workload}
        if len(shas) != 1:
            raise SystemExit(f"{workload}: the engines disagree on the categories")
    compile_rows = []
    if args.depth:
        for engine in ("jaxsdnn", "jaxsdnn-8dev"):
            compile_rows.append(_spawn(engine, "gen1024", 1, args, depth=args.depth))
    text = [f"Machine: {platform.machine()}, {os.cpu_count()} logical CPUs, load average "
            f"{os.getloadavg()[0]:.2f} at the end; Python {platform.python_version()}; repeats {args.repeats}", ""]
    if rows:
        text += [_table(rows), ""]
    for r in compile_rows:
        text.append(f"compile, generated 1024 x {r['layers']} ({r['images']} images), {r['engine']}: "
                    f"{r['compile_seconds']:.1f} s in {r['compiles']} programs, {r['segments']} segment(s)")
    write_report(args.out, "bench_challenge", "\n".join(text), rows + compile_rows)


if __name__ == "__main__":
    main()
