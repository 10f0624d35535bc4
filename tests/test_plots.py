"""Plots: each function writes a non-empty, decodable PNG from tiny inputs; bad inputs are refused."""

import subprocess
import sys

import numpy as np
import pytest

from jaxsdnn import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_layer_volume_png(tmp_path):
    out = plots.plot_layer_volume(
        {"random": [40, 38, 41], "kahypar": [5, 0, 7]}, tmp_path / "sub" / "volume.png", title="tiny"
    )
    assert out == tmp_path / "sub" / "volume.png"
    width, height = _png_size(out)
    assert width > 100 and height > 100
    assert out.stat().st_size > 1000


def test_layer_volume_linear_and_positive(tmp_path):
    for log in (True, False):
        out = plots.plot_layer_volume({"block": np.array([3, 2])}, tmp_path / f"v{log}.png", log=log)
        assert out.stat().st_size > 1000


def test_training_curve_png(tmp_path):
    out = plots.plot_training_curve([10, 20, 30], [2.3, 1.1, 0.4], [1, 2], [0.6, 0.9], tmp_path / "train.png")
    width, height = _png_size(out)
    assert width > 100 and height > 100
    # no evaluation yet: still a figure
    out = plots.plot_training_curve([1], [2.3], [], [], tmp_path / "early.png")
    assert out.stat().st_size > 1000


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda p: plots.plot_layer_volume({}, p), "no series"),
        (lambda p: plots.plot_layer_volume({"a": [1, 2], "b": [1]}, p), "same number"),
        (lambda p: plots.plot_layer_volume({"a": [[1, 2]]}, p), "1-D"),
        (lambda p: plots.plot_training_curve([1, 2], [1.0], [], [], p), "same length"),
        (lambda p: plots.plot_training_curve([1], [1.0], [1], [], p), "same length"),
        (lambda p: plots.plot_layer_volume({"a": [1]}, p.with_suffix(".jpg")), ".png"),
    ],
)
def test_bad_inputs(tmp_path, call, match):
    path = tmp_path / "bad.png"
    with pytest.raises(ValueError, match=match):
        call(path)
    assert not path.exists()


def test_import_stays_light():
    code = "import sys, jaxsdnn.plots; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
