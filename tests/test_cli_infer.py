"""`jaxsdnn infer` at challenge scale: compaction flags, sparse scores, JSON report, compile cache."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import GC_DIR, REPO

from jaxsdnn import io, reference

IMAGES = os.path.join(GC_DIR, "sparse-images-1024_subset.mtx")
NETWORK = os.path.join(GC_DIR, "neuron1024")


def cli(args, env=None):
    proc = subprocess.run([sys.executable, "-m", "jaxsdnn.cli", *args], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


def last_json(out):
    return json.loads(out.strip().splitlines()[-1])


def test_compact_and_no_compact_report_and_agree(tmp_path):
    common = ["infer", "--network", NETWORK, "--layers", "6", "--images", IMAGES, "--json"]
    code, out, err = cli(common + ["--out", str(tmp_path / "a.tsv"), "--scores", str(tmp_path / "a.npz")])
    assert code == 0, err
    on = last_json(out)
    code, out, err = cli(common + ["--out", str(tmp_path / "b.tsv"), "--scores", str(tmp_path / "b.tsv.scores"),
                                   "--no-compact"])
    assert code == 0, err
    off = last_json(out)
    assert on["compact"] and not off["compact"] and off["survival"] == []
    assert on["survival"][0] == [1, 1098] and on["survival"][-1] == [6, 56]  # the subset: 1,098 alive after layer 1
    assert 0.3 < on["skipped_edge_fraction"] < 1 and off["skipped_edge_fraction"] == 0
    assert on["peak_rss_bytes"] > 10**8 and on["segments"] == 1
    np.testing.assert_array_equal(io.read_categories(tmp_path / "a.tsv"), io.read_categories(tmp_path / "b.tsv"))
    # both score formats hold the survivors only, and equal the oracle
    net = io.read_network(NETWORK, num_layers=6)
    ref = reference.forward(net, io.read_images(IMAGES, num_features=1024))
    dense = sp.load_npz(tmp_path / "a.npz").toarray()
    np.testing.assert_allclose(dense, ref, rtol=1e-5, atol=1e-5)
    triples = np.loadtxt(tmp_path / "b.tsv.scores", ndmin=2)
    assert triples.shape[0] == np.count_nonzero(ref)
    np.testing.assert_allclose(triples[:, 2], ref[triples[:, 0].astype(int) - 1, triples[:, 1].astype(int) - 1],
                               rtol=1e-5, atol=1e-5)


def test_second_run_of_the_same_network_compiles_from_the_cache(tmp_path):
    cache = tmp_path / "cache"
    args = ["infer", "--network", NETWORK, "--layers", "8", "--images", IMAGES, "--out", str(tmp_path / "c.tsv"),
            "--compile-cache", str(cache), "--json"]
    code, out, err = cli(args)
    assert code == 0, err
    first = last_json(out)
    code, out, err = cli(args)
    assert code == 0, err
    second = last_json(out)
    assert first["compiles"] > 0 and first["compile_cache_hits"] == 0
    assert second["compiles"] == 0 and second["compile_cache_hits"] == first["compiles"]


@pytest.mark.parametrize("flag", ["--scores", "--out"])
def test_an_unwritable_output_fails_before_any_work(tmp_path, flag):
    outputs = {"--out": str(tmp_path / "cats.tsv"), "--scores": str(tmp_path / "s.npz")}
    outputs[flag] = str(tmp_path / "missing" / "x")
    args = ["infer", "--network", NETWORK, "--images", IMAGES]
    for f, path in outputs.items():
        args += [f, path]
    code, _, err = cli(args)
    assert code == 2
    assert err.strip().count("\n") == 0 and f"{flag} {tmp_path / 'missing' / 'x'}" in err and "does not exist" in err
    assert not os.path.exists(tmp_path / "cats.tsv") and not os.path.exists(tmp_path / "s.npz")
