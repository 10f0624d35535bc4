"""Communication plan: hand-written tables on a toy network, invariants on random ones."""

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import random_network, random_parts

from jaxsdnn import hypergraph
from jaxsdnn.network import SparseNetwork
from jaxsdnn.plan import build_plan, choose_bucket_widths, schedule_rounds


def toy():
    # inputs 0..3 -> outputs 0..2 ; edges (in, out)
    edges = [(0, 0), (2, 0), (1, 1), (3, 1), (0, 2), (3, 2)]
    r, c = zip(*edges)
    w = sp.coo_array((np.arange(1, 7, dtype=np.float32), (r, c)), shape=(4, 3))
    net = SparseNetwork.from_scipy([w], 0.0)
    parts = [np.array([0, 0, 1, 1]), np.array([0, 1, 1])]
    return net, parts


def test_toy_plan_tables_by_hand():
    net, parts = toy()
    plan = build_plan(net, parts)
    t = plan.tables[0]
    # device 0 sends entries 0 and 1 to device 1, device 1 sends entry 2 to device 0: one round
    assert plan.rounds[0] == (((0, 1), (1, 0)),)
    np.testing.assert_array_equal(plan.volume[0], [[0, 2], [1, 0]])
    np.testing.assert_array_equal(t.send[0], [[0, 1], [0, 2]])  # dev1 pads with sentinel n_local0=2
    # extended input: [own 2 rows | 2 received] -> n_ext = 4 = sentinel
    np.testing.assert_array_equal(t.index[0][0], [[0, 2], [4, 4]])  # out0 reads in0 (own), in2 (recv)
    np.testing.assert_array_equal(t.index[0][1], [[3, 1], [2, 1]])  # out1: in1, in3 ; out2: in0, in3
    np.testing.assert_array_equal(plan.local_ids[1], [[0, -1], [1, 2]])
    # returned partial sums: dev0 rows 0,1 were sent in round 0 at positions 0,1; dev1 row 0 at 0
    np.testing.assert_array_equal(t.fold[0], [[0], [1]])
    np.testing.assert_array_equal(t.fold[1], [[0], [2]])  # row 1 of dev1 was never sent: sentinel 2
    assert plan.needed_volume().tolist() == [3]
    assert plan.padded_volume().tolist() == [4]


def _simulate_exchange(plan, k, x_global):
    """NumPy model of the exchange before layer k: each device's extended input."""
    P = plan.num_parts
    ids = plan.local_ids[k - 1]
    local = np.where(ids >= 0, x_global[np.maximum(ids, 0)], 0.0)  # [P, n_local]
    t = plan.tables[k - 1]
    ext = [list(local[p]) for p in range(P)]
    for send, pairs in zip(t.send, plan.rounds[k - 1]):
        got = {q: None for q in range(P)}
        for p, q in pairs:
            msg = [local[p][i] if i < local.shape[1] else 0.0 for i in send[p]]
            got[q] = msg
        for q in range(P):
            ext[q].extend(got[q] if got[q] is not None else [0.0] * send.shape[1])
    return [np.array(e) for e in ext]


@pytest.mark.parametrize("num_parts", [2, 3, 5])
def test_every_needed_entry_delivered(num_parts):
    net = random_network([23, 19, 31, 12], density=0.2, seed=num_parts)
    parts = random_parts(net, num_parts, seed=1)
    plan = build_plan(net, parts)
    for k in range(1, net.num_layers + 1):
        x = np.arange(1, net.sizes[k - 1] + 1, dtype=float)  # entry i carries value i+1
        ext = _simulate_exchange(plan, k, x)
        w = net.weights[k - 1].tocoo()
        idx_flat = np.concatenate([i.reshape(num_parts, -1) for i in plan.tables[k - 1].index], axis=1)
        # every edge's slot reads exactly its source entry on the owner of its output neuron
        slot = plan.edge_slot[k - 1]
        for e in range(w.nnz):
            shapes = [i.shape for i in plan.tables[k - 1].index]
            offs = np.cumsum([0] + [int(np.prod(s)) for s in shapes])
            b = int(np.searchsorted(offs, slot[e], side="right") - 1)
            dev, rest = divmod(int(slot[e] - offs[b]), int(np.prod(shapes[b][1:])))
            pos = plan.tables[k - 1].index[b][dev].reshape(-1)[rest]
            assert dev == parts[k][w.col[e]]
            assert ext[dev][pos] == w.row[e] + 1
        # padding slots read the sentinel
        assert idx_flat.max() == len(ext[0])


@pytest.mark.parametrize("num_parts", [1, 2, 4, 7])
def test_moved_entries_equal_connectivity_volume(num_parts):
    net = random_network([40, 33, 27, 45, 10], density=0.15, seed=7)
    parts = random_parts(net, num_parts, seed=3)
    plan = build_plan(net, parts)
    total, per_layer = hypergraph.connectivity_volume(net, parts)
    moved = [sum(int((s < plan.n_local[k]).sum()) for s in plan.tables[k].send) for k in range(net.num_layers)]
    np.testing.assert_array_equal(moved, per_layer)
    np.testing.assert_array_equal(plan.needed_volume(), per_layer)
    assert plan.stats()["volume_per_sample"] == total
    assert (plan.padded_volume() >= plan.needed_volume()).all()
    if num_parts == 1:
        assert plan.rounds_per_layer().sum() == 0


