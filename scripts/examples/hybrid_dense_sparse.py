"""A dense + sparse hybrid: a dense encoder, the partitioned sparse network, a dense head.

The dense layers are ordinary JAX arrays (replicated on the mesh); the sparse middle is
``jaxsdnn.apply``. One ``jax.value_and_grad`` differentiates all of it: the sparse part's VJP
returns the gradient with respect to its input too, which the encoder needs.

    python scripts/examples/hybrid_dense_sparse.py [--devices 2] [--data 2] [--steps 150]
"""

import argparse

import jax

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--devices", type=int, default=2)
ap.add_argument("--data", type=int, default=2)
ap.add_argument("--steps", type=int, default=150)
ap.add_argument("--batch", type=int, default=128)
args = ap.parse_args()
jax.config.update("jax_num_cpu_devices", args.devices * args.data)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jaxsdnn  # noqa: E402
from jaxsdnn import losses  # noqa: E402

train_ds, test_ds = jaxsdnn.load_dataset("digits", test_fraction=0.2, seed=0)
HIDDEN = 96  # the encoder's output = the sparse network's input width
net = jaxsdnn.random_fanin(HIDDEN, 32, width=128, hidden_layers=2, fan_in=12, input_fan_in=12, seed=0)
parts = jaxsdnn.partition_network(net, args.devices, method="mtkahypar", seed=0)
model, sparse = jaxsdnn.shard_model(net, parts, jaxsdnn.make_mesh(args.devices, args.data))

key_enc, key_head = jax.random.split(jax.random.PRNGKey(0))
dense = {
    "encoder": jax.random.normal(key_enc, (train_ds.features, HIDDEN)) / np.sqrt(train_ds.features),
    "head": jax.random.normal(key_head, (32, train_ds.num_classes)) / np.sqrt(32),
}
params = {"sparse": sparse, "dense": dense}


def predict(params, model, x):
    h = jax.nn.relu(x @ params["dense"]["encoder"])
    return jax.nn.relu(jaxsdnn.apply(model, params["sparse"], h)) @ params["dense"]["head"]


opt = optax.adam(3e-3)
opt_state = opt.init(params)


@jax.jit
def step(model, params, opt_state, x, labels):
    loss, grads = jax.value_and_grad(lambda p: losses.softmax_cross_entropy(predict(p, model, x), labels))(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


rng = np.random.default_rng(0)
for i in range(args.steps):
    idx = rng.integers(0, len(train_ds), args.batch)
    x, y = jaxsdnn.shard_batch(model, train_ds.images[idx].astype(np.float32), train_ds.labels[idx])
    params, opt_state, loss = step(model, params, opt_state, x, y)
    if (i + 1) % 50 == 0 or i + 1 == args.steps:
        print(f"step {i + 1}: loss {float(loss):.4f}")
x, _, w = losses.pad_batch(test_ds.images.astype(np.float32), None, args.data)
pred = np.asarray(jnp.argmax(jax.jit(predict)(params, model, jaxsdnn.shard_batch(model, x)), axis=1))[w > 0]
print(f"test accuracy {np.mean(pred == test_ds.labels):.3f}")
