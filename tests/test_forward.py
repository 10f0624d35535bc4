"""jaxsdnn.apply: outputs and gradients (any loss, params and input) against a dense single-device JAX reference."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import random_network

import jaxsdnn
from jaxsdnn import losses, reference
from jaxsdnn._compile_stats import counting
from jaxsdnn.partition import partition_network

SIZES = [37, 29, 41, 23, 11]  # uneven on purpose
BATCH = 24
CAP = 3.0
# each device count, each partitioner and each mesh shape once
CASES = [(1, 1, "block"), (2, 1, "kahypar"), (3, 1, "random"), (4, 1, "mtkahypar"), (8, 1, "kahypar"),
         (4, 2, "kahypar"), (2, 3, "random"), (1, 8, "block")]


@pytest.fixture(scope="module")
def net():
    return random_network(SIZES, density=0.25, seed=11, cap=CAP)


def dense_apply(ws, bs, x, cap=CAP, linear_last=True):
    """The reference: dense masked weights, ReLU with derivative 0 at ties (jax.nn.relu), capped."""
    y = x
    for k, (w, b) in enumerate(zip(ws, bs)):
        z = y @ w + b
        if linear_last and k == len(ws) - 1:
            y = z
        else:
            y = jax.nn.relu(z) if cap is None else jnp.where(z < cap, jax.nn.relu(z), cap)
    return y


def dense_values(net):
    return [jnp.asarray(w.toarray(), jnp.float32) for w in net.weights], [jnp.asarray(b, jnp.float32) for b in net.biases]


def at_edges(net, dense_grads):
    """Dense weight gradients read at the stored edges, in CSR order."""
    return [np.asarray(g)[c.row, c.col] for g, c in zip(dense_grads, (w.tocoo() for w in net.weights))]


def _close(a, b, tol=1e-5):
    scale = max(1.0, float(np.max(np.abs(b)))) if np.size(b) else 1.0
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol * scale)


def _assert_grads_match(net, model, gp, gw, gb):
    """Sharded gradients ``gp`` equal the dense reference's ``gw`` (read at the edges) and ``gb``."""
    g = jaxsdnn.to_network(model, gp)
    for k, (gwk, gbk) in enumerate(zip(at_edges(net, gw), gb)):
        _close(g.weights[k].data, gwk)
        _close(g.biases[k], gbk)


def _inputs(seed=0, batch=BATCH):
    rng = np.random.default_rng(seed)
    x = (rng.random((batch, SIZES[0])) * (rng.random((batch, SIZES[0])) < 0.5)).astype(np.float32)
    return x, rng.integers(0, SIZES[-1], batch).astype(np.int32)


def _model(net, model_axis, data_axis, method, seed=1):
    parts = partition_network(net, model_axis, method=method, seed=seed)
    return jaxsdnn.shard_model(net, parts, jaxsdnn.make_mesh(model_axis, data_axis))


def _sq_sum(tree):
    return sum(jnp.sum(jnp.square(a)) for a in jax.tree.leaves(tree))


LOSSES = {
    "cross_entropy": lambda y, labels, params: losses.softmax_cross_entropy(y, labels),
    "mse": lambda y, labels, params: losses.mean_squared_error(y, jax.nn.one_hot(labels, y.shape[1])),
    "l2_regularised": lambda y, labels, params: losses.softmax_cross_entropy(y, labels) + 1e-2 * _sq_sum(params),
}


@pytest.mark.parametrize("model_axis,data_axis,method", CASES)
def test_outputs_and_gradients_of_three_losses_match_dense_jax(net, model_axis, data_axis, method):
    x, labels = _inputs(model_axis)
    model, params = _model(net, model_axis, data_axis, method)
    ws, bs = dense_values(net)

    y = jax.jit(jaxsdnn.apply)(model, params, x)
    _close(y, reference.forward(net, x, linear_last=True))
    _close(jaxsdnn.apply(model, params, x, linear_last=False), reference.forward(net, x))

    for name, loss in LOSSES.items():
        value, (gp, gx) = jax.jit(jax.value_and_grad(
            lambda m, p, x: loss(jaxsdnn.apply(m, p, x), labels, p), argnums=(1, 2)))(model, params, x)
        # the dense reference's L2 term is over the same values (its zeros add nothing)
        ref_value, (gw, gb, rgx) = jax.value_and_grad(
            lambda w, b, x: loss(dense_apply(w, b, x), labels, (w, b)), argnums=(0, 1, 2))(ws, bs, jnp.asarray(x))
        _close(value, ref_value)
        _close(gx, rgx)
        _assert_grads_match(net, model, gp, gw, gb)


