"""BCOO interop: networks from and to jax.experimental.sparse.BCOO, device blocks viewed as BCOO."""

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_network
from jax.experimental import sparse

from jaxsdnn import kernels, plan as plan_lib, reference
from jaxsdnn.network import SparseNetwork
from jaxsdnn.partition import partition_network


def test_round_trip_keeps_structure_values_and_stored_zeros():
    net = random_network([12, 9, 7], density=0.4, seed=3)
    weights = [w.copy() for w in net.weights]
    weights[0].data[0] = 0.0  # a stored zero is an edge
    net = SparseNetwork(tuple(weights), net.biases, None)
    mats = net.to_bcoo()
    assert all(isinstance(m, sparse.BCOO) and m.shape == w.shape for m, w in zip(mats, net.weights))
    back = SparseNetwork.from_bcoo(mats, bias=list(net.biases))
    assert back.fingerprint() == net.fingerprint() and back.nnz == net.nnz
    for a, b in zip(back.weights, net.weights):
        np.testing.assert_array_equal(a.data, b.data)
    x = np.random.default_rng(0).random((5, 12)).astype(np.float32)
    np.testing.assert_allclose(reference.forward(back, x), reference.forward(net, x))


def test_padding_is_dropped_and_duplicates_and_batched_bcoo_are_refused():
    padded = sparse.BCOO((jnp.array([1.0, 2.0, 9.0]), jnp.array([[0, 1], [2, 0], [3, 3]])), shape=(3, 2))
    net = SparseNetwork.from_bcoo([padded])
    assert net.nnz == (2,)
    dup = sparse.BCOO((jnp.array([1.0, 2.0]), jnp.array([[0, 1], [0, 1]])), shape=(3, 2))
    with pytest.raises(ValueError, match=r"layer 1: duplicate edge \(1, 2\)"):
        SparseNetwork.from_bcoo([dup])
    batched = sparse.BCOO.fromdense(jnp.ones((3, 2)), n_batch=1)
    with pytest.raises(ValueError, match="layer 1: expected a 2-D BCOO without batch"):
        SparseNetwork.from_bcoo([batched])


def test_a_device_block_viewed_as_bcoo_gives_the_kernel_product():
    net = random_network([20, 16, 10], density=0.3, seed=1)
    plan = plan_lib.build_plan(net, partition_network(net, 2, method="random", seed=0))
    values = plan_lib.layout_values(plan, net)
    t = plan.tables[1]
    n_ext = plan.n_local[1] + sum(s.shape[1] for s in t.send)  # own rows, then every round's message
    x = jnp.asarray(np.random.default_rng(2).random((n_ext, 6)).astype(np.float32))
    for b, (idx, w) in enumerate(zip(t.index, values["w"][1])):
        for p in range(2):
            block = kernels.as_bcoo(jnp.asarray(idx[p]), jnp.asarray(w[p]), n_ext)
            assert block.n_batch == 1 and block.shape == (idx.shape[1], n_ext)
            np.testing.assert_allclose(block @ x, kernels.padded_spmm(x, jnp.asarray(idx[p]), jnp.asarray(w[p])),
                                       rtol=1e-6, atol=1e-6)
