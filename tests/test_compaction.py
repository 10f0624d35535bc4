"""Stacked segments and dead-sample compaction against the float64 oracle."""

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import random_network

from jaxsdnn import engine, plan as plan_lib, reference, segments, sharded, stacking
from jaxsdnn.network import SparseNetwork
from jaxsdnn.partition import METHODS, partition_network


def _dying_images(n: int, count: int, seed: int = 0) -> np.ndarray:
    """Binary images whose densities range from 0 to 0.6: some die at once, some later, some never."""
    rng = np.random.default_rng(seed)
    return (rng.random((count, n)) < rng.random(count)[:, None] * 0.6).astype(np.float32)


def _run(net, x, model, data, method, **kw):
    part = None if model == 1 else partition_network(net, model, method=method, seed=0)
    return engine.run_inference(net, x, partition=part, mesh=sharded.make_mesh(model, data), **kw)


def _close(result, ref):
    np.testing.assert_allclose(result.scores.toarray(), ref, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(ref).max()))
    np.testing.assert_array_equal(result.categories, reference.categories(ref))


CASES = [(1, 1, "block")] + [(p, 1, m) for p in (2, 3, 8) for m in METHODS] + [(4, 2, "kahypar")]


@pytest.mark.parametrize("model,data,method", CASES)
def test_compaction_on_and_off_match_the_oracle(radix, model, data, method):
    x = _dying_images(64, 70)
    ref = reference.forward(radix, x)
    assert 0 < reference.categories(ref).size < 70  # some die, some survive
    on = _run(radix, x, model, data, method, batch_size=32)
    off = _run(radix, x, model, data, method, batch_size=32, compact=False)
    _close(on, ref)
    _close(off, ref)
    assert on.survival[0][1] < 70 and on.survival[-1] == (20, reference.categories(ref).size)
    assert on.stats["computed_edge_fraction"] < off.stats["computed_edge_fraction"]
    assert off.survival == []


@pytest.mark.parametrize("model,data,method", [(1, 1, "block"), (3, 1, "kahypar"), (8, 1, "random"),
                                               (4, 2, "mtkahypar"), (2, 3, "block")])
def test_uneven_network_in_several_segments_matches_the_oracle(uneven, model, data, method):
    x = _dying_images(40, 45, seed=1)
    ref = reference.forward(uneven, x)
    assert 0 < reference.categories(ref).size < 45
    result = _run(uneven, x, model, data, method, batch_size=18)
    assert result.stats["segments"] > 1
    _close(result, ref)


def test_positive_bias_in_a_late_layer_revives_samples(radix):
    biases = list(radix.biases)
    biases[16] = np.full_like(biases[16], 0.5)  # layer 17 lights every neuron up again
    net = SparseNetwork(radix.weights, tuple(biases), radix.cap)
    x = _dying_images(64, 40, seed=2)
    ref = reference.forward(net, x)
    assert reference.categories(ref).size == 40  # every sample revives, also those dead at layer 1
    result = _run(net, x, 2, 1, "kahypar", batch_size=16)
    _close(result, ref)
    assert min(a for _, a in result.survival) < 40  # they did die on the way


@pytest.mark.parametrize("model", [1, 3])
def test_a_batch_where_every_sample_dies_and_one_where_none_does(radix, model):
    dead = np.zeros((20, 64), np.float32)
    dead[:, :3] = 1  # too little input to pass the first layer's bias
    result = _run(radix, dead, model, 1, "random")
    assert reference.categories(reference.forward(radix, dead)).size == 0
    assert result.scores.nnz == 0 and result.categories.size == 0
    assert result.survival == [(1, 0)]  # stopped after the first check
    alive = np.ones((20, 64), np.float32)
    result = _run(radix, alive, model, 1, "random")
    _close(result, reference.forward(radix, alive))
    assert result.categories.size == 20


@pytest.mark.parametrize("cap", [None, 32.0])
def test_non_finite_activations_name_the_layer(cap):
    net = random_network([8, 8, 8, 8], density=0.9, seed=0)
    weights = [w.copy() for w in net.weights]
    weights[1].data[:] = 3e38  # layer 2 overflows float32; a cap of 32 would hide it as 32
    net = SparseNetwork(tuple(weights), tuple(np.abs(b) for b in net.biases), cap)
    with pytest.raises(ValueError, match="layer 2: activations are not finite"):
        engine.run_inference(net, np.full((4, 8), 2.0, np.float32))