@pytest.mark.parametrize("model_axis,method,unroll,max_padding",
                         [(3, "kahypar", 0, 0.2), (2, "random", 0, 0.0), (3, "kahypar", None, None)])
def test_loops_unrolled_pieces_and_padded_schedules_match_dense_jax(model_axis, method, unroll, max_padding,
                                                                     monkeypatch):
    """The same gradients whether a segment's layers run as a ``lax.scan`` or unrolled, and
    whatever exchange padding the stacking adds (the defaults: shallow networks unrolled, unpadded)."""
    from jaxsdnn import forward, segment_ad
    from jaxsdnn.radixnet import radixnet

    rng = np.random.default_rng(model_axis)
    net = radixnet(64, 6, seed=3, bias=0.0, cap=CAP)  # six layers of one shape (grouped buckets)
    net = net.with_values([rng.standard_normal(w.nnz) / 4 for w in net.weights],
                          [0.1 * rng.standard_normal(n) for n in net.sizes[1:]])
    if unroll is not None:
        monkeypatch.setattr(segment_ad, "UNROLL_LAYERS", unroll)
    forward._core.cache_clear()  # programs traced under another UNROLL_LAYERS
    try:
        parts = partition_network(net, model_axis, method=method, seed=1)
        model, params = jaxsdnn.shard_model(net, parts, jaxsdnn.make_mesh(model_axis, 1), max_padding=max_padding)
        if max_padding:  # some layers share a padded schedule
            assert max(s.num_layers for s in model.schedule.segments) >= 2
        rng = np.random.default_rng(model_axis)
        x = rng.random((BATCH, net.sizes[0]), dtype=np.float32)
        labels = rng.integers(0, net.sizes[-1], BATCH)
        ws, bs = dense_values(net)
        loss = LOSSES["mse"]
        value, (gp, gx) = jax.jit(jax.value_and_grad(
            lambda m, p, x: loss(jaxsdnn.apply(m, p, x), labels, p), argnums=(1, 2)))(model, params, x)
        ref_value, (gw, gb, rgx) = jax.value_and_grad(
            lambda w, b, x: loss(dense_apply(w, b, x), labels, None), argnums=(0, 1, 2))(ws, bs, jnp.asarray(x))
        _close(value, ref_value)
        _close(gx, rgx)
        _assert_grads_match(net, model, gp, gw, gb)
        # only the weights: the first layer's input cotangent is skipped, the weights' are unchanged
        gp2 = jax.jit(jax.grad(lambda m, p: loss(jaxsdnn.apply(m, p, x), labels, p), argnums=1))(model, params)
        _assert_grads_match(net, model, gp2, gw, gb)
    finally:
        forward._core.cache_clear()


def test_cross_entropy_through_apply_equals_the_fused_builtin(net):
    """The built-in fused loss head and losses.softmax_cross_entropy on apply give the same gradients."""
    from jaxsdnn import plan as plan_lib
    from jaxsdnn import sharded

    x, labels = _inputs(3)
    model, params = _model(net, 4, 2, "kahypar")
    sn = sharded.shard_network(model.plan, net, model.mesh)
    loss, grads = sharded.sharded_loss_and_grads(sn)(sn.params, sn.tables, sharded.put_inputs(
        sn, plan_lib.inputs_to_local(model.plan, x)), sharded.put_labels(sn, labels))
    value, gp = jax.value_and_grad(lambda p: losses.softmax_cross_entropy(jaxsdnn.apply(model, p, x), labels))(params)
    _close(value, loss)
    ours, builtin = jaxsdnn.to_network(model, gp), plan_lib.values_to_network(model.plan, net, jax.device_get(grads))
    for k in range(net.num_layers):
        _close(ours.weights[k].data, builtin.weights[k].data)
        _close(ours.biases[k], builtin.biases[k])


