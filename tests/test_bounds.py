"""Volume lower bounds: the identity they rest on, and never above a true optimum."""

import itertools
import os

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import GC_DIR, random_network, random_parts

from jaxsdnn import bounds
from jaxsdnn import partition as partition_mod
from jaxsdnn.hypergraph import connectivity_volume
from jaxsdnn.network import SparseNetwork


@pytest.mark.parametrize("num_parts", [1, 2, 3, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_receive_volume_is_the_connectivity_volume(num_parts, seed):
    net = random_network([7, 11, 5, 9], density=0.3, seed=seed)
    parts = random_parts(net, num_parts, seed=seed)
    assert bounds.receive_volume(net, parts) == connectivity_volume(net, parts)[0]


def _assignments(weights: np.ndarray, num_parts: int, cap: int | None) -> np.ndarray:
    """Every owner vector of one layer whose device loads stay within ``cap`` (None: any)."""
    every = np.array(list(itertools.product(range(num_parts), repeat=weights.size)), dtype=np.int64)
    if cap is None:
        return every
    loads = np.stack([(every == d) @ weights for d in range(num_parts)], axis=1)
    return every[(loads <= cap).all(axis=1)]


def _reader_masks(w, owners: np.ndarray) -> np.ndarray:
    """``[assignments, n_k]`` bit masks of the devices reading each neuron of layer ``k``."""
    masks = np.zeros((len(owners), w.shape[0]), dtype=np.int64)
    for x in range(w.shape[0]):
        for r in w.indices[w.indptr[x] : w.indptr[x + 1]]:
            masks[:, x] |= 1 << owners[:, r]
    return masks


def _exact_min_volume(net: SparseNetwork, num_parts: int, epsilon: float) -> int:
    """Brute force: the fewest entries sent by any partition within the caps (layer 0 free),
    by dynamic programming over layers on every feasible owner vector of layers 1..L."""
    weights = partition_mod.layer_weights(net)
    layers = [None] + [
        _assignments(w, num_parts, partition_mod.layer_cap(w, num_parts, epsilon)) for w in weights[1:]
    ]
    # layer 0 is free, so each input is best owned by one of its readers' devices
    masks = _reader_masks(net.weights[0].tocsr(), layers[1])
    spans = sum(((masks >> d) & 1) for d in range(num_parts))
    best = np.maximum(spans - 1, 0).sum(axis=1)
    for k in range(1, net.num_layers):
        masks = _reader_masks(net.weights[k].tocsr(), layers[k + 1])  # [next, n_k]
        remote = masks[None, :, :] & ~(1 << layers[k])[:, None, :]  # [prev, next, n_k]
        cost = sum(((remote >> d) & 1).sum(axis=2) for d in range(num_parts))
        best = (best[:, None] + cost).min(axis=0)
    return int(best.min())


def _kron_layer(groups: int, copies: int, shift: int) -> sp.csr_array:
    """``copies`` neurons per group; group ``g`` reads every copy of groups ``g`` and ``g + shift``."""
    base = np.zeros((groups, groups))
    for g in range(groups):
        base[g, g] = base[(g + shift) % groups, g] = 1.0
    return sp.csr_array(np.kron(np.ones((copies, copies)), base))


def _case_network(case) -> SparseNetwork:
    """``("random", sizes, P, epsilon)`` or ``("kron" | "scrambled", groups, P, epsilon)``."""
    if case[0] == "random":
        return random_network(case[1], density=0.4, seed=sum(case[1]))
    mats = [_kron_layer(case[1], 2, s) for s in (1, 2, 1)]
    if case[0] == "scrambled":  # layer 2's read groups no longer match its compute groups
        mats[2] = mats[2][np.random.default_rng(0).permutation(mats[2].shape[0])]
    return SparseNetwork.from_scipy(mats, [np.zeros(m.shape[1]) for m in mats])


CASES = [
    ("random", [4, 6, 6, 6], 3, 0.03),
    ("random", [5, 4, 6, 4], 2, 0.25),
    ("kron", 4, 2, 0.03),
    ("kron", 4, 4, 0.03),
    ("scrambled", 4, 4, 0.03),
]


@pytest.mark.parametrize("case", CASES)
def test_device_chain_bound_never_exceeds_the_optimum(case):
    net, num_parts, epsilon = _case_network(case), case[2], case[3]
    exact = _exact_min_volume(net, num_parts, epsilon)
    bound = bounds.device_chain_bound(net, num_parts, epsilon)
    assert 0 <= bound <= exact, (bound, exact)
    if case[0] != "random" and num_parts == 4:
        # one device per group pair: every device receives at least one group's copies per layer
        assert bound > 0


def test_device_chain_bound_below_real_partitions_and_tight_at_one_group_per_device():
    from jaxsdnn.io import read_network

    net = read_network(os.path.join(GC_DIR, "neuron1024"), num_layers=14)
    num_parts = 64  # 16 neurons per device and layer: one compute group
    bound = bounds.device_chain_bound(net, num_parts)
    volumes = {
        method: connectivity_volume(net, partition_mod.partition_network(net, num_parts, method, seed=0).parts)[0]
        for method in ("block", "random", "kahypar")
    }
    assert all(bound <= v for v in volumes.values()), (bound, volumes)
    assert bound >= 0.75 * volumes["kahypar"], (bound, volumes)
    # a larger tracked range can only tighten it
    assert bounds.device_chain_bound(net, num_parts, max_inputs=96) >= bound


def test_device_chain_bound_says_something_at_few_devices():
    # every device carries what the other caps leave over, so a device cannot dodge the cost by
    # holding one compute group: at P = 8 the bound was 0 before that floor
    from jaxsdnn.io import read_network

    net = read_network(os.path.join(GC_DIR, "neuron1024"), num_layers=12)
    bound = bounds.device_chain_bound(net, 8)
    volume = connectivity_volume(net, partition_mod.partition_network(net, 8, "kahypar", seed=0).parts)[0]
    assert 0.3 * volume <= bound <= volume, (bound, volume)


def test_class_preserving_bound_rejects_networks_it_does_not_cover():
    net = random_network([4, 6, 5], density=0.5, seed=3)
    with pytest.raises(ValueError, match="equal layer sizes"):
        bounds.class_preserving_bound(net, 2)


def test_device_chain_bound_tracks_less_when_a_layer_has_too_many_input_sets(monkeypatch):
    net = random_network([5, 6, 6, 6], density=0.5, seed=11)
    full = bounds.device_chain_bound(net, 3, 0.03, max_inputs=12)
    monkeypatch.setattr(bounds, "_SUPPORT_LIMIT", 4)  # forces every layer to halve its range
    reduced = bounds.device_chain_bound(net, 3, 0.03, max_inputs=12)
    assert 0 <= reduced <= full <= _exact_min_volume(net, 3, 0.03)


def _net(*dense) -> SparseNetwork:
    mats = [sp.csr_array(np.asarray(m, dtype=float)) for m in dense]
    return SparseNetwork.from_scipy(mats, [np.zeros(m.shape[1]) for m in mats])


@pytest.mark.parametrize(
    "net, num_parts",
    [
        # fewer neurons than devices: a device may own nothing in a layer
        (_net([[1, 0], [0, 1]], [[1, 1], [1, 1]]), 3),
        # the cap leaves room for one device to stay empty in layer 2 (every layer has >= P neurons)
        (_net(np.eye(3), np.ones((3, 4))), 3),
        # neurons without inputs weigh nothing: one device may hold all of them besides its share
        (_net([[1, 0, 0, 0], [0, 1, 0, 0]], [[1, 0], [0, 1], [1, 0], [0, 1]]), 2),
    ],
)
def test_device_chain_bound_allows_empty_devices_and_free_neurons(net, num_parts):
    # regressions found by fuzzing against the brute force: each once gave a bound above the optimum
    assert bounds.device_chain_bound(net, num_parts, 0.03) <= _exact_min_volume(net, num_parts, 0.03)


def _random_prices(net: SparseNetwork, seed: int, scale: float) -> tuple:
    rng = np.random.default_rng(seed)
    counts = [int(net.input_classes(k).max()) + 1 for k in range(1, net.num_layers + 1)]
    return tuple([None] + [rng.normal(0.0, scale, n) for n in counts] for _ in range(2))


@pytest.mark.parametrize("case", [c for c in CASES if c[2] != 2 or c[0] == "random"])
def test_priced_bound_never_exceeds_the_optimum(case):
    # the bound must hold for any prices: the class duals, random ones of either sign, large ones
    net = _case_network(case)
    num_parts, epsilon = case[2], case[3]
    exact = _exact_min_volume(net, num_parts, epsilon)
    dual = bounds.class_assignment_prices(net, num_parts)
    assert (dual is not None) == (case[0] != "random")  # 8 neurons per layer, classes of 2, P = 4
    tried = [dual] if dual is not None else []
    tried += [_random_prices(net, seed, scale) for seed in range(4) for scale in (0.3, 3.0)]
    for prices in tried:
        assert 0 <= bounds.device_chain_bound(net, num_parts, epsilon, prices=prices) <= exact
    assert bounds.device_chain_bound(net, num_parts, epsilon) <= exact  # "auto"


def test_class_prices_make_devices_compete_on_the_real_network():
    # 16 neurons per device at P = 64: without prices every device takes the best pair of classes
    # in every layer; with the class duals it pays what the assignments charge
    from jaxsdnn.io import read_network

    net = read_network(os.path.join(GC_DIR, "neuron1024"), num_layers=30)
    parts = partition_mod.unit_chains(net, partition_mod.layer_weights(net), 64)
    first = net.weights[0]
    parts[0] = parts[1][first.indices[first.indptr[:-1]]]  # each input on one of its readers' devices
    volume = connectivity_volume(net, parts)[0]
    plain = bounds.device_chain_bound(net, 64, prices=None)
    priced = bounds.device_chain_bound(net, 64)
    assert plain < priced <= volume, (plain, priced, volume)
    assert priced >= 0.95 * volume, (priced, volume)  # measured 48,981 against 51,385


def test_prices_of_the_wrong_shape_are_refused():
    net = random_network([4, 6, 6, 6], density=0.4, seed=1)
    readers, sources = _random_prices(net, 0, 1.0)
    readers[2] = readers[2][:-1]
    with pytest.raises(ValueError, match="layer 2 prices: expected"):
        bounds.device_chain_bound(net, 3, prices=(readers, sources))
