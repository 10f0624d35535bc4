"""Sharded forward, gradients and one optimizer step against single-device references."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import random_network

from jaxsdnn import plan as plan_lib
from jaxsdnn import reference, sharded
from jaxsdnn.partition import METHODS, partition_network

SIZES = [37, 29, 41, 23, 11]  # uneven on purpose
BATCH = 24  # divisible by every data-axis size used


def dense_jax_loss(ws, bs, masks, x, labels, cap):
    """Single-device JAX loss over dense masked weights (what jax.grad differentiates)."""
    y = x
    for k, (w, b, m) in enumerate(zip(ws, bs, masks)):
        z = y @ (w * m) + b
        y = z if k == len(ws) - 1 else (jnp.maximum(z, 0) if cap is None else jnp.clip(z, 0, cap))
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(y, labels))


_dense_value_and_grad = jax.jit(jax.value_and_grad(dense_jax_loss, argnums=(0, 1)), static_argnums=5)


@jax.jit
def adam_step(params, grads):
    """One optax Adam step from a fresh state (jitted: one compile per layout)."""
    opt = optax.adam(1e-2)
    upd, _ = opt.update(grads, opt.init(params), params)
    return optax.apply_updates(params, upd)


def reference_grads(net, x, labels):
    dense = [w.toarray() for w in net.weights]
    masks = [_pattern(w) for w in net.weights]
    loss, (gw, gb) = _dense_value_and_grad(dense, list(net.biases), masks, x, labels, net.cap)
    coo = [w.tocoo() for w in net.weights]
    return float(loss), [np.asarray(g)[c.row, c.col] for g, c in zip(gw, coo)], [np.asarray(g) for g in gb]


def _pattern(w):
    p = w.copy()
    p.data[:] = 1
    return p.toarray().astype(bool)


def _close(a, b, tol=1e-5):
    scale = max(1.0, float(np.max(np.abs(b)))) if np.size(b) else 1.0
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * scale)


# forward: every device count with every partitioner, and 2-D / pure data-parallel meshes
FORWARD_CASES = [(1, 1, "block")] + [(p, 1, m) for p in (2, 3, 4, 8) for m in METHODS]
FORWARD_CASES += [(4, 2, "kahypar"), (2, 3, "random"), (1, 8, "block"), (2, 4, "mtkahypar")]
# gradients and an optimizer step: each device count, each partitioner and each mesh shape once
GRAD_CASES = [(1, 1, "block"), (2, 1, "kahypar"), (3, 1, "random"), (4, 1, "mtkahypar"), (8, 1, "kahypar"),
              (4, 2, "kahypar"), (2, 3, "random"), (1, 8, "block")]


@pytest.fixture(scope="module")
def net():
    return random_network(SIZES, density=0.25, seed=11, cap=3.0)


def _setup(net, model, data, method):
    rng = np.random.default_rng(model * 10 + data)
    x = (rng.random((BATCH, SIZES[0])) * (rng.random((BATCH, SIZES[0])) < 0.5)).astype(np.float32)
    labels = rng.integers(0, SIZES[-1], BATCH)
    part = partition_network(net, model, method=method, seed=1)
    plan = plan_lib.build_plan(net, part)
    sn = sharded.shard_network(plan, net, sharded.make_mesh(model, data))
    xl = sharded.put_inputs(sn, plan_lib.inputs_to_local(plan, x))
    return x, labels, plan, sn, xl


@pytest.mark.parametrize("model,data,method", FORWARD_CASES)
def test_forward_matches_reference(net, model, data, method):
    x, _, plan, sn, xl = _setup(net, model, data, method)
    y = sharded.sharded_forward(sn)(sn.params, sn.tables, xl)
    _close(plan_lib.outputs_from_local(plan, np.asarray(y)), reference.forward(net, x))


@pytest.mark.parametrize("model,data,method", GRAD_CASES)
def test_gradients_and_optimizer_step_match_reference(net, model, data, method):
    x, labels, plan, sn, xl = _setup(net, model, data, method)
    yl = sharded.put_labels(sn, labels)

    # gradients == single-device jax.grad (and the NumPy oracle)
    loss, grads = sharded.sharded_loss_and_grads(sn, BATCH)(sn.params, sn.tables, xl, yl)
    ref_loss, ref_gw, ref_gb = reference_grads(net, x, labels)
    np_loss, np_gw, _ = reference.loss_and_grads(net, x, labels)
    _close(float(loss), ref_loss)
    _close(float(loss), np_loss)
    g = plan_lib.values_to_network(plan, net, jax.device_get(grads))
    for k in range(net.num_layers):
        _close(g.weights[k].data, ref_gw[k])
        _close(g.biases[k], ref_gb[k])
        _close(g.weights[k].data, np_gw[k])
    # padded slots (sentinel index) get exactly zero gradient
    for k, layer in enumerate(plan.tables):
        n_ext = plan.n_local[k] + sum(s.shape[1] for s in layer.send)
        for idx, gwb in zip(layer.index, jax.device_get(grads)["w"][k]):
            np.testing.assert_array_equal(gwb[idx == n_ext], 0)

    # one optimizer step == the same step on the reference values
    new = plan_lib.values_to_network(plan, net, jax.device_get(adam_step(sn.params, grads)))
    ref_params = {"w": [w.data.copy() for w in net.weights], "b": [b.copy() for b in net.biases]}
    ref_new = adam_step(ref_params, {"w": ref_gw, "b": ref_gb})
    for k in range(net.num_layers):
        _close(new.weights[k].data, np.asarray(ref_new["w"][k]), tol=1e-4)
        _close(new.biases[k], np.asarray(ref_new["b"][k]), tol=1e-4)

    # predictions == argmax of the oracle's logits
    pred = sharded.sharded_predict(sn)(sn.params, sn.tables, xl)
    np.testing.assert_array_equal(np.asarray(pred), reference.forward(net, x, linear_last=True).argmax(1))


def test_mesh_must_match_partition(net):
    part = partition_network(net, 4, method="block")
    plan = plan_lib.build_plan(net, part)
    with pytest.raises(ValueError, match="4 parts but the mesh's model axis has 2"):
        sharded.shard_network(plan, net, sharded.make_mesh(2, 1))
    with pytest.raises(ValueError, match="needs 16 devices, only 8"):
        sharded.make_mesh(4, 4)


def test_partition_for_another_network_is_rejected(net):
    other = random_network(SIZES, density=0.25, seed=12, cap=3.0)
    part = partition_network(other, 2, method="block")
    with pytest.raises(ValueError, match="fingerprint"):
        plan_lib.build_plan(net, part)


def test_layer_without_edges_trains():
    import scipy.sparse as sp

    from jaxsdnn.network import SparseNetwork

    rng = np.random.default_rng(0)
    w1 = sp.random(8, 8, density=0.5, random_state=1)
    empty = sp.csr_array((8, 8))
    w3 = sp.random(8, 4, density=0.5, random_state=2)
    net = SparseNetwork.from_scipy([w1, empty, w3], 0.1)
    part = partition_network(net, 2, method="block")
    plan = plan_lib.build_plan(net, part)
    sn = sharded.shard_network(plan, net, sharded.make_mesh(2, 1))
    x = rng.random((4, 8)).astype(np.float32)
    labels = np.array([0, 1, 2, 3])
    loss, grads = sharded.sharded_loss_and_grads(sn, 4)(
        sn.params, sn.tables, sharded.put_inputs(sn, plan_lib.inputs_to_local(plan, x)), sharded.put_labels(sn, labels)
    )
    ref_loss, ref_gw, ref_gb = reference.loss_and_grads(net, x, labels)
    _close(float(loss), ref_loss)
    g = plan_lib.values_to_network(plan, net, jax.device_get(grads))
    for k in range(3):
        _close(g.weights[k].data, ref_gw[k])
        _close(g.biases[k], ref_gb[k])


def _grouped_network(seed=0):
    """Layers kron(ones(4, 4), M): rows come in groups of 4 reading identical inputs (dense blocks)."""
    import scipy.sparse as sp

    from jaxsdnn.network import SparseNetwork

    rng = np.random.default_rng(seed)
    mats = []
    for n_in, n_out in [(6, 5), (5, 7), (7, 3)]:
        m = (rng.random((n_in, n_out)) < 0.4).astype(float)
        m[rng.integers(0, n_in, n_out), np.arange(n_out)] = 1
        pattern = sp.coo_array(np.kron(np.ones((4, 4)), m))
        vals = rng.standard_normal(pattern.nnz) * 0.5
        mats.append(sp.csr_array((vals, (pattern.row, pattern.col)), shape=pattern.shape))
    return SparseNetwork.from_scipy(mats, [0.1 * rng.standard_normal(m.shape[1]) for m in mats], cap=None)


@pytest.mark.parametrize("model,data,method", [(1, 1, "block"), (2, 1, "kahypar"), (3, 2, "random")])
def test_dense_block_weight_gradient_matches_reference(model, data, method):
    net = _grouped_network()
    part = partition_network(net, model, method=method, seed=0)
    plan = plan_lib.build_plan(net, part)
    if model == 1:  # the grouped (batched GEMM) path is taken
        assert sum(gc.shape[1] > 0 for t in plan.tables for gc in t.group_cols) >= 2
    sn = sharded.shard_network(plan, net, sharded.make_mesh(model, data))
    rng = np.random.default_rng(3)
    x = rng.random((BATCH, net.sizes[0])).astype(np.float32)
    labels = rng.integers(0, net.sizes[-1], BATCH)
    loss, grads = sharded.sharded_loss_and_grads(sn, BATCH)(
        sn.params, sn.tables, sharded.put_inputs(sn, plan_lib.inputs_to_local(plan, x)), sharded.put_labels(sn, labels)
    )
    ref_loss, ref_gw, ref_gb = reference_grads(net, x, labels)
    _close(float(loss), ref_loss)
    g = plan_lib.values_to_network(plan, net, jax.device_get(grads))
    for k in range(net.num_layers):
        _close(g.weights[k].data, ref_gw[k])
        _close(g.biases[k], ref_gb[k])


def test_relu_derivative_is_zero_at_ties_on_both_gradient_paths():
    """jax.grad through the forward and the hand-written backward agree where z is exactly 0 or the cap."""
    from jaxsdnn import kernels

    z = jnp.array([-1.0, 0.0, 0.5, 3.0, 4.0], jnp.float32)
    for cap, expect in [(None, [0, 0, 1, 1, 1]), (3.0, [0, 0, 1, 0, 0])]:
        grad = jax.grad(lambda v: jnp.sum(kernels.activation(v, cap)))(z)
        np.testing.assert_array_equal(grad, expect)
        np.testing.assert_array_equal(kernels.activation_mask(z, cap), expect)
        np.testing.assert_array_equal(kernels.activation(z, cap), np.clip(z, 0, cap if cap else np.inf))


def test_loss_batch_comes_from_the_input(net):
    x, labels, plan, sn, xl = _setup(net, 2, 1, "block")
    half = BATCH // 2
    x2 = sharded.put_inputs(sn, plan_lib.inputs_to_local(plan, x[:half]))
    y2 = sharded.put_labels(sn, labels[:half])
    loss, _ = sharded.sharded_loss_and_grads(sn)(sn.params, sn.tables, x2, y2)
    _close(float(loss), reference.loss_and_grads(net, x[:half], labels[:half])[0])  # the mean over 12, not 24
    with pytest.raises(ValueError, match=f"batch of {half} samples but this function was built for global_batch={BATCH}"):
        sharded.sharded_loss_and_grads(sn, BATCH)(sn.params, sn.tables, x2, y2)


def test_a_batch_the_data_axis_cannot_split_is_refused_by_name(net):
    x, labels, plan, sn, xl = _setup(net, 2, 3, "block")
    with pytest.raises(ValueError, match="a batch of 10 samples cannot be split over the 3 devices of the 'data' axis"):
        sharded.put_inputs(sn, plan_lib.inputs_to_local(plan, x[:10]))
    with pytest.raises(ValueError, match="put_labels: a batch of 7 samples"):
        sharded.put_labels(sn, labels[:7])
