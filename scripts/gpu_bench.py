"""Edges/s of the jaxsdnn kernels and engine on whatever accelerator JAX finds (a GPU check).

Cases, each timed as the median of ``--repeats`` passes after compilation (reported apart):

* ``kernel``: the layer stack of the single-device plan under a plain ``jax.jit`` (no mesh, no
  ``shard_map``): the kernels alone;
* ``engine P=1``: :func:`jaxsdnn.engine.run_inference` on a ``1 x 1`` mesh, the single-device
  engine (the sharded code path with the trivial partition);
* with ``G > 1`` devices: ``engine P=G`` (neurons partitioned by kahypar, or ``block`` when the
  kahypar module is missing) and ``engine 1 x G`` (batch split, no exchange);
* ``train``: one SGD training step (forward, backward, update) against the forward pass on one
  device, at ``--train-batches`` (``scripts/_timing.py``, as in ``bench_sharded.py``);
* the same ``kernel`` and ``engine P=1`` on a RadiX-Net of ``--radix-neurons`` neurons, if the
  time budget allows.

Networks and inputs: the Graph Challenge 1024 x 120 network read from ``data/graphchallenge``,
and ``radixnet.random_images(n, --images, --density, seed=0)``. The kernel's categories must match
the scipy reference on the first 1000 images, and every engine case's the kernel's on all images
(exit status 1 otherwise). Needs only jax, numpy and scipy (plus kahypar for a partition on several
devices); nothing is downloaded.

    python scripts/gpu_bench.py [--check] [--out bench_out]   # --check: CPU, tiny sizes
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GC = os.path.join(ROOT, "data", "graphchallenge", "neuron1024")
CHECK_DEVICES = 2


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help=f"dry run on CPU ({CHECK_DEVICES} devices), tiny sizes")
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--layers", type=int, default=120, help="Graph Challenge layers")
    ap.add_argument("--images", type=int, default=60000)
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--batch", type=int, default=0, help="images per call (0: all that fit a quarter of memory)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--radix-neurons", type=int, default=4096)
    ap.add_argument("--radix-layers", type=int, default=24)
    ap.add_argument("--train-batches", type=int, nargs="*", default=[1000, 10000], help="batches of the train case")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds; later cases are skipped past it")
    args = ap.parse_args()
    if args.check:
        args.layers, args.images, args.repeats, args.radix_neurons, args.radix_layers = 6, 512, 1, 1024, 4
        args.train_batches = [256]
    return args


ARGS = parse_args()
if ARGS.check:
    os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

if ARGS.check:
    jax.config.update("jax_num_cpu_devices", CHECK_DEVICES)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxsdnn import engine, io, kernels, radixnet, sharded  # noqa: E402
from jaxsdnn import plan as plan_lib  # noqa: E402
from jaxsdnn import reference  # noqa: E402
from jaxsdnn.reference import categories as categories_of  # noqa: E402

from _timing import train_vs_forward  # noqa: E402  (scripts/_timing.py)


def auto_batch(neurons: int, images: int) -> int:
    """All images if ~8 activations of ``[neurons, batch]`` float32 fit a quarter of device memory."""
    stats = jax.devices()[0].memory_stats() or {}
    limit = stats.get("bytes_limit")
    if not limit:
        return images
    fit = int(limit * 0.25 // (8 * 4 * neurons))
    return max(1, min(images, fit // 1000 * 1000 or fit))


def kernel_case(net, images, batch, repeats) -> dict:
    """The single-device plan's layer stack under plain jit: the kernels without a mesh."""
    plan = plan_lib.build_plan(net, plan_lib.parts_single_device(net))
    values = plan_lib.layout_values(plan, net)
    w = tuple(tuple(jnp.asarray(b[0]) for b in ws) for ws in values["w"])
    bias = tuple(jnp.asarray(b[0]) for b in values["b"])
    index = tuple(tuple(jnp.asarray(i[0]) for i in t.index) for t in plan.tables)
    cap = net.cap

    @jax.jit
    def forward(w, bias, index, x):
        for k in range(len(w)):
            x = kernels.activation(kernels.bucketed_spmm(x, index[k], w[k]) + bias[k][:, None], cap)
        return x

    n_img = images.shape[0]
    xs = []
    for start in range(0, n_img, batch):
        chunk = images[start : start + batch]
        if chunk.shape[0] < batch:  # zero-pad the last batch (its rows are dropped below)
            chunk = np.pad(chunk.toarray(), ((0, batch - chunk.shape[0]), (0, 0)))
        xs.append(jnp.asarray(plan_lib.inputs_to_local(plan, chunk)[0]))
    t0 = time.perf_counter()
    compiled = forward.lower(w, bias, index, xs[0]).compile()
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        ys = [compiled(w, bias, index, x) for x in xs]
        jax.block_until_ready(ys)
        times.append(time.perf_counter() - t0)
    scores = np.concatenate([plan_lib.outputs_from_local(plan, np.asarray(y)[None]) for y in ys])[:n_img]
    seconds = float(np.median(times))
    return dict(seconds=seconds, compile_s=compile_s, edges_per_second=n_img * net.total_nnz / seconds,
                categories=categories_of(scores), scores=scores)


