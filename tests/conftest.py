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


@pytest.fixture(scope="module")
def radix():
    """Dead-sample tests (test_compaction, test_tail): 20 layers of one shape (one segment on one
    device); about 40 % of the images die in layers 1-3."""
    from jaxsdnn import radixnet

    return radixnet.radixnet(64, 20, seed=3, bias=-0.25)


@pytest.fixture(scope="module")
def uneven():
    """Dead-sample tests: uneven sizes and fan-ins (several segments), positive weights and negative
    biases, so samples die layer after layer (43 of 45 alive after layer 1, 18 after layer 9)."""
    net = random_network([40] + [48] * 5 + [36] * 3 + [20], density=0.15, seed=4, cap=32.0)
    weights = [sp.csr_array((0.6 * np.abs(w.data), w.indices, w.indptr), shape=w.shape) for w in net.weights]
    return SparseNetwork(tuple(weights), tuple(-0.15 - 0.1 * np.abs(b) for b in net.biases), net.cap)


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
