"""Models and the training loop: loss goes down, checkpoints load, resuming reproduces the losses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import scipy.sparse as sp

from jaxsdnn import models
from jaxsdnn import pytree_checkpoint as pck
from jaxsdnn.config import load_config
from jaxsdnn.radixnet import radixnet
from jaxsdnn.train import train, trained_network

# A tiny digits model: 64 -> 32 -> 32 (RadiX-Net, 8 copies x 4) -> 10 on 2 model devices.
TINY = [
    "network.width=32", "network.copies=4", "network.hidden_layers=1", "network.input_fan_in=6",
    "partition.devices=2", "partition.method=block", "train.batch_size=32", "train.epochs=2", "train.lr=0.01",
    "train.log_every=1", "train.checkpoint_every=20", "train.eval_batch_size=400",
]


def losses(run_dir: Path) -> dict[int, float]:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------
def test_radix_masks_match_graph_challenge_generator():
    net = radixnet(256, 6, seed=4, bias=0.0, cap=None)  # blocks of 4 layers, second block permuted
    ours = models._radix_masks(256, 6, 16, np.random.default_rng(4))
    for a, b in zip(ours, net.weights):
        assert (a != (b != 0)).nnz == 0


def test_models_shapes_density_and_init():
    net = models.radixnet_mlp(64, 10, width=512, hidden_layers=5, copies=16, input_fan_in=6, seed=0)
    assert net.sizes == (64,) + (512,) * 6 + (10,) and net.cap is None
    density = models.layer_density(net)
    assert max(density[:-1]) <= 0.10  # every layer but the classifier head
    np.testing.assert_array_equal(net.fan_in(2), 32)
    w = net.weights[1]  # He: variance 2 / fan_in per neuron
    assert abs(np.var(w.data) * 32 / 2 - 1) < 0.05
    rf = models.random_fanin(20, 3, width=40, hidden_layers=2, fan_in=4, input_fan_in=5, seed=1)
    assert rf.sizes == (20, 40, 40, 40, 3)
    np.testing.assert_array_equal(rf.fan_in(1), 5)
    np.testing.assert_array_equal(rf.fan_in(2), 4)
    np.testing.assert_array_equal(rf.fan_in(4), 40)  # dense head
    assert models.random_fanin(20, 3, 40, 2, 4, 5, seed=1).fingerprint() == rf.fingerprint()
    with pytest.raises(ValueError, match="width=48 must be copies \\* 2\\^m"):
        models.radixnet_mlp(64, 10, width=48, copies=4)


def test_magnitude_prune_and_from_masks():
    rng = np.random.default_rng(0)
    dense = [rng.standard_normal((30, 20)), rng.standard_normal((20, 4))]
    masks = models.magnitude_prune(dense, 0.1)
    assert masks[0].nnz >= 60 and np.all(np.bincount(masks[0].indices, minlength=20) >= 1)
    top = np.sort(np.abs(dense[0]), axis=None)[-60]  # the 60 = 10 % largest magnitudes all survive
    kept = sp.csr_array(masks[0]).toarray() != 0
    assert np.all(kept[np.abs(dense[0]) >= top])
    assert masks[0].nnz - 60 <= 20  # plus at most one per output neuron
    net = models.from_masks(masks, seed=2)
    assert net.sizes == (30, 20, 4) and net.nnz == tuple(m.nnz for m in masks)
    keep = models.from_masks(masks, keep_values=True)
    np.testing.assert_array_equal(keep.weights[0].data, sp.csr_array(masks[0]).data.astype(np.float32))
    with pytest.raises(ValueError, match="layer 2 has 5 inputs but layer 1 has 20 outputs"):
        models.from_masks([masks[0], sp.random_array((5, 4), density=0.5)])


def test_from_masks_keeps_biases():
    rng = np.random.default_rng(1)
    masks = models.magnitude_prune([rng.standard_normal((12, 8)), rng.standard_normal((8, 3))], 0.5)
    biases = [rng.standard_normal(8).astype(np.float32), rng.standard_normal(3).astype(np.float32)]
    given = models.from_masks(masks, keep_values=True, biases=biases)
    np.testing.assert_array_equal(given.biases[1], biases[1])
    again = models.from_masks(given, keep_values=True)  # a network keeps its own values and biases
    np.testing.assert_array_equal(again.weights[0].data, given.weights[0].data)
    np.testing.assert_array_equal(again.biases[0], biases[0])
    fresh = models.from_masks(given, seed=3)  # new weights, the network's biases
    assert not np.array_equal(fresh.weights[0].data, given.weights[0].data)
    np.testing.assert_array_equal(fresh.biases[0], biases[0])
    assert np.all(models.from_masks(masks).biases[0] == 0)


def test_graphchallenge_model(gc_dir):
    cfg = load_config(Path(__file__).parent.parent / "configs" / "graphchallenge.yaml",
                      ["network.layers=2", f"network.path={gc_dir}/neuron1024"])
    net = models.build_model(cfg.network, 1024, 10)
    assert net.sizes == (1024, 1024, 1024, 10) and net.cap is None and net.nnz[:2] == (32768, 32768)
    with pytest.raises(ValueError, match="has 1024 input neurons but the data has 64 features"):
        models.build_model(cfg.network, 64, 10)


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------
def test_train_lowers_loss_and_writes_checkpoint(tmp_path, capsys):
    cfg = load_config(None, TINY + ["train.max_steps=45"])  # epoch 1 (44 batches) and one more step
    summary = train(cfg, tmp_path / "run", progress=True, devices=jax.devices()[:2], model_parallel=2)
    assert summary["steps"] == 45 and summary["run_dir"] == str(tmp_path / "run")
    assert {"test_accuracy", "seconds", "final_loss", "compile_seconds", "samples_per_s"} <= set(summary)
    seq = losses(tmp_path / "run")
    assert sorted(seq) == list(range(1, 46))
    assert np.mean([seq[s] for s in range(41, 46)]) < 0.75 * np.mean([seq[s] for s in range(1, 6)])
    assert summary["test_accuracy"] > 0.5
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval_accuracy" in r]
    assert len(evals) == 1 and evals[0]["step"] == 44 and evals[0]["eval_set"] == "test"
    assert {"step", "loss", "lr", "samples_per_s"} <= set(records[1])
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 45
    err = capsys.readouterr().err
    assert "\r" in err and "samples/s" in err and "loss" in err
    c = pck.checkpoint_metadata(tmp_path / "run" / "checkpoints")
    assert str(c["path"]) == summary["checkpoint"] and c["step"] == 45 and c["num_parts"] == 2
    assert c["metadata"]["epoch"] == 1 and c["metadata"]["position"] == 1
    assert {leaf["path"] for leaf in c["leaves"]} >= {"['params']", "['rng']"}
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["20", "40", "45"]  # keep 3


def test_adamw_with_clipping_from_the_config(tmp_path):
    """adamw's decoupled weight decay and global-norm clipping, as a config asks for them."""
    import optax

    from jaxsdnn.train import make_optimizer

    cfg = load_config(None, TINY + ["train.optimizer=adamw", "train.weight_decay=0.1", "train.clip_norm=1.0"])
    opt, _ = make_optimizer(cfg.train, total_steps=10)
    params = {"w": np.array([1.0, 0.0], np.float32), "b": np.array([2.0], np.float32)}  # w[1]: a padding slot
    grads = {"w": np.array([300.0, 0.0], np.float32), "b": np.array([400.0], np.float32)}  # norm 500
    expect = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(0.01, weight_decay=0.1))
    got, _ = opt.update(grads, opt.init(params), params)
    want, _ = expect.update(grads, expect.init(params), params)
    for k in params:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6)
    assert got["w"][1] == 0  # padding: zero weight, zero gradient, no decay
    summary = train(cfg, tmp_path / "run", progress=False, devices=jax.devices()[:2], model_parallel=2)
    assert summary["test_accuracy"] > 0.5


