"""Partitioning at scale: contraction of identical-input neurons, progress, the partition cache,
and the bound the CLI reports."""

import json
import os

import numpy as np
import pytest
from conftest import GC_DIR

from jaxsdnn import partition as partition_mod
from jaxsdnn import partition_cache
from jaxsdnn.cli import main
from jaxsdnn.hypergraph import connectivity_volume, contract, layer_hypergraph
from jaxsdnn.io import read_network
from jaxsdnn.partition import contraction_groups, layer_cap, layer_weights, partition_network
from jaxsdnn.radixnet import radixnet

NETWORK = os.path.join(GC_DIR, "neuron1024")


@pytest.fixture(scope="module")
def radix():
    return radixnet(256, 6, seed=0, bias=-0.3)


@pytest.mark.parametrize("seed", range(6))
def test_contraction_keeps_the_volume_of_every_partition(radix, seed):
    """contract(h, g).volume(pc) == h.volume(pc[g]) for random groups, neighbours and partitions."""
    rng = np.random.default_rng(seed)
    P = int(rng.integers(2, 9))
    k = int(rng.integers(0, radix.num_layers + 1))
    parts = [rng.integers(0, P, n) if rng.random() < 0.8 else None for n in radix.sizes]
    h = layer_hypergraph(radix, parts, k, P)
    n = radix.sizes[k]
    m = int(rng.integers(1, n + 1))
    groups = np.concatenate([np.arange(m), rng.integers(0, m, n - m)])  # every id used
    rng.shuffle(groups)
    hc = contract(h, groups)
    assert hc.num_free == m and hc.net_pins.size <= h.net_pins.size
    assert np.all(np.diff(hc.net_ptr) >= 2)
    for _ in range(5):
        pc = rng.integers(0, P, m)
        assert hc.volume(pc) == h.volume(pc[groups])


def test_contraction_groups_stay_inside_input_classes(radix):
    P = 4
    for k in range(1, radix.num_layers + 1):
        g = contraction_groups(radix, k, P)
        assert g is not None
        classes = radix.input_classes(k)
        sizes = np.bincount(g)
        assert sizes.max() <= radix.sizes[k] // (4 * P)
        # every group lies inside one input class
        assert all(np.unique(classes[g == i]).size == 1 for i in range(int(g.max()) + 1))
    assert contraction_groups(radix, 1, 64) is None  # chunks of one neuron: nothing to contract


@pytest.mark.parametrize("method", ["kahypar", "mtkahypar"])
def test_contracted_partition_balanced_reproducible_and_not_worse(radix, method):
    P, eps = 4, 0.03
    a = partition_network(radix, P, method=method, seed=3)
    b = partition_network(radix, P, method=method, seed=3)
    plain = partition_network(radix, P, method=method, seed=3, contract=False)
    for k, (w, p) in enumerate(zip(layer_weights(radix), a.parts)):
        assert np.bincount(p, weights=w, minlength=P).max() <= layer_cap(w, P, eps), k
    for pa, pb in zip(a.parts, b.parts):
        np.testing.assert_array_equal(pa, pb)
    va, vp = connectivity_volume(radix, a)[0], connectivity_volume(radix, plain)[0]
    assert va <= 1.05 * vp, (va, vp)


def test_progress_reports_every_layer_and_the_final_volume():
    from conftest import random_network

    net = random_network([30, 41, 37, 44, 29], density=0.15, seed=2)  # uneven: no unit chains
    calls = []
    part = partition_network(net, 3, progress=lambda *a: calls.append(a))
    sweep = [c for c in calls if c[0] == "sweep"]
    assert [c[1] for c in sweep] == list(range(1, net.num_layers + 2)) and sweep[-1][2] == net.num_layers + 1
    assert calls[-1][3] == connectivity_volume(net, part)[0]
    assert all(c[3] >= 0 for c in calls)


