"""Reliability, as a user meets it: no native exit, hang or traceback; nothing destroyed or half
written; every argument checked before the work; nothing silently missing; one-line errors that
name the user's words. Where the process exit matters, the CLI runs in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import GC_DIR, REPO

from jaxsdnn import _kahypar, io, partition
from jaxsdnn.cli import main
from jaxsdnn.network import SparseNetwork

IMAGES = os.path.join(GC_DIR, "sparse-images-1024_subset.mtx")
TRUTH = os.path.join(GC_DIR, "neuron1024-l120-categories_subset.mtx")
NETWORK = os.path.join(GC_DIR, "neuron1024")
TINY_TRAIN = [
    "network.width=32", "network.copies=4", "network.hidden_layers=1", "network.input_fan_in=6",
    "partition.devices=2", "partition.method=block", "train.batch_size=32", "train.epochs=2", "train.lr=0.01",
    "train.log_every=1", "train.checkpoint_every=20", "train.eval_batch_size=400",
]


@pytest.fixture
def cfg_file(tmp_path) -> Path:
    """A configuration file of defaults (the tests change values with --set)."""
    path = tmp_path / "defaults.yaml"
    path.write_text("{}\n")
    return path


def cli(args, timeout=120, **kwargs):
    """``python -m jaxsdnn.cli ARGS`` in a subprocess: (returncode, stdout, stderr)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "-m", "jaxsdnn.cli", *map(str, args)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=timeout, **kwargs)
    return p.returncode, p.stdout, p.stderr


def one_line_error(err: str) -> str:
    """The stderr of a failed command: exactly one line, no traceback, no native dump."""
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err[-3000:]
    assert "Traceback" not in err and "Check failure" not in err and "\x1b[" not in err
    return lines[0]


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def network_from(mats, directory: Path) -> Path:
    net = SparseNetwork.from_scipy([sp.csr_array(m) for m in mats], 0.0, None)
    io.write_network(net, directory)
    return directory


def random_inputs_network(n: int, layers: int, most: int, seed: int) -> list:
    """``n x n`` layers whose neurons have 0..most inputs each (some none)."""
    rng = np.random.default_rng(seed)
    mats = []
    for _ in range(layers):
        m = np.zeros((n, n), np.float32)
        for j in range(n):
            m[rng.choice(n, size=int(rng.integers(0, most + 1)), replace=False), j] = 0.5
        mats.append(m)
    return mats


def write_images(path: Path, n_images: int, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    io.write_images(path, sp.csr_array((rng.random((n_images, n)) < 0.5).astype(np.float32)))
    return path


# ----------------------------------------------------------------------------------------------
# 1. the partitioners never end the process
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["kahypar", "mtkahypar"])
def test_small_irregular_layers_partition_in_a_subprocess(tmp_path, method):
    """A 4-neuron network at P = 2, and N = 8 networks with 0..6 inputs per neuron (KaHyPar exited
    the process with status 255 on 7 of 12 of these)."""
    nets = [network_from([np.eye(4, dtype=np.float32)[[1, 2, 3, 0]], np.ones((4, 4), np.float32)], tmp_path / "n4")]
    nets += [network_from(random_inputs_network(8, 3, 6, seed), tmp_path / f"r{seed}") for seed in range(4)]
    for net_dir in nets:
        out = tmp_path / f"{net_dir.name}.npz"
        code, stdout, err = cli(["partition", "--network", net_dir, "--bias", 0, "--parts", 2, "--method", method,
                                 "--out", out, "--json"])
        assert code == 0, (net_dir.name, err[-2000:])
        assert partition.load_partition(out).num_parts == 2


def test_infer_devices_2_with_default_kahypar_on_an_irregular_network(tmp_path):
    net_dir = network_from(random_inputs_network(8, 3, 6, 0), tmp_path / "net")
    images = write_images(tmp_path / "img.tsv", 5, 8)
    code, _, err = cli(["infer", "--network", net_dir, "--bias", 0, "--images", images, "--out", tmp_path / "c.tsv",
                        "--devices", 2])
    assert code == 0, err[-2000:]


