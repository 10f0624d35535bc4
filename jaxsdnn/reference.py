"""The oracle: a plain scipy/NumPy (float64) forward pass, loss and gradient.

Everything sharded or jitted in jaxsdnn is tested against these functions. They favour clarity
over speed and never touch a device.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from jaxsdnn.network import SparseNetwork

__all__ = ["categories", "forward", "loss_and_grads"]


def _dense(x) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def _act(z: np.ndarray, cap: float | None) -> np.ndarray:
    return np.maximum(z, 0) if cap is None else np.clip(z, 0, cap)


def forward(network: SparseNetwork, x, linear_last: bool = False, dtype=np.float64) -> np.ndarray:
    """``Y_L`` for inputs ``x`` ``[batch, n_0]`` (dense or sparse): ``[batch, n_L]``.

    ``Y_k = act(Y_{k-1} @ W_k + b_k)``; with ``linear_last`` the last layer is not activated.
    """
    y = _dense(x).astype(dtype)
    for k, (w, b) in enumerate(zip(network.weights, network.biases)):
        z = np.asarray(w.T.astype(dtype) @ y.T).T + b.astype(dtype)
        y = z if (linear_last and k == network.num_layers - 1) else _act(z, network.cap)
    return y


def categories(y: np.ndarray) -> np.ndarray:
    """Graph Challenge categories: 1-based rows of ``y`` with any nonzero entry."""
    return np.flatnonzero(np.any(np.asarray(y) != 0, axis=1)) + 1


def loss_and_grads(network: SparseNetwork, x, labels) -> tuple[float, list[np.ndarray], list[np.ndarray]]:
    """Mean softmax cross-entropy of the last layer's pre-activations and its gradients.

    Returns:
        ``(loss, dW, db)``: ``dW[k]`` ``[nnz_k]`` in the network's CSR order, ``db[k]`` ``[n_k]``,
        all float64.
    """
    y = _dense(x).astype(np.float64)
    labels = np.asarray(labels)
    ys, zs = [y], []
    L = network.num_layers
    for k, (w, b) in enumerate(zip(network.weights, network.biases)):
        z = np.asarray(w.T.astype(np.float64) @ ys[-1].T).T + b
        zs.append(z)
        ys.append(z if k == L - 1 else _act(z, network.cap))
    logits = zs[-1]
    shift = logits - logits.max(axis=1, keepdims=True)
    logp = shift - np.log(np.exp(shift).sum(axis=1, keepdims=True))
    batch = logits.shape[0]
    loss = -float(np.mean(logp[np.arange(batch), labels]))
    dz = np.exp(logp)
    dz[np.arange(batch), labels] -= 1.0
    dz /= batch
    dws, dbs = [None] * L, [None] * L
    for k in range(L - 1, -1, -1):
        w = network.weights[k].tocoo()
        # dW[i, j] = sum_b Y_{k-1}[b, i] * dZ[b, j] at stored edges only
        dws[k] = np.einsum("bi,bi->i", ys[k][:, w.row], dz[:, w.col])
        dbs[k] = dz.sum(axis=0)
        if k > 0:
            dy = np.asarray(network.weights[k].astype(np.float64) @ dz.T).T
            z = zs[k - 1]
            cap = network.cap
            mask = (z > 0) if cap is None else ((z > 0) & (z < cap))
            dz = dy * mask
    # back to CSR order (tocoo of a canonical CSR keeps CSR order)
    return loss, dws, dbs