def test_cache_is_hit_for_the_same_job_and_missed_for_another(radix, tmp_path, monkeypatch):
    made = []
    real = partition_mod.partition_network
    monkeypatch.setattr(partition_mod, "partition_network", lambda *a, **kw: made.append(a[1:4]) or real(*a, **kw))
    first, hit1 = partition_cache.cached_partition(radix, 4, cache_dir=tmp_path)
    again, hit2 = partition_cache.cached_partition(radix, 4, cache_dir=tmp_path, threads=2)  # threads: same job
    assert (hit1, hit2) == (False, True) and len(made) == 1
    for pa, pb in zip(first.parts, again.parts):
        np.testing.assert_array_equal(pa, pb)
    for kw in ({"num_parts": 2}, {"seed": 1}, {"epsilon": 0.05}, {"method": "mtkahypar"}, {"contract": False}):
        args = {"num_parts": 4, **kw}
        _, hit = partition_cache.cached_partition(radix, args.pop("num_parts"), cache_dir=tmp_path, **args)
        assert not hit, kw
    other = radixnet(256, 6, seed=1, bias=-0.3)  # another structure: another fingerprint
    assert not partition_cache.cached_partition(other, 4, cache_dir=tmp_path)[1]
    assert len(made) == 7
    _, hit = partition_cache.cached_partition(radix, 4, cache_dir=False)
    assert not hit and len(made) == 8 and len(list(tmp_path.glob("*.npz"))) == 7


def test_cache_replaces_a_damaged_or_foreign_entry(radix, tmp_path):
    part, _ = partition_cache.cached_partition(radix, 4, cache_dir=tmp_path)
    (entry,) = tmp_path.glob("*.npz")
    entry.write_bytes(b"not a zip")
    again, hit = partition_cache.cached_partition(radix, 4, cache_dir=tmp_path)
    assert not hit
    partition_mod.load_partition(entry, radix)  # rewritten whole
    # another job's file under this job's key (the key cannot say): refused and replaced
    foreign = partition_network(radix, 4, seed=9)
    partition_mod.save_partition(entry, foreign)
    _, hit = partition_cache.cached_partition(radix, 4, cache_dir=tmp_path)
    assert not hit and partition_mod.load_partition(entry).seed == 0


def test_unwritable_cache_only_loses_the_reuse(radix, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    part, hit = partition_cache.cached_partition(radix, 2, cache_dir=blocker / "sub")
    assert not hit and part.num_parts == 2


def test_cli_partition_reports_bound_gap_memory_and_reuses(tmp_path, capsys):
    args = ["partition", "--network", NETWORK, "--layers", "6", "--parts", "16", "--out", str(tmp_path / "p.npz"),
            "--json", "--progress"]
    results = []
    for _ in range(2):
        assert main(args) == 0
        out, err = capsys.readouterr()
        results.append(json.loads(out.strip().splitlines()[-1]))
        assert "proven lower bound" in err.splitlines()[-1]
    first, second = results
    assert (first["cache_hit"], second["cache_hit"]) == (False, True)
    assert first["volume"] == second["volume"] >= first["bound"] > 0
    assert first["gap"] == pytest.approx(first["volume"] / first["bound"] - 1)
    assert first["peak_rss_mb"]["self"] > 0
    assert main(args + ["--no-cache", "--no-bound"]) == 0
    out, err = capsys.readouterr()
    res = json.loads(out.strip().splitlines()[-1])
    assert not res["cache_hit"] and "bound" not in res and "partition sweep" in err


def test_bound_never_exceeds_a_partition_of_the_real_network():
    from jaxsdnn import bounds

    net = read_network(NETWORK, num_layers=12)
    for P in (8, 16):
        assert bounds.device_chain_bound(net, P) <= connectivity_volume(net, partition_network(net, P))[0]


@pytest.mark.parametrize("method", ["kahypar", "mtkahypar"])
def test_parallel_passes_agree_with_serial_for_a_seed(method):
    from conftest import random_network

    net = random_network([40, 52, 47, 51, 38, 45, 50], density=0.1, seed=5)
    serial = partition_network(net, 3, method=method, seed=4, workers=1)
    parallel = partition_network(net, 3, method=method, seed=4, workers=3)
    for a, b in zip(serial.parts, parallel.parts):
        np.testing.assert_array_equal(a, b)


def test_bad_workers_is_refused(radix):
    with pytest.raises(ValueError, match="workers=0"):
        partition_network(radix, 2, workers=0)
