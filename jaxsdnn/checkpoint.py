"""Training checkpoints: one ``.npz`` file per saved step, written atomically (host side).

Layout: ``{directory}/step_{step:09d}.npz``. Each file is written to a temporary name next to it,
fsync'ed and renamed (:func:`jaxsdnn._atomic.atomic_write`), so a process killed mid-save leaves
the previous checkpoints intact and at most a hidden ``.step_*.tmp`` file, which
:func:`latest_checkpoint` ignores and the next save removes. The newest ``keep`` files are kept.

A checkpoint is independent of the device layout:

* weights and biases are stored in the network's CSR order (via
  :func:`jaxsdnn.plan.values_to_network`), with the structure (``indptr``, ``indices``), so
  ``load_checkpoint(path).network`` is a complete :class:`~jaxsdnn.network.SparseNetwork`;
* the optimizer state is stored the same way: every sub-tree shaped like the params
  (``{"w", "b"}``: Adam's moments, SGD's momentum) in CSR order, other leaves (step counts) as
  they are. :func:`restore_opt_state` lays it out again for any plan of the same network, so a
  change in the plan's bucketing or in the data-parallel axis does not invalidate a checkpoint.

The partition (``L+1`` owner arrays) and the network fingerprint are recorded as well, and
:func:`load_checkpoint` refuses a checkpoint of another network or another partition: resuming
keeps the partition it started with (its arrays are in the checkpoint, so resuming never
re-runs a partitioner).

Array keys in the file: ``meta`` (JSON text), ``rng``, ``indptr/k``, ``indices/k``, ``weights/k``,
``biases/k`` (``k = 1..L``), ``parts/k`` (``k = 0..L``), ``opt/i`` or ``opt/i/w/k`` and
``opt/i/b/k`` (leaf ``i`` of the flattened optimizer state).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
import scipy.sparse as sp

from jaxsdnn._atomic import atomic_write
from jaxsdnn.forward import SparseParams
from jaxsdnn.network import SparseNetwork
from jaxsdnn.plan import Plan, layout_values, values_to_network

__all__ = [
    "Checkpoint",
    "gather_to_host",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "restore_opt_state",
    "save_checkpoint",
]

FORMAT = "jaxsdnn-checkpoint"
VERSION = 1
_NAME = re.compile(r"^step_(\d+)\.npz$")
_TEMP = re.compile(r"^\.step_\d+\.npz\.[0-9a-f]+\.tmp$")


@dataclasses.dataclass(frozen=True, eq=False)
class Checkpoint:
    """What a checkpoint file holds, on the host.

    Attributes:
        path: the file.
        step: optimizer steps taken.
        epoch: current epoch (0-based).
        position: batches of ``epoch`` already trained on (the next batch is ``position``).
        data_seed: seed of the data order (epoch ``e`` uses ``epoch_order(n, data_seed, e)``).
        rng: ``[2]`` uint32 key data of the run's JAX PRNG key (step ``s`` uses ``fold_in(key, s)``).
        network: the trained network (structure and values, CSR order).
        parts: ``L+1`` int64 arrays: the owning device of every neuron of every layer.
        num_parts: P, devices on the model axis when it was written.
        opt_leaves: the flattened optimizer state: per leaf either a NumPy array or, for a
            params-shaped sub-tree, ``(weights, biases)``, two lists of per-layer arrays in CSR order.
        meta: the JSON metadata (format, version, fingerprint, sizes, ``extra``).
    """

    path: Path
    step: int
    epoch: int
    position: int
    data_seed: int
    rng: np.ndarray
    network: SparseNetwork
    parts: tuple[np.ndarray, ...]
    num_parts: int
    opt_leaves: list
    meta: dict

    @property
    def extra(self) -> dict:
        return self.meta.get("extra", {})


def _is_params_like(x) -> bool:
    """A sparse-params node: :class:`jaxsdnn.forward.SparseParams` (or the older ``{"w", "b"}`` dict
    of :func:`jaxsdnn.sharded.shard_network`)."""
    return isinstance(x, SparseParams) or (isinstance(x, dict) and set(x) == {"w", "b"})


def _checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"step_{int(step):09d}.npz"


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Complete checkpoint files in ``directory``, oldest step first (temporary files are skipped)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), directory / name) for name in os.listdir(directory) if (m := _NAME.match(name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The checkpoint with the highest step in ``directory``, or ``None``."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def gather_to_host(tree):
    """Device arrays -> NumPy. Multi-host: a collective (every process must call it), each gets all values."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        tree = multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(np.asarray, jax.device_get(tree))


def _csr_values(plan: Plan, network: SparseNetwork, tree) -> tuple[list[np.ndarray], list[np.ndarray]]:
    net = values_to_network(plan, network, tree)
    return [w.data for w in net.weights], list(net.biases)


