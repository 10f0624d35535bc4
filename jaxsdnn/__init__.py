"""jaxsdnn: sparse deep neural networks, hypergraph-partitioned across devices with JAX.

The pipeline, one module per stage::

    network -> io -> hypergraph -> partition -> plan -> sharded / kernels -> train

with ``bounds`` beside ``partition``: how low any layer-balanced partition's volume can go.

The user's door is :func:`apply` (``jaxsdnn.forward``): ``loss(apply(model, params, x))`` under
``jax.value_and_grad``, with the hand-written sharded backward as its VJP; :mod:`jaxsdnn.losses`
holds ready losses. The generator and the training loop live in their modules (``jaxsdnn.radixnet.radixnet``,
``jaxsdnn.train.train``): re-exporting a function under its module's name would shadow the module.
Importing the package sets up no devices: the CLI and scripts do that (simulated CPU devices via
``jax_num_cpu_devices``, many hosts via ``jax.distributed``). It does tell glibc to keep freed host
memory for reuse (see ``jaxsdnn._hostmem``; ``JAXSDNN_KEEP_HOST_MEMORY=0`` turns that off).
"""

from jaxsdnn._hostmem import keep_freed_host_memory
from jaxsdnn.bounds import device_chain_bound
from jaxsdnn.checkpoint import load_checkpoint, save_checkpoint
from jaxsdnn.config import load_config
from jaxsdnn import losses
from jaxsdnn.data import Dataset, load_dataset
from jaxsdnn.engine import InferenceResult, run_inference
from jaxsdnn.forward import Model, SparseParams, apply, num_params, param_mask, shard_batch, shard_model, to_network
from jaxsdnn.hypergraph import build_hypergraph, connectivity_volume
from jaxsdnn.io import read_categories, read_images, read_network, write_categories, write_images, write_network
from jaxsdnn.metrics import communication_matrix, partition_metrics
from jaxsdnn.models import from_masks, magnitude_prune, radixnet_mlp, random_fanin
from jaxsdnn.network import SparseNetwork
from jaxsdnn.partition import Partition, load_partition, partition_network, save_partition
from jaxsdnn.plan import Plan, build_plan
from jaxsdnn.pytree_checkpoint import checkpoint_metadata, latest_step, model_partition, restore_tree, save_tree
from jaxsdnn.radixnet import challenge_images, random_images
from jaxsdnn.sharded import (
    DATA_AXIS,
    MODEL_AXIS,
    ShardedNetwork,
    make_mesh,
    shard_network,
    sharded_forward,
    sharded_loss_and_grads,
    sharded_predict,
)

keep_freed_host_memory()  # before any device is used: see jaxsdnn._hostmem

__version__ = "0.1.0"

__all__ = [
    "DATA_AXIS",
    "Dataset",
    "InferenceResult",
    "MODEL_AXIS",
    "Model",
    "Partition",
    "Plan",
    "ShardedNetwork",
    "SparseNetwork",
    "SparseParams",
    "apply",
    "build_hypergraph",
    "build_plan",
    "challenge_images",
    "checkpoint_metadata",
    "communication_matrix",
    "connectivity_volume",
    "device_chain_bound",
    "from_masks",
    "latest_step",
    "load_checkpoint",
    "load_config",
    "load_dataset",
    "load_partition",
    "losses",
    "magnitude_prune",
    "make_mesh",
    "model_partition",
    "num_params",
    "param_mask",
    "partition_metrics",
    "partition_network",
    "radixnet_mlp",
    "random_fanin",
    "random_images",
    "read_categories",
    "read_images",
    "read_network",
    "restore_tree",
    "run_inference",
    "save_checkpoint",
    "save_partition",
    "save_tree",
    "shard_batch",
    "shard_model",
    "shard_network",
    "sharded_forward",
    "sharded_loss_and_grads",
    "sharded_predict",
    "to_network",
    "write_categories",
    "write_images",
    "write_network",
]
