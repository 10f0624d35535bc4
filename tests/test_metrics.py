"""Partition metrics: hand-computed values on a tiny network, brute force on random ones."""

import json

import numpy as np
import pytest
import scipy.sparse as sp

from jaxsdnn.hypergraph import connectivity_volume
from jaxsdnn.metrics import communication_matrix, layer_imbalance, partition_metrics
from jaxsdnn.network import SparseNetwork
from jaxsdnn.partition import Partition, partition_network


def tiny():
    """3 -> 2 -> 2 neurons; W1 edges (0,0) (1,0) (1,1) (2,1), W2 edges (0,0) (0,1) (1,1)."""
    w1 = sp.csr_array((np.ones(4), ([0, 1, 1, 2], [0, 0, 1, 1])), shape=(3, 2))
    w2 = sp.csr_array((np.ones(3), ([0, 0, 1], [0, 1, 1])), shape=(2, 2))
    net = SparseNetwork.from_scipy([w1, w2])
    part = Partition((np.array([0, 0, 1]), np.array([0, 1]), np.array([1, 1])), 2, "hand", 0.03, 0, net.fingerprint())
    return net, part


def test_tiny_metrics_by_hand():
    net, part = tiny()
    # layer 1: device 0 sends input 1 to device 1; layer 2: device 0 sends neuron 0 to device 1.
    np.testing.assert_array_equal(communication_matrix(net, part, 1), [[0, 1], [0, 0]])
    np.testing.assert_array_equal(communication_matrix(net, part, 2), [[0, 1], [0, 0]])
    m = partition_metrics(net, part)
    assert m["volume"] == 2
    assert m["per_layer_volume"] == [1, 1]
    assert m["max_send"] == [1, 1]
    assert m["max_recv"] == [1, 1]
    assert m["pairs"] == [1, 1]
    # layer 1 fan-ins (2, 2) on devices (0, 1): balanced; layer 2 fan-ins (1, 2) both on device 1:
    # loads (0, 3), mean 1.5 -> 3 / 1.5 - 1 = 1.
    np.testing.assert_allclose(m["imbalance"], [0.0, 1.0], atol=1e-12)
    assert m["max_imbalance"] == pytest.approx(1.0)
    assert m["input_imbalance"] == pytest.approx(2 / 1.5 - 1)
    json.dumps(m)  # JSON-ready


def test_three_devices_by_hand():
    # One input read by 4 neurons on devices 0, 1, 2, 2; it lives on device 1.
    w = sp.csr_array(np.array([[1.0, 1, 1, 1], [0, 0, 0, 1], [1, 0, 0, 0]]))
    net = SparseNetwork.from_scipy([w])
    part = Partition((np.array([1, 0, 2]), np.array([0, 1, 2, 2])), 3, "hand", 0.5, 0, net.fingerprint())
    # input 0 (dev 1) -> devices 0 and 2; input 1 (dev 0) -> device 2; input 2 (dev 2) -> device 0.
    np.testing.assert_array_equal(communication_matrix(net, part, 1), [[0, 0, 1], [1, 0, 1], [1, 0, 0]])
    m = partition_metrics(net, part)
    assert (m["volume"], m["max_send"], m["max_recv"], m["pairs"]) == (4, [2], [2], [4])
    # fan-ins (2, 1, 1, 2) on devices (0, 1, 2, 2): loads (2, 1, 3), mean 2 -> 0.5
    assert m["imbalance"] == [pytest.approx(0.5)]


def brute_force_matrix(net, parts, k, P):
    m = np.zeros((P, P), dtype=np.int64)
    dense = net.weights[k - 1].toarray() != 0
    for i in range(dense.shape[0]):
        owner = parts[k - 1][i]
        for q in {int(parts[k][j]) for j in np.flatnonzero(dense[i])} - {int(owner)}:
            m[owner, q] += 1
    return m


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_partitions_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    sizes = (11, 17, 9, 14)
    mats = [sp.csr_array((rng.random((a, b)) < 0.25).astype(float)) for a, b in zip(sizes[:-1], sizes[1:])]
    net = SparseNetwork.from_scipy(mats)
    P = 4
    parts = [rng.integers(0, P, n) for n in sizes]
    part = Partition(tuple(parts), P, "random", 0.5, seed, net.fingerprint())
    m = partition_metrics(net, part)
    total = 0
    for k in range(1, 4):
        expected = brute_force_matrix(net, parts, k, P)
        np.testing.assert_array_equal(communication_matrix(net, part, k), expected)
        assert m["per_layer_volume"][k - 1] == expected.sum()
        assert m["max_send"][k - 1] == expected.sum(axis=1).max()
        assert m["max_recv"][k - 1] == expected.sum(axis=0).max()
        assert m["pairs"][k - 1] == np.count_nonzero(expected)
        total += expected.sum()
    assert m["volume"] == total == connectivity_volume(net, parts)[0]


def test_partitioner_output_is_within_epsilon():
    rng = np.random.default_rng(4)
    mats = [sp.csr_array((rng.random((64, 64)) < 0.1).astype(float)) for _ in range(3)]
    net = SparseNetwork.from_scipy(mats)
    m = partition_metrics(net, partition_network(net, 4, method="random", epsilon=0.2))
    assert m["max_imbalance"] <= 0.2


def test_layer_imbalance_edge_cases():
    assert layer_imbalance(np.zeros(4), np.array([0, 0, 1, 1]), 2) == 0.0
    assert layer_imbalance(np.array([1, 1, 1, 1]), np.array([0, 0, 0, 0]), 2) == pytest.approx(1.0)


def test_metrics_reject_other_network_and_bad_layer():
    net, part = tiny()
    with pytest.raises(ValueError, match="layer k=3 must be in"):
        communication_matrix(net, part, 3)
    other = SparseNetwork.from_scipy([sp.csr_array(np.ones((3, 2))), sp.csr_array(np.ones((2, 2)))])
    with pytest.raises(ValueError, match="fingerprint"):
        partition_metrics(other, part)
