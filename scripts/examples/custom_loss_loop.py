"""Your own optax loop with your own loss: label smoothing + an L2 penalty, ragged last batch.

The sparse network (a RadiX-Net MLP on scikit-learn's digits) is hypergraph-partitioned over
``--devices`` simulated CPU devices (x ``--data`` for data parallelism). The loss is ordinary JAX
on ``jaxsdnn.apply``'s ``[batch, classes]`` output; its gradient runs the library's sharded
backward. The last batch of each epoch is smaller: ``losses.pad_batch`` pads it and its weights
make the loss the mean over the real samples only.

    python scripts/examples/custom_loss_loop.py [--devices 4] [--data 1] [--epochs 3]
"""

import argparse

import jax

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--devices", type=int, default=4)
ap.add_argument("--data", type=int, default=1)
ap.add_argument("--epochs", type=int, default=3)
ap.add_argument("--batch", type=int, default=100, help="a multiple of --data")
ap.add_argument("--width", type=int, default=128)
args = ap.parse_args()
jax.config.update("jax_num_cpu_devices", args.devices * args.data)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jaxsdnn  # noqa: E402
from jaxsdnn import losses  # noqa: E402

train_ds, test_ds = jaxsdnn.load_dataset("digits", test_fraction=0.2, seed=0)
net = jaxsdnn.radixnet_mlp(train_ds.features, train_ds.num_classes, width=args.width, hidden_layers=3, copies=8,
                           input_fan_in=6, seed=0)
parts = jaxsdnn.partition_network(net, args.devices, method="kahypar", seed=0)
model, params = jaxsdnn.shard_model(net, parts, jaxsdnn.make_mesh(args.devices, args.data))
print(f"{jaxsdnn.num_params(model):,} trainable values (padding excluded) on {args.devices} x {args.data} devices")


def loss_fn(params, model, x, labels, weights, smoothing=0.1, l2=1e-4):
    logits = jaxsdnn.apply(model, params, x)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[1]), smoothing)
    per_sample = optax.softmax_cross_entropy(logits, targets)
    penalty = sum(jnp.sum(jnp.square(w)) for w in jax.tree.leaves(params.w))  # padding holds 0
    return losses.weighted_mean(per_sample, weights) + l2 * penalty


opt = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 3e-3, 20, 500), weight_decay=1e-4)
opt_state = opt.init(params)


@jax.jit
def step(model, params, opt_state, x, labels, weights):
    loss, grads = jax.value_and_grad(loss_fn)(params, model, x, labels, weights)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


rng = np.random.default_rng(0)
for epoch in range(args.epochs):
    order = rng.permutation(len(train_ds))
    for start in range(0, len(order), args.batch):
        idx = order[start : start + args.batch]  # the last one is ragged
        # padded to the full batch: one shape, one compilation; the weights drop the padding
        x, y, w = losses.pad_batch(train_ds.images[idx].astype(np.float32), train_ds.labels[idx], args.batch)
        params, opt_state, loss = step(model, params, opt_state, *jaxsdnn.shard_batch(model, x, y, w))
    x, y, w = losses.pad_batch(test_ds.images.astype(np.float32), test_ds.labels, args.data)
    pred = np.asarray(jnp.argmax(jax.jit(jaxsdnn.apply)(model, params, jaxsdnn.shard_batch(model, x)), axis=1))
    acc = float(np.mean(pred[w > 0] == test_ds.labels))
    print(f"epoch {epoch + 1}: last loss {float(loss):.4f}, test accuracy {acc:.3f}")