def test_layer_without_edges_and_neurons_without_inputs(tmp_path, capsys):
    mats = [np.eye(8, dtype=np.float32), np.zeros((8, 8), np.float32), np.eye(8, dtype=np.float32)[:, ::-1]]
    mats[1][0, 0] = 1.0  # one edge: the layer is read, most neurons have no input
    net_dir = network_from(mats, tmp_path / "net")
    code, _, err = run(["partition", "--network", net_dir, "--bias", 0, "--parts", 3, "--out", tmp_path / "p.npz"],
                       capsys)
    assert code == 0, err
    net = SparseNetwork.from_scipy([sp.csr_array(m) for m in mats], 0.0, None)
    net = SparseNetwork.from_scipy([sp.csr_array(np.eye(8)), sp.csr_array((8, 8)), sp.csr_array(np.eye(8))], 0.0)
    for method in ("kahypar", "mtkahypar"):  # a layer with no edge at all
        part = partition.partition_network(net, 2, method=method)
        assert [np.bincount(p, minlength=2).tolist() for p in part.parts[:1]] == [[4, 4]]


def test_layer_smaller_than_parts_is_refused_in_one_line(tmp_path, capsys):
    net_dir = network_from([np.ones((4, 4), np.float32)], tmp_path / "net")
    code, _, err = run(["partition", "--network", net_dir, "--bias", 0, "--parts", 5, "--out", tmp_path / "p.npz"],
                       capsys)
    assert code == 2
    line = one_line_error(err)
    assert "--parts 5 is larger than layer 0 (the input features), which has 4 neurons" in line, line


@pytest.mark.parametrize("tool", ["kahypar", "mtkahypar"])
def test_a_tool_that_ends_its_process_becomes_one_cli_line(tmp_path, capsys, monkeypatch, tool):
    """Caps that sum below the total weight (the old bug) make the tool exit or raise: the worker
    process absorbs it, the CLI says it in one line, and the next call works again."""
    good = _kahypar._tool_weights

    def too_small(weights, caps, num_parts, epsilon):
        w, c = good(weights, caps, num_parts, epsilon)
        return w, [1] * len(c)

    net_dir = network_from(random_inputs_network(8, 2, 4, 1), tmp_path / "net")
    monkeypatch.setattr(_kahypar, "_tool_weights", too_small)
    code, _, err = run(["partition", "--network", net_dir, "--bias", 0, "--parts", 2, "--method", tool, "--out",
                        tmp_path / "p.npz"], capsys)
    assert code == 2
    line = one_line_error(err)
    name = {"kahypar": "KaHyPar exited with status 255", "mtkahypar": "Mt-KaHyPar failed"}[tool]
    assert name in line and "weight" in line and "layer 1" in line, line
    assert not (tmp_path / "p.npz").exists()
    monkeypatch.setattr(_kahypar, "_tool_weights", good)
    code, _, err = run(["partition", "--network", net_dir, "--bias", 0, "--parts", 2, "--method", tool, "--out",
                        tmp_path / "p.npz"], capsys)
    assert code == 0, err


def test_caps_sum_to_the_total_weight():
    # 7 neurons, 4 of them without inputs (weight 0, raised to 1): the old caps summed to 2 * 3 + 2 < 9
    weights = np.array([0, 0, 0, 0, 2, 2, 1])
    w, caps = _kahypar._tool_weights(weights, 3, 2, 0.03)
    assert sum(caps) >= sum(w)


# ----------------------------------------------------------------------------------------------
# 2. multi-host never hangs and never aborts
# ----------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _multihost(pid, port, extra=(), timeout=3):
    return ["infer", "--network", NETWORK, "--layers", 2, "--images", IMAGES, "--data-parallel", 2,
            "--coordinator", f"127.0.0.1:{port}", "--num-processes", 2, "--process-id", pid,
            "--init-timeout", timeout, *extra]