def test_dense_plus_sparse_hybrid_gradients_match(net):
    """A dense layer before and after the sparse network: every gradient equals the dense reference."""
    rng = np.random.default_rng(5)
    raw = rng.standard_normal((BATCH, 13)).astype(np.float32)
    _, labels = _inputs(5)
    dense = {"pre": jnp.asarray(rng.standard_normal((13, SIZES[0])) * 0.3, jnp.float32),
             "post": jnp.asarray(rng.standard_normal((SIZES[-1], 5)) * 0.3, jnp.float32)}
    model, params = _model(net, 3, 2, "random")
    ws, bs = dense_values(net)

    def hybrid(sparse_out, dense, raw):
        return sparse_out(jnp.tanh(raw @ dense["pre"])) @ dense["post"]

    def loss(p, d):
        return losses.softmax_cross_entropy(hybrid(lambda h: jaxsdnn.apply(model, p, h), d, raw), labels % 5)

    def ref_loss(w, b, d):
        return losses.softmax_cross_entropy(hybrid(lambda h: dense_apply(w, b, h), d, raw), labels % 5)

    value, (gp, gd) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, dense)
    ref_value, (gw, gb, rgd) = jax.value_and_grad(ref_loss, argnums=(0, 1, 2))(ws, bs, dense)
    _close(value, ref_value)
    for key in dense:
        _close(gd[key], rgd[key])
    _assert_grads_match(net, model, gp, gw, gb)


def test_padding_noise_changes_nothing(net):
    """Noise in every padded slot and row leaves outputs and real gradients unchanged; padding gets 0 gradient."""
    x, labels = _inputs(7)
    model, params = _model(net, 4, 1, "kahypar")
    mask = jaxsdnn.param_mask(model)
    assert int(sum(jnp.sum(m) for m in jax.tree.leaves(mask))) == jaxsdnn.num_params(model)
    assert jaxsdnn.num_params(model) == net.total_nnz + sum(SIZES[1:])
    assert sum(a.size for a in jax.tree.leaves(params)) > jaxsdnn.num_params(model)  # there is padding to fill
    keys = iter(jax.random.split(jax.random.PRNGKey(0), len(jax.tree.leaves(params))))
    noisy = jax.tree.map(lambda p, m: jnp.where(m > 0, p, 5.0 * jax.random.normal(next(keys), p.shape)), params, mask)

    def loss(p):
        return losses.softmax_cross_entropy(jaxsdnn.apply(model, p, x), labels)

    v0, g0 = jax.value_and_grad(loss)(params)
    v1, g1 = jax.value_and_grad(loss)(noisy)
    assert float(v0) == float(v1)
    for a, b, m in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), jax.tree.leaves(mask)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_array_equal(np.asarray(b)[np.asarray(m) == 0], 0)
    # the global norm optax clips by is the norm over real entries
    real = jnp.sqrt(sum(jnp.sum(jnp.square(g * m)) for g, m in zip(jax.tree.leaves(g1), jax.tree.leaves(mask))))
    _close(optax.tree.norm(g1), real, tol=1e-6)


def test_relu_derivative_is_zero_at_ties():
    """Zero inputs and biases put every first-layer pre-activation exactly at 0: its bias gradient is
    0, as jax.nn.relu's (jnp.maximum would give 0.5)."""
    net = random_network([16, 12, 8], density=0.4, seed=3, bias_scale=0.0)
    net = net.with_values([w.data for w in net.weights], [np.zeros(12), np.full(8, 0.1)])
    model, params = jaxsdnn.shard_model(net, [np.arange(n) % 2 for n in net.sizes], jaxsdnn.make_mesh(2, 1))
    x = np.zeros((4, 16), np.float32)
    labels = np.arange(4) % 8
    gp = jax.grad(lambda p: losses.softmax_cross_entropy(jaxsdnn.apply(model, p, x), labels))(params)
    g = jaxsdnn.to_network(model, gp)
    np.testing.assert_array_equal(g.biases[0], 0)
    ws, bs = dense_values(net)
    gb = jax.grad(lambda b: losses.softmax_cross_entropy(dense_apply(ws, b, jnp.asarray(x), cap=None), labels))(bs)
    _close(g.biases[1], gb[1])
    np.testing.assert_array_equal(np.asarray(gb[0]), 0)


