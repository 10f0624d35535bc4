"""Two processes on localhost with jax.distributed (two CPU devices each) give one process's answer."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import scipy.sparse as sp
import pytest
from conftest import GC_DIR, REPO

from jaxsdnn import engine, io

NETWORK = os.path.join(GC_DIR, "neuron1024")
IMAGES = os.path.join(GC_DIR, "sparse-images-1024_subset.mtx")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SPLIT = ["--devices", "2", "--data-parallel", "2", "--method", "kahypar"]  # a 2 x 2 mesh, two devices a process


@pytest.mark.slow
@pytest.mark.parametrize("extra,tail", [(SPLIT, "local"), (SPLIT + ["--overlap", "--repeats", "2"], "local"),
                                        (SPLIT + ["--tail", "sharded"], "sharded"),
                                        (["--devices", "1", "--data-parallel", "2"], "local")],
                         ids=["plain", "overlapped", "sharded-tail", "data-parallel"])
def test_two_processes_match_one(tmp_path, extra, tail):
    layers = 8
    port = _free_port()
    procs = []
    for pid in range(2):
        cmd = [sys.executable, "-m", "jaxsdnn.cli", "infer", "--network", NETWORK, "--layers", str(layers),
               "--images", IMAGES, "--out", str(tmp_path / f"cats{pid}.tsv"), "--scores", str(tmp_path / f"s{pid}.npz"),
               "--coordinator", f"127.0.0.1:{port}",
               "--num-processes", "2", "--process-id", str(pid), "--init-timeout", "60", "--json", *extra]
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    report = json.loads(outs[0][0].strip().splitlines()[-1])
    assert report["tail"] == tail  # auto: the survivors finish on each process's own device
    assert (report["tail_samples"] > 0) == (tail == "local")
    if report["model_parallel"] == 1:  # one device per process: every image ran on its own process
        assert report["tail_samples"] == report["images"] and report["exchange_rounds_run"] == 0
    # only process 0 writes results
    assert (tmp_path / "cats0.tsv").exists() and not (tmp_path / "cats1.tsv").exists()
    assert not (tmp_path / "s1.npy").exists()
    net = io.read_network(NETWORK, num_layers=layers)
    single = engine.run_inference(net, io.read_images(IMAGES, num_features=1024))
    np.testing.assert_array_equal(io.read_categories(tmp_path / "cats0.tsv"), single.categories)
    np.testing.assert_allclose(sp.load_npz(tmp_path / "s0.npz").toarray(), single.scores.toarray(), rtol=1e-5, atol=1e-5)
