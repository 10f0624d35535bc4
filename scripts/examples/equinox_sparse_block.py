"""An equinox model that holds a jaxsdnn sparse block (``pip install -e .[examples]``).

``SparseBlock`` is an ``eqx.Module`` whose fields are the sharded :class:`jaxsdnn.Model` (integer
tables: ``eqx.is_inexact_array`` leaves them out of training) and its
:class:`jaxsdnn.SparseParams`; calling it is ``jaxsdnn.apply``. It composes with ``eqx.nn``
layers, ``eqx.filter_value_and_grad`` and optax like any module.

    python scripts/examples/equinox_sparse_block.py [--devices 4] [--steps 150]
"""

import argparse

import jax

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--devices", type=int, default=4)
ap.add_argument("--steps", type=int, default=150)
ap.add_argument("--batch", type=int, default=128)
args = ap.parse_args()
jax.config.update("jax_num_cpu_devices", args.devices)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jaxsdnn  # noqa: E402
from jaxsdnn import losses  # noqa: E402


class SparseBlock(eqx.Module):
    """``[batch, n_0] -> [batch, n_L]`` through a partitioned sparse network."""

    model: jaxsdnn.Model
    params: jaxsdnn.SparseParams

    def __call__(self, x):
        return jaxsdnn.apply(self.model, self.params, x)


class Classifier(eqx.Module):
    encoder: eqx.nn.Linear
    block: SparseBlock

    def __call__(self, x):  # a batch: the sparse block is batch-major already
        return self.block(jax.nn.relu(jax.vmap(self.encoder)(x)))


train_ds, test_ds = jaxsdnn.load_dataset("digits", test_fraction=0.2, seed=0)
net = jaxsdnn.radixnet_mlp(128, train_ds.num_classes, width=128, hidden_layers=3, copies=8, input_fan_in=16, seed=0)
parts = jaxsdnn.partition_network(net, args.devices, method="kahypar", seed=0)
sparse_model, sparse_params = jaxsdnn.shard_model(net, parts, jaxsdnn.make_mesh(args.devices, 1))
clf = Classifier(eqx.nn.Linear(train_ds.features, 128, key=jax.random.PRNGKey(0)),
                 SparseBlock(sparse_model, sparse_params))

opt = optax.adam(3e-3)
opt_state = opt.init(eqx.filter(clf, eqx.is_inexact_array))


@eqx.filter_jit
def step(clf, opt_state, x, y):
    loss, grads = eqx.filter_value_and_grad(lambda m: losses.softmax_cross_entropy(m(x), y))(clf)
    updates, opt_state = opt.update(grads, opt_state, eqx.filter(clf, eqx.is_inexact_array))
    return eqx.apply_updates(clf, updates), opt_state, loss


rng = np.random.default_rng(0)
for i in range(args.steps):
    idx = rng.integers(0, len(train_ds), args.batch)
    x, y = jaxsdnn.shard_batch(sparse_model, train_ds.images[idx].astype(np.float32), train_ds.labels[idx])
    clf, opt_state, loss = step(clf, opt_state, x, y)
    if (i + 1) % 50 == 0 or i + 1 == args.steps:
        print(f"step {i + 1}: loss {float(loss):.4f}")
pred = np.asarray(jnp.argmax(eqx.filter_jit(lambda m, x: m(x))(clf, test_ds.images.astype(np.float32)), axis=1))
print(f"test accuracy {np.mean(pred == test_ds.labels):.3f}")
