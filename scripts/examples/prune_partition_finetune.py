"""Prune a dense JAX model, partition it with KaHyPar, fine-tune it sharded.

1. a dense MLP (64 -> 256 -> 256 -> 10) trained on digits in plain JAX;
2. ``jaxsdnn.magnitude_prune`` keeps ``--density`` of every layer's weights, and
   ``jaxsdnn.from_masks(..., keep_values=True, biases=...)`` makes a sparse network of the
   surviving weights and the trained biases;
3. ``jaxsdnn.partition_network(..., method="kahypar")`` splits every layer over ``--devices``
   (each layer balanced), compared with a random partition by the activation entries that cross
   devices;
4. fine-tuning through ``jaxsdnn.apply``, sharded.

    python scripts/examples/prune_partition_finetune.py [--devices 4] [--density 0.1]
"""

import argparse

import jax

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--devices", type=int, default=4)
ap.add_argument("--density", type=float, default=0.1)
ap.add_argument("--dense-steps", type=int, default=300)
ap.add_argument("--finetune-steps", type=int, default=200)
args = ap.parse_args()
jax.config.update("jax_num_cpu_devices", args.devices)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jaxsdnn  # noqa: E402
from jaxsdnn import losses  # noqa: E402

train_ds, test_ds = jaxsdnn.load_dataset("digits", test_fraction=0.2, seed=0)
sizes = [train_ds.features, 256, 256, train_ds.num_classes]
rng = np.random.default_rng(0)


def batches(steps, batch=128):
    for _ in range(steps):
        idx = rng.integers(0, len(train_ds), batch)
        yield train_ds.images[idx].astype(np.float32), train_ds.labels[idx]


# 1. dense
def dense_apply(params, x):
    for k, (w, b) in enumerate(params):
        x = x @ w + b
        x = x if k == len(params) - 1 else jax.nn.relu(x)
    return x


keys = jax.random.split(jax.random.PRNGKey(0), len(sizes) - 1)
dense = [(jax.random.normal(k, (a, b)) * np.sqrt(2 / a), jnp.zeros(b)) for k, a, b in zip(keys, sizes[:-1], sizes[1:])]
opt = optax.adam(1e-3)
state = opt.init(dense)


@jax.jit
def dense_step(params, state, x, y):
    loss, g = jax.value_and_grad(lambda p: losses.softmax_cross_entropy(dense_apply(p, x), y))(params)
    updates, state = opt.update(g, state, params)
    return optax.apply_updates(params, updates), state, loss


for x, y in batches(args.dense_steps):
    dense, state, _ = dense_step(dense, state, x, y)
x_test = test_ds.images.astype(np.float32)
print(f"dense: test accuracy {np.mean(np.argmax(dense_apply(dense, x_test), 1) == test_ds.labels):.3f}")

# 2. prune, keeping the trained values and biases
masks = jaxsdnn.magnitude_prune([np.asarray(w) for w, _ in dense], args.density)
net = jaxsdnn.from_masks(masks, keep_values=True, biases=[np.asarray(b) for _, b in dense])

# 3. partition
hyper = jaxsdnn.partition_network(net, args.devices, method="kahypar", seed=0)
rand = jaxsdnn.partition_network(net, args.devices, method="random", seed=0)
print(f"pruned to {net.total_nnz:,} edges; entries crossing devices per sample: kahypar "
      f"{jaxsdnn.connectivity_volume(net, hyper)[0]:,}, random {jaxsdnn.connectivity_volume(net, rand)[0]:,}")
model, params = jaxsdnn.shard_model(net, hyper, jaxsdnn.make_mesh(args.devices, 1))
predict = jax.jit(lambda m, p, x: jnp.argmax(jaxsdnn.apply(m, p, x), axis=1))
print(f"pruned, before fine-tuning: test accuracy {np.mean(np.asarray(predict(model, params, x_test)) == test_ds.labels):.3f}")

# 4. fine-tune sharded
opt = optax.adam(1e-3)
state = opt.init(params)


@jax.jit
def step(model, params, state, x, y):
    loss, g = jax.value_and_grad(lambda p: losses.softmax_cross_entropy(jaxsdnn.apply(model, p, x), y))(params)
    updates, state = opt.update(g, state, params)
    return optax.apply_updates(params, updates), state, loss


for x, y in batches(args.finetune_steps):
    params, state, loss = step(model, params, state, *jaxsdnn.shard_batch(model, x, y))
print(f"fine-tuned on {args.devices} devices: test accuracy "
      f"{np.mean(np.asarray(predict(model, params, x_test)) == test_ds.labels):.3f}")
tuned = jaxsdnn.to_network(model, params)  # back to a host SparseNetwork (e.g. jaxsdnn.write_network)
assert tuned.fingerprint() == net.fingerprint()
