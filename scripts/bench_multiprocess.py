"""Real processes, real cores: `jaxsdnn infer` under jax.distributed against one process.

The real Graph Challenge network (1024 x 120) on the embedded 1200-image subset stacked ``--stack``
times (12,000 images by default). Each configuration runs as a user would run it, and the runs
alternate over ``--repeats`` rounds; the table gives medians. The configurations:

* ``1 process, 1 core``: ``taskset -c 0``, one device (the baseline);
* ``1 process, all cores``: no pinning, one device (what a user would otherwise run);
* ``N processes x 1 core``: process ``i`` pinned to core ``i``, one device each, ``--devices N``,
  with a kahypar or random partition, the exchange in float32 or bfloat16; the few survivors of a
  compacted batch finish on each process's own device (``--tail auto``, which is ``local`` here),
  or on the mesh (``sharded tail`` rows, ``--tail sharded``);
* ``N processes, data parallel``: ``--devices 1 --data-parallel N``, every process holds the whole
  network; with ``--tail auto`` each runs its own share of the images, gathered at the end.

``seconds`` is the CLI's own timing on process 0: the median of ``--passes`` passes after the
compiling one (``jaxsdnn infer --repeats``); ``compile`` its compile time. Overlapped
configurations run ``infer --overlap``. ``rounds run`` and ``MB sent`` are what the engine counted
(``exchange_rounds_run``, ``exchanged_entries``). Before and after the rounds a ping-pong (a ring of
``ppermute`` rounds between the same pinned processes) is fitted to ``latency + bytes / bandwidth``,
and ``model s`` is :func:`predict`'s time for the run with those two numbers, next to its error. ``bytes/image`` is what the plan sends per image (entries times the
exchange type's size); ``exchange share`` is ``1 - t(1 process, 1 core) / (N t(N processes))``,
the part of the N-process time that perfect division of the work would not explain.

    python scripts/bench_multiprocess.py                 # about 12 minutes on 2 cores
    python scripts/bench_multiprocess.py --stack 2 --repeats 1 --layers 24   # a quick look
    python scripts/bench_multiprocess.py --only kahypar                      # kahypar rows only
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


def run_config(cfg: dict, common: list, workdir: str, cores: int, passes: int) -> dict:
    """Runs one configuration; returns process 0's JSON."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAXSDNN_COMPILE_CACHE="off",  # compile times, not cache hits
               JAXSDNN_PARTITION_CACHE=os.path.join(workdir, "partitions"))
    n = cfg["processes"]
    out = os.path.join(workdir, f"cats-{cfg['name'].replace(' ', '_')}.tsv")
    base = [sys.executable, "-m", "jaxsdnn.cli", "infer", *common, "--out", out, "--json",
            "--exchange-dtype", cfg["dtype"], "--repeats", str(passes), "--tail", cfg.get("tail", "auto")] + (
                ["--overlap"] if cfg.get("overlap") else [])
    if n == 1:
        cmd = (["taskset", "-c", "0"] if cfg["pinned"] else []) + base
        procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    else:
        port = _free_port()
        procs = []
        for pid in range(n):
            place = (["--devices", "1", "--data-parallel", str(n)] if cfg.get("data_parallel")
                     else ["--devices", str(n), "--method", cfg["method"]])
            cmd = ["taskset", "-c", str(pid % cores)] + base + place + [
                "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(n), "--process-id", str(pid)]
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
    outs = [p.communicate(timeout=1800) for p in procs]
    for p, (o, e) in zip(procs, outs):
        if p.returncode != 0:
            raise SystemExit(f"{cfg['name']}: exit {p.returncode}: {e.strip().splitlines()[-1] if e.strip() else ''}")
    return json.loads(outs[0][0].strip().splitlines()[-1])


PING_SIZES = (1, 256, 4096, 65536, 262144, 1048576)  # float32 entries per message


def pingpong_worker(pid: int, port: int, n: int) -> None:
    """One of ``n`` pinned processes timing ``ppermute`` rounds (a ring) of each size; process 0
    prints ``{"bytes": [...], "seconds": [...]}`` (median seconds per round)."""
    import time

    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=n, process_id=pid)
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as Spec

    mesh = Mesh(np.array(jax.devices()), ("m",))
    pairs = [(i, (i + 1) % n) for i in range(n)]
    out = {"bytes": [], "seconds": []}
    for m in PING_SIZES:
        rounds = int(np.clip(2e7 // (m * 4 + 4e4), 20, 400))

        def body(x, rounds=rounds):
            return jax.lax.fori_loop(0, rounds, lambda i, y: jax.lax.ppermute(y, "m", pairs) * jnp.float32(1.0), x)

        f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=Spec("m"), out_specs=Spec("m")))
        host = np.ones(n * m, np.float32)
        x = jax.make_array_from_callback(host.shape, NamedSharding(mesh, Spec("m")), lambda i: host[i])
        jax.block_until_ready(f(x))
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            jax.block_until_ready(f(x))
            times.append((time.perf_counter() - t0) / rounds)
        out["bytes"].append(4 * m)
        out["seconds"].append(float(np.median(times)))
    if pid == 0:
        print(json.dumps(out))


