"""The hypergraph model: hand-computed tiny cases and brute-force volume counts."""

import numpy as np
import pytest
import scipy.sparse as sp

from jaxsdnn.hypergraph import build_hypergraph, connectivity_volume, layer_hypergraph, layer_volume
from jaxsdnn.network import SparseNetwork


def tiny_network() -> SparseNetwork:
    """3 -> 2 -> 2 neurons; W1 edges (0,0) (1,0) (1,1) (2,1), W2 edges (0,0) (0,1) (1,1)."""
    w1 = sp.csr_array((np.ones(4), ([0, 1, 1, 2], [0, 0, 1, 1])), shape=(3, 2))
    w2 = sp.csr_array((np.ones(3), ([0, 0, 1], [0, 1, 1])), shape=(2, 2))
    return SparseNetwork.from_scipy([w1, w2])


def sparse_network(sizes, fan_in=(1, 4), seed=0) -> SparseNetwork:
    """Uneven layer sizes; every neuron reads a random 1..3 distinct inputs."""
    rng = np.random.default_rng(seed)
    mats = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        rows, cols = [], []
        for j in range(n_out):
            d = min(int(rng.integers(*fan_in)), n_in)
            rows += rng.choice(n_in, d, replace=False).tolist()
            cols += [j] * d
        mats.append(sp.csr_array((np.ones(len(rows)), (rows, cols)), shape=(n_in, n_out)))
    return SparseNetwork.from_scipy(mats)


def brute_force_volume(network: SparseNetwork, parts) -> list[int]:
    """Per layer: the number of (entry of layer k-1, remote device that reads it) pairs."""
    out = []
    for k, w in enumerate(network.weights, start=1):
        dense = w.toarray() != 0
        pairs = set()
        for i in range(w.shape[0]):
            for j in np.flatnonzero(dense[i]):
                if parts[k][j] != parts[k - 1][i]:
                    pairs.add((i, int(parts[k][j])))
        out.append(len(pairs))
    return out


def test_tiny_hypergraph_by_hand():
    hg = build_hypergraph(tiny_network())
    np.testing.assert_array_equal(hg.offsets, [0, 3, 5, 7])
    np.testing.assert_array_equal(hg.vertex_weights, [1, 1, 1, 2, 2, 1, 2])
    nets = [hg.net_pins[hg.net_ptr[e] : hg.net_ptr[e + 1]].tolist() for e in range(hg.num_nets)]
    assert nets == [[0, 3], [1, 3, 4], [2, 4], [3, 5, 6], [4, 6]]
    assert (hg.num_layers, hg.num_vertices, hg.num_pins) == (2, 7, 12)
    np.testing.assert_array_equal(hg.layer_of(np.array([0, 2, 3, 4, 5, 6])), [0, 0, 1, 1, 2, 2])


def test_tiny_volume_by_hand():
    net = tiny_network()
    parts = [np.array([0, 0, 1]), np.array([0, 1]), np.array([1, 1])]
    # layer 1: input 1 (device 0) is read on devices 0 and 1 -> 1; inputs 0 and 2 stay local.
    # layer 2: neuron 0 of layer 1 (device 0) is read on device 1 -> 1.
    total, per_layer = connectivity_volume(net, parts)
    assert total == 2
    np.testing.assert_array_equal(per_layer, [1, 1])
    assert connectivity_volume(net, [np.zeros(3, int), np.zeros(2, int), np.zeros(2, int)])[0] == 0


@pytest.mark.parametrize("num_parts", [2, 3, 7])
@pytest.mark.parametrize("seed", [0, 1])
def test_volume_matches_brute_force(num_parts, seed):
    net = sparse_network((9, 14, 6, 11), seed=seed)
    rng = np.random.default_rng(seed + 10)
    parts = [rng.integers(0, num_parts, n) for n in net.sizes]
    total, per_layer = connectivity_volume(net, parts)
    expected = brute_force_volume(net, parts)
    np.testing.assert_array_equal(per_layer, expected)
    assert total == sum(expected)