@pytest.mark.slow
def test_process_0_without_peers_fails_in_one_line_within_the_timeout(tmp_path):
    t0 = time.monotonic()
    code, _, err = cli(_multihost(0, _free_port(), ["--out", tmp_path / "c.tsv"], timeout=2), timeout=60)
    assert code == 2 and code != -signal.SIGABRT
    assert "process(es) 1 of 2 did not join" in one_line_error(err)
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "c.tsv").exists()


@pytest.mark.slow
def test_port_held_by_another_service(tmp_path):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        code, _, err = cli(_multihost(0, port, ["--out", tmp_path / "c.tsv"]), timeout=60)
        assert code == 2
        assert "cannot listen on port" in one_line_error(err)
        code, _, err = cli(_multihost(1, port, ["--out", tmp_path / "c1.tsv"], timeout=2), timeout=60)
        assert code == 2
        assert "no answer from the coordinator" in one_line_error(err)


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_init_timeout_must_be_positive(value, capsys, tmp_path):
    code, _, err = run(_multihost(0, 1234, ["--out", tmp_path / "c.tsv"], timeout=value), capsys)
    assert code == 2
    assert "--init-timeout" in one_line_error(err)


@pytest.mark.slow
def test_processes_with_different_networks_both_fail_in_one_line(tmp_path):
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = []
    for pid, layers in ((0, 2), (1, 3)):
        args = _multihost(pid, port, ["--out", tmp_path / f"c{pid}.tsv", "--layers", layers], timeout=20)
        procs.append(subprocess.Popen([sys.executable, "-m", "jaxsdnn.cli", *map(str, args)], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    t0 = time.monotonic()
    results = [p.communicate(timeout=60) for p in procs]
    assert time.monotonic() - t0 < 40
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 2
        assert "different inputs: network" in one_line_error(err)
    assert not (tmp_path / "c0.tsv").exists()


@pytest.mark.slow
def test_a_peer_that_dies_mid_run_ends_process_0_in_one_line(tmp_path):
    """SIGTERM ends a process (the runtime's preemption handler does not swallow it), and its
    peer, whose runtime aborts with a native stack dump, reports one line within the heartbeat."""
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = []
    for pid in (0, 1):
        args = ["infer", "--network", NETWORK, "--images", IMAGES, "--data-parallel", 2, "--out", tmp_path / f"c{pid}",
                "--coordinator", f"127.0.0.1:{port}", "--num-processes", 2, "--process-id", pid, "--init-timeout", 20]
        procs.append(subprocess.Popen([sys.executable, "-m", "jaxsdnn.cli", *map(str, args)], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:  # wait until both have joined; the 120 layers then take several seconds
        line = p.stderr.readline()
        assert line.startswith("joined the multi-host run"), line + p.stderr.read()[-2000:]
    time.sleep(1)
    assert procs[1].poll() is None and procs[0].poll() is None
    procs[1].send_signal(signal.SIGTERM)
    _, err1 = procs[1].communicate(timeout=30)
    assert procs[1].returncode == 128 + signal.SIGTERM, err1[-2000:]
    t0 = time.monotonic()
    _, err0 = procs[0].communicate(timeout=90)
    assert procs[0].returncode == 1
    assert "another process of the multi-host run died" in one_line_error(err0)
    assert time.monotonic() - t0 < 60


# ----------------------------------------------------------------------------------------------
# 3. outputs never destroy inputs or special files
# ----------------------------------------------------------------------------------------------
def _infer(out, capsys, *extra):
    return run(["infer", "--network", NETWORK, "--layers", 2, "--images", IMAGES, "--out", out, *extra], capsys)


def test_output_that_is_a_fifo_or_a_directory_is_refused(tmp_path, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    code, _, err = _infer(fifo, capsys)
    assert code == 2 and "is a FIFO, not a regular file" in one_line_error(err)
    assert fifo.is_fifo()
    (tmp_path / "outdir").mkdir()
    code, _, err = _infer(tmp_path / "outdir", capsys, "--scores", tmp_path / "s.npy")
    line = one_line_error(err)
    assert code == 2 and f"--out {tmp_path / 'outdir'}: is a directory" in line and ".tmp" not in line


def test_atomic_write_never_replaces_a_special_file_and_names_the_path(tmp_path):
    from jaxsdnn._atomic import atomic_write

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for target in (fifo, tmp_path):
        with pytest.raises(OSError) as e:
            with atomic_write(target) as f:
                f.write("x")
        assert e.value.filename == str(target) and ".tmp" not in str(e.value)
    assert fifo.is_fifo() and not list(tmp_path.glob(".*.tmp"))


def test_symlink_output_is_written_through(tmp_path, capsys):
    target = tmp_path / "real.tsv"
    target.write_text("old\n")
    link = tmp_path / "link.tsv"
    link.symlink_to(target)
    code, _, err = _infer(link, capsys)
    assert code == 0, err
    assert link.is_symlink() and target.read_text() != "old\n"
    dangling = tmp_path / "dangling.tsv"
    dangling.symlink_to(tmp_path / "missing" / "x.tsv")
    code, _, err = _infer(dangling, capsys)
    assert code == 2 and "is a symlink to" in one_line_error(err)


def test_outputs_that_alias_inputs_or_each_other_are_refused(tmp_path, capsys):
    images = tmp_path / "img.mtx"
    images.write_bytes(Path(IMAGES).read_bytes())
    before = images.read_bytes()
    code, _, err = run(["infer", "--network", NETWORK, "--layers", 2, "--images", images, "--out", images], capsys)
    assert code == 2 and "is the same file as --images" in one_line_error(err)
    assert images.read_bytes() == before
    code, _, err = run(["infer", "--network", NETWORK, "--layers", 2, "--images", images, "--out", tmp_path / "c",
                        "--scores", tmp_path / "c"], capsys)
    assert code == 2 and "--scores" in one_line_error(err) and "same file as --out" in err
    net_dir = network_from([np.eye(32, dtype=np.float32)], tmp_path / "net")
    layer = net_dir / "n32-l1.tsv"
    before = layer.read_bytes()
    code, _, err = run(["partition", "--network", net_dir, "--bias", 0, "--parts", 2, "--out", layer], capsys)
    assert code == 2 and "a layer file of --network" in one_line_error(err)
    code, _, err = run(["infer", "--network", net_dir, "--bias", 0, "--images", images, "--out", tmp_path / "c",
                        "--truth", tmp_path / "c"], capsys)  # --truth does not exist: refused first anyway
    assert code == 2
    assert layer.read_bytes() == before


# ----------------------------------------------------------------------------------------------
# 4. everything checked before the work starts
# ----------------------------------------------------------------------------------------------
def test_infer_checks_scores_and_truth_before_writing_out(tmp_path, capsys):
    out = tmp_path / "c.tsv"
    code, _, err = _infer(out, capsys, "--scores", tmp_path / "no" / "s.npy")
    assert code == 2 and "--scores" in one_line_error(err) and "does not exist" in err
    assert not out.exists()
    code, _, err = _infer(out, capsys, "--truth", tmp_path / "missing.tsv")
    assert code == 2 and "missing.tsv" in one_line_error(err)
    assert not out.exists()


@pytest.mark.parametrize("extra,flag", [(["--images", "-5"], "--images"), (["--images", "3", "--density", "2"],
                                                                            "--density")])
def test_generate_refuses_before_writing_layers(tmp_path, capsys, extra, flag):
    out = tmp_path / "net"
    code, _, err = run(["generate", "--neurons", 64, "--layers", 3, "--out", out, *extra], capsys)
    assert code == 2 and flag in one_line_error(err)
    assert not out.exists() or not list(out.iterdir())


def test_generate_that_cannot_fit_on_the_disk_is_refused_naming_the_size(tmp_path, capsys):
    out = tmp_path / "net"
    code, _, err = run(["generate", "--neurons", 65536, "--layers", 10**6, "--out", out], capsys)
    line = one_line_error(err)
    assert code == 2 and "MB but only" in line and "free" in line
    assert not out.exists()


# ----------------------------------------------------------------------------------------------
# 5. nothing silently missing or silently wrong
# ----------------------------------------------------------------------------------------------
def test_empty_layer_file_is_an_error_unless_allowed(tmp_path, capsys):
    net_dir = network_from([np.eye(32, dtype=np.float32)] * 3, tmp_path / "net")
    (net_dir / "n32-l2.tsv").write_text("")
    code, _, err = run(["partition", "--network", net_dir, "--bias", 0, "--parts", 2, "--method", "block",
                        "--out", tmp_path / "p.npz"], capsys)
    assert code == 2 and "n32-l2.tsv: is empty (0 bytes)" in one_line_error(err)
    code, _, err = run(["partition", "--network", net_dir, "--bias", 0, "--parts", 2, "--method", "block",
                        "--allow-empty-layers", "--out", tmp_path / "p.npz"], capsys)
    assert code == 0, err
    assert partition.load_partition(tmp_path / "p.npz").num_layers == 3


@pytest.mark.parametrize("kind", ["broken symlink", "directory"])
def test_last_layer_that_cannot_be_read_is_an_error(tmp_path, kind):
    net_dir = network_from([np.eye(32, dtype=np.float32)] * 3, tmp_path / "net")
    last = net_dir / "n32-l3.tsv"
    last.unlink()
    if kind == "directory":
        last.mkdir()
    else:
        last.symlink_to(tmp_path / "gone.tsv")
    with pytest.raises(ValueError, match=f"n32-l3.tsv: is a {kind}"):
        io.read_network(net_dir, bias=0.0)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_layer_file_is_an_error(tmp_path, capsys):
    net_dir = network_from([np.eye(32, dtype=np.float32)] * 2, tmp_path / "net")
    (net_dir / "n32-l2.tsv").chmod(0)
    code, _, err = run(["partition", "--network", net_dir, "--bias", 0, "--parts", 2, "--out", tmp_path / "p"], capsys)
    assert code == 2 and "n32-l2.tsv" in one_line_error(err)


def test_mtx_header_wider_than_the_network_is_refused(tmp_path):
    path = tmp_path / "img.mtx"
    path.write_text("%%MatrixMarket matrix coordinate pattern general\n2 2048 1\n1 3\n")
    with pytest.raises(ValueError, match=r"img.mtx:2: images file is wider than the network: the header has 2048"):
        io.read_images(path, num_features=1024)


# ----------------------------------------------------------------------------------------------
# 6. training
# ----------------------------------------------------------------------------------------------
def _strict_json(text: str):
    def bad(token):
        raise AssertionError(f"non-JSON token {token}")

    return json.loads(text, parse_constant=bad)


@pytest.mark.parametrize("value", ["nan", "inf", "-.inf", ".nan"])
def test_learning_rate_must_be_finite(value, tmp_path, capsys, cfg_file):
    code, _, err = run(["train", cfg_file, "--set", f"train.lr={value}", "--run-dir", tmp_path / "r"], capsys)
    assert code == 2 and "train.lr: expected a finite number" in one_line_error(err)


def test_diverging_run_stops_at_the_first_non_finite_loss(tmp_path):
    from jaxsdnn.config import load_config
    from jaxsdnn.train import Diverged, train, trained_network

    cfg = load_config(None, TINY_TRAIN + ["train.optimizer=sgd", "train.lr=1e30", "train.momentum=0",
                                          "train.checkpoint_every=1"])
    with pytest.raises(Diverged, match=r"the loss is (nan|inf) at step \d+") as e:
        train(cfg, tmp_path / "r", progress=False)
    assert "the last good checkpoint is" in str(e.value)
    for step in (tmp_path / "r" / "checkpoints").iterdir():  # every checkpoint written is finite and loadable
        net = trained_network(tmp_path / "r", step=int(step.name))
        assert all(np.all(np.isfinite(w.data)) for w in net.weights)
    for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines():
        _strict_json(line)


def test_empty_test_set_gives_valid_json(tmp_path, capsys, cfg_file):
    code, out, err = run(["train", cfg_file, "--set", "data.test_fraction=0", *sum((["--set", s] for s in TINY_TRAIN), []),
                          "--set", "train.max_steps=3", "--run-dir", tmp_path / "r", "--json"], capsys)
    assert code == 0, err
    assert _strict_json(out.strip().splitlines()[-1])["test_accuracy"] is None
    _strict_json((tmp_path / "r" / "summary.json").read_text())
    for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines():
        _strict_json(line)


def test_second_run_into_the_same_directory_is_refused(tmp_path):
    import fcntl

    from jaxsdnn.config import load_config
    from jaxsdnn.train import train

    run_dir = tmp_path / "r"
    run_dir.mkdir()
    with open(run_dir / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running train() holds
        with pytest.raises(ValueError, match="another training run is using this run directory"):
            train(load_config(None, TINY_TRAIN + ["train.max_steps=2"]), run_dir, progress=False)
    assert not (run_dir / "checkpoints").exists() or not list((run_dir / "checkpoints").iterdir())


def test_resume_without_config_yaml_checks_the_checkpoint(tmp_path):
    from jaxsdnn.config import load_config
    from jaxsdnn.train import train

    run_dir = tmp_path / "r"
    train(load_config(None, TINY_TRAIN + ["train.max_steps=2"]), run_dir, progress=False)
    (run_dir / "config.yaml").unlink()
    with pytest.raises(ValueError, match=r"cannot resume with a different train.seed: 0 -> 5"):
        train(load_config(None, TINY_TRAIN + ["train.max_steps=4", "train.seed=5"]), run_dir, resume=True,
              progress=False)


@pytest.mark.slow
def test_ctrl_c_ends_in_one_line_with_a_usable_checkpoint(tmp_path):
    from jaxsdnn import pytree_checkpoint as pck

    run_dir = tmp_path / "r"
    cfg = tmp_path / "defaults.yaml"
    cfg.write_text("{}\n")
    args = ["train", "--config", cfg, *sum((["--set", s] for s in TINY_TRAIN), []), "--set", "train.epochs=1000",
            "--set", "train.checkpoint_every=0", "--run-dir", run_dir, "--json"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    p = subprocess.Popen([sys.executable, "-m", "jaxsdnn.cli", *map(str, args)], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (metrics.exists() and '"loss"' in metrics.read_text()):
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err[-2000:]
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith("jaxsdnn train: interrupted at step")
    step = pck.latest_step(run_dir / "checkpoints")
    assert step is not None and step > 0 and str(run_dir / "checkpoints" / str(step)) in last


# ----------------------------------------------------------------------------------------------
# 7. no traceback: huge indices and sizes are bounded and named
# ----------------------------------------------------------------------------------------------
def test_huge_sizes_are_refused_by_name(tmp_path, capsys):
    big = tmp_path / "img.tsv"
    big.write_text(f"{2**31}\t1\t1\n")
    code, _, err = _infer(tmp_path / "c.tsv", capsys)  # baseline works
    assert code == 0, err
    code, _, err = run(["infer", "--network", NETWORK, "--layers", 2, "--images", big, "--out", tmp_path / "c"], capsys)
    assert code == 2 and "img.tsv:1: row index 2147483648 is too large" in one_line_error(err)
    big.write_text(f"{2**31 - 1}\t1\t1\n")
    code, _, err = run(["infer", "--network", NETWORK, "--layers", 2, "--images", big, "--out", tmp_path / "c"], capsys)
    assert code == 2 and "image row 2147483647" in one_line_error(err) and "GiB of memory" in err
    for header in ("2000000000 1024 1", "20 1024 2000000000"):
        mtx = tmp_path / "img.mtx"
        mtx.write_text(f"%%MatrixMarket matrix coordinate pattern general\n{header}\n1 1\n")
        code, _, err = run(["infer", "--network", NETWORK, "--layers", 2, "--images", mtx, "--out", tmp_path / "c"],
                           capsys)
        assert code == 2 and "img.mtx:2:" in one_line_error(err)
    huge = tmp_path / "huge"
    huge.mkdir()
    (huge / f"n{10**11}-l1.tsv").write_text("1\t1\t1\n")
    code, _, err = run(["partition", "--network", huge, "--bias", 0, "--parts", 2, "--out", tmp_path / "p"], capsys)
    assert code == 2 and "100000000000 neurons per layer" in one_line_error(err)
    code, _, err = run(["generate", "--neurons", 64, "--layers", 2, "--seed", 2**70, "--out", tmp_path / "g"], capsys)
    assert code == 2 and "--seed" in one_line_error(err)


# ----------------------------------------------------------------------------------------------
# 8. messages name the user's words
# ----------------------------------------------------------------------------------------------
def test_messages_name_flags_keys_and_files(tmp_path, capsys, cfg_file):
    cfg = tmp_path / "bad.yaml"
    cfg.write_bytes(b"train:\n  lr: \xff\xfe\n")
    code, _, err = run(["train", "--config", cfg, "--run-dir", tmp_path / "r"], capsys)
    assert code == 2 and f"{cfg}: not UTF-8" in one_line_error(err)
    code, _, err = run(["generate", "--neurons", 64, "--layers", 2, "--seed", -1, "--out", tmp_path / "g"], capsys)
    assert code == 2 and "--seed" in one_line_error(err)
    code, _, err = run(["train", cfg_file, "--set", "data.validation_fraction=1", "--run-dir", tmp_path / "r"], capsys)
    assert code == 2 and "data.validation_fraction" in one_line_error(err)
    code, _, err = _infer(tmp_path / "c.tsv", capsys, "--bias", "1e39")
    line = one_line_error(err)
    assert code == 2 and "--bias" in line and "n1024-l1" not in line
    net_dir = network_from([np.eye(32, dtype=np.float32)], tmp_path / "net")
    code, _, err = run(["partition", "--network", net_dir, "--parts", 2, "--out", tmp_path / "p"], capsys)
    line = one_line_error(err)
    assert code == 2 and "give --bias" in line and "bias=" not in line


def test_cli_wording_for_checkpoints_and_resume(tmp_path, capsys, cfg_file):
    run_dir = tmp_path / "r"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "step_000000001.npz").write_bytes(b"")
    code, _, err = run(["train", cfg_file, "--run-dir", run_dir], capsys)
    line = one_line_error(err)
    assert code == 2 and "--resume" in line and "resume=True" not in line
    code, _, err = run(["train", cfg_file, "--run-dir", tmp_path / "empty", "--resume"], capsys)
    assert code == 2 and "--resume" in one_line_error(err)


def test_config_comments_command_parses():
    from jaxsdnn.cli import build_parser

    for name in ("digits", "graphchallenge"):
        text = (Path(REPO) / "configs" / f"{name}.yaml").read_text()
        command = next(line for line in text.splitlines() if "jaxsdnn train" in line).split("jaxsdnn", 1)[1].split()
        args = build_parser().parse_args(command)
        assert (args.config or args.config_file).endswith(f"{name}.yaml")
    args = build_parser().parse_args(["train", "configs/digits.yaml"])  # the positional form works too
    assert args.config_file == "configs/digits.yaml"
