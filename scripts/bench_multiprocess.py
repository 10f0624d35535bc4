"""Real processes, real cores: `jaxsdnn infer` under jax.distributed against one process.

The real Graph Challenge network (1024 x 120) on the embedded 1200-image subset stacked ``--stack``
times (12,000 images by default). Each configuration runs as a user would run it, and the runs
alternate over ``--repeats`` rounds; the table gives medians. The configurations:

* ``1 process, 1 core``: ``taskset -c 0``, one device (the baseline);
* ``1 process, all cores``: no pinning, one device (what a user would otherwise run);
* ``N processes x 1 core``: process ``i`` pinned to core ``i``, one device each, ``--devices N``,
  with a kahypar or random partition, the exchange in float32 or bfloat16.

``seconds`` is the CLI's own timing (the batched run without compilation, on process 0);
``compile`` its compile time. ``bytes/image`` is what the plan sends per image (entries times the
exchange type's size); ``exchange share`` is ``1 - t(1 process, 1 core) / (N t(N processes))``,
the part of the N-process time that perfect division of the work would not explain.

    python scripts/bench_multiprocess.py                 # about 10 minutes on 2 cores
    python scripts/bench_multiprocess.py --stack 2 --repeats 1 --layers 24   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _report import write_report  # noqa: E402

from jaxsdnn import io  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GC = os.path.join(ROOT, "data", "graphchallenge")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_config(cfg: dict, common: list, workdir: str, cores: int) -> dict:
    """Runs one configuration; returns process 0's JSON."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAXSDNN_COMPILE_CACHE="off",  # compile times, not cache hits
               JAXSDNN_PARTITION_CACHE=os.path.join(workdir, "partitions"))
    n = cfg["processes"]
    out = os.path.join(workdir, f"cats-{cfg['name'].replace(' ', '_')}.tsv")
    base = [sys.executable, "-m", "jaxsdnn.cli", "infer", *common, "--out", out, "--json",
            "--exchange-dtype", cfg["dtype"]]
    if n == 1:
        cmd = (["taskset", "-c", "0"] if cfg["pinned"] else []) + base
        procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    else:
        port = _free_port()
        procs = []
        for pid in range(n):
            cmd = ["taskset", "-c", str(pid % cores)] + base + [
                "--devices", str(n), "--method", cfg["method"], "--coordinator", f"127.0.0.1:{port}",
                "--num-processes", str(n), "--process-id", str(pid)]
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
    outs = [p.communicate(timeout=1800) for p in procs]
    for p, (o, e) in zip(procs, outs):
        if p.returncode != 0:
            raise SystemExit(f"{cfg['name']}: exit {p.returncode}: {e.strip().splitlines()[-1] if e.strip() else ''}")
    return json.loads(outs[0][0].strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=120)
    ap.add_argument("--stack", type=int, default=10, help="copies of the 1200-image subset")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="bench_out")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    workdir = tempfile.mkdtemp(prefix="jaxsdnn-mp-")
    images = io.read_images(os.path.join(GC, "sparse-images-1024_subset.mtx"), num_features=1024)
    big = os.path.join(workdir, "images.tsv")
    io.write_images(big, sp.vstack([images] * args.stack, format="csr"))
    common = ["--network", os.path.join(GC, "neuron1024"), "--layers", str(args.layers), "--images", big]
    N = args.processes
    configs = [
        {"name": "1 process, 1 core", "processes": 1, "pinned": True, "method": None, "dtype": "float32"},
        {"name": f"1 process, {cores} cores", "processes": 1, "pinned": False, "method": None, "dtype": "float32"},
        {"name": f"{N} processes, kahypar", "processes": N, "method": "kahypar", "dtype": "float32"},
        {"name": f"{N} processes, random", "processes": N, "method": "random", "dtype": "float32"},
        {"name": f"{N} processes, kahypar, bfloat16 exchange", "processes": N, "method": "kahypar",
         "dtype": "bfloat16"},
    ]
    runs = {c["name"]: [] for c in configs}
    for r in range(args.repeats):
        for c in configs:
            res = run_config(c, common, workdir, cores)
            runs[c["name"]].append(res)
            print(f"round {r + 1}: {c['name']}: {res['seconds']:.2f} s (compile {res['compile_seconds']:.1f} s)",
                  flush=True)
    base = np.median([x["seconds"] for x in runs[configs[0]["name"]]])
    base_compile = np.median([x["compile_seconds"] for x in runs[configs[0]["name"]]])
    rows = []
    for c in configs:
        xs = runs[c["name"]]
        t = float(np.median([x["seconds"] for x in xs]))
        vol = xs[0].get("volume_per_sample", 0) or 0
        size = 2 if c["dtype"] != "float32" else 4
        share = 1 - base / (c["processes"] * t) if c["processes"] > 1 else None
        rows.append({"config": c["name"], "seconds": [x["seconds"] for x in xs], "median_s": t, "speedup": base / t,
                     "compile_s": float(np.median([x["compile_seconds"] for x in xs])),
                     "compile_ratio": float(np.median([x["compile_seconds"] for x in xs])) / base_compile,
                     "bytes_per_image": vol * size, "rounds": xs[0].get("rounds"), "exchange_share": share})
    info = (f"machine: {platform.machine()}, {cores} cpus; network 1024 x {args.layers}, "
            f"{images.shape[0] * args.stack} images; medians of {args.repeats} alternating rounds")
    lines = [info, "", "| configuration | seconds (runs) | median s | speed-up vs 1 core | compile s (x 1 process) "
             "| bytes / image | exchange share |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        share = "-" if r["exchange_share"] is None else f"{100 * r['exchange_share']:.0f} %"
        lines.append(f"| {r['config']} | {', '.join(f'{s:.2f}' for s in r['seconds'])} | {r['median_s']:.2f} | "
                     f"{r['speedup']:.2f}x | {r['compile_s']:.1f} ({r['compile_ratio']:.2f}x) | "
                     f"{r['bytes_per_image']:,} | {share} |")
    write_report(args.out, "bench_multiprocess", "\n".join(lines), rows)


if __name__ == "__main__":
    main()
