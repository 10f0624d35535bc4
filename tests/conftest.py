"""Test setup: 8 simulated CPU devices, set once before JAX initialises its backend."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAXSDNN_COMPILE_CACHE", "off")  # CLI runs in tests leave no cache behind (one test sets one)

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
assert len(jax.devices()) == 8  # start the backend now, so nothing later can change the count

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from jaxsdnn.network import SparseNetwork  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GC_DIR = os.path.join(REPO, "data", "graphchallenge")


@pytest.fixture(autouse=True)
def _partition_cache(tmp_path_factory, monkeypatch):
    """Every test gets an empty partition cache of its own (CLI runs reuse partitions by job)."""
    monkeypatch.setenv("JAXSDNN_PARTITION_CACHE", str(tmp_path_factory.mktemp("partition_cache")))


def random_network(sizes, density=0.3, seed=0, cap=None, bias_scale=0.1) -> SparseNetwork:
    """A network of uneven layer sizes with random values; every neuron has >= 1 input."""
    rng = np.random.default_rng(seed)
    mats = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        mask = rng.random((n_in, n_out)) < density
        mask[rng.integers(0, n_in, n_out), np.arange(n_out)] = True
        vals = rng.standard_normal((n_in, n_out)) / np.sqrt(max(1.0, density * n_in))
        mats.append(sp.csr_array(np.where(mask, vals, 0.0) * mask))
        # keep explicit structure even where a value happens to be 0
        coo = sp.coo_array(mask)
        mats[-1] = sp.csr_array((vals[coo.row, coo.col], (coo.row, coo.col)), shape=(n_in, n_out))
    biases = [bias_scale * rng.standard_normal(n) for n in sizes[1:]]
    return SparseNetwork.from_scipy(mats, biases, cap)


def random_parts(network: SparseNetwork, num_parts: int, seed: int = 0) -> list[np.ndarray]:
    """A random partition where every device owns at least one neuron of every layer."""
    rng = np.random.default_rng(seed)
    parts = []
    for n in network.sizes:
        p = rng.integers(0, num_parts, n)
        p[rng.permutation(n)[:num_parts]] = np.arange(num_parts)
        parts.append(p)
    return parts


@pytest.fixture(scope="session")
def gc_dir():
    return GC_DIR
