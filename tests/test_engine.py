"""Inference end to end on the real Graph Challenge data shipped in data/graphchallenge."""

import os

import numpy as np
import pytest
from conftest import GC_DIR, random_network

from jaxsdnn import engine, io, reference, sharded
from jaxsdnn.partition import partition_network

IMAGES = os.path.join(GC_DIR, "sparse-images-1024_subset.mtx")
TRUTH = os.path.join(GC_DIR, "neuron1024-l120-categories_subset.mtx")
NETWORK = os.path.join(GC_DIR, "neuron1024")


@pytest.fixture(scope="module")
def real():
    return io.read_network(NETWORK), io.read_images(IMAGES, num_features=1024), io.read_categories(TRUTH)


@pytest.mark.slow
def test_real_network_single_device_gives_the_19_truth_categories(real):
    net, images, truth = real
    result = engine.run_inference(net, images, batch_size=600)
    assert truth.size == 19
    np.testing.assert_array_equal(result.categories, truth)
    assert result.edges_per_second > 0 and result.compile_seconds > 0


@pytest.mark.slow
def test_real_network_on_8_devices_with_kahypar_gives_the_19_truth_categories(real):
    net, images, truth = real
    part = partition_network(net, 8, method="kahypar", seed=0)
    result = engine.run_inference(net, images, partition=part, mesh=sharded.make_mesh(8, 1))
    np.testing.assert_array_equal(result.categories, truth)
    assert result.stats["volume_per_sample"] > 0
    assert result.stats["padded_volume_per_sample"] >= result.stats["volume_per_sample"]


def test_first_layers_match_float64_reference(real):
    net, images, _ = real
    net6 = net.truncated(6)
    result = engine.run_inference(net6, images[:200])
    np.testing.assert_allclose(result.scores.toarray(), reference.forward(net6, images[:200]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model,data", [(1, 1), (3, 1), (2, 2)])
def test_random_valued_network_matches_scipy_float64(model, data):
    net = random_network([50, 64, 33, 47], density=0.2, seed=5, cap=32.0)
    rng = np.random.default_rng(0)
    images = (rng.random((37, 50)) < 0.3).astype(np.float32) * rng.random((37, 50)).astype(np.float32)
    part = None if model == 1 else partition_network(net, model, method="random", epsilon=0.5, seed=0)
    # odd image count and a batch size that is not a multiple: padding must be dropped
    result = engine.run_inference(net, images, partition=part, mesh=sharded.make_mesh(model, data), batch_size=10)
    ref = reference.forward(net, images)
    np.testing.assert_allclose(result.scores.toarray(), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    assert result.scores.shape == (37, 47)


def test_images_wider_than_network_are_rejected():
    net = random_network([10, 8, 6], seed=0)
    with pytest.raises(ValueError, match="12 features but the network has 10 input neurons"):
        engine.run_inference(net, np.ones((3, 12), np.float32))


def test_many_small_batches_on_a_2d_mesh():
    """Hundreds of batches used to queue collectives until the CPU runtime aborted."""
    net = random_network([30, 24, 18], density=0.3, seed=2, cap=32.0)
    images = np.random.default_rng(1).random((301, 30)).astype(np.float32)
    part = partition_network(net, 2, method="block")
    result = engine.run_inference(net, images, partition=part, mesh=sharded.make_mesh(2, 3), batch_size=2)
    assert result.stats["batch_size"] == 3  # rounded up to the data axis
    np.testing.assert_allclose(result.scores.toarray(), reference.forward(net, images), rtol=1e-5, atol=1e-5)