@pytest.mark.parametrize("model,data,method", [(1, 1, "block"), (2, 1, "kahypar"), (3, 1, "random"),
                                               (4, 1, "mtkahypar"), (8, 1, "kahypar"), (4, 2, "random")])
def test_scanned_forward_equals_the_unrolled_forward(uneven, model, data, method):
    x = _dying_images(40, 24, seed=3)
    part = plan_lib.parts_single_device(uneven) if model == 1 else partition_network(uneven, model, method=method)
    plan = plan_lib.build_plan(uneven, part)
    mesh = sharded.make_mesh(model, data)
    sn = sharded.shard_network(plan, uneven, mesh)
    unrolled = plan_lib.outputs_from_local(plan, np.asarray(sharded.sharded_forward(sn)(
        sn.params, sn.tables, sharded.put_inputs(sn, plan_lib.inputs_to_local(plan, x)))))
    scanned = engine.run_inference(uneven, x, partition=part, mesh=mesh, compact=False)
    np.testing.assert_allclose(scanned.scores.toarray(), unrolled, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("model,method", [(2, "kahypar"), (3, "random"), (8, "random")])
def test_stacked_exchange_moves_exactly_the_needed_entries(uneven, model, method):
    plan = plan_lib.build_plan(uneven, partition_network(uneven, model, method=method, seed=1))
    splan = stacking.stack_plan(plan)
    for seg, t in zip(splan.segments, splan.tables):
        assert seg.num_layers >= 1
        for i, k in enumerate(range(seg.start, seg.stop)):
            # real (non-sentinel) entries sent before layer k + 1, per (source, destination) pair
            sent = np.zeros((model, model), np.int64)
            for pairs, send in zip(seg.rounds, t.send):
                for p, q in pairs:
                    sent[p, q] += int((send[p, i] < seg.n_rows).sum())
            np.testing.assert_array_equal(sent, plan.volume[k])
    assert splan.padded_volume() >= int(plan.needed_volume().sum())
    assert [s.start for s in splan.segments] == [0] + [s.stop for s in splan.segments[:-1]]
    assert splan.segments[-1].stop == uneven.num_layers


def test_one_device_stacks_layers_of_one_shape_into_one_segment(radix):
    splan = stacking.stack_plan(plan_lib.build_plan(radix, plan_lib.parts_single_device(radix)))
    assert len(splan.segments) == 1 and splan.segments[0].rounds == ()
    assert splan.tables[0].index[0].shape[:2] == (1, 20)
    with pytest.raises(ValueError, match="max_padding must be >= 0"):
        stacking.stack_plan(plan_lib.build_plan(radix, plan_lib.parts_single_device(radix)), max_padding=-1)


def test_programs_are_built_once_per_shape(radix):
    plan = plan_lib.build_plan(radix, plan_lib.parts_single_device(radix))
    sn = segments.shard_stacked(stacking.stack_plan(plan), radix, sharded.make_mesh(1, 1))
    sn2 = segments.shard_stacked(stacking.stack_plan(plan), radix, sharded.make_mesh(1, 1))
    assert segments.segment_chunk(sn, 0) is segments.segment_chunk(sn2, 0)
    x = _dying_images(64, 16)
    engine.run_inference(radix, x)
    again = engine.run_inference(radix, x)
    assert again.stats["compiles"] == 0  # same shapes: nothing compiles a second time


def test_a_dense_head_of_its_own_shape_runs_grouped(radix):
    """A grouped layer too short to stack with others (the dense class head: other bucket widths
    than its neighbour) keeps its batched-GEMM layout (its kernel: test_plan's one-slot test)."""
    rng = np.random.default_rng(0)
    head = sp.csr_array(rng.standard_normal((radix.sizes[-1], 10)).astype(np.float32))
    net = SparseNetwork(radix.weights + (head,), radix.biases + (np.zeros(10, np.float32),), None)
    for parts in (plan_lib.parts_single_device(net), partition_network(net, 2, method="kahypar", seed=0)):
        splan = stacking.stack_plan(plan_lib.build_plan(net, parts))
        last = splan.tables[-1]
        assert splan.segments[-1].num_layers == 1
        assert last.group_cols[0].shape[2] == 1  # one slot: every head row reads every input