def save_checkpoint(
    directory: str | os.PathLike,
    *,
    step: int,
    network: SparseNetwork,
    plan: Plan,
    params,
    opt_state,
    parts: Sequence[np.ndarray],
    epoch: int,
    position: int,
    data_seed: int,
    rng: np.ndarray,
    extra: dict | None = None,
    keep: int = 3,
) -> Path:
    """Writes ``{directory}/step_{step:09d}.npz`` atomically and keeps the newest ``keep`` files.

    Args:
        directory: created if missing.
        step: optimizer steps taken.
        network: the network the plan was built for (its structure; values come from ``params``).
        plan: the plan ``params`` and ``opt_state`` are laid out in.
        params: ``{"w", "b"}`` in the plan layout: host arrays, or device arrays this process can
            read whole (multi-host: pass :func:`gather_to_host` output).
        opt_state: the optax state (any pytree; params-shaped sub-trees are stored in CSR order).
        parts: ``L+1`` owner arrays of the partition (or a Partition).
        epoch: current epoch; position: batches of it done; data_seed: the data-order seed.
        rng: the run's PRNG key data (``[2]`` uint32).
        extra: JSON-ready values stored in ``meta["extra"]`` (e.g. the last loss).
        keep: newest checkpoints kept (older ones are deleted after the new one is in place).

    Returns:
        the path written.
    """
    if network.fingerprint() != plan.fingerprint:
        raise ValueError("save_checkpoint: the network's structure differs from the plan's")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    params, opt_state = jax.tree.map(np.asarray, jax.device_get((params, opt_state)))
    arrays: dict[str, np.ndarray] = {}
    weights, biases = _csr_values(plan, network, params)
    for k, (w, d, b) in enumerate(zip(network.weights, weights, biases), start=1):
        arrays[f"indptr/{k}"] = w.indptr.astype(np.int64)
        arrays[f"indices/{k}"] = w.indices.astype(np.int64)
        arrays[f"weights/{k}"] = d
        arrays[f"biases/{k}"] = b
    parts = [np.asarray(p, dtype=np.int64) for p in getattr(parts, "parts", parts)]
    for k, p in enumerate(parts):
        arrays[f"parts/{k}"] = p
    leaves, treedef = jax.tree.flatten(opt_state, is_leaf=_is_params_like)
    kinds = []
    for i, leaf in enumerate(leaves):
        if _is_params_like(leaf):
            ws, bs = _csr_values(plan, network, leaf)
            for k, (d, b) in enumerate(zip(ws, bs), start=1):
                arrays[f"opt/{i}/w/{k}"] = d
                arrays[f"opt/{i}/b/{k}"] = b
            kinds.append("params")
        else:
            arrays[f"opt/{i}"] = np.asarray(leaf)
            kinds.append("array")
    arrays["rng"] = np.asarray(rng, dtype=np.uint32)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "step": int(step),
        "epoch": int(epoch),
        "position": int(position),
        "data_seed": int(data_seed),
        "fingerprint": network.fingerprint(),
        "sizes": list(network.sizes),
        "cap": network.cap,
        "num_parts": int(plan.num_parts),
        "opt_kinds": kinds,
        "opt_treedef": str(treedef),
        "extra": extra or {},
    }
    arrays["meta"] = np.array(json.dumps(meta))
    path = _checkpoint_path(directory, step)
    with atomic_write(path, "wb") as f:
        np.savez(f, **arrays)
    _prune(directory, keep, path)
    return path


def _prune(directory: Path, keep: int, newest: Path) -> None:
    """Deletes all but the ``keep`` newest checkpoints, and temporary files of killed saves."""
    for name in os.listdir(directory):
        if _TEMP.match(name):
            try:
                os.unlink(directory / name)
            except FileNotFoundError:
                pass
    found = list_checkpoints(directory)
    for old in found[: max(0, len(found) - max(1, keep))]:
        if old != newest:
            old.unlink(missing_ok=True)


def _first_difference(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.flatnonzero(a != b)[0])


