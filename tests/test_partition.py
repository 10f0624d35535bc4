"""Partitioners: invariants (ids in range, every layer balanced, reproducible), files, bad input."""

import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from jaxsdnn import partition as partition_mod
from jaxsdnn._kahypar import partition_unconstrained
from jaxsdnn.hypergraph import connectivity_volume
from jaxsdnn.network import SparseNetwork
from jaxsdnn.partition import (
    METHODS,
    Partition,
    layer_cap,
    layer_weights,
    load_partition,
    partition_network,
    repair_balance,
    save_partition,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GC_DIR = os.path.join(REPO, "data", "graphchallenge", "neuron1024")


def fixed_fan_in_network(sizes, fan_in=3, seed=0) -> SparseNetwork:
    """Uneven layer sizes, every neuron reads exactly ``fan_in`` random inputs (uniform loads)."""
    rng = np.random.default_rng(seed)
    mats = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        rows = np.concatenate([rng.choice(n_in, fan_in, replace=False) for _ in range(n_out)])
        cols = np.repeat(np.arange(n_out), fan_in)
        mats.append(sp.csr_array((np.ones(rows.size), (rows, cols)), shape=(n_in, n_out)))
    return SparseNetwork.from_scipy(mats)


def mixed_fan_in_network(sizes, seed=0) -> SparseNetwork:
    """Fan-ins 1..6: loads that no count-balanced partition balances."""
    rng = np.random.default_rng(seed)
    mats = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        d = rng.integers(1, 7, n_out)
        rows = np.concatenate([rng.choice(n_in, k, replace=False) for k in d])
        cols = np.repeat(np.arange(n_out), d)
        mats.append(sp.csr_array((np.ones(rows.size), (rows, cols)), shape=(n_in, n_out)))
    return SparseNetwork.from_scipy(mats)


def imbalances(network, partition):
    out = []
    for w, p in zip(layer_weights(network), partition.parts):
        loads = np.bincount(p, weights=w, minlength=partition.num_parts)
        out.append(loads.max() / (w.sum() / partition.num_parts) - 1.0)
    return np.array(out)


UNEVEN = (48, 60, 36, 72, 24)  # every size divisible by 1, 2, 3, 4, 6, 12


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("num_parts", [1, 2, 3, 4, 12])
def test_invariants_uniform_loads(method, num_parts):
    net = fixed_fan_in_network(UNEVEN, seed=num_parts)
    part = partition_network(net, num_parts, method=method, seed=1)
    assert part.num_parts == num_parts and part.method == method and part.fingerprint == net.fingerprint()
    assert part.sizes == net.sizes
    for p in part.parts:
        assert p.dtype == np.int32 and p.min() >= 0 and p.max() < num_parts
    assert imbalances(net, part).max() <= 0.03 + 1e-12


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("num_parts,epsilon", [(2, 0.03), (5, 0.1), (8, 0.2)])
def test_invariants_mixed_loads(method, num_parts, epsilon):
    net = mixed_fan_in_network((80, 120, 96, 110), seed=num_parts)
    part = partition_network(net, num_parts, method=method, epsilon=epsilon, seed=3)
    assert imbalances(net, part).max() <= epsilon + 1e-12
    for p in part.parts:
        assert p.min() >= 0 and p.max() < num_parts


@pytest.mark.parametrize("method", METHODS)
def test_reproducible_for_a_seed(method):
    net = mixed_fan_in_network((60, 90, 70), seed=11)
    a = partition_network(net, 4, method=method, epsilon=0.1, seed=5)
    b = partition_network(net, 4, method=method, epsilon=0.1, seed=5)
    for x, y in zip(a.parts, b.parts):
        np.testing.assert_array_equal(x, y)


def test_random_depends_on_seed_and_block_is_contiguous():
    net = fixed_fan_in_network((40, 40, 40), seed=2)
    a = partition_network(net, 4, method="random", seed=1)
    b = partition_network(net, 4, method="random", seed=2)
    assert any(not np.array_equal(x, y) for x, y in zip(a.parts, b.parts))
    block = partition_network(net, 4, method="block")
    for p in block.parts:
        np.testing.assert_array_equal(p, np.repeat(np.arange(4), 10))


def test_tools_beat_random_on_structured_network():
    # Two independent chains of 16 neurons per layer: a 2-way partition can cut (almost) nothing.
    # Layer 0 only has nets "neuron + devices of its readers", which KaHyPar ignores: refine_layer
    # must fix it.
    half = sp.kron(sp.identity(2), sp.csr_array(np.ones((16, 16))), format="csr")
    net = SparseNetwork.from_scipy([half] * 4)
    rand = connectivity_volume(net, partition_network(net, 2, method="random").parts)[0]
    for method in ("kahypar", "mtkahypar"):
        part = partition_network(net, 2, method=method)
        assert connectivity_volume(net, part.parts)[0] <= 0.1 * rand


@pytest.mark.slow
def test_mtkahypar_same_result_for_any_thread_count():
    # Mt-KaHyPar is initialised once per process: compare two child processes.
    code = (
        "import sys, hashlib, numpy as np, scipy.sparse as sp\n"
        "from jaxsdnn.network import SparseNetwork\n"
        "from jaxsdnn.partition import partition_network\n"
        "rng = np.random.default_rng(0)\n"
        "mats = [sp.csr_array((rng.random((96, 96)) < 0.05).astype(float)) for _ in range(3)]\n"
        "p = partition_network(SparseNetwork.from_scipy(mats), 4, method='mtkahypar', epsilon=0.2,\n"
        "                      seed=3, threads=int(sys.argv[1]))\n"
        "print(hashlib.sha1(np.concatenate(p.parts).tobytes()).hexdigest())\n"
    )
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = []
    for threads in ("1", "2"):
        done = subprocess.run(
            [sys.executable, "-c", code, threads], capture_output=True, text=True, timeout=120, env=env
        )
        assert done.returncode == 0, done.stderr[-2000:]
        out.append(done.stdout.strip())
    assert out[0] == out[1] and len(out[0]) == 40


def test_real_network_first_block():
    from jaxsdnn.io import read_network

    net = read_network(GC_DIR, num_layers=6)
    rand = connectivity_volume(net, partition_network(net, 8, method="random").parts)[0]
    part = partition_network(net, 8, method="kahypar")
    assert imbalances(net, part).max() <= 0.03
    assert connectivity_volume(net, part.parts)[0] < 0.2 * rand


def test_repair_balance_moves_cheapest():
    weights = np.array([2, 2, 2, 2, 1, 1], dtype=np.int64)
    parts = np.array([0, 0, 0, 0, 1, 1])
    gains = np.zeros((6, 2))
    gains[2, 1] = 5.0  # neuron 2 is the cheapest to move
    out = repair_balance(weights, parts, cap=6, num_parts=2, gains=lambda p: gains)
    np.testing.assert_array_equal(out, [0, 0, 1, 0, 1, 1])


def test_repair_balance_swaps_and_fails_clearly():
    # Device 0 holds 4+1 = 5 > cap 4; moving any neuron overloads device 1; swapping 4 and 3 works.
    weights = np.array([4, 1, 3], dtype=np.int64)
    out = repair_balance(weights, np.array([0, 0, 1]), cap=4, num_parts=2)
    assert np.bincount(out, weights=weights, minlength=2).max() <= 4
    with pytest.raises(ValueError, match="layer 7: cannot balance 3 neurons"):
        repair_balance(np.array([5, 1, 1]), np.array([0, 0, 1]), cap=4, num_parts=2, layer=7)


def test_layer_cap():
    assert layer_cap(np.full(1024, 32), 64, 0.03) == 527
    assert layer_cap(np.ones(100), 4, 0.03) == 25


def test_unconstrained_run_shapes():
    net = fixed_fan_in_network((30, 30, 30), seed=4)
    parts = partition_unconstrained(net, 3)
    assert [p.size for p in parts] == list(net.sizes)
    assert all(p.min() >= 0 and p.max() < 3 for p in parts)


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_parts": 0}, "num_parts=0 must be an integer >= 1"),
        ({"num_parts": 25}, "num_parts=25 is larger than layer 4, which has 24 neurons"),
        ({"num_parts": 2.5}, "num_parts=2.5"),
        ({"num_parts": "4"}, "num_parts=.4. must be an integer"),
        ({"num_parts": 2, "epsilon": 0.0}, r"epsilon=0.0 must be in \(0, 1\)"),
        ({"num_parts": 2, "epsilon": 1.0}, r"epsilon=1.0 must be in \(0, 1\)"),
        ({"num_parts": 2, "epsilon": -0.1}, "epsilon=-0.1"),
        ({"num_parts": 2, "method": "metis"}, "method='metis' is not one of"),
        ({"num_parts": 2, "seed": -1}, "seed=-1"),
        ({"num_parts": 2, "threads": 0}, "threads=0"),
    ],
)
def test_bad_arguments(kwargs, match):
    net = fixed_fan_in_network(UNEVEN)
    with pytest.raises(ValueError, match=match):
        partition_network(net, **kwargs)