def test_resume_reproduces_uninterrupted_losses(tmp_path):
    cfg = load_config(None, TINY)
    full = train(cfg, tmp_path / "full", progress=False)
    assert full["steps"] == 88  # 2 epochs of 1438 // 32 = 44 batches
    # "crash" after step 50: the last checkpoint is step 40 (checkpoint_every=20), steps 41..50 are lost
    train(load_config(None, TINY + ["train.max_steps=50"]), tmp_path / "cut", progress=False)
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "50")
    resumed = train(cfg, tmp_path / "cut", resume=True, progress=False)
    assert resumed["resumed_from"] == 40 and resumed["steps"] == 88
    a, b = losses(tmp_path / "full"), losses(tmp_path / "cut")
    assert sorted(b) == list(range(1, 89))  # lines after the checkpoint were rewritten, not duplicated
    np.testing.assert_allclose([b[s] for s in range(1, 89)], [a[s] for s in range(1, 89)], rtol=1e-6, atol=0)
    wa, wb = trained_network(tmp_path / "full"), trained_network(tmp_path / "cut")
    for x, y in zip(wa.weights + wa.biases, wb.weights + wb.biases):
        np.testing.assert_allclose(getattr(x, "data", x), getattr(y, "data", y), rtol=1e-6, atol=1e-7)
    first = trained_network(tmp_path / "full", step=60)  # an earlier step (of the 3 kept), read back as saved
    assert any(not np.allclose(x.data, y.data) for x, y in zip(first.weights, wa.weights))
    assert resumed["test_accuracy"] == pytest.approx(full["test_accuracy"])
    # resuming a finished run does nothing but evaluate
    again = train(None, tmp_path / "cut", resume=True, progress=False)
    assert again["steps"] == 88 and again["final_loss"] == pytest.approx(full["final_loss"])
    # a checkpoint of another network is refused, naming what changed
    with pytest.raises(ValueError, match="cannot resume with a different network.width: 32 -> 64"):
        train(load_config(None, TINY + ["network.width=64"]), tmp_path / "cut", resume=True, progress=False)
    # the partition comes from the checkpoint: another method would be ignored, so it is refused
    with pytest.raises(ValueError, match="cannot resume with a different partition.method: 'block' -> 'random'"):
        train(load_config(None, TINY + ["partition.method=random"]), tmp_path / "cut", resume=True, progress=False)
    # a cosine schedule decays over all epochs: changing them on resume is refused
    cosine = TINY + ["train.schedule=cosine", "train.max_steps=5"]
    train(load_config(None, cosine), tmp_path / "cos", progress=False)
    with pytest.raises(ValueError, match="cannot resume with a different train.epochs: 2 -> 3"):
        train(load_config(None, cosine + ["train.epochs=3"]), tmp_path / "cos", resume=True, progress=False)