def test_rounds_are_partial_permutations_without_idle_pairs():
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 5, (6, 6)) * (rng.random((6, 6)) < 0.6)
    np.fill_diagonal(vol, 0)
    rounds = schedule_rounds(vol)
    seen = set()
    for pairs in rounds:
        assert len({p for p, _ in pairs}) == len(pairs)
        assert len({q for _, q in pairs}) == len(pairs)
        for p, q in pairs:
            assert vol[p, q] > 0
            seen.add((p, q))
    assert seen == {(int(p), int(q)) for p, q in zip(*np.nonzero(vol))}


def test_bucket_widths():
    assert choose_bucket_widths(np.full(100, 32)).tolist() == [32]
    lengths = np.concatenate([np.full(1000, 4), np.full(10, 300)])
    widths = choose_bucket_widths(lengths)
    assert widths[-1] == 300 and len(widths) >= 2
    padded = sum(w * ((lengths <= w) & (lengths > lo)).sum() for lo, w in zip([-1, *widths[:-1]], widths))
    assert padded < 0.5 * lengths.size * lengths.max()


def test_plan_rejects_bad_partitions():
    net = random_network([10, 6, 4], seed=0)
    with pytest.raises(ValueError, match="layer 2 has 4 neurons, fewer than the 5 devices"):
        build_plan(net, [np.arange(10) % 5, np.arange(6) % 5, np.arange(4) % 4])
    with pytest.raises(ValueError, match=r"partition layer1: .*does not match the network's 6 neurons"):
        build_plan(net, [np.zeros(10, int), np.zeros(5, int), np.zeros(4, int)])
    with pytest.raises(ValueError, match="partition has 2 layers"):
        build_plan(net, [np.zeros(10, int), np.zeros(6, int)])


def _kron_network(seed=0, group=4, dead=0):
    """Layers kron(ones(group, group), M): outputs come in groups reading identical inputs; with
    ``dead``, that many extra outputs per layer read nothing."""
    rng = np.random.default_rng(seed)
    mats = []
    for n_in, n_out in [(6, 5), (5, 7)]:
        m = (rng.random((n_in, n_out)) < 0.4).astype(float)
        m[rng.integers(0, n_in, n_out), np.arange(n_out)] = 1
        dense = np.kron(np.ones((group, group)), m)
        dense = np.pad(dense, ((0, mats[-1].shape[1] - dense.shape[0] if mats else 0), (0, dead)))
        pattern = sp.coo_array(dense)
        mats.append(sp.csr_array((rng.standard_normal(pattern.nnz), (pattern.row, pattern.col)), shape=pattern.shape))
    return SparseNetwork.from_scipy(mats, 0.0)


@pytest.mark.parametrize("split,dead", [(False, 0), (True, 0), (False, 9)])
def test_grouped_buckets_are_slots_of_rows_with_identical_inputs(split, dead):
    import jax.numpy as jnp

    from jaxsdnn import kernels

    net = _kron_network(dead=dead)  # 9 neurons without inputs: one class, longer than a slot
    P = 2
    parts = [np.arange(n) % P for n in net.sizes]
    if split:  # break some groups: neuron 0 of layer 1 (group of 0, 5, 10, 15) moves to device 1
        parts[1] = parts[1].copy()
        parts[1][[0, 5]] = 1 - parts[1][[0, 5]]
    plan = build_plan(net, parts)
    grouped = 0
    rng = np.random.default_rng(0)
    for k, t in enumerate(plan.tables, start=1):
        inputs = net.weights[k - 1].tocsc()
        in_set = lambda j: tuple(inputs.indices[inputs.indptr[j] : inputs.indptr[j + 1]])  # noqa: E731
        offs = np.cumsum([0] + [i.shape[1] for i in t.index])
        assert sorted(plan.local_ids[k][plan.local_ids[k] >= 0].tolist()) == list(range(net.sizes[k]))
        for b, (idx, gc) in enumerate(zip(t.index, t.group_cols)):
            G = gc.shape[1]
            if G == 0:
                continue
            grouped += 1
            R = idx.shape[1] // G
            assert R * G == idx.shape[1] and R >= 2
            n_ext = int(idx.max())
            for p in range(P):
                ids = plan.local_ids[k][p, offs[b] : offs[b + 1]]
                for g in range(G):
                    slot_ids = ids[g * R : (g + 1) * R]
                    real = slot_ids >= 0
                    assert len({in_set(j) for j in slot_ids[real]}) <= 1
                    np.testing.assert_array_equal(idx[p, g * R : (g + 1) * R][real], np.broadcast_to(gc[p, g], (real.sum(), gc.shape[2])))
                    assert (idx[p, g * R : (g + 1) * R][~real] == n_ext).all()
                # the batched GEMM equals the per-row gathered product
                dz = rng.standard_normal((idx.shape[1], 3)).astype(np.float32) * (ids >= 0)[:, None]
                x = rng.standard_normal((n_ext, 3)).astype(np.float32)
                np.testing.assert_allclose(
                    kernels.grouped_sampled_dense_dense(jnp.asarray(dz), jnp.asarray(x), jnp.asarray(gc[p])),
                    kernels.sampled_dense_dense(jnp.asarray(dz), jnp.asarray(x), jnp.asarray(idx[p])),
                    rtol=1e-5, atol=1e-5,
                )
    assert grouped >= 2