def load_checkpoint(
    path: str | os.PathLike, network: SparseNetwork | None = None, parts: Sequence[np.ndarray] | None = None
) -> Checkpoint:
    """Reads a checkpoint and checks it against the network and partition it should belong to.

    Args:
        path: a file written by :func:`save_checkpoint`.
        network: if given, the checkpoint must have this structure (same fingerprint).
        parts: if given (``L+1`` owner arrays or a Partition), the checkpoint's partition must equal it.

    Raises:
        ValueError: unreadable or foreign file, a missing array, another network (sizes and
            fingerprints named) or another partition (first differing layer and neuron named).
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise ValueError(f"{path}: no such checkpoint") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{path}: not a readable checkpoint ({e})") from None
    try:
        meta = json.loads(str(arrays["meta"]))
    except (KeyError, json.JSONDecodeError):
        raise ValueError(f"{path}: not a jaxsdnn checkpoint (no metadata)") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(
            f"{path}: format {meta.get('format')!r} version {meta.get('version')!r}, expected {FORMAT!r} version {VERSION}"
        )

    def get(key):
        try:
            return arrays[key]
        except KeyError:
            raise ValueError(f"{path}: array {key!r} is missing") from None

    sizes = tuple(meta["sizes"])
    L = len(sizes) - 1
    if network is not None and network.fingerprint() != meta["fingerprint"]:
        raise ValueError(
            f"{path}: written for another network (sizes {sizes}, fingerprint {meta['fingerprint'][:12]}), "
            f"this one has sizes {network.sizes}, fingerprint {network.fingerprint()[:12]}"
        )
    mats = [
        sp.csr_array((get(f"weights/{k}"), get(f"indices/{k}"), get(f"indptr/{k}")), shape=(sizes[k - 1], sizes[k]))
        for k in range(1, L + 1)
    ]
    net = SparseNetwork(tuple(mats), tuple(get(f"biases/{k}") for k in range(1, L + 1)), meta["cap"])
    if net.fingerprint() != meta["fingerprint"]:
        raise ValueError(f"{path}: the stored structure does not match the recorded fingerprint (corrupt file)")
    stored_parts = tuple(get(f"parts/{k}") for k in range(L + 1))
    if parts is not None:
        num_parts = getattr(parts, "num_parts", None)
        given = [np.asarray(p, dtype=np.int64) for p in getattr(parts, "parts", parts)]
        if num_parts is not None and int(num_parts) != meta["num_parts"]:
            raise ValueError(f"{path}: written for a partition into {meta['num_parts']} parts, this one has {num_parts}")
        if len(given) != len(stored_parts):
            raise ValueError(f"{path}: partition of {len(stored_parts)} layers, the given one has {len(given)}")
        for k, (a, b) in enumerate(zip(stored_parts, given)):
            if a.shape != b.shape or np.any(a != b):
                i = _first_difference(a, b) if a.shape == b.shape else 0
                raise ValueError(
                    f"{path}: written for another partition: layer {k}, neuron {i} is on device "
                    f"{a[i]} in the checkpoint but on device {b[i] if i < b.size else '?'} here; "
                    "resume with the checkpoint's partition"
                )
    leaves = []
    for i, kind in enumerate(meta["opt_kinds"]):
        if kind == "params":
            leaves.append(([get(f"opt/{i}/w/{k}") for k in range(1, L + 1)],
                           [get(f"opt/{i}/b/{k}") for k in range(1, L + 1)]))
        else:
            leaves.append(get(f"opt/{i}"))
    return Checkpoint(
        path=path,
        step=int(meta["step"]),
        epoch=int(meta["epoch"]),
        position=int(meta["position"]),
        data_seed=int(meta["data_seed"]),
        rng=get("rng"),
        network=net,
        parts=stored_parts,
        num_parts=int(meta["num_parts"]),
        opt_leaves=leaves,
        meta=meta,
    )


def restore_opt_state(checkpoint: Checkpoint, plan: Plan, template, layout=None):
    """The checkpoint's optimizer state laid out for ``plan`` (host NumPy arrays).

    Args:
        checkpoint: from :func:`load_checkpoint`.
        plan: the plan of the checkpoint's network (any partition of it).
        template: an optimizer state of the same optimizer (e.g. ``opt.init(params)``): gives the
            tree structure, and the shapes and dtypes the non-params leaves must have.
        layout: ``layout(network) -> params node`` for the params-shaped sub-trees (default: the
            plan's layout, :func:`jaxsdnn.plan.layout_values`, as a dict or the template's type).

    Raises:
        ValueError: the optimizer state has another structure (e.g. written by another optimizer).
    """
    path = checkpoint.path
    t_leaves, treedef = jax.tree.flatten(template, is_leaf=_is_params_like)
    kinds = ["params" if _is_params_like(x) else "array" for x in t_leaves]
    if kinds != checkpoint.meta["opt_kinds"]:
        raise ValueError(
            f"{path}: optimizer state {checkpoint.meta['opt_treedef']} does not match this optimizer's "
            f"{treedef} (was it written with another train.optimizer?)"
        )
    out = []
    for i, (t, leaf) in enumerate(zip(t_leaves, checkpoint.opt_leaves)):
        if _is_params_like(t):
            net = checkpoint.network.with_values(*leaf)
            if layout is not None:
                out.append(layout(net))
                continue
            values = layout_values(plan, net)
            out.append(type(t)(values["w"], values["b"]) if not isinstance(t, dict) else values)
        else:
            t = np.asarray(t)
            if leaf.shape != t.shape or leaf.dtype != t.dtype:
                raise ValueError(
                    f"{path}: optimizer leaf {i} has {leaf.shape} {leaf.dtype}, this optimizer expects {t.shape} {t.dtype}"
                )
            out.append(leaf)
    return jax.tree.unflatten(treedef, out)
