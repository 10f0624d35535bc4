"""A seeded fuzz of the partitioners on random small and irregular networks at several P (see
``scripts/fuzz_partition.py``, which runs the same cases for longer): every case is a valid
partition within its caps, or a one-line refusal; never a tool exit or another exception."""

import os
import sys

import numpy as np
from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "scripts"))
import fuzz_partition  # noqa: E402

CASES = 80  # about 3 s on one core


def test_fuzz_partitioners_on_small_irregular_networks():
    cases, refused, failures = fuzz_partition.run(seconds=120, seed=20261202, max_cases=CASES)
    assert cases == CASES
    assert not failures, "\n".join(failures[:5])
    assert 0 < refused < cases  # both outcomes were exercised


def test_the_draws_cover_the_awkward_shapes():
    rng = np.random.default_rng(20261202)
    seen = {"no input": 0, "edgeless layer": 0, "smaller than P": 0, "P": set(), "tools": set()}
    for _ in range(CASES):
        net, num_parts, _, method = fuzz_partition.draw(rng)
        fan_in = [np.diff(w.tocsc().indptr) for w in net.weights]
        seen["no input"] += any((f == 0).any() for f in fan_in)
        seen["edgeless layer"] += any(w.nnz == 0 for w in net.weights)
        seen["smaller than P"] += any(n < num_parts for n in net.sizes)
        seen["P"].add(num_parts)
        seen["tools"].add(method)
    assert seen["no input"] and seen["edgeless layer"] and seen["smaller than P"]
    assert len(seen["P"]) >= 4 and {"kahypar", "mtkahypar"} <= seen["tools"]


def test_fuzz_check_catches_a_partition_over_its_cap(monkeypatch):
    """The checker itself can fail: a partitioner that ignores balance is reported."""
    from jaxsdnn import partition

    rng = np.random.default_rng(3)
    net = fuzz_partition.draw(rng)[0]
    while min(net.sizes) < 4 or not all(w.nnz for w in net.weights):
        net = fuzz_partition.draw(rng)[0]
    monkeypatch.setattr(partition, "partition_network", lambda network, P, **kw: partition.Partition(
        tuple(np.zeros(n, np.int64) for n in network.sizes), P, "bad", 0.03, 0, network.fingerprint()))
    assert "largest load" in fuzz_partition.check(net, 2, 0.03, "kahypar")