def test_run_dir_errors(tmp_path, monkeypatch):
    cfg = load_config(None, TINY)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    # tests run as root, so chmod does not stop writes: a directory below a regular file cannot exist
    with pytest.raises(ValueError, match=f"run_dir {blocker}/run: cannot write there"):
        train(cfg, blocker / "run", progress=False)

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.NamedTemporaryFile", deny)
    with pytest.raises(ValueError, match="cannot write there \\(Permission denied\\)"):
        train(cfg, tmp_path / "denied", progress=False)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="no checkpoint to resume from"):
        train(cfg, tmp_path / "empty", resume=True, progress=False)
    with pytest.raises(ValueError, match="needs 2 devices, 1 available"):
        train(cfg, tmp_path / "few", devices=jax.devices()[:1], progress=False)
    with pytest.raises(ValueError, match="batch_size=32 must be a positive multiple of the data-parallel axis \\(3\\)"):
        train(cfg, tmp_path / "dp", data_parallel=3, progress=False)
    (tmp_path / "old" / "checkpoints").mkdir(parents=True)
    (tmp_path / "old" / "checkpoints" / "step_000000001.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="step_000000001.npz: a checkpoint of the earlier .npz format"):
        train(cfg, tmp_path / "old", progress=False)
    with pytest.raises(ValueError, match="step_000000001.npz: a checkpoint of the earlier .npz format"):
        train(cfg, tmp_path / "old", resume=True, progress=False)


def test_train_takes_a_user_loss_and_optimizer(tmp_path):
    """train(loss=, optimizer=) from Python: the step is make_step over jaxsdnn.apply, so the default
    cross-entropy written by the user gives the built-in run's losses, and a user MSE with an optax
    chain (clipping, momentum, warm-up + cosine) trains."""
    import jax.numpy as jnp
    import optax

    from jaxsdnn import losses as losses_lib

    cfg = load_config(overrides=TINY + ["train.epochs=1", "train.checkpoint_every=0"])
    base = train(cfg, tmp_path / "base", progress=False)

    def user_ce(logits, labels, weights):
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))

    train(cfg, tmp_path / "user_ce", progress=False, loss=user_ce)
    a, b = losses(tmp_path / "base"), losses(tmp_path / "user_ce")
    assert a.keys() == b.keys()
    np.testing.assert_allclose([b[k] for k in b], [a[k] for k in a], rtol=2e-5)

    def mse(logits, labels, weights):
        return losses_lib.mean_squared_error(logits, jax.nn.one_hot(labels, logits.shape[1]), weights)

    sched = optax.warmup_cosine_decay_schedule(0.0, 0.05, 5, 40)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(sched, momentum=0.9))
    out = train(load_config(overrides=TINY + ["train.checkpoint_every=0"]), tmp_path / "mse", progress=False,
                loss=mse, optimizer=opt)
    mse_losses = list(losses(tmp_path / "mse").values())
    assert np.mean(mse_losses[-5:]) < 0.8 * np.mean(mse_losses[:5])
    assert out["test_accuracy"] > 0.3 and base["test_accuracy"] is not None
