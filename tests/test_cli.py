"""The jaxsdnn command line: happy paths with --json, and bad input as one clean error line."""

import json
import os
import subprocess
import sys

import numpy as np
import scipy.sparse as sp
import pytest
from conftest import GC_DIR, REPO

from jaxsdnn import io
from jaxsdnn.cli import main

IMAGES = os.path.join(GC_DIR, "sparse-images-1024_subset.mtx")
TRUTH = os.path.join(GC_DIR, "neuron1024-l120-categories_subset.mtx")
NETWORK = os.path.join(GC_DIR, "neuron1024")


def run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def last_json(out):
    return json.loads(out.strip().splitlines()[-1])


def test_generate_then_infer_on_two_devices(tmp_path, capsys):
    net_dir = tmp_path / "net"
    code, out, _ = run(["generate", "--neurons", "64", "--layers", "5", "--seed", "3", "--out", str(net_dir),
                        "--images", "40", "--image-kind", "random", "--density", "0.2", "--no-survivors",
                        "--json"], capsys)
    assert code == 0
    gen = last_json(out)
    assert gen["layers"] == 5 and len(list(net_dir.glob("n64-l*.tsv"))) == 5
    cats = tmp_path / "cats.tsv"
    code, out, err = run(["infer", "--network", str(net_dir), "--images", gen["images_file"], "--out", str(cats),
                          "--bias", "-0.05", "--devices", "2", "--method", "random", "--scores",
                          str(tmp_path / "s.npz"), "--json"], capsys)
    assert code == 0, err
    res = last_json(out)
    for key in ("categories", "seconds", "compile_seconds", "edges_per_second", "layers", "images", "devices",
                "volume_per_sample", "padded_volume_per_sample", "rounds"):
        assert key in res
    assert res["devices"] == 2 and res["images"] == 40 and res["layers"] == 5
    scores = sp.load_npz(tmp_path / "s.npz").toarray()
    assert scores.shape == (40, 64)
    expected = np.flatnonzero(scores.any(axis=1)) + 1
    np.testing.assert_array_equal(io.read_categories(cats) if expected.size else [], expected)


def test_partition_then_infer_with_partition_file(tmp_path, capsys):
    part = tmp_path / "p.npz"
    code, out, err = run(["partition", "--network", NETWORK, "--layers", "4", "--parts", "2", "--method", "block",
                          "--out", str(part), "--json"], capsys)
    assert code == 0, err
    res = last_json(out)
    assert {"volume", "per_layer_volume", "max_imbalance", "seconds"} <= set(res)
    code, out, err = run(["infer", "--network", NETWORK, "--layers", "4", "--images", IMAGES, "--out",
                          str(tmp_path / "c.tsv"), "--partition", str(part), "--json"], capsys)
    assert code == 0, err
    assert last_json(out)["volume_per_sample"] == res["volume"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["infer", "--network", "/nonexistent", "--images", IMAGES, "--out", "x.tsv"], "/nonexistent"),
        (["infer", "--network", NETWORK, "--images", "/no/such.mtx", "--out", "x.tsv"], "/no/such.mtx"),
        (["partition", "--network", NETWORK, "--layers", "2", "--parts", "0", "--method", "block", "--out",
          "p.npz"], "parts"),
        (["partition", "--network", NETWORK, "--layers", "2", "--parts", "2", "--epsilon", "1.5", "--out",
          "p.npz"], "epsilon"),
    ],
)
def test_bad_input_is_one_line_on_stderr(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(args, capsys)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "p.npz")


def test_partition_for_another_network_is_rejected(tmp_path, capsys):
    part = tmp_path / "p.npz"
    assert run(["partition", "--network", NETWORK, "--layers", "3", "--parts", "2", "--method", "block", "--out",
                str(part)], capsys)[0] == 0
    code, _, err = run(["infer", "--network", NETWORK, "--layers", "4", "--images", IMAGES, "--out",
                        str(tmp_path / "c.tsv"), "--partition", str(part)], capsys)
    assert code == 2 and str(part) in err


def test_device_count_must_match_partition(tmp_path, capsys):
    part = tmp_path / "p.npz"
    assert run(["partition", "--network", NETWORK, "--layers", "2", "--parts", "2", "--method", "block", "--out",
                str(part)], capsys)[0] == 0
    code, _, err = run(["infer", "--network", NETWORK, "--layers", "2", "--images", IMAGES, "--out",
                        str(tmp_path / "c.tsv"), "--partition", str(part), "--devices", "4"], capsys)
    assert code == 2 and "2 parts but --devices is 4" in err, err


def test_more_devices_than_neurons_is_rejected(tmp_path, capsys):
    net_dir = tmp_path / "net"
    assert run(["generate", "--neurons", "32", "--layers", "2", "--out", str(net_dir)], capsys)[0] == 0
    code, _, err = run(["partition", "--network", str(net_dir), "--parts", "64", "--method", "block", "--bias",
                        "0", "--out", str(tmp_path / "p.npz")], capsys)
    assert code == 2 and "64" in err and not (tmp_path / "p.npz").exists()


def test_unreachable_coordinator_fails_fast_with_a_message(tmp_path):
    """A fresh process (device setup happens before JAX starts), bounded by a timeout."""
    cmd = [sys.executable, "-m", "jaxsdnn.cli", "infer", "--network", NETWORK, "--layers", "2", "--images", IMAGES,
           "--out", str(tmp_path / "c.tsv"), "--devices", "2", "--coordinator", "127.0.0.1:9",
           "--num-processes", "2", "--process-id", "1", "--init-timeout", "5"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2
    assert "127.0.0.1:9" in proc.stderr and "Traceback" not in proc.stderr


def test_method_without_devices_and_missing_output_folder(tmp_path, capsys):
    code, _, err = run(["infer", "--network", NETWORK, "--layers", "2", "--images", IMAGES, "--out",
                        str(tmp_path / "c.tsv"), "--method", "random"], capsys)
    assert code == 2 and "--devices 2 or more" in err
    code, _, err = run(["partition", "--network", NETWORK, "--layers", "2", "--parts", "2", "--method", "block",
                        "--out", str(tmp_path / "missing" / "p.npz")], capsys)
    assert code == 2 and "missing" in err and ".tmp" not in err
