"""Timing helpers shared by the benchmark scripts: one training step against the forward pass."""

from __future__ import annotations

import time

import jax
import numpy as np
import optax

from jaxsdnn import plan as plan_lib
from jaxsdnn import sharded


def seconds(fn) -> float:
    """Wall time of one call of ``fn``, waiting for its results."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def train_vs_forward(net, images, part, model: int, batch: int, repeats: int) -> tuple[float, float, float, float]:
    """One SGD training step against the forward pass, on ``model`` devices (``part=None``: one).

    The two are timed interleaved, so that a noisy neighbour slows both alike.

    Returns:
        (median forward s, median train-step s, median of the per-repeat step / forward ratios,
        seconds to compile and run the first step).
    """
    parts = plan_lib.parts_single_device(net) if part is None else part
    plan = plan_lib.build_plan(net, parts)
    sn = sharded.shard_network(plan, net, sharded.make_mesh(model, 1))
    rng = np.random.default_rng(0)
    x = sharded.put_inputs(sn, plan_lib.inputs_to_local(plan, images[:batch]))
    y = sharded.put_labels(sn, rng.integers(0, net.sizes[-1], batch))
    forward = sharded.sharded_forward(sn)
    loss_and_grads = sharded.sharded_loss_and_grads(sn, batch)
    opt = optax.sgd(1e-3)
    state = opt.init(sn.params)

    @jax.jit
    def step(params, state, tables, x, y):
        loss, grads = loss_and_grads(params, tables, x, y)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    compile_s = seconds(lambda: step(sn.params, state, sn.tables, x, y))
    jax.block_until_ready(forward(sn.params, sn.tables, x))
    t_fwd, t_step = [], []
    for _ in range(max(1, repeats)):
        t_fwd.append(seconds(lambda: forward(sn.params, sn.tables, x)))
        t_step.append(seconds(lambda: step(sn.params, state, sn.tables, x, y)))
    ratio = float(np.median(np.asarray(t_step) / np.asarray(t_fwd)))
    return float(np.median(t_fwd)), float(np.median(t_step)), ratio, compile_s
