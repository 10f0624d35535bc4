"""The survivors' tail on each process's own device (``run_inference(tail="local")``)."""

import numpy as np
import pytest
from test_compaction import _close, _run

from jaxsdnn import reference


def _mostly_dying(n: int, count: int, alive: int, seed: int = 0) -> np.ndarray:
    """``alive`` dense images among ``count`` that die in the first layer (a few ones each)."""
    rng = np.random.default_rng(seed)
    x = (rng.random((count, n)) < 0.03).astype(np.float32)
    x[rng.choice(count, alive, replace=False)] = (rng.random((alive, n)) < 0.5).astype(np.float32)
    return x


CASES = [(2, 1, "kahypar"), (3, 1, "random"), (4, 2, "block"), (8, 1, "mtkahypar"), (2, 3, "random")]


@pytest.mark.parametrize("model,data,method", CASES)
@pytest.mark.parametrize("net_name", ["radix", "uneven"])
def test_local_tail_matches_the_oracle_and_the_sharded_tail(request, net_name, model, data, method):
    net = request.getfixturevalue(net_name)
    x = _mostly_dying(net.sizes[0], 300, 24, seed=model)
    ref = reference.forward(net, x)
    assert 0 < reference.categories(ref).size < 300
    batch = 96 * data
    local = _run(net, x, model, data, method, batch_size=batch, tail="local")
    mesh = _run(net, x, model, data, method, batch_size=batch, tail="sharded")
    _close(local, ref)
    _close(mesh, ref)
    assert local.stats["tail"] == "local" and mesh.stats["tail"] == "sharded"
    assert local.stats["tail_samples"] > 0 and mesh.stats["tail_samples"] == 0  # the tail did run locally
    assert local.survival == mesh.survival
    # the local tail sends nothing: fewer rounds and fewer entries than the sharded one
    assert local.stats["exchange_rounds_run"] < mesh.stats["exchange_rounds_run"]
    assert local.stats["exchanged_entries"] < mesh.stats["exchanged_entries"]


def test_a_data_only_mesh_finishes_on_its_own_arrays(uneven):
    x = _mostly_dying(uneven.sizes[0], 300, 24, seed=5)
    local = _run(uneven, x, 1, 2, "block", batch_size=192, tail="local")
    _close(local, reference.forward(uneven, x))
    assert local.stats["tail_samples"] > 0


def test_one_device_and_no_compaction_keep_the_mesh(radix):
    x = _mostly_dying(64, 200, 10)
    one = _run(radix, x, 1, 1, "block", batch_size=96, tail="local")
    assert one.stats["tail"] == "sharded" and one.stats["tail_samples"] == 0  # one device: nothing to leave
    off = _run(radix, x, 2, 1, "random", batch_size=96, tail="local", compact=False)
    assert off.stats["tail_samples"] == 0
    _close(off, reference.forward(radix, x))


def test_auto_keeps_the_mesh_in_one_process(radix):
    x = _mostly_dying(64, 200, 10)
    assert _run(radix, x, 2, 1, "random", batch_size=96).stats["tail"] == "sharded"


def test_an_unknown_tail_is_refused(radix):
    with pytest.raises(ValueError, match="tail='everywhere' is not one of"):
        _run(radix, np.ones((4, 64), np.float32), 2, 1, "random", tail="everywhere")