def test_volume_equals_hypergraph_km1():
    net = sparse_network((20, 30, 25, 20), seed=3)
    hg = build_hypergraph(net)
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 4, n) for n in net.sizes]
    flat = np.concatenate(parts)
    km1 = sum(
        np.unique(flat[hg.net_pins[hg.net_ptr[e] : hg.net_ptr[e + 1]]]).size - 1 for e in range(hg.num_nets)
    )
    assert connectivity_volume(net, parts)[0] == km1


def _km1(h, free_parts):
    every = np.concatenate([free_parts, np.arange(h.num_parts)])
    nets = h.pin_nets()
    spans = np.array([np.unique(every[h.net_pins[nets == e]]).size for e in range(h.num_nets)])
    return int(((spans - 1) * h.net_weights).sum())


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("right_known", [True, False])
def test_layer_hypergraph_volume(k, right_known):
    net = sparse_network((16, 24, 12, 20), seed=5)
    rng = np.random.default_rng(k)
    parts = [rng.integers(0, 3, n) for n in net.sizes]
    view = list(parts)
    if not right_known and k < net.num_layers:
        view[k + 1] = None
    h = layer_hypergraph(net, view, k, 3)
    assert np.all(np.diff(h.net_ptr) >= 2)
    assert np.all((h.net_pins >= 0) & (h.net_pins < h.num_free + 3))
    expected = layer_volume(net, parts, k, 3) if k >= 1 else 0
    if k < net.num_layers and right_known:
        expected += layer_volume(net, parts, k + 1, 3)
    assert _km1(h, parts[k]) == expected


def test_layer_hypergraph_without_left_keeps_readers_together():
    net = sparse_network((16, 24, 12), seed=6)
    h = layer_hypergraph(net, [None, None, None], 1, 4)
    w = net.weights[0]
    readers = {tuple(w.indices[w.indptr[i] : w.indptr[i + 1]]) for i in range(16) if w.indptr[i + 1] - w.indptr[i] >= 2}
    nets = {tuple(h.net_pins[h.net_ptr[e] : h.net_ptr[e + 1]]) for e in range(h.num_nets)}
    assert nets == readers
    assert h.net_weights.sum() == sum(1 for i in range(16) if w.indptr[i + 1] - w.indptr[i] >= 2)


def test_layer_hypergraph_merges_identical_nets():
    # Inputs 0 and 1 feed the same readers and sit on the same device: one net of weight 2.
    w1 = sp.csr_array((np.ones(4), ([0, 0, 1, 1], [0, 1, 0, 1])), shape=(3, 2))
    w1 = sp.csr_array(w1 + sp.csr_array((np.ones(1), ([2], [1])), shape=(3, 2)))
    net = SparseNetwork.from_scipy([w1])
    h = layer_hypergraph(net, [np.array([0, 0, 1]), None], 1, 2)
    pins = [h.net_pins[h.net_ptr[e] : h.net_ptr[e + 1]].tolist() for e in range(h.num_nets)]
    nets = sorted(zip(pins, h.net_weights.tolist()))
    assert nets == [([0, 1, 2], 2), ([1, 3], 1)]


def test_connectivity_volume_rejects_bad_parts():
    net = tiny_network()
    with pytest.raises(ValueError, match="got 2 part arrays, expected 3"):
        connectivity_volume(net, [np.zeros(3, int)] * 2)
    with pytest.raises(ValueError, match="layer 1: parts shape"):
        connectivity_volume(net, [np.zeros(3, int), np.zeros(3, int), np.zeros(2, int)])
    with pytest.raises(ValueError, match="negative device id -1"):
        connectivity_volume(net, [np.zeros(3, int), np.array([0, -1]), np.zeros(2, int)])
    with pytest.raises(ValueError, match="not an integer"):
        connectivity_volume(net, [np.zeros(3), np.zeros(2), np.zeros(2)])
