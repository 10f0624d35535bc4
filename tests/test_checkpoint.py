"""Checkpoints: round trip, layout independence, refusal of foreign networks / partitions, atomicity."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from jaxsdnn import checkpoint as ck
from jaxsdnn import models
from jaxsdnn.plan import build_plan, layout_values, values_to_network

REPO = Path(__file__).resolve().parent.parent


def small_state(seed=0, num_parts=2, max_buckets=6):
    """A network, a partition, its plan, params and a non-trivial Adam state (host arrays)."""
    net = models.random_fanin(12, 3, width=16, hidden_layers=1, fan_in=5, input_fan_in=4, seed=seed)
    rng = np.random.default_rng(seed)
    parts = [rng.integers(0, num_parts, n) for n in net.sizes]
    for p in parts:
        p[:num_parts] = np.arange(num_parts)
    plan = build_plan(net, parts, max_buckets=max_buckets)
    params = layout_values(plan, net)
    opt = optax.adam(1e-2)
    state = opt.init(params)
    grads = jax.tree.map(lambda a: np.asarray(rng.standard_normal(a.shape), np.float32) * (a != 0), params)
    _, state = opt.update(grads, state, params)
    return net, parts, plan, params, opt, jax.tree.map(np.asarray, state)


def save(directory, step, net, parts, plan, params, state, **kw):
    return ck.save_checkpoint(directory, step=step, network=net, plan=plan, params=params, opt_state=state,
                              parts=parts, epoch=1, position=3, data_seed=9, rng=np.array([0, 7], np.uint32), **kw)


def test_round_trip(tmp_path):
    net, parts, plan, params, opt, state = small_state()
    path = save(tmp_path, 5, net, parts, plan, params, state, extra={"loss": 0.5})
    assert path.name == "step_000000005.npz" and ck.latest_checkpoint(tmp_path) == path
    c = ck.load_checkpoint(path, net, parts)
    assert (c.step, c.epoch, c.position, c.data_seed, c.num_parts) == (5, 1, 3, 9, 2)
    assert c.extra == {"loss": 0.5} and c.rng.tolist() == [0, 7]
    assert c.network.fingerprint() == net.fingerprint() and c.network.cap is None
    for a, b in zip(c.network.weights, net.weights):
        np.testing.assert_array_equal(a.data, b.data)
    for a, b in zip(c.parts, parts):
        np.testing.assert_array_equal(a, b)
    restored = ck.restore_opt_state(c, plan, opt.init(params))
    jax.tree.map(np.testing.assert_array_equal, restored, state)
    # also loadable without knowing the network: the structure is in the file
    assert ck.load_checkpoint(path).network.sizes == net.sizes


def test_optimizer_state_is_layout_independent(tmp_path):
    net, parts, plan, params, opt, state = small_state()
    path = save(tmp_path, 1, net, parts, plan, params, state)
    other = build_plan(net, parts, max_buckets=1)  # another bucketing of the same partition
    c = ck.load_checkpoint(path, net, parts)
    restored = ck.restore_opt_state(c, other, opt.init(layout_values(other, net)))
    mu_a = values_to_network(plan, net, state[0].mu)
    mu_b = values_to_network(other, net, restored[0].mu)
    for a, b in zip(mu_a.weights, mu_b.weights):
        np.testing.assert_array_equal(a.data, b.data)


def test_rejects_other_network_and_partition(tmp_path):
    net, parts, plan, params, _, state = small_state()
    path = save(tmp_path, 1, net, parts, plan, params, state)
    other_net = small_state(seed=1)[0]
    with pytest.raises(ValueError, match="written for another network .*fingerprint"):
        ck.load_checkpoint(path, other_net)
    moved = [p.copy() for p in parts]
    moved[2][4] = 1 - moved[2][4]
    with pytest.raises(ValueError, match="written for another partition: layer 2, neuron 4 is on device"):
        ck.load_checkpoint(path, net, moved)
    with pytest.raises(ValueError, match="optimizer state .* does not match"):
        ck.restore_opt_state(ck.load_checkpoint(path), plan, optax.sgd(0.1, momentum=0.9).init(params))


def test_rejects_garbage(tmp_path):
    (tmp_path / "step_000000001.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        ck.load_checkpoint(tmp_path / "step_000000001.npz")
    with pytest.raises(ValueError, match="no such checkpoint"):
        ck.load_checkpoint(tmp_path / "nothing.npz")


def test_keeps_newest_and_skips_temporary_files(tmp_path):
    net, parts, plan, params, _, state = small_state()
    (tmp_path / ".step_000000009.npz.0123abcd.tmp").write_bytes(b"partial")
    for step in (1, 2, 3):
        save(tmp_path, step, net, parts, plan, params, state, keep=2)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step_000000002.npz", "step_000000003.npz"]
    assert sorted(os.listdir(tmp_path)) == ["step_000000002.npz", "step_000000003.npz"]


CHILD = """
import os, signal, sys
import numpy as np
sys.path.insert(0, {tests!r})
from test_checkpoint import save, small_state
from jaxsdnn import checkpoint as ck
net, parts, plan, params, _, state = small_state()
directory = sys.argv[1]
if sys.argv[2] == "die-mid-write":
    save(directory, 1, net, parts, plan, params, state)
    real = np.savez
    def dying_savez(f, **arrays):
        real(f, **arrays)
        f.truncate(f.tell() // 2)      # half the new file is on disk ...
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # ... when the process dies
    ck.np.savez = dying_savez
    save(directory, 2, net, parts, plan, params, state)
else:  # save in a loop until killed
    step = 0
    while True:
        step += 1
        save(directory, step, net, parts, plan, params, state, keep=2)
        print(step, flush=True)
"""


def run_child(tmp_path, mode):
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD.format(tests=str(Path(__file__).parent))))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, str(script), str(tmp_path / "ckpt"), mode], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, text=True)


def test_killed_mid_write_leaves_previous_checkpoint(tmp_path):
    proc = run_child(tmp_path, "die-mid-write")
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    names = sorted(os.listdir(tmp_path / "ckpt"))
    assert names[-1] == "step_000000001.npz" and any(n.endswith(".tmp") for n in names)  # the partial file
    latest = ck.latest_checkpoint(tmp_path / "ckpt")
    assert latest.name == "step_000000001.npz"
    net, parts = small_state()[:2]
    assert ck.load_checkpoint(latest, net, parts).step == 1


@pytest.mark.slow
def test_sigkill_during_save_loop(tmp_path):
    proc = run_child(tmp_path, "loop")
    try:
        for _ in range(3):  # let it save a few checkpoints, then kill it at an arbitrary moment
            assert proc.stdout.readline()
        time.sleep(0.013)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    net, parts = small_state()[:2]
    c = ck.load_checkpoint(ck.latest_checkpoint(tmp_path / "ckpt"), net, parts)
    assert c.step >= 3
