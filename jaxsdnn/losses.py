"""Losses over :func:`jaxsdnn.apply`'s batch-major outputs, with sample weights for ragged batches.

Each loss is a few lines of ordinary JAX: the fast backward belongs to ``apply``, so a loss of
your own is as fast as these. ``weights`` (``[batch]``, 0 for padding samples) make a padded
last batch give the mean over its real samples only: ``sum(w * loss) / sum(w)``.

:func:`pad_batch` pads a batch to a multiple of the data axis and returns those weights.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["mean_squared_error", "pad_batch", "softmax_cross_entropy", "weighted_mean"]


def weighted_mean(per_sample, weights=None):
    """``mean(per_sample)``, or ``sum(weights * per_sample) / sum(weights)`` (0 when all weights are 0)."""
    if weights is None:
        return jnp.mean(per_sample)
    weights = jnp.asarray(weights, per_sample.dtype)
    return jnp.sum(weights * per_sample) / jnp.maximum(jnp.sum(weights), jnp.finfo(per_sample.dtype).tiny)


def softmax_cross_entropy(logits, labels, weights=None):
    """Mean softmax cross-entropy of ``[batch, classes]`` logits against int ``[batch]`` labels."""
    return weighted_mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels), weights)


def mean_squared_error(outputs, targets, weights=None):
    """Mean over samples of the squared error summed over outputs (``[batch, n]`` both)."""
    return weighted_mean(jnp.sum(jnp.square(outputs - targets), axis=-1), weights)


def pad_batch(x, labels=None, multiple: int = 1):
    """Pads a ``[batch, ...]`` batch (and its labels) with zero samples to a multiple of ``multiple``.

    Returns:
        ``(x, labels, weights)``: padded host arrays (``labels`` None if not given) and float32
        ``[padded batch]`` weights, 1 for real samples and 0 for padding.
    """
    x = np.asarray(x)
    n = x.shape[0]
    if multiple < 1:
        raise ValueError(f"pad_batch: multiple must be >= 1, got {multiple}")
    extra = -n % multiple
    weights = np.concatenate([np.ones(n, np.float32), np.zeros(extra, np.float32)])
    x = np.concatenate([x, np.zeros((extra,) + x.shape[1:], x.dtype)]) if extra else x
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape[0] != n:
            raise ValueError(f"pad_batch: {labels.shape[0]} labels for {n} samples")
        labels = np.concatenate([labels, np.zeros((extra,) + labels.shape[1:], labels.dtype)]) if extra else labels
    return x, labels, weights
