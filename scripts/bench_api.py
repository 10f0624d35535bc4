"""The public forward (``jaxsdnn.apply``) under ``jax.value_and_grad`` against the built-in fused step.

Table 1 (issue 12's first target): one optimizer step (Adam) on the digits RadiX-Net of the
default configuration, 4 simulated devices (kahypar partition), batch 512:

* ``built-in``: ``sharded.sharded_loss_and_grads`` (fused softmax cross-entropy backward),
* ``apply + MSE``: ``jax.value_and_grad`` of a user MSE loss on one-hot targets through ``apply``,
* ``apply + CE``: the same with a user-written cross-entropy.

Table 2: the real Graph Challenge network (1024 x 120) at batch 1000, on 1 and 4 devices: one
training step (forward, backward, Adam update) through the public API against the forward pass
(``apply``) alone, timed in two orders within each round: alternating (a forward, then a step)
and repeated (each timed call after an untimed one of its own kind, as in a training or an
inference loop). On one device the two orders gave 4.21x and 4.56x in one run (BENCHMARKS.md,
Run 7), more than the margin to the 4x target.

Every row is timed interleaved with its baseline (``--repeats`` rounds, medians); compilation
(first call) is reported apart. The simulated devices share this machine's cores.

    python scripts/bench_api.py [--repeats 7] [--out bench_out] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax

jax.config.update("jax_num_cpu_devices", 8)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jaxsdnn  # noqa: E402
from jaxsdnn import config as config_lib  # noqa: E402
from jaxsdnn import io, losses, models, partition, sharded  # noqa: E402
from jaxsdnn import plan as plan_lib  # noqa: E402
from jaxsdnn.train import load_data  # noqa: E402

from _report import write_report  # noqa: E402  (scripts/_report.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GC = os.path.join(ROOT, "data", "graphchallenge")


def timed(fn):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - t0, out


def api_step(opt, loss_of_outputs):
    """``step(model, params, state, x, y) -> (params, state, loss)`` through the public API."""

    @jax.jit
    def step(model, params, state, x, y):
        loss, grads = jax.value_and_grad(lambda p: loss_of_outputs(jaxsdnn.apply(model, p, x), y))(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    return step


def builtin_step(sn, opt):
    lg = sharded.sharded_loss_and_grads(sn)

    @jax.jit
    def step(params, state, tables, x, y):
        loss, grads = lg(params, tables, x, y)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    return step


def mse(y, labels):
    return losses.mean_squared_error(y, jax.nn.one_hot(labels, y.shape[1]))


def user_ce(y, labels):
    logp = jax.nn.log_softmax(y)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def table_losses(repeats: int, batch: int = 512, devices: int = 4) -> list[dict]:
    cfg = config_lib.load_config()
    train_ds, _, _ = load_data(cfg.data)
    net = models.build_model(cfg.network, train_ds.features, train_ds.num_classes)
    parts = partition.partition_network(net, devices, method="kahypar", seed=0)
    mesh = sharded.make_mesh(devices, 1)
    model, params = jaxsdnn.shard_model(net, parts, mesh)
    plan = model.plan
    sn = sharded.shard_network(plan, net, mesh)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(train_ds), batch)
    xb, yb = train_ds.images[idx].astype(np.float32), train_ds.labels[idx].astype(np.int32)
    x = jax.device_put(xb, model.batch_sharding)
    y = jax.device_put(yb, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(sharded.DATA_AXIS)))
    xl, yl = sharded.put_inputs(sn, plan_lib.inputs_to_local(plan, xb)), sharded.put_labels(sn, yb)
    opt = optax.adam(1e-3)
    s_builtin = opt.init(sn.params)
    s_api = opt.init(params)
    runs = {
        "built-in": (builtin_step(sn, opt), lambda f: f(sn.params, s_builtin, sn.tables, xl, yl)),
        "apply + MSE": (api_step(opt, mse), lambda f: f(model, params, s_api, x, y)),
        "apply + CE (user)": (api_step(opt, user_ce), lambda f: f(model, params, s_api, x, y)),
        "apply + losses.softmax_cross_entropy": (api_step(opt, losses.softmax_cross_entropy),
                                                 lambda f: f(model, params, s_api, x, y)),
    }
    compile_s = {name: timed(lambda: call(fn))[0] for name, (fn, call) in runs.items()}
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, (fn, call) in runs.items():
            times[name].append(timed(lambda: call(fn))[0])
    base = np.asarray(times["built-in"])
    rows = []
    for name in runs:
        t = np.asarray(times[name])
        rows.append({"step": name, "median_ms": 1e3 * float(np.median(t)),
                     "ratio_to_builtin": float(np.median(t / base)), "compile_s": compile_s[name]})
    return rows


def table_depth(repeats: int, layers: int, batch: int = 1000) -> list[dict]:
    net = models.graphchallenge_mlp(os.path.join(GC, "neuron1024"), layers, num_classes=32)
    images = io.read_images(os.path.join(GC, "sparse-images-1024_subset.mtx"), num_features=1024)
    xb = np.asarray(images[:batch].toarray(), np.float32)
    yb = np.random.default_rng(0).integers(0, net.sizes[-1], batch).astype(np.int32)
    rows = []
    for devices in (1, 4):
        parts = plan_lib.parts_single_device(net) if devices == 1 else partition.partition_network(
            net, devices, method="kahypar", seed=0)
        mesh = sharded.make_mesh(devices, 1)
        model, params = jaxsdnn.shard_model(net, parts, mesh)
        x = jax.device_put(xb, model.batch_sharding)
        y = jax.device_put(yb, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(sharded.DATA_AXIS)))
        opt = optax.adam(1e-3)
        state = opt.init(params)
        step = api_step(opt, losses.softmax_cross_entropy)
        fwd = jax.jit(jaxsdnn.apply)
        c_step = timed(lambda: step(model, params, state, x, y))[0]
        c_fwd = timed(lambda: fwd(model, params, x))[0]
        # alternating: each forward follows a step and each step a forward; repeated: each timed call
        # follows one of its own kind (a training loop's steps, an inference loop's forwards)
        tf, ts, rf, rs = [], [], [], []
        for _ in range(repeats):
            tf.append(timed(lambda: fwd(model, params, x))[0])
            ts.append(timed(lambda: step(model, params, state, x, y))[0])
            timed(lambda: fwd(model, params, x))
            rf.append(timed(lambda: fwd(model, params, x))[0])
            timed(lambda: step(model, params, state, x, y))
            rs.append(timed(lambda: step(model, params, state, x, y))[0])
        tf, ts, rf, rs = map(np.asarray, (tf, ts, rf, rs))
        rows.append({"devices": devices, "forward_ms": 1e3 * float(np.median(tf)), "step_ms": 1e3 * float(np.median(ts)),
                     "step_over_forward": float(np.median(ts / tf)), "repeated_forward_ms": 1e3 * float(np.median(rf)),
                     "repeated_step_ms": 1e3 * float(np.median(rs)), "repeated_step_over_forward": float(np.median(rs / rf)),
                     "compile_forward_s": c_fwd, "compile_step_s": c_step})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--quick", action="store_true", help="24 challenge layers instead of 120")
    args = ap.parse_args()
    layers = 24 if args.quick else 120
    info = (f"machine: {platform.machine()}, {os.cpu_count()} cpus, jax {jax.__version__} "
            f"({jax.default_backend()}, {len(jax.devices())} simulated devices)")
    rows1 = table_losses(args.repeats)
    lines = ["## jax.value_and_grad through jaxsdnn.apply vs the built-in step (digits RadiX-Net, 4 devices, "
             "batch 512, Adam)", "", "| step | median ms | vs built-in | compile s |", "|---|---|---|---|"]
    lines += [f"| {r['step']} | {r['median_ms']:.2f} | {r['ratio_to_builtin']:.2f}x | {r['compile_s']:.2f} |"
              for r in rows1]
    rows2 = table_depth(args.repeats, layers)
    lines += ["", f"## Training step through the public API vs the forward pass (Graph Challenge 1024 x {layers} "
              "+ 32-class head, batch 1000, Adam)", "",
              "| devices | order | forward ms | step ms | step / forward | compile forward s | compile step s |",
              "|---|---|---|---|---|---|---|"]
    for r in rows2:
        lines += [f"| {r['devices']} | alternating | {r['forward_ms']:.1f} | {r['step_ms']:.1f} | "
                  f"{r['step_over_forward']:.2f}x | {r['compile_forward_s']:.1f} | {r['compile_step_s']:.1f} |",
                  f"| {r['devices']} | repeated | {r['repeated_forward_ms']:.1f} | {r['repeated_step_ms']:.1f} | "
                  f"{r['repeated_step_over_forward']:.2f}x | | |"]
    write_report(args.out, "bench_api", "\n".join([info, ""] + lines), {"losses": rows1, "depth": rows2})


if __name__ == "__main__":
    main()