def reference_check(net, images, scores, count: int = 1000) -> str:
    """Whether the first ``count`` images get the scipy reference's categories (float64)."""
    m = min(count, images.shape[0])
    ref = reference.forward(net, images[:m])
    return str(bool(np.array_equal(categories_of(scores[:m]), categories_of(ref))))


def engine_case(net, images, batch, repeats, partition=None, model=1, data=1) -> dict:
    r = engine.run_inference(net, images, partition=partition, mesh=sharded.make_mesh(model, data),
                             batch_size=batch, repeats=repeats)
    return dict(seconds=r.seconds, compile_s=r.compile_seconds, edges_per_second=r.edges_per_second,
                categories=r.categories, volume=r.stats["volume_per_sample"], rounds=r.stats["rounds"])


def with_retry(fn, batch, **kw) -> tuple[dict, int]:
    """Runs ``fn(batch=...)``; on an out-of-memory error halves the batch (twice at most)."""
    for _ in range(3):
        try:
            return fn(batch=batch, **kw), batch
        except Exception as e:  # XlaRuntimeError has no stable import path across versions
            if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
                raise
            print(f"out of memory at batch {batch}, halving", file=sys.stderr, flush=True)
            batch = max(1, batch // 2)
    raise RuntimeError(f"out of memory even at batch {batch}")


def gc_partition(net, P):
    """A kahypar partition over ``P`` devices (``block`` if the kahypar module is missing)."""
    from jaxsdnn import partition

    try:
        import kahypar  # noqa: F401

        method = "kahypar"
    except ImportError:
        method = "block"
    t0 = time.perf_counter()
    part = partition.partition_network(net, P, method=method, seed=0, passes=0)
    return part, method, time.perf_counter() - t0


def main() -> None:
    args = ARGS
    start = time.perf_counter()
    devices = jax.devices()
    G = len(devices)
    info = (f"device: {devices[0].device_kind} x {G} ({jax.default_backend()}), jax {jax.__version__}, "
            f"numpy {np.__version__}, host {platform.machine()} {os.cpu_count()} cpus")
    print(info, file=sys.stderr, flush=True)
    rows, notes = [], []

    def record(case, network, mesh, n_img, batch, r, truth):
        same = truth if isinstance(truth, str) else str(bool(np.array_equal(r["categories"], truth)))
        r = {key: v for key, v in r.items() if key != "scores"}
        rows.append(dict(case=case, network=network, mesh=mesh, images=n_img, batch=batch, same=same, **r))
        print(f"{network} {case}: {r['edges_per_second']:.3g} edges/s, {r['seconds']:.2f} s, "
              f"compile {r['compile_s']:.1f} s, categories ok {same}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    net = io.read_network(GC, num_layers=args.layers)
    images = radixnet.random_images(1024, args.images, args.density, seed=0)
    notes.append(f"read {net.sizes[0]} x {net.num_layers} network and made {args.images} images "
                 f"({args.density} density) in {time.perf_counter() - t0:.1f} s")
    tag = f"gc1024x{net.num_layers}"
    batch = args.batch or auto_batch(1024, args.images)
    k, batch = with_retry(kernel_case, batch, net=net, images=images, repeats=args.repeats)
    record("kernel (jit, no mesh)", tag, "-", args.images, batch, k, reference_check(net, images, k["scores"]))
    truth = k["categories"]
    e, b = with_retry(engine_case, batch, net=net, images=images, repeats=args.repeats)
    record("engine P=1", tag, "1 x 1", args.images, b, e, truth)
    if G > 1:
        part, method, part_s = gc_partition(net, G)
        notes.append(f"{method} partition of {tag} over {G} devices: {part_s:.1f} s")
        e, b = with_retry(engine_case, batch, net=net, images=images, repeats=args.repeats, partition=part, model=G)
        record(f"engine P={G} ({method})", tag, f"{G} x 1", args.images, b, e, truth)
        e, b = with_retry(engine_case, batch, net=net, images=images, repeats=args.repeats, data=G)
        record(f"engine 1 x {G} (data)", tag, f"1 x {G}", args.images, b, e, truth)
    else:
        notes.append("one device: a partition over P > 1 devices cannot run here; engine P=1 only")

    train_rows = []
    for tb in args.train_batches:
        if time.perf_counter() - start > args.budget / 3:
            notes.append(f"skipped the train case at batch {tb}: past a third of the budget")
            continue
        t_fwd, t_step, ratio, c = train_vs_forward(net, images, None, 1, min(tb, args.images), args.repeats)
        train_rows.append((min(tb, args.images), t_fwd, t_step, ratio, c))
        print(f"{tag} train batch {tb}: forward {t_fwd:.4f} s, step {t_step:.4f} s, ratio {ratio:.2f}",
              file=sys.stderr, flush=True)

    elapsed = time.perf_counter() - start
    if elapsed < args.budget / 2:
        n = args.radix_neurons
        rx = radixnet.radixnet(n, args.radix_layers, seed=0)
        rimages = radixnet.random_images(n, args.images, args.density, seed=0)
        rtag = f"radix{n}x{args.radix_layers}"
        rbatch = args.batch or auto_batch(n, args.images)
        k, rbatch = with_retry(kernel_case, rbatch, net=rx, images=rimages, repeats=args.repeats)
        record("kernel (jit, no mesh)", rtag, "-", args.images, rbatch, k, reference_check(rx, rimages, k["scores"]))
        if time.perf_counter() - start < args.budget * 0.75:
            e, b = with_retry(engine_case, rbatch, net=rx, images=rimages, repeats=args.repeats)
            record("engine P=1", rtag, "1 x 1", args.images, b, e, k["categories"])
        else:
            notes.append(f"skipped the {rtag} engine case: {time.perf_counter() - start:.0f} s > 0.75 x budget")
    else:
        notes.append(f"skipped the RadiX-Net cases: {elapsed:.0f} s > half the {args.budget:.0f} s budget")

    lines = [
        f"# GPU check{' (--check: CPU dry run, tiny sizes)' if args.check else ''}",
        "",
        info,
        "",
        "| network | case | mesh (model x data) | images | batch | edges/s | run s | compile s | categories ok |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['network']} | {r['case']} | {r['mesh']} | {r['images']} | {r['batch']} | "
                     f"{r['edges_per_second']:.3g} | {r['seconds']:.3f} | {r['compile_s']:.1f} | {r['same']} |")
    lines += ["", f"run s: median of {args.repeats} passes over all images after compilation; "
              f"edges/s = images x stored edges / run s. categories ok: the kernel's match the scipy reference on the "
              f"first 1000 images, every engine case's match the kernel's on all. "
              f"Total wall time {time.perf_counter() - start:.0f} s."]
    if train_rows:
        lines += ["", f"One SGD training step against the forward pass ({tag}, one device; median of "
                  f"{args.repeats} interleaved repeats):", "",
                  "| batch | forward s | train step s | step / forward | step compile s |", "|---|---|---|---|---|"]
        lines += [f"| {b} | {f:.4f} | {t:.4f} | {r:.2f}x | {c:.1f} |" for b, f, t, r, c in train_rows]
    lines += [f"- {n}" for n in notes]
    text = "\n".join(lines)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_bench.md"), "w") as f:
        f.write(text + "\n")
    if any(r["same"] == "False" for r in rows):
        sys.exit("categories differ: see the table")


if __name__ == "__main__":
    main()
