"""The overlapped exchange (`overlap=True`): the same activations as the plain order, on every
partitioner and mesh, and the exchange the engine counts equals what the stacked schedule sends."""

import numpy as np
import pytest
from conftest import random_network

from jaxsdnn import engine, partition, plan, reference, segments, sharded, stacking


@pytest.fixture(scope="module")
def net():
    # uneven sizes, a narrowing classifier-like end, positive biases (no sample is dropped early)
    return random_network([48, 40, 44, 36, 30, 33, 20], density=0.2, seed=7, bias_scale=0.05)


def _x(net, n=26, seed=0):
    return np.abs(np.random.default_rng(seed).standard_normal((n, net.sizes[0])))


@pytest.mark.parametrize(("P", "data", "method", "max_padding"),
                         [(2, 1, "kahypar", None), (3, 1, "random", 1.0), (4, 2, "block", None),
                          (8, 1, "mtkahypar", None), (2, 2, "random", 1.0)])
def test_overlapped_equals_plain_and_the_oracle(net, P, data, method, max_padding):
    x = _x(net)
    ref = reference.forward(net, x, dtype=np.float64)
    part = partition.partition_network(net, P, method=method, seed=1)
    mesh = sharded.make_mesh(P, data)
    plain, over = (engine.run_inference(net, x, partition=part, mesh=mesh, compact=False, overlap=o, batch_size=8,
                                        max_padding=max_padding) for o in (False, True))
    a, b = plain.scores.toarray(), over.scores.toarray()
    scale = np.abs(ref).max()
    assert np.abs(b - ref).max() <= 1e-6 * scale
    # the two orders sum each neuron's inputs in two halves: equal up to float32 rounding, not bit for bit
    assert np.abs(a - b).max() <= 1e-6 * scale
    np.testing.assert_array_equal(plain.categories, over.categories)
    assert over.stats["overlap"] and not plain.stats["overlap"]
    for key in ("exchanged_entries", "exchange_rounds_run"):
        assert over.stats[key] == plain.stats[key] > 0
    splan = stacking.stack_plan(plan.build_plan(net, part), max_padding=max_padding)
    sn = segments.shard_stacked(splan, net, mesh, overlap=True)
    assert all((t.remote is not None) == bool(seg.rounds) for seg, t in zip(splan.segments, sn.tables))


def test_remote_tables_list_exactly_the_edges_that_read_received_rows(net):
    part = partition.partition_network(net, 3, method="random", seed=2)
    splan = stacking.stack_plan(plan.build_plan(net, part))
    for seg, t in zip(splan.segments, splan.tables):
        rt = stacking.remote_tables(seg, t)
        idx = np.concatenate([i.reshape(*i.shape[:2], -1) for i in t.index], axis=2)
        remote = (idx >= seg.n_rows) & (idx < seg.n_ext)
        valid = rt.src < seg.n_ext - seg.n_rows
        np.testing.assert_array_equal(valid.sum(axis=2), remote.sum(axis=2))
        assert valid.sum() > 0
        # every listed edge reads what the index table says, from the row and weight it names
        widths = [i.shape[3] for i in t.index]
        rows = np.concatenate([[0], np.cumsum([i.shape[2] for i in t.index])])
        w_off = np.concatenate([[0], np.cumsum([i.shape[2] * i.shape[3] for i in t.index])])
        p, s, e = np.nonzero(valid)
        b = np.searchsorted(w_off, rt.wpos[p, s, e], side="right") - 1
        r, slot = np.divmod(rt.wpos[p, s, e] - w_off[b], np.asarray(widths)[b])
        np.testing.assert_array_equal(rt.row[p, s, e], rows[b] + r)
        got = np.array([t.index[bb][pp, ss, rr, sl] for bb, pp, ss, rr, sl in zip(b, p, s, r, slot)])
        np.testing.assert_array_equal(got, rt.src[p, s, e] + seg.n_rows)


def test_counted_exchange_equals_the_schedule(net):
    # without compaction every batch runs every layer: the counts are the stacked schedule's
    x = _x(net, n=20)
    part = partition.partition_network(net, 4, method="random", seed=3)
    splan = stacking.stack_plan(plan.build_plan(net, part))
    r = engine.run_inference(net, x, partition=part, mesh=sharded.make_mesh(4, 1), compact=False, batch_size=8)
    batches = 3  # 20 images in batches of 8, the last one padded
    assert r.stats["exchanged_entries"] == splan.padded_volume() * 8 * batches
    assert r.stats["exchange_rounds_run"] == splan.stats()["stacked_rounds"] * batches
    assert r.stats["device_calls"] >= batches


def test_overlap_with_a_narrow_exchange_stays_within_its_tolerance(net):
    x = _x(net)
    ref = reference.forward(net, x, dtype=np.float64)
    part = partition.partition_network(net, 3, method="random", seed=1)
    r = engine.run_inference(net, x, partition=part, mesh=sharded.make_mesh(3, 1), compact=False, overlap=True,
                             exchange_dtype="bfloat16")
    rel = np.abs(r.scores.toarray() - ref).max() / np.abs(ref).max()
    assert 1e-5 < rel <= 3e-2  # the bfloat16 tolerance of tests/test_exchange_dtype.py
