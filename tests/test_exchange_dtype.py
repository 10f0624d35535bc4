"""Activations exchanged in a narrower type: error against the float64 oracle within the stated
tolerance, the real challenge subset's categories unchanged, bad types refused."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import GC_DIR, random_network

import jaxsdnn
from jaxsdnn import engine, io, partition, reference, sharded

# worst error over max |y| seen on these 4-layer networks, with margin (bfloat16 keeps 8 bits)
TOLERANCE = {"float32": 1e-5, "bfloat16": 3e-2, "float16": 4e-3}


@pytest.fixture(scope="module")
def net():
    return random_network([48, 40, 44, 36, 30], density=0.2, seed=7, bias_scale=0.05)


@pytest.mark.parametrize("P", [2, 3])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_inference_error_within_tolerance(net, P, dtype):
    x = np.abs(np.random.default_rng(0).standard_normal((24, net.sizes[0])))
    ref = reference.forward(net, x, dtype=np.float64)
    part = partition.partition_network(net, P, method="random", seed=1)
    r = engine.run_inference(net, x, partition=part, mesh=sharded.make_mesh(P, 1), exchange_dtype=dtype,
                             compact=False)
    rel = np.abs(r.scores.toarray() - ref).max() / np.abs(ref).max()
    assert rel <= TOLERANCE[dtype], rel
    if dtype != "float32":
        assert rel > 1e-5  # the narrow type really travelled (the exact run is about 1e-7)


@pytest.mark.slow
def test_apply_with_bfloat16_exchange_and_its_gradient(net):
    x = np.abs(np.random.default_rng(1).standard_normal((16, net.sizes[0]))).astype(np.float32)
    ref = reference.forward(net, x, dtype=np.float64)
    part = partition.partition_network(net, 3, method="random", seed=2)
    mesh = sharded.make_mesh(3, 1)
    exact, params = jaxsdnn.shard_model(net, part, mesh)
    narrow, _ = jaxsdnn.shard_model(net, part, mesh, exchange_dtype=jnp.bfloat16)
    xs = jaxsdnn.shard_batch(exact, x)
    y0 = np.asarray(jaxsdnn.apply(exact, params, xs, linear_last=False))
    y1 = np.asarray(jaxsdnn.apply(narrow, params, xs, linear_last=False))
    assert np.abs(y0 - ref).max() / np.abs(ref).max() < 1e-5
    rel = np.abs(y1 - ref).max() / np.abs(ref).max()
    assert 1e-5 < rel <= TOLERANCE["bfloat16"]
    g0 = jax.grad(lambda p: jnp.sum(jaxsdnn.apply(exact, p, xs) ** 2))(params)
    g1 = jax.grad(lambda p: jnp.sum(jaxsdnn.apply(narrow, p, xs) ** 2))(params)
    a, b = np.concatenate([np.ravel(v) for v in jax.tree.leaves(g0)]), np.concatenate(
        [np.ravel(v) for v in jax.tree.leaves(g1)])
    assert np.abs(a - b).max() <= 5e-2 * np.abs(a).max()


@pytest.mark.slow
def test_challenge_categories_unchanged_in_bfloat16():
    net = io.read_network(os.path.join(GC_DIR, "neuron1024"), num_layers=120)
    images = io.read_images(os.path.join(GC_DIR, "sparse-images-1024_subset.mtx"), num_features=1024)
    truth = io.read_categories(os.path.join(GC_DIR, "neuron1024-l120-categories_subset.mtx"))
    part = partition.partition_network(net, 4, method="random", seed=0)
    r = engine.run_inference(net, images, partition=part, mesh=sharded.make_mesh(4, 1), exchange_dtype="bfloat16")
    np.testing.assert_array_equal(r.categories, truth)


@pytest.mark.parametrize("bad", ["int8", "float64", "nonsense"])
def test_bad_exchange_dtype_is_refused(net, bad):
    with pytest.raises(ValueError, match="exchange_dtype=.*bfloat16"):
        engine.run_inference(net, np.ones((2, net.sizes[0])), exchange_dtype=bad)
    with pytest.raises(ValueError, match="exchange_dtype"):
        jaxsdnn.shard_model(net, partition.partition_network(net, 2, method="block"), sharded.make_mesh(2, 1),
                            exchange_dtype=bad)