def test_ragged_last_batch_is_the_mean_over_real_samples(net):
    x, labels = _inputs(9, batch=21)
    model, params = _model(net, 2, 4, "random")
    xp, lp, weights = losses.pad_batch(x, labels, multiple=4)
    assert xp.shape == (24, SIZES[0]) and weights.sum() == 21
    value, gp = jax.value_and_grad(
        lambda p: losses.softmax_cross_entropy(jaxsdnn.apply(model, p, xp), lp, weights))(params)
    ws, bs = dense_values(net)
    ref, (gw, gb) = jax.value_and_grad(
        lambda w, b: losses.softmax_cross_entropy(dense_apply(w, b, jnp.asarray(x)), labels), argnums=(0, 1))(ws, bs)
    _close(value, ref)
    _assert_grads_match(net, model, gp, gw, gb)
    with pytest.raises(ValueError, match="'data' axis"):
        jaxsdnn.apply(model, params, x)


def test_intermediate_activations_and_counts_from_one_program(net):
    x, labels = _inputs(11)
    model, params = _model(net, 3, 1, "kahypar")
    y, acts, nnz = jax.jit(lambda m, p, x: jaxsdnn.apply(m, p, x, linear_last=False, layers="all"))(model, params, x)
    ref, h = x.astype(np.float64), []
    for w, b in zip(net.weights, net.biases):
        ref = np.clip(ref @ w.toarray() + b, 0, CAP)
        h.append(ref)
    assert sorted(acts) == [1, 2, 3, 4]
    for k in acts:
        _close(acts[k], h[k - 1])
    _close(y, h[-1])
    np.testing.assert_array_equal(np.asarray(nnz), np.stack([(a != 0).sum(1) for a in h], axis=1))

    # gradients flow through a captured layer too
    def loss(p):
        y, acts, _ = jaxsdnn.apply(model, p, x, layers=(2,))
        return losses.softmax_cross_entropy(y, labels) + 0.1 * jnp.sum(acts[2] ** 2)

    def ref_loss(w, b):
        a2 = dense_apply(w[:2], b[:2], jnp.asarray(x), linear_last=False)
        return losses.softmax_cross_entropy(dense_apply(w, b, jnp.asarray(x)), labels) + 0.1 * jnp.sum(a2 ** 2)

    ws, bs = dense_values(net)
    value, gp = jax.value_and_grad(loss)(params)
    ref_value, (gw, gb) = jax.value_and_grad(ref_loss, argnums=(0, 1))(ws, bs)
    _close(value, ref_value)
    _assert_grads_match(net, model, gp, gw, gb)


def test_model_is_a_pytree_and_rebuilding_does_not_recompile(net):
    x, _ = _inputs(13)
    parts = partition_network(net, 2, method="random", seed=2)
    mesh = jaxsdnn.make_mesh(2, 1)
    model, params = jaxsdnn.shard_model(net, parts, mesh)
    leaves, treedef = jax.tree.flatten(model)
    assert all(np.issubdtype(a.dtype, np.integer) for a in leaves)
    f = jax.jit(jaxsdnn.apply)
    y = f(model, params, x)
    jaxsdnn.apply(model, params, x)  # eager: the cached core's own program
    again, params2 = jaxsdnn.shard_model(net, parts, mesh)
    with counting() as c:
        y2 = jax.block_until_ready(f(again, params2, x))
        y3 = jax.block_until_ready(jaxsdnn.apply(again, params2, x))
    assert c.compiles == 0
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y2))
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y3))
    # an optimizer state made under jit works in a jitted step on the mesh
    opt = optax.adamw(1e-2, weight_decay=1e-2)
    state = jax.jit(opt.init)(params)

    @jax.jit
    def step(model, params, state, x):
        loss, g = jax.value_and_grad(lambda p: jnp.mean(jaxsdnn.apply(model, p, x) ** 2))(params)
        updates, state = opt.update(g, state, params)
        return optax.apply_updates(params, updates), state, loss

    new, state, loss = step(model, params, state, x)
    assert np.isfinite(float(loss)) and isinstance(new, jaxsdnn.SparseParams)


def test_bad_inputs_name_what_was_expected(net):
    model, params = _model(net, 2, 3, "block")
    x, _ = _inputs(0)
    with pytest.raises(ValueError, match=r"expects \[batch, 37\]"):
        jaxsdnn.apply(model, params, x[:, :30])
    with pytest.raises(ValueError, match="expected float32"):
        jaxsdnn.apply(model, params, x.astype(np.int32))
    with pytest.raises(ValueError, match="cannot be split over the 3 devices of the 'data' axis"):
        jaxsdnn.apply(model, params, x[:20])
    with pytest.raises(ValueError, match=r"layer numbers in 1..4"):
        jaxsdnn.apply(model, params, x, layers=(0, 2))
