"""Graph Challenge file I/O: real data, round trips, and file:line errors for bad input."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from jaxsdnn._atomic import atomic_write
from jaxsdnn.io import (
    find_layer_files,
    graphchallenge_bias,
    read_categories,
    read_images,
    read_layer,
    read_network,
    write_categories,
    write_images,
    write_network,
)
from jaxsdnn.network import SparseNetwork
from jaxsdnn.radixnet import random_images

DATA = Path(__file__).resolve().parent.parent / "data" / "graphchallenge"
SUBSET_CATEGORIES = [287, 295, 386, 427, 428, 529, 571, 666, 757, 943, 945, 1031, 1097, 1098, 1177, 1184, 1190, 1194, 1200]


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def random_network(neurons: int, layers: int, seed: int) -> SparseNetwork:
    rng = np.random.default_rng(seed)
    sample = lambda size: rng.standard_normal(size).astype(np.float32)  # noqa: E731
    mats = [sp.random_array((neurons, neurons), density=0.2, rng=rng, data_sampler=sample) for _ in range(layers)]
    return SparseNetwork.from_scipy(mats, -0.3, 32.0)


# -- real data --------------------------------------------------------------------------------
def test_graphchallenge_bias():
    assert [graphchallenge_bias(n) for n in (1024, 4096, 16384, 65536)] == [-0.3, -0.35, -0.4, -0.45]
    with pytest.raises(ValueError, match="no Graph Challenge bias for 2048 neurons"):
        graphchallenge_bias(2048)


def test_real_network_first_layers():
    neurons, paths = find_layer_files(DATA / "neuron1024")
    assert neurons == 1024 and [p.name for p in paths[:2]] == ["n1024-l1.tsv.gz", "n1024-l2.tsv.gz"]
    assert len(paths) == 120 and paths[-1].name == "n1024-l120.tsv.gz"
    net = read_network(DATA / "neuron1024", num_layers=3)
    assert net.sizes == (1024,) * 4 and net.nnz == (32768,) * 3
    assert net.cap == 32.0 and np.all(net.biases[2] == np.float32(-0.3))
    np.testing.assert_array_equal(net.weights[0].data, np.float32(0.0625))


def test_real_images_subset():
    images = read_images(DATA / "sparse-images-1024_subset.mtx", num_features=1024)
    assert images.shape == (1200, 1024) and images.nnz == 122713 and images.dtype == np.float32
    np.testing.assert_array_equal(images.data, 1.0)
    wider = read_images(DATA / "sparse-images-1024_subset.mtx", num_features=2048)  # narrower file: padded
    assert wider.shape == (1200, 2048) and (wider[:, :1024] != images).nnz == 0


def test_real_categories():
    subset = read_categories(DATA / "neuron1024-l120-categories_subset.mtx")
    np.testing.assert_array_equal(subset, SUBSET_CATEGORIES)
    assert subset.dtype == np.int64
    full = read_categories(DATA / "neuron1024-l120-categories.tsv")
    assert full.shape == (1812,)
    np.testing.assert_array_equal(full[full <= 1200], SUBSET_CATEGORIES)


# -- round trips ------------------------------------------------------------------------------
def test_write_network_reproduces_the_original_bytes(tmp_path):
    written = write_network(read_network(DATA / "neuron1024", num_layers=2), tmp_path)
    assert [p.name for p in written] == ["n1024-l1.tsv", "n1024-l2.tsv"]
    for k, path in enumerate(written, start=1):
        assert path.read_bytes() == gzip.decompress((DATA / "neuron1024" / f"n1024-l{k}.tsv.gz").read_bytes())


def test_network_round_trip_exact_float32(tmp_path):
    net = random_network(32, 3, seed=0)
    write_network(net, tmp_path / "net")
    back = read_network(tmp_path / "net", bias=-0.3)
    assert back.fingerprint() == net.fingerprint()
    for a, b in zip(net.weights, back.weights):
        np.testing.assert_array_equal(a.data, b.data)  # %.8e fallback: bit-exact
    first = (tmp_path / "net" / "n32-l1.tsv").read_text().split("\n")[0].split("\t")
    assert len(first) == 3 and "e" in first[2]


def test_write_network_rejects_non_square_and_stale_files(tmp_path):
    chain = SparseNetwork.from_scipy([sp.random_array((4, 6), density=0.5, rng=0), sp.random_array((6, 6), density=0.5, rng=1)])
    with pytest.raises(ValueError, match="layer 1 is 4 x 6.*square"):
        write_network(chain, tmp_path)
    write_network(random_network(8, 3, seed=1), tmp_path)
    with pytest.raises(ValueError, match=r"would not replace \(n8-l3\.tsv\)"):
        write_network(random_network(8, 2, seed=2), tmp_path)


@pytest.mark.parametrize("name", ["images.tsv", "images.tsv.gz"])
def test_images_round_trip(tmp_path, name):
    images = random_images(40, 30, 0.2, seed=0)
    images.data[::7] = np.float32(0.1)  # not only ones
    write_images(tmp_path / name, images)
    back = read_images(tmp_path / name, num_features=40, num_images=30)
    assert back.shape == (30, 40) and back.dtype == np.float32
    np.testing.assert_array_equal(back.toarray(), images.toarray())


def test_categories_round_trip(tmp_path):
    write_categories(tmp_path / "c.tsv", np.array([9, 1, 4]))
    assert (tmp_path / "c.tsv").read_text() == "1\n4\n9\n"
    np.testing.assert_array_equal(read_categories(tmp_path / "c.tsv"), [1, 4, 9])
    with pytest.raises(ValueError, match="1-based"):
        write_categories(tmp_path / "c.tsv", [0, 3])


# -- bad input: every message names the file and the line ------------------------------------
@pytest.mark.parametrize(
    "text, line, message",
    [
        ("1\t1\t0.5\n2\t2\n", 2, "expected 3 tab-separated fields `row col value`, found 2"),
        ("1\t1\t0.5\n2\tx\t0.5\n", 2, r"field 2 \(col\) is 'x', not a number; expected an integer output neuron in \[1, 4\]"),
        ("1\t1\t0.5\n2\t0\t0.5\n", 2, r"col index 0 < 1: indices are 1-based"),
        ("1\t1\t0.5\n\n5\t2\t0.5\n", 3, r"row index 5 is out of range: expected an integer input neuron in \[1, 4\]"),
        ("1.5\t1\t0.5\n", 1, "row index 1.5 is not an integer"),
        ("1\t1\t0.5\n2\t2\tnan\n", 2, "value nan is not a finite number"),
        ("1\t1\t1e39\n", 1, "value 1e\\+39 overflows float32"),
        ("2\t3\t0.5\n1\t1\t0.5\n2\t3\t0.25\n", 3, r"duplicate edge \(2, 3\), first on line 1"),
        ("1\t1\t0.5\n3\t1\tnan\n9\t1\t0.5\n", 2, "value nan"),  # the first bad line wins
        ("1\t1.5\t0.5\n3\t0\t0.5\n", 1, "col index 1.5 is not an integer"),
        ("3\t0\t0.5\n1\t1.5\t0.5\n", 1, "col index 0 < 1"),
        ("1\t1\n1\t2\n", 1, "expected 3 tab-separated fields `row col value`, found 2"),  # all lines 2 wide
        ("1\t1\t0.5\t\n", 1, "expected 3 tab-separated fields `row col value`, found 4"),
    ],
)
def test_read_layer_errors_name_file_and_line(tmp_path, text, line, message):
    path = write(tmp_path, "n4-l1.tsv", text)
    with pytest.raises(ValueError, match=rf"n4-l1\.tsv:{line}: {message}"):
        read_layer(path, 4, 4)


def test_gzipped_layer_error_names_the_gz_file(tmp_path):
    path = write(tmp_path, "n4-l1.tsv.gz", "1\t1\t0.5\n1 2 0.5\n")
    with pytest.raises(ValueError, match=r"n4-l1\.tsv\.gz:2: expected 3 tab-separated fields"):
        read_layer(path, 4, 4)


def test_read_network_names_the_bad_file(tmp_path):
    write(tmp_path, "n4-l1.tsv", "1\t1\t0.5\n")
    write(tmp_path, "n4-l2.tsv", "1\t1\t0.5\n4\t5\t0.5\n")
    with pytest.raises(ValueError, match=r"n4-l2\.tsv:2: col index 5 is out of range"):
        read_network(tmp_path, bias=0.0)
    with pytest.raises(ValueError, match=r"n4-l1\.tsv: layer 1: bias shape \(3,\)"):  # SparseNetwork's error, wrapped
        read_network(tmp_path, num_layers=1, bias=[np.zeros(3)])
    with pytest.raises(ValueError, match=r"num_layers=3 but it holds layers 1\.\.2"):
        read_network(tmp_path, num_layers=3, bias=0.0)


def test_layer_directory_errors(tmp_path):
    with pytest.raises(ValueError, match="no layer files"):
        find_layer_files(tmp_path)
    for k in (1, 2, 4):
        write(tmp_path, f"n4-l{k}.tsv", "1\t1\t0.5\n")
    with pytest.raises(ValueError, match=r"layer 3 is missing \(n4-l3\.tsv\[\.gz\]\) but layer 4 exists"):
        find_layer_files(tmp_path)
    write(tmp_path, "n4-l3.tsv", "1\t1\t0.5\n")
    write(tmp_path, "n4-l3.tsv.gz", "1\t1\t0.5\n")
    with pytest.raises(ValueError, match=r"layer 3 is stored twice: n4-l3\.tsv and n4-l3\.tsv\.gz"):
        find_layer_files(tmp_path)
    os.remove(tmp_path / "n4-l3.tsv.gz")
    write(tmp_path, "n8-l1.tsv", "1\t1\t0.5\n")
    with pytest.raises(ValueError, match="several network sizes: N=4 .4 files., N=8"):
        find_layer_files(tmp_path)


def test_layer_sizes_must_chain():
    with pytest.raises(ValueError, match="layer 2: has 5 input neurons but layer 1 has 4 output neurons"):
        SparseNetwork.from_scipy([sp.eye_array(4, format="csr"), sp.eye_array(5, format="csr")])


@pytest.mark.parametrize("name", ["images.tsv", "images.mtx"])
def test_images_wider_than_network(tmp_path, name):
    if name.endswith(".tsv"):
        path, line = write(tmp_path, name, "1\t3\t1\n2\t1100\t1\n"), 2
    else:
        header = "%%MatrixMarket matrix coordinate pattern general\n% a comment\n2 1100 2\n"
        path, line = write(tmp_path, name, header + "1 3\n2 1100\n"), 5
    with pytest.raises(ValueError, match=rf"{name}:{line}: images file is wider than the network: column 1100 > 1024 input neurons"):
        read_images(path, num_features=1024)
    assert read_images(path).shape == (2, 1100)


def test_images_mtx_errors(tmp_path):
    header = "%%MatrixMarket matrix coordinate pattern general\n3 3 3\n"
    path = write(tmp_path, "dup.mtx", header + "1 1\n2 2\n1 1\n")
    with pytest.raises(ValueError, match=r"dup\.mtx:5: duplicate entry \(1, 1\)"):
        read_images(path)
    path = write(tmp_path, "bad.mtx", header + "1 1\n2 x\n3 3\n")
    with pytest.raises(ValueError, match=r"bad\.mtx:4: "):
        read_images(path)
    path = write(tmp_path, "nan.mtx", "%%MatrixMarket matrix coordinate real general\n2 2 2\n1 1 1\n2 2 nan\n")
    with pytest.raises(ValueError, match=r"nan\.mtx:4: value nan of entry \(2, 2\)"):
        read_images(path)


def test_images_tsv_duplicate_and_zero_based(tmp_path):
    path = write(tmp_path, "images.tsv", "1\t1\t1\n2\t5\t1\n2\t5\t1\n")
    with pytest.raises(ValueError, match=r"images\.tsv:3: duplicate edge \(2, 5\), first on line 2"):
        read_images(path)
    path = write(tmp_path, "images.tsv", "0\t1\t1\n")
    with pytest.raises(ValueError, match=r"images\.tsv:1: row index 0 < 1: indices are 1-based"):
        read_images(path)


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("3\n\n5 x\n", 3, r"expected one 1-based image index \(an integer >= 1\) per line, found '5 x'"),
        ("3\n0\n", 2, "image index 0: indices are 1-based"),
        ("3\n1.5\n", 2, "expected one 1-based image index .* found '1.5'"),
        ("3\n4\n3\n", 3, "image 3 is already listed on line 1"),
    ],
)
def test_bad_categories_line(tmp_path, text, line, message):
    path = write(tmp_path, "categories.tsv", text)
    with pytest.raises(ValueError, match=rf"categories\.tsv:{line}: {message}"):
        read_categories(path)


# -- atomic writes ----------------------------------------------------------------------------
def test_atomic_write_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = write(tmp_path, "c.tsv", "old\n")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(path) as f:
            f.write("partial")
            raise RuntimeError("boom")
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["c.tsv"]


def test_atomic_write_failed_replace_keeps_old_file(tmp_path, monkeypatch):
    path = write(tmp_path, "c.tsv", "old\n")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_categories(path, [1, 2])
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["c.tsv"]


def test_atomic_write_mode_and_permissions(tmp_path):
    with pytest.raises(ValueError, match="mode 'a'"):
        with atomic_write(tmp_path / "x", "a"):
            pass
    (tmp_path / "plain").write_text("x")
    with atomic_write(tmp_path / "atomic") as f:
        f.write("x")
    assert (tmp_path / "atomic").stat().st_mode == (tmp_path / "plain").stat().st_mode
