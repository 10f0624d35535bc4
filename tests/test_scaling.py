"""The scaling model: a hand-computed two-device case, measured costs of a toy network, monotonicity."""

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import random_network, random_parts

from jaxsdnn import scaling
from jaxsdnn.network import SparseNetwork
from jaxsdnn.partition import Partition
from jaxsdnn.plan import build_plan


def test_two_devices_by_hand():
    # layer 1: loads 10 / 6 edges, device 0 sends 3 entries and receives 1, one round
    # layer 2: loads 8 / 8, no exchange
    costs = scaling.LayerCosts(
        load=[[10, 6], [8, 8]], send=[[3, 1], [0, 0]], recv=[[1, 3], [0, 0]], rounds=[1, 0]
    )
    machine = scaling.Machine(compute_rate=2.0, latency=0.5, bandwidth=8.0, bytes_per_entry=4, batch=2)
    t = scaling.projected_times(costs, machine)
    # compute: max load * batch / rate = 10 * 2 / 2 and 8 * 2 / 2
    np.testing.assert_allclose(t["compute"], [10.0, 8.0], rtol=0, atol=1e-12)
    # exchange: 1 round * 0.5 + max(send, recv) = 3 entries * 2 samples * 4 bytes / 8 bytes/s
    np.testing.assert_allclose(t["latency"], [0.5, 0.0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(t["transfer"], [3.0, 0.0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(t["total"], [13.5, 8.0], rtol=0, atol=1e-12)
    # one device: (16 + 16) edges * 2 samples / 2 per s = 32 s
    assert scaling.speedup(costs, machine) == pytest.approx(32.0 / 21.5, rel=1e-12)


def test_slowest_device_sets_the_exchange():
    # device 1 has more partners but less volume: the model takes the worse device's sum
    costs = scaling.LayerCosts(load=[[1, 1]], send=[[4, 0]], recv=[[0, 1]], rounds=[[1, 3]])
    machine = scaling.Machine(compute_rate=1.0, latency=1.0, bandwidth=1.0, bytes_per_entry=1, batch=1)
    t = scaling.projected_times(costs, machine)
    np.testing.assert_allclose(t["exchange"], [5.0], rtol=0, atol=1e-12)  # max(1 + 4, 3 + 1)


def test_layer_costs_of_toy_network():
    edges = [(0, 0), (2, 0), (1, 1), (3, 1), (0, 2), (3, 2)]  # (input, output)
    r, c = zip(*edges)
    net = SparseNetwork.from_scipy([sp.coo_array((np.ones(6, np.float32), (r, c)), shape=(4, 3))], 0.0)
    parts = (np.array([0, 0, 1, 1]), np.array([0, 1, 1]))
    part = Partition(parts, 2, "hand", 0.03, 0, net.fingerprint())
    costs = scaling.layer_costs(net, part)
    np.testing.assert_array_equal(costs.load, [[2, 4]])  # out0 on 0; out1, out2 on 1
    np.testing.assert_array_equal(costs.send, [[2, 1]])  # in0, in1 -> 1 ; in2 -> 0
    np.testing.assert_array_equal(costs.recv, [[1, 2]])
    np.testing.assert_array_equal(costs.rounds, [[1, 1]])
    given = scaling.layer_costs(net, part, rounds=build_plan(net, part).rounds_per_layer())
    np.testing.assert_array_equal(given.rounds, [[1, 1]])
    np.testing.assert_array_equal(scaling.layer_costs(net, part, rounds="plan").rounds, [[1, 1]])


def test_partners_bound_the_plan_rounds():
    net = random_network([40, 30, 30], density=0.2, seed=3)
    parts = random_parts(net, 5, seed=1)
    part = Partition(tuple(parts), 5, "random", 0.5, 0, net.fingerprint())
    plan_rounds = build_plan(net, part).rounds_per_layer()
    np.testing.assert_array_equal(scaling.layer_costs(net, part, rounds="plan").rounds[:, 0], plan_rounds)
    partners = scaling.layer_costs(net, part).rounds.max(axis=1)
    assert (partners <= plan_rounds).all() and (partners > 0).all()


def test_more_volume_never_projects_faster():
    rng = np.random.default_rng(0)
    machine = scaling.Machine()
    for _ in range(50):
        L, P = rng.integers(1, 5), rng.integers(1, 9)
        base = {n: rng.integers(0, 100, (L, P)) for n in ("load", "send", "recv", "rounds")}
        before = scaling.projected_times(scaling.LayerCosts(**base), machine)["total"]
        for name in ("send", "recv", "rounds", "load"):
            more = dict(base, **{name: base[name] + rng.integers(0, 50, (L, P))})
            after = scaling.projected_times(scaling.LayerCosts(**more), machine)["total"]
            assert (after >= before).all(), name


def test_one_device_has_speedup_one_and_bad_input_is_rejected():
    costs = scaling.LayerCosts(load=[[5], [7]], send=[[0], [0]], recv=[[0], [0]], rounds=[0, 0])
    assert scaling.speedup(costs) == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(ValueError, match="send.shape"):
        scaling.LayerCosts(load=[[1, 1]], send=[[1, 1, 1]], recv=[[0, 0]], rounds=[0])
    with pytest.raises(ValueError, match="bandwidth"):
        scaling.Machine(bandwidth=0)