def pingpong(n: int, cores: int) -> dict:
    """Runs :func:`pingpong_worker` as ``n`` processes pinned like the benchmark's; fits
    ``seconds per round = latency + bytes / bandwidth`` (least squares) and returns both."""
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen(["taskset", "-c", str(pid % cores), sys.executable, os.path.abspath(__file__),
                               "--pingpong-worker", str(pid), str(port), str(n)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for pid in range(n)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, e) in zip(procs, outs):
        if p.returncode != 0:
            raise SystemExit(f"ping-pong: exit {p.returncode}: {e.strip().splitlines()[-1] if e.strip() else ''}")
    res = json.loads(outs[0][0].strip().splitlines()[-1])
    slope, intercept = np.polyfit(np.asarray(res["bytes"], float), np.asarray(res["seconds"], float), 1)
    res["latency"] = float(max(intercept, 0.0))
    res["bandwidth"] = float(1.0 / slope) if slope > 0 else float("inf")
    return res


def train_worker(pid: int, port: int, n: int, method: str, layers: int, batch: int, steps: int) -> None:
    """One of ``n`` processes (``n = 1``: no ``jax.distributed``) timing the public training step
    (``jax.value_and_grad`` of softmax cross-entropy through ``jaxsdnn.apply``, then an optax adam
    update) on the real network with a 32-class head; process 0 prints the median step seconds
    and the compile seconds as JSON."""
    import time

    import jax

    if n > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=n, process_id=pid)
    import optax

    import jaxsdnn
    from jaxsdnn import losses, models, partition_cache, plan, sharded

    net = models.graphchallenge_mlp(os.path.join(GC, "neuron1024"), layers, num_classes=32)
    images = io.read_images(os.path.join(GC, "sparse-images-1024_subset.mtx"), num_features=1024)
    x = np.asarray(images[:batch].toarray(), np.float32)
    y = np.random.default_rng(0).integers(0, 32, batch).astype(np.int32)
    parts = plan.parts_single_device(net) if n == 1 else partition_cache.cached_partition(net, n, method=method)[0]
    model, params = jaxsdnn.shard_model(net, parts, sharded.make_mesh(n, 1))
    xs, ys = jaxsdnn.shard_batch(model, x, y)
    opt = optax.adam(1e-3)
    state = jax.jit(opt.init)(params)

    @jax.jit
    def step(model, params, state, x, y):  # the model is an argument: its tables span every process
        loss, grads = jax.value_and_grad(lambda p: losses.softmax_cross_entropy(jaxsdnn.apply(model, p, x), y))(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    t0 = time.perf_counter()
    jax.block_until_ready(step(model, params, state, xs, ys))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):  # the same inputs each time, as scripts/bench_api.py times a step
        t0 = time.perf_counter()
        jax.block_until_ready(step(model, params, state, xs, ys))
        times.append(time.perf_counter() - t0)
    if pid == 0:
        print(json.dumps({"seconds": float(np.median(times)), "compile_seconds": compile_s}))


