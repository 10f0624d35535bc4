"""Pytree checkpoints through orbax: hybrid trees, restore into other partitions / device counts /
meshes, resume equivalence of an optax loop, and the refusals."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import random_network, random_parts
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as Spec

import jaxsdnn
from jaxsdnn import losses
from jaxsdnn.forward import SparseParams, to_network
from jaxsdnn.pytree_checkpoint import (checkpoint_metadata, latest_step, model_partition, restore_tree, save_tree,
                                       saved_steps)

SIZES = [14, 12, 10, 6]
HEAD = 4  # classes of the dense head after the sparse network
BATCH = 8
OPT = optax.adam(1e-2)


@pytest.fixture(scope="module")
def net():
    return random_network(SIZES, density=0.3, seed=3)


def _model(net, model_axis, data_axis=1, seed=0):
    parts = random_parts(net, model_axis, seed=seed)
    return (*jaxsdnn.shard_model(net, parts, jaxsdnn.make_mesh(model_axis, data_axis)), parts)


@pytest.fixture(scope="module")
def m4(net):
    return _model(net, 4)


@pytest.fixture(scope="module")
def m2(net):
    return _model(net, 2, seed=5)


@pytest.fixture(scope="module")
def m22(net):
    return _model(net, 2, 2, seed=6)


def _dense(mesh, seed=0):
    """The user's dense params: a head keyed w/b (a plain dict: not sparse params), replicated on the
    mesh, and a table split over the model axis."""
    rng = np.random.default_rng(seed)
    rep, split = NamedSharding(mesh, Spec()), NamedSharding(mesh, Spec(jaxsdnn.MODEL_AXIS))
    return {"head": {"w": jax.device_put(rng.standard_normal((SIZES[-1], HEAD)).astype(np.float32), rep),
                     "b": jax.device_put(np.zeros(HEAD, np.float32), rep)},
            "table": jax.device_put(rng.standard_normal((8, 3)).astype(np.float32), split)}


def _batches(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.random((BATCH, SIZES[0]), dtype=np.float32), rng.integers(0, HEAD, BATCH).astype(np.int32))
            for _ in range(n)]


def _loss(model, params, dense, x, labels):
    h = jaxsdnn.apply(model, params, x)
    logits = jax.nn.relu(h) @ dense["head"]["w"] + dense["head"]["b"] + jnp.sum(dense["table"]) * 1e-3
    return losses.softmax_cross_entropy(logits, labels)


@jax.jit
def _step(model, params, dense, opt_state, x, labels):
    loss, grads = jax.value_and_grad(_loss, argnums=(1, 2))(model, params, dense, x, labels)
    updates, opt_state = OPT.update(grads, opt_state, (params, dense))
    params, dense = optax.apply_updates((params, dense), updates)
    return params, dense, opt_state, loss


def _train(model, params, dense, opt_state, batches):
    out = []
    for x, labels in batches:
        params, dense, opt_state, loss = _step(model, params, dense, opt_state, x, labels)
        out.append(float(loss))
    return params, dense, opt_state, out


def _fresh(model, params, seed=1, rng_seed=0):
    """A like tree for ``model``: other values, the structure of :func:`_hybrid`'s."""
    dense = _dense(model.mesh, seed)
    loop = {"step": 0, "lr": 0.0, "name": "", "seen": np.int64(0),
            "rng": jax.random.key_data(jax.random.key(rng_seed)), "key": jax.random.key(rng_seed),
            "host": np.zeros(3, np.float32)}
    return (params, OPT.init((params, dense)), dense, loop)


def _hybrid(model, params):
    """(params, adam state over (params, dense), dense, loop state) after two optimizer steps."""
    dense = _dense(model.mesh)
    params, dense, opt_state, _ = _train(model, params, dense, OPT.init((params, dense)), _batches(2, seed=9))
    loop = {"step": 3, "lr": 0.125, "name": "run-a", "seen": np.int64(24),
            "rng": jax.random.key_data(jax.random.key(5)), "key": jax.random.key(7),
            "host": np.arange(3, dtype=np.float32)}
    return (params, opt_state, dense, loop)