@pytest.mark.parametrize("slots_per_block", [1, 2, 3, 7])
def test_grouped_weight_gradient_in_blocks(slots_per_block, monkeypatch):
    """Blocks of any size (the last one padded) give the per-row gathered product."""
    import jax.numpy as jnp

    from jaxsdnn import kernels

    G, R, width, batch, n_in = 7, 3, 4, 5, 20
    rng = np.random.default_rng(slots_per_block)
    cols = np.stack([rng.choice(n_in, width, replace=False) for _ in range(G)]).astype(np.int32)
    cols[2, -1] = n_in  # a sentinel slot reads 0
    index = np.repeat(cols, R, axis=0)
    dz = rng.standard_normal((G * R, batch)).astype(np.float32)
    x = rng.standard_normal((n_in, batch)).astype(np.float32)
    monkeypatch.setattr(kernels, "SLOT_BLOCK_BYTES", slots_per_block * width * batch * 4)
    np.testing.assert_allclose(
        kernels.grouped_sampled_dense_dense(jnp.asarray(dz), jnp.asarray(x), jnp.asarray(cols)),
        kernels.sampled_dense_dense(jnp.asarray(dz), jnp.asarray(x), jnp.asarray(index)), rtol=1e-5, atol=1e-5)


def test_grouped_kernels_with_one_slot():
    """One slot (a dense head: every row reads every input): the weight gradient (a plain GEMM)
    equals the per-row gathered one, the transposed product equals the dense ``W^T dz``."""
    import jax.numpy as jnp

    from jaxsdnn import kernels

    R, width, batch, n_in = 5, 6, 7, 9
    rng = np.random.default_rng(1)
    cols = rng.choice(n_in, (1, width), replace=False).astype(np.int32)
    cols[0, 2] = n_in  # a sentinel slot reads 0
    index = np.repeat(cols, R, axis=0)
    dz = rng.standard_normal((R, batch)).astype(np.float32)
    x = rng.standard_normal((n_in, batch)).astype(np.float32)
    w = rng.standard_normal((R, width)).astype(np.float32)
    np.testing.assert_allclose(
        kernels.grouped_sampled_dense_dense(jnp.asarray(dz), jnp.asarray(x), jnp.asarray(cols)),
        kernels.sampled_dense_dense(jnp.asarray(dz), jnp.asarray(x), jnp.asarray(index)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kernels.grouped_transposed_spmm(jnp.asarray(dz), jnp.asarray(w), 1),
                               (w.T @ dz), rtol=1e-5, atol=1e-5)


def test_unstructured_layers_are_not_grouped():
    net = random_network([40, 30, 20], density=0.2, seed=3)
    plan = build_plan(net, random_parts(net, 2, seed=0))
    assert all(gc.shape[1] == 0 for t in plan.tables for gc in t.group_cols)


def test_input_classes_mixed_fan_in_and_empty_columns():
    # outputs: 0 and 2 read {0, 1}; 1 reads {0}; 3 reads nothing; 4 reads {0, 1, 2}; 5 reads {0}
    edges = [(0, 0), (1, 0), (0, 2), (1, 2), (0, 1), (0, 4), (1, 4), (2, 4), (0, 5)]
    r, c = zip(*edges)
    net = SparseNetwork.from_scipy([sp.coo_array((np.ones(len(r)), (r, c)), shape=(3, 6))], 0.0)
    cls = net.input_classes(1)
    assert cls[0] == cls[2] and cls[1] == cls[5]
    assert len({cls[0], cls[1], cls[3], cls[4]}) == 4


@pytest.mark.parametrize("seed", range(6))
def test_rounds_are_as_few_as_the_busiest_device_allows(seed):
    # Koenig: a bipartite graph's edges colour with max-degree colours; no schedule needs fewer
    rng = np.random.default_rng(seed)
    P = int(rng.integers(2, 12))
    vol = rng.integers(1, 50, (P, P)) * (rng.random((P, P)) < rng.uniform(0.2, 0.9))
    np.fill_diagonal(vol, 0)
    rounds = schedule_rounds(vol)
    nz = vol > 0
    assert len(rounds) == max(nz.sum(axis=0).max(), nz.sum(axis=1).max())
    assert sorted(pq for pairs in rounds for pq in pairs) == sorted(zip(*map(lambda a: a.tolist(), np.nonzero(nz))))
    for pairs in rounds:
        assert len({p for p, _ in pairs}) == len(pairs) == len({q for _, q in pairs})