def test_layer_that_cannot_meet_epsilon_gets_the_best_packing():
    # 33 neurons of equal load over 5 devices: some device must get 7 > 1.03 * 6.6.
    net = fixed_fan_in_network((35, 33), seed=0)
    for method in METHODS:
        part = partition_network(net, 5, method=method)
        loads = np.bincount(part.parts[1], weights=net.fan_in(1), minlength=5)
        assert loads.max() == 7 * net.fan_in(1)[0], method  # ceil(33 / 5) neurons: the optimum
    # one neuron heavier than the mean: the best is that neuron alone on a device
    heavy = sp.csr_array(np.ones((4, 2)))
    heavy = sp.csr_array(sp.hstack([heavy, sp.csr_array(([1.0], ([0], [0])), shape=(4, 6))]))
    part = partition_network(SparseNetwork.from_scipy([heavy]), 4, method="block")
    loads = np.bincount(part.parts[1], weights=SparseNetwork.from_scipy([heavy]).fan_in(1), minlength=4)
    assert loads.max() == 4


def test_partition_validation():
    net = fixed_fan_in_network((12, 12, 12))
    other = fixed_fan_in_network((12, 12, 12), seed=9)
    part = partition_network(net, 3, method="block")
    part.validate_for(net)
    with pytest.raises(ValueError, match="fingerprint .* does not match"):
        part.validate_for(other)
    with pytest.raises(ValueError, match="partition has 2 layers .* but the network has 1"):
        part.validate_for(net.truncated(1))
    bigger = fixed_fan_in_network((12, 12, 13))
    with pytest.raises(ValueError, match="layer2 has 12 neurons but the network's layer 2 has 13"):
        part.validate_for(bigger)
    with pytest.raises(ValueError, match="layer1: neuron 4 has device 3, expected"):
        Partition((np.zeros(12, int), np.array([0, 0, 0, 0, 3] + [0] * 7), np.zeros(12, int)), 3, "x", 0.03, 0, "f")
    with pytest.raises(ValueError, match="num_parts=0"):
        Partition((np.zeros(2, int),), 0, "x", 0.03, 0, "f")