def _assert_same_leaves(a, b, like):
    """Bitwise equal leaves; each restored leaf of its like leaf's type (and sharding)."""
    la, lb, ll = (jax.tree.leaves(t) for t in (a, b, like))
    assert len(la) == len(lb) == len(ll)
    for x, y, t in zip(la, lb, ll):
        assert type(x) is type(t) or (isinstance(x, jax.Array) and isinstance(t, jax.Array)), (type(x), type(t))
        if isinstance(t, jax.Array):
            assert x.sharding == t.sharding and x.committed == t.committed
            if jax.dtypes.issubdtype(t.dtype, jax.dtypes.prng_key):
                x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert np.asarray(x).dtype == np.asarray(y).dtype


def _assert_same_network(a, b):
    assert a.fingerprint() == b.fingerprint()
    for wa, wb, ba, bb in zip(a.weights, b.weights, a.biases, b.biases):
        np.testing.assert_array_equal(wa.data, wb.data)
        np.testing.assert_array_equal(ba, bb)


def test_hybrid_tree_round_trip_same_model(tmp_path, m4):
    model, params, parts = m4
    tree = _hybrid(model, params)
    path = save_tree(tmp_path, tree, model, step=3, metadata={"loss": 0.25})
    assert path == tmp_path / "3" and latest_step(tmp_path) == 3
    like = _fresh(model, params)
    restored = restore_tree(tmp_path, model, like)
    _assert_same_leaves(restored, tree, like)
    assert isinstance(restored[0], SparseParams) and isinstance(restored[1][0].mu[0], SparseParams)
    meta = checkpoint_metadata(tmp_path)
    assert (meta["step"], meta["metadata"], meta["num_parts"], meta["sizes"]) == (3, {"loss": 0.25}, 4, SIZES)
    assert meta["fingerprint"] == model.schedule.network.fingerprint() and meta["path"] == path
    assert len(meta["parts"]) == len(SIZES)
    for a, b, c in zip(meta["parts"], parts, model_partition(model)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(c, b)
    kinds = {leaf["path"]: leaf["kind"] for leaf in meta["leaves"]}
    assert kinds["[0]"] == "sparse" and kinds["[2]['head']['w']"] == "array" and kinds["[3]['step']"] == "python"


def test_partial_restore_reads_only_the_leaves_asked_for(tmp_path, m4, m2):
    model, params, _ = m4
    tree = _hybrid(model, params)
    save_tree(tmp_path, tree, model, step=0)
    save_tree(tmp_path, tree, model, step=5)
    assert saved_steps(tmp_path) == [0, 5] and latest_step(tmp_path) == 5 and saved_steps(tmp_path / "none") == []
    (tmp_path / "7.orbax-checkpoint-tmp-123").mkdir()  # an unfinished save is not a step
    assert saved_steps(tmp_path) == [0, 5] and latest_step(tmp_path) == 5
    model2, params2, _ = m2  # into another partition, the sparse params alone
    (got,) = restore_tree(tmp_path, model2, (_fresh(model2, params2)[0],), partial=True)
    _assert_same_network(to_network(model2, got), to_network(model, tree[0]))
    with pytest.raises(ValueError, match=r"like has leaves the checkpoint does not: \['\[1\]'\]"):
        restore_tree(tmp_path, model, (params, 0), partial=True)
    with pytest.raises(ValueError, match="tree structure differs"):  # without partial: the whole tree
        restore_tree(tmp_path, model, (params,))


@pytest.mark.parametrize("target", ["m2", "m22"])
def test_restore_into_another_partition_and_mesh(tmp_path, m4, target, request):
    model, params, _ = m4
    model2, params2, parts2 = request.getfixturevalue(target)
    tree = _hybrid(model, params)
    save_tree(tmp_path, tree, model)
    like = _fresh(model2, params2)
    restored = restore_tree(tmp_path, model2, like)
    _assert_same_network(to_network(model2, restored[0]), to_network(model, tree[0]))
    adam, adam2 = tree[1][0], restored[1][0]
    for moment, moment2 in ((adam.mu, adam2.mu), (adam.nu, adam2.nu)):
        _assert_same_network(to_network(model2, moment2[0]), to_network(model, moment[0]))
        _assert_same_leaves(moment2[1], moment[1], like[1][0].mu[1])  # dense moments: on model2's mesh
    assert int(adam2.count) == int(adam.count) == 2
    _assert_same_leaves(restored[2:], tree[2:], like[2:])
    by_model = NamedSharding(model2.mesh, Spec(jaxsdnn.MODEL_AXIS))
    assert all(a.sharding == by_model for a in jax.tree.leaves(restored[0]))
    # the partition of the checkpoint, not of the target model, is what the metadata gives back
    assert not all(np.array_equal(a, b) for a, b in zip(checkpoint_metadata(tmp_path)["parts"], parts2))


def test_restore_into_an_abstract_like(tmp_path, m4, m22):
    """``like`` may be ``jax.eval_shape`` of the target tree: sparse leaves go to the model axis."""
    (model, params, _), (model2, params2, _) = m4, m22
    tree = _hybrid(model, params)[:2]
    save_tree(tmp_path, tree, model)
    like = jax.eval_shape(lambda p: (p, OPT.init((p, _dense(model2.mesh)))), params2)
    restored = restore_tree(tmp_path, model2, like)
    _assert_same_network(to_network(model2, restored[0]), to_network(model, tree[0]))
    _assert_same_network(to_network(model2, restored[1][0].nu[0]), to_network(model, tree[1][0].nu[0]))
    by_model = NamedSharding(model2.mesh, Spec(jaxsdnn.MODEL_AXIS))
    assert all(a.sharding == by_model for a in jax.tree.leaves((restored[0], restored[1][0].mu[0])))
    np.testing.assert_array_equal(restored[1][0].mu[1]["table"], tree[1][0].mu[1]["table"])


def test_resume_gives_the_same_losses(tmp_path, m4, m2):
    model, params, _ = m4
    batches = _batches(6)
    dense = _dense(model.mesh)
    _, _, _, straight = _train(model, params, dense, OPT.init((params, dense)), batches)
    p, d, s, first = _train(model, params, dense, OPT.init((params, dense)), batches[:3])
    assert first == straight[:3]
    save_tree(tmp_path, {"params": p, "dense": d, "opt": s, "loop": {"step": 3}}, model)
    for mdl, prm, exact in ((model, params, True), (m2[0], m2[1], False)):
        d0 = _dense(mdl.mesh, seed=4)
        like = {"params": prm, "dense": d0, "opt": OPT.init((prm, d0)), "loop": {"step": 0}}
        r = restore_tree(tmp_path, mdl, like)
        assert r["loop"]["step"] == 3
        _, _, _, rest = _train(mdl, r["params"], r["dense"], r["opt"], batches[3:])
        if exact:
            assert rest == straight[3:]
        else:
            np.testing.assert_allclose(rest, straight[3:], rtol=1e-5, atol=1e-5)


def test_user_subtree_keyed_w_and_b_is_plain_data(tmp_path, m4):
    model, params, _ = m4
    tree = {"w": jnp.arange(6.0).reshape(2, 3), "b": np.ones(4, np.int32), "sparse": params,
            "nested": {"w": [jnp.zeros(2)], "b": (1.5, 2)}}
    save_tree(tmp_path, tree, model)
    like = jax.tree.map(lambda a: a, tree)
    like = {**like, "w": jnp.zeros((2, 3)), "b": np.zeros(4, np.int32), "nested": {"w": [jnp.ones(2)], "b": (0.0, 0)}}
    restored = restore_tree(tmp_path, model, like)
    _assert_same_leaves(restored, tree, like)
    kinds = {leaf["path"]: leaf["kind"] for leaf in checkpoint_metadata(tmp_path)["leaves"]}
    assert kinds == {"['b']": "array", "['nested']['b'][0]": "python", "['nested']['b'][1]": "python",
                     "['nested']['w'][0]": "array", "['sparse']": "sparse", "['w']": "array"}


def test_refusals(tmp_path, net, m4):
    model, params, _ = m4
    tree = {"params": params, "dense": {"w": jnp.ones((3, 2))}, "step": 1}
    path = save_tree(tmp_path, tree, model, step=7)
    # another network: the same sizes, another structure
    other, other_params, _ = _model(random_network(SIZES, density=0.3, seed=4), 4)
    with pytest.raises(ValueError, match=f"{path}: saved for another network"):
        restore_tree(tmp_path, other, {"params": other_params, "dense": {"w": jnp.ones((3, 2))}, "step": 0})
    # like of another structure: the differing paths are named
    with pytest.raises(ValueError, match=r"structure differs.*only in the checkpoint: \[\"\['step'\]\"\].*"
                                         r"only in like: \[\"\['epoch'\]\"\]"):
        restore_tree(tmp_path, model, {"params": params, "dense": {"w": jnp.ones((3, 2))}, "epoch": 0})
    with pytest.raises(ValueError, match=r"leaf \['dense'\]\['w'\]: saved as float32\[3, 2\]"):
        restore_tree(tmp_path, model, {"params": params, "dense": {"w": jnp.ones((2, 3))}, "step": 0})
    with pytest.raises(ValueError, match=r"leaf \['step'\]: saved as a Python int, like has a Python float"):
        restore_tree(tmp_path, model, {"params": params, "dense": {"w": jnp.ones((3, 2))}, "step": 0.0})
    with pytest.raises(ValueError, match=r"leaf \['params'\]: saved as sparse"):
        restore_tree(tmp_path, model, {"params": jnp.ones(3), "dense": {"w": jnp.ones((3, 2))}, "step": 0})
    # missing directory, missing step, a step directory that is not a checkpoint
    with pytest.raises(ValueError, match="no checkpoint there .no such directory"):
        restore_tree(tmp_path / "nowhere", model, tree)
    with pytest.raises(ValueError, match=r"8: no such checkpoint \(saved steps: \[7\]\)"):
        restore_tree(tmp_path, model, tree, step=8)
    (tmp_path / "9").mkdir()
    with pytest.raises(ValueError, match="9: not a readable jaxsdnn checkpoint"):
        checkpoint_metadata(tmp_path, 9)
    # on save: a step already saved, params of another model, an unsupported leaf, non-JSON metadata
    with pytest.raises(ValueError, match="already exists"):
        save_tree(tmp_path, tree, model, step=7)
    _, params2, _ = _model(net, 2, seed=5)
    with pytest.raises(ValueError, match="the SparseParams at \\['params'\\] has shapes"):
        save_tree(tmp_path / "b", {"params": params2}, model)
    with pytest.raises(ValueError, match=r"leaf at \['f'\] is of type object"):
        save_tree(tmp_path / "b", {"f": object()}, model)
    with pytest.raises(ValueError, match="metadata is not JSON"):
        save_tree(tmp_path / "b", {}, model, metadata={"a": object()})
    with pytest.raises(ValueError, match="keep=0"):
        save_tree(tmp_path / "b", tree, model, keep=0)
    assert latest_step(tmp_path / "b") is None
    # a checkpoint damaged after the save: its arrays gone, or metadata of something else
    shutil.rmtree(path / "state")
    with pytest.raises(ValueError, match="7: not a readable jaxsdnn checkpoint"):
        restore_tree(tmp_path, model, tree, step=7)
    (path / "jaxsdnn" / "metadata").write_text(json.dumps({"format": "other", "version": 1}))
    with pytest.raises(ValueError, match="7: not a jaxsdnn pytree checkpoint .found \\('other', 1\\)"):
        checkpoint_metadata(tmp_path, 7)


def test_unfinished_save_is_invisible_and_keep(tmp_path, m4):
    model, params, _ = m4
    tree = {"params": params, "step": 0}
    for step in range(4):
        save_tree(tmp_path, {**tree, "step": step}, model, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2", "3"]
    # what a save killed mid-way leaves: orbax's temporary directory, renamed only when complete
    (tmp_path / "5.orbax-checkpoint-tmp-1234" / "state").mkdir(parents=True)
    assert latest_step(tmp_path) == 3
    assert restore_tree(tmp_path, model, tree)["step"] == 3
    assert save_tree(tmp_path, tree, model, keep=None).name == "4"