def train_config(n: int, method: str, args, cores: int, workdir: str) -> dict:
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAXSDNN_PARTITION_CACHE=os.path.join(workdir, "partitions"))
    procs = [subprocess.Popen(["taskset", "-c", str(pid % cores), sys.executable, os.path.abspath(__file__),
                               "--train-worker", str(pid), str(port), str(n), method, str(args.layers),
                               str(args.train_batch), str(args.train_steps)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for pid in range(n)]
    outs = [p.communicate(timeout=1800) for p in procs]
    for p, (_, e) in zip(procs, outs):
        if p.returncode != 0:
            raise SystemExit(f"training step, {n} processes: exit {p.returncode}: "
                             f"{e.strip().splitlines()[-1] if e.strip() else ''}")
    return json.loads(outs[0][0].strip().splitlines()[-1])


def predict(one_core_s: float, run: dict, n: int, size: int, net: dict) -> float:
    """The latency / bandwidth model (:mod:`jaxsdnn.scaling`, no overlap) for one ``n``-process
    run, from what that run counted: the 1-core time divided by ``n`` (the partitions balance
    every layer's edges), plus every exchange round's latency, plus the bytes one process sends
    (each round's message, padding included: ``exchanged_entries / n``) over the bandwidth."""
    return (one_core_s / n + run["exchange_rounds_run"] * net["latency"]
            + run["exchanged_entries"] / n * size / net["bandwidth"])


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--pingpong-worker":
        pingpong_worker(*map(int, sys.argv[2:]))
        return
    if len(sys.argv) == 9 and sys.argv[1] == "--train-worker":
        a = sys.argv[2:]
        train_worker(int(a[0]), int(a[1]), int(a[2]), a[3], int(a[4]), int(a[5]), int(a[6]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=120)
    ap.add_argument("--stack", type=int, default=10, help="copies of the 1200-image subset")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="alternating rounds over the configurations")
    ap.add_argument("--passes", type=int, default=3,
                    help="timed passes per run after the compiling one (`jaxsdnn infer --repeats`); their median "
                         "is the run's time")
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--train-batch", type=int, default=1000, help="samples per training step")
    ap.add_argument("--train-steps", type=int, default=5, help="timed training steps per run")
    ap.add_argument("--no-train", action="store_true", help="skip the training-step table")
    ap.add_argument("--only", nargs="*", default=None,
                    help="run only the configurations whose names contain one of these (and the 1-core baseline)")
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
        {"name": f"{N} processes, kahypar, sharded tail", "processes": N, "method": "kahypar", "dtype": "float32",
         "tail": "sharded"},
        {"name": f"{N} processes, random, sharded tail", "processes": N, "method": "random", "dtype": "float32",
         "tail": "sharded"},
        {"name": f"{N} processes, data parallel", "processes": N, "method": None, "dtype": "float32",
         "data_parallel": True},
        {"name": f"{N} processes, data parallel, sharded tail", "processes": N, "method": None, "dtype": "float32",
         "data_parallel": True, "tail": "sharded"},
        {"name": f"{N} processes, kahypar, overlapped", "processes": N, "method": "kahypar", "dtype": "float32",
         "overlap": True},
        {"name": f"{N} processes, random, overlapped", "processes": N, "method": "random", "dtype": "float32",
         "overlap": True},
        {"name": f"{N} processes, kahypar, bfloat16 exchange", "processes": N, "method": "kahypar",
         "dtype": "bfloat16"},
        {"name": f"{N} processes, kahypar, overlapped, bfloat16", "processes": N, "method": "kahypar",
         "dtype": "bfloat16", "overlap": True},
    ]
    if args.only:
        configs = [configs[0]] + [c for c in configs[1:] if any(o in c["name"] for o in args.only)]
    runs = {c["name"]: [] for c in configs}
    pings = [pingpong(N, cores)]
    for r in range(args.repeats):
        for c in configs:
            res = run_config(c, common, workdir, cores, args.passes)
            runs[c["name"]].append(res)
            print(f"round {r + 1}: {c['name']}: {res['seconds']:.2f} s (compile {res['compile_seconds']:.1f} s)",
                  flush=True)
    pings.append(pingpong(N, cores))
    net = {"latency": float(np.median([p["latency"] for p in pings])),
           "bandwidth": float(np.median([p["bandwidth"] for p in pings]))}
    base = np.median([x["seconds"] for x in runs[configs[0]["name"]]])
    base_compile = np.median([x["compile_seconds"] for x in runs[configs[0]["name"]]])
    rows = []
    for c in configs:
        xs = runs[c["name"]]
        t = float(np.median([x["seconds"] for x in xs]))
        vol = xs[0].get("volume_per_sample", 0) or 0
        size = 2 if c["dtype"] != "float32" else 4
        share = 1 - base / (c["processes"] * t) if c["processes"] > 1 else None
        pred = predict(base, xs[0], c["processes"], size, net) if c["processes"] > 1 else None
        rows.append({"config": c["name"], "seconds": [x["seconds"] for x in xs], "median_s": t, "speedup": base / t,
                     "compile_s": float(np.median([x["compile_seconds"] for x in xs])),
                     "compile_ratio": float(np.median([x["compile_seconds"] for x in xs])) / base_compile,
                     "bytes_per_image": vol * size, "rounds": xs[0].get("rounds"), "exchange_share": share,
                     "rounds_run": xs[0]["exchange_rounds_run"], "exchanged_entries": xs[0]["exchanged_entries"],
                     "predicted_s": pred, "model_error": None if pred is None else pred / t - 1})
    info = (f"machine: {platform.machine()}, {cores} cpus; network 1024 x {args.layers}, "
            f"{images.shape[0] * args.stack} images; medians of {args.repeats} alternating rounds")
    lines = [info, "", "| configuration | seconds (runs) | median s | speed-up vs 1 core | compile s (x 1 process) "
             "| bytes / image | rounds run | MB sent / process | exchange share | model s (error) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        share = "-" if r["exchange_share"] is None else f"{100 * r['exchange_share']:.0f} %"
        n = next(c["processes"] for c in configs if c["name"] == r["config"])
        size = 2 if "bfloat16" in r["config"] else 4
        model = "-" if r["predicted_s"] is None else f"{r['predicted_s']:.2f} ({100 * r['model_error']:+.0f} %)"
        lines.append(f"| {r['config']} | {', '.join(f'{s:.2f}' for s in r['seconds'])} | {r['median_s']:.2f} | "
                     f"{r['speedup']:.2f}x | {r['compile_s']:.1f} ({r['compile_ratio']:.2f}x) | "
                     f"{r['bytes_per_image']:,} | {r['rounds_run']} | {r['exchanged_entries'] / n * size / 1e6:.1f} | "
                     f"{share} | {model} |")
    lines += ["", f"Ping-pong ({N} pinned processes, a ring of `ppermute` rounds; median seconds per round), "
              f"fit `latency + bytes / bandwidth`: latency {1e6 * net['latency']:.0f} us, bandwidth "
              f"{net['bandwidth'] / 1e6:.0f} MB/s", "", "| bytes | " + " | ".join(f"{b:,}" for b in pings[0]["bytes"]) + " |",
              "|---|" + "---|" * len(pings[0]["bytes"])]
    for i, p in enumerate(pings):
        lines.append(f"| us per round ({'before' if i == 0 else 'after'}) | "
                     + " | ".join(f"{1e6 * t:.0f}" for t in p["seconds"]) + " |")
    train = {}
    if not args.no_train:
        tconfigs = [("1 process, 1 core", 1, "none"), (f"{N} processes, kahypar", N, "kahypar"),
                    (f"{N} processes, random", N, "random")]
        train = {name: [] for name, _, _ in tconfigs}
        for r in range(args.repeats):
            for name, n, method in tconfigs:
                res = train_config(n, method, args, cores, workdir)
                train[name].append(res)
                print(f"round {r + 1}: training step, {name}: {res['seconds']:.3f} s (compile "
                      f"{res['compile_seconds']:.1f} s)", flush=True)
        t1 = float(np.median([x["seconds"] for x in train[tconfigs[0][0]]]))
        c1 = float(np.median([x["compile_seconds"] for x in train[tconfigs[0][0]]]))
        lines += ["", f"One training step (`jax.value_and_grad` through `jaxsdnn.apply`, softmax cross-entropy, "
                  f"adam; batch {args.train_batch}, {args.layers} layers + a 32-class head; median of "
                  f"{args.train_steps} steps per run, medians over {args.repeats} rounds):", "",
                  "| configuration | step s (runs) | median s | speed-up vs 1 core | compile s (x 1 process) |",
                  "|---|---|---|---|---|"]
        for name, _, _ in tconfigs:
            xs = train[name]
            t = float(np.median([x["seconds"] for x in xs]))
            c = float(np.median([x["compile_seconds"] for x in xs]))
            runs = ", ".join(f"{x['seconds']:.3f}" for x in xs)
            lines.append(f"| {name} | {runs} | {t:.3f} | {t1 / t:.2f}x | "
                         f"{c:.1f} ({c / c1:.2f}x) |")
    write_report(args.out, "bench_multiprocess", "\n".join(lines),
                 {"rows": rows, "pingpong": pings, "model": net, "train": train})


if __name__ == "__main__":
    main()