# -- files ---------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    net = fixed_fan_in_network((12, 18, 24), seed=1)
    part = partition_network(net, 3, method="random", seed=4)
    path = tmp_path / "p.npz"
    save_partition(path, part)
    return net, part, path


def test_save_load_roundtrip(saved):
    net, part, path = saved
    back = load_partition(path, net)
    for x, y in zip(part.parts, back.parts):
        np.testing.assert_array_equal(x, y)
        assert y.dtype == np.int32
    assert (back.num_parts, back.method, back.epsilon, back.seed, back.fingerprint) == (
        3, "random", 0.03, 4, net.fingerprint())
    with np.load(path) as data:
        assert sorted(data.files) == sorted(
            ["layer0", "layer1", "layer2", "format", "num_parts", "method", "epsilon", "seed", "fingerprint"]
        )


def test_load_rejects_another_network(saved):
    _, _, path = saved
    other = fixed_fan_in_network((12, 18, 24), seed=2)
    with pytest.raises(ValueError, match=f"{path}: partition fingerprint"):
        load_partition(path, other)
    with pytest.raises(ValueError, match="layer2 has 24 neurons but the network's layer 2 has 25"):
        load_partition(path, fixed_fan_in_network((12, 18, 25)))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "text", "empty"])
def test_load_rejects_corrupt_files(saved, damage):
    _, _, path = saved
    data = path.read_bytes()
    path.write_bytes(
        {"truncate": data[: len(data) // 2], "garbage": os.urandom(300), "text": b"layer0\t1\n", "empty": b""}[damage]
    )
    with pytest.raises(ValueError, match=f"{path}: not a valid partition file"):
        load_partition(path)


def test_load_rejects_missing_keys_and_bad_ids(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, layer0=np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="missing format, num_parts"):
        load_partition(path)
    meta = dict(format=1, num_parts=2, method="random", epsilon=0.03, seed=0, fingerprint="f")
    np.savez(path, layer0=np.zeros(3, np.int32), layer2=np.zeros(3, np.int32), **meta)
    with pytest.raises(ValueError, match="not layer0..layer"):
        load_partition(path)
    np.savez(path, layer0=np.zeros(3, np.int32), layer1=np.array([0, 5, 1], np.int32), **meta)
    with pytest.raises(ValueError, match="layer1: neuron 1 has device 5"):
        load_partition(path)
    with pytest.raises(FileNotFoundError, match="no such partition file"):
        load_partition(tmp_path / "missing.npz")


def test_save_is_atomic(saved, monkeypatch):
    net, part, path = saved
    before = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full")

    monkeypatch.setattr(partition_mod.np, "savez", broken_savez)
    other = partition_network(net, 2, method="block")
    with pytest.raises(OSError, match="disk full"):
        save_partition(path, other)
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]


# -- the shipped KaHyPar configuration -----------------------------------------------------


def test_kahypar_config_runs_in_subprocess():
    # A bad configuration key ends the process without an exception: run it in a child.
    code = (
        "import numpy as np, scipy.sparse as sp\n"
        "from jaxsdnn.network import SparseNetwork\n"
        "from jaxsdnn.partition import partition_network\n"
        "rng = np.random.default_rng(0)\n"
        "mats = [sp.csr_array((rng.random((64, 64)) < 0.1).astype(float)) for _ in range(3)]\n"
        "p = partition_network(SparseNetwork.from_scipy(mats), 4, method='kahypar', epsilon=0.2)\n"
        "print('ok', [int(x.max()) for x in p.parts])\n"
    )
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ok [3, 3, 3, 3]")


# -- unit chains -------------------------------------------------------------------------------


def cycle_class_network(num_groups, group_size, num_layers, seed=0) -> SparseNetwork:
    """Every layer: ``num_groups`` classes of ``group_size`` neurons with one input set each.

    The previous layer's neurons are dealt at random into ``num_groups`` read sets of
    ``group_size``; class ``G`` reads read sets ``G`` and ``G + 1`` (a cycle), so every neuron
    has fan-in ``2 * group_size`` and fan-out ``2 * group_size`` (the Graph Challenge pattern).
    """
    rng = np.random.default_rng(seed)
    n = num_groups * group_size
    mats = []
    for _ in range(num_layers):
        read_set = rng.permutation(n) // group_size  # neuron -> its read set
        rows, cols = [], []
        for j in range(n):
            g = j // group_size
            for s in (g, (g + 1) % num_groups):
                members = np.flatnonzero(read_set == s)
                rows.append(members), cols.append(np.full(members.size, j))
        rows, cols = np.concatenate(rows), np.concatenate(cols)
        mats.append(sp.csr_array((np.ones(rows.size), (rows, cols)), shape=(n, n)))
    return SparseNetwork.from_scipy(mats)


def brute_force_volume(network, parts):
    total = 0
    for k, w in enumerate(network.weights):
        dense = w.toarray() != 0
        for i in range(w.shape[0]):
            total += len({int(parts[k][i])} | set(parts[k + 1][np.flatnonzero(dense[i])].tolist())) - 1
    return total


def test_unit_chains_balanced_exact_volume_and_not_worse():
    net = cycle_class_network(8, 4, 5, seed=1)
    weights = layer_weights(net)
    chains = partition_mod.unit_chains(net, weights, 8)
    assert chains is not None and chains[0] is None
    for p in chains[1:]:
        assert np.array_equal(np.bincount(p, minlength=8), np.full(8, 4))  # one 4-unit per device
    chains[0] = np.arange(net.sizes[0]) % 8
    assert connectivity_volume(net, chains)[0] == brute_force_volume(net, chains)
    sweep = partition_network(net, 8, "kahypar", passes=0)  # keeps the better of sweep and chains
    solved = list(chains)
    cap0 = layer_cap(weights[0], 8, 0.03)
    solved[0], _ = partition_mod._solve(net, solved, 0, weights[0], cap0, 8, "kahypar", 0.03, 0, 1)
    assert connectivity_volume(net, sweep.parts)[0] <= connectivity_volume(net, solved)[0]
    assert imbalances(net, sweep).max() <= 0.03 + 1e-12
    again = partition_network(net, 8, "kahypar", passes=0)
    assert all(np.array_equal(a, b) for a, b in zip(sweep.parts, again.parts))


def test_unit_chains_optimal_among_class_preserving_partitions():
    import itertools

    from jaxsdnn.hypergraph import layer_volume

    net = cycle_class_network(4, 2, 3, seed=2)
    chains = partition_mod.unit_chains(net, layer_weights(net), 4)
    chains[0] = np.zeros(net.sizes[0], np.int64)  # layers 2..L do not read layer 0
    got = sum(layer_volume(net, chains, k, 4) for k in range(2, net.num_layers + 1))
    classes = [None] + [net.input_classes(k) for k in range(1, net.num_layers + 1)]
    best = None
    perms = [np.array(q) for q in itertools.permutations(range(4))]
    for choice in itertools.product(perms, repeat=net.num_layers - 1):  # layer 1 fixed: devices are symmetric
        parts = [chains[0], classes[1]] + [perm[classes[k + 2]] for k, perm in enumerate(choice)]
        vol = sum(layer_volume(net, parts, k, 4) for k in range(2, net.num_layers + 1))
        best = vol if best is None else min(best, vol)
    assert got == best


def test_unit_chains_only_where_they_apply():
    weights = layer_weights(mixed_fan_in_network((80, 120, 96, 110)))
    assert partition_mod.unit_chains(mixed_fan_in_network((80, 120, 96, 110)), weights, 4) is None
    net = cycle_class_network(8, 4, 3)
    assert partition_mod.unit_chains(net, layer_weights(net), 4) is None  # 8-neuron devices, classes of 4
    halves = partition_mod.unit_chains(net, layer_weights(net), 16)  # classes of 4 cut into 2-units
    assert halves is not None and all(np.array_equal(np.bincount(p), np.full(16, 2)) for p in halves[1:])
    assert partition_mod.unit_chains(net, layer_weights(net), 1) is None
