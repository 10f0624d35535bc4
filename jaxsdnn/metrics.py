"""What a partition costs: communication volume, per-device traffic, pairs, load imbalance.

All counts are per input sample and per forward pass (the backward pass sends the same amounts
the other way). Before layer ``k`` is computed, device ``p`` sends the activation of each of its
layer-``k-1`` neurons once to every other device that owns a reader of it in layer ``k``.
"""

from __future__ import annotations

import numpy as np

from jaxsdnn.hypergraph import layer_pairs
from jaxsdnn.network import SparseNetwork
from jaxsdnn.partition import Partition, layer_weights

__all__ = ["communication_matrix", "layer_imbalance", "partition_metrics"]


def communication_matrix(network: SparseNetwork, partition: Partition, k: int) -> np.ndarray:
    """Entries of layer ``k - 1`` that each device sends to each other device before layer ``k``.

    Args:
        network: the network the partition was made for.
        partition: the partition (validated against ``network``).
        k: the layer, ``1 <= k <= L``.

    Returns:
        ``[P, P]`` int64, entry ``(p, q)`` the number of layer-``k-1`` neurons owned by ``p`` with
        a reader in layer ``k`` owned by ``q != p``; the diagonal is 0.
    """
    partition.validate_for(network)
    if not 1 <= k <= network.num_layers:
        raise ValueError(f"layer k={k} must be in [1, {network.num_layers}]")
    return _communication_matrix(network, partition, k)


def _communication_matrix(network: SparseNetwork, partition: Partition, k: int) -> np.ndarray:
    P = partition.num_parts
    neuron, device = layer_pairs(network, partition.parts, k, P)
    owner = np.asarray(partition.parts[k - 1], np.int64)[neuron]
    remote = owner != device
    return np.bincount(owner[remote] * P + device[remote], minlength=P * P).reshape(P, P).astype(np.int64)


def layer_imbalance(weights: np.ndarray, parts: np.ndarray, num_parts: int) -> float:
    """Largest device load over the mean load, minus 1 (0 for a layer without load)."""
    total = float(np.sum(weights))
    if total == 0:
        return 0.0
    loads = np.bincount(parts, weights=weights, minlength=num_parts)
    return float(loads.max() / (total / num_parts) - 1.0)


def partition_metrics(network: SparseNetwork, partition: Partition) -> dict:
    """Volume, traffic and balance of a partition, layer by layer.

    Args:
        network: the network the partition was made for.
        partition: the partition (validated against ``network``).

    Returns:
        A JSON-ready dict; per-layer lists have ``L`` entries, entry ``k - 1`` for layer ``k``:

        * ``volume``: total entries sent (int); ``per_layer_volume``: the part before each layer;
        * ``max_send`` / ``max_recv``: the most entries any one device sends / receives;
        * ``pairs``: the number of ordered (sender, receiver) device pairs that communicate;
        * ``imbalance``: largest load over mean load minus 1 (load = fan-in);
          ``max_imbalance``: its maximum over layers (float);
        * ``input_imbalance``: the same for layer 0 (the input features, load 1 each).
    """
    partition.validate_for(network)
    P = partition.num_parts
    weights = layer_weights(network)
    per_layer, max_send, max_recv, pairs, imbalance = [], [], [], [], []
    for k in range(1, network.num_layers + 1):
        m = _communication_matrix(network, partition, k)
        per_layer.append(int(m.sum()))
        max_send.append(int(m.sum(axis=1).max()))
        max_recv.append(int(m.sum(axis=0).max()))
        pairs.append(int(np.count_nonzero(m)))
        imbalance.append(layer_imbalance(weights[k], partition.parts[k], P))
    return {
        "volume": int(sum(per_layer)),
        "per_layer_volume": per_layer,
        "max_send": max_send,
        "max_recv": max_recv,
        "pairs": pairs,
        "imbalance": imbalance,
        "max_imbalance": float(max(imbalance)),
        "input_imbalance": layer_imbalance(weights[0], partition.parts[0], P),
    }
