"""The examples in scripts/examples/ run (tiny sizes) and reach what they print; they use public names only."""

import ast
import os
import subprocess
import sys

import pytest

import jaxsdnn

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "examples")
RUNS = {
    "custom_loss_loop.py": (["--devices", "2", "--data", "2", "--epochs", "2"], "epoch 2:"),
    "hybrid_dense_sparse.py": (["--devices", "2", "--data", "2", "--steps", "60"], "test accuracy"),
    "prune_partition_finetune.py": (["--devices", "3", "--dense-steps", "100", "--finetune-steps", "60"],
                                    "fine-tuned on 3 devices"),
    "equinox_sparse_block.py": (["--devices", "2", "--steps", "40"], "test accuracy"),
}


def test_every_example_is_run_here():
    assert sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".py")) == sorted(RUNS)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_example_uses_only_public_names(name):
    """No private jaxsdnn module or name: the examples are the API's test."""
    tree = ast.parse(open(os.path.join(EXAMPLES, name), encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxsdnn"):
            assert node.module in ("jaxsdnn",), f"{name} imports from {node.module}"
            assert all(a.name in jaxsdnn.__all__ for a in node.names), name
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "jaxsdnn":
            assert node.attr in jaxsdnn.__all__, f"{name} uses jaxsdnn.{node.attr}"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RUNS))
def test_example_runs(name):
    if name.startswith("equinox"):
        pytest.importorskip("equinox")
    args, expect = RUNS[name]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, os.path.join(EXAMPLES, name), *args], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert expect in out.stdout, out.stdout
