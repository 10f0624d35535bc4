"""Challenge-like generated inputs: resized real digits, of which a small fraction survives."""

import json
import os

import numpy as np
import pytest
from conftest import GC_DIR

from jaxsdnn import engine, io, radixnet
from jaxsdnn.cli import main

IMAGES = os.path.join(GC_DIR, "sparse-images-1024_subset.mtx")


def test_the_first_1200_at_1024_are_the_real_images():
    real = io.read_images(IMAGES, num_features=1024)
    made = radixnet.challenge_images(1024, 1300, seed=5)
    assert made.shape == (1300, 1024) and abs(made[:1200] - real).sum() == 0
    assert abs(made[1200:] - real[:100]).sum() > 0  # the copies are translated
    np.testing.assert_array_equal(np.unique(made.data), [1.0])


@pytest.mark.parametrize("neurons,side", [(4096, 64), (2048, 45)])
def test_resized_to_the_square_and_padded(neurons, side):
    made = radixnet.challenge_images(neurons, 50, seed=0)
    real = io.read_images(IMAGES, num_features=1024)[:50]
    assert made.shape == (50, neurons)
    assert made[:, side * side :].nnz == 0  # features past the square are empty
    ratio = made.nnz / real.nnz
    assert 0.7 * (side / 32) ** 2 < ratio < 1.3 * (side / 32) ** 2  # area scales with the side


def test_generate_reports_the_survivors_like_the_challenge(tmp_path, capsys):
    code = main(["generate", "--neurons", "1024", "--layers", "24", "--seed", "1", "--out", str(tmp_path / "g"),
                 "--images", "2400", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert 0.005 < res["survivor_fraction"] < 0.05  # the real subset: 1.6 %
    net = io.read_network(tmp_path / "g")
    again = engine.run_inference(net, io.read_images(res["images_file"], num_features=1024))
    np.testing.assert_array_equal(io.read_categories(res["categories_file"]), again.categories)
    assert res["survivors"] == again.categories.size


def test_generate_refuses_bad_counts_before_writing(tmp_path, capsys):
    for bad in (["--images", "-5"], ["--images", "10", "--image-kind", "random", "--density", "2"],
                ["--neurons", "64", "--images", "10"]):
        args = ["generate", "--neurons", "32", "--layers", "2", "--out", str(tmp_path / "x")] + bad
        assert main(args) == 2
        assert not (tmp_path / "x").exists()
    assert "--density 2" in capsys.readouterr().err
