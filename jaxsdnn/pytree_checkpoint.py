"""Checkpoints of any pytree (sparse params, dense params, optax state, loop state) via orbax.

Where :mod:`jaxsdnn.checkpoint` stores the built-in ``train()`` loop's fixed state in one ``.npz``
file, this module stores whatever a user's own loop carries, e.g. ``(params, opt_state, dense,
{"step": 3, "rng": key})``, with `orbax-checkpoint <https://orbax.readthedocs.io>`_ doing the
writing: one directory per step, ``{directory}/{step}``, written to a temporary
``{step}.orbax-checkpoint-tmp-*`` directory and renamed when complete (a killed save leaves no
visible step), sharded jax arrays written shard by shard, the newest ``keep`` steps kept.

A checkpoint is independent of the device layout of the sparse network:

* every :class:`~jaxsdnn.forward.SparseParams` node of the tree (the params, and the moments optax
  builds from them: they keep the node type) is stored in the network's CSR order, as 1-D arrays
  per layer (``w/k`` ``[nnz_k]``, ``b/k`` ``[n_k]``, float32), so :func:`restore_tree` lays it out
  again for a model of another partition, device count or mesh of the same network;
* other leaves are stored as they are: jax and NumPy arrays through orbax (restored with the
  sharding of the target leaf), Python scalars and strings in the JSON metadata (restored exactly,
  with their type), typed PRNG keys as their key data (and implementation name).

A node is recognised as sparse by its type only (``isinstance(node, SparseParams)``), so a user's
own ``{"w": ..., "b": ...}`` sub-tree is an ordinary dict of arrays.

Restoring needs a ``like`` tree of the saved structure, built for the target model; each leaf gives
its restored leaf's type and place::

    save_tree(ckpt_dir, (params, opt_state, dense, {"step": step}), model, metadata={"loss": loss})
    ...
    parts = checkpoint_metadata(ckpt_dir)["parts"]          # keep the partition, or choose another
    model, params = jaxsdnn.shard_model(network, parts, mesh)
    like = (params, opt.init((params, dense)), dense, {"step": 0})
    params, opt_state, dense, loop = restore_tree(ckpt_dir, model, like)

A jax array leaf is restored with its sharding (uncommitted if it is uncommitted, as ``jnp.zeros``
makes them; a ``jax.ShapeDtypeStruct`` with its sharding, or uncommitted without one), a NumPy
leaf as NumPy, a SparseParams node with its leaves' shardings (default: split over the model
axis). Shapes and dtypes must match the saved ones (orbax itself would pad, truncate or cast).

Many hosts: call these functions on every process (they synchronise). SparseParams nodes are gathered to every host
(``process_allgather``) to be stored in CSR order, so they must fit in host memory; all other
arrays are written and read shard by shard by orbax.

Each step directory holds three orbax items: ``jaxsdnn`` (JSON: format, network fingerprint and
sizes, the leaf paths and kinds, the user's metadata), ``partition`` (the ``L+1`` owner arrays of
the model's partition, so a resumed run can keep it: :func:`checkpoint_metadata`) and ``state``
(the arrays; absent when the tree has none).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as Spec

from jaxsdnn.checkpoint import gather_to_host
from jaxsdnn.forward import Model, SparseParams, _host_params, _network_of, param_shapes
from jaxsdnn.sharded import MODEL_AXIS

__all__ = ["checkpoint_metadata", "latest_step", "model_partition", "restore_tree", "save_tree", "saved_steps"]

FORMAT = "jaxsdnn-pytree-checkpoint"
VERSION = 1
_ITEMS = ("jaxsdnn", "partition", "state")
_PYTHON = (bool, int, float, str)


def model_partition(model: Model) -> tuple[np.ndarray, ...]:
    """The partition ``model`` was built with: per layer ``k = 0..L``, ``[n_k]`` int64 owner devices
    (neuron ``i`` of layer ``k`` is on device ``p`` where ``plan.local_ids[k][p, r] == i``)."""
    parts = []
    for ids, n in zip(model.plan.local_ids, model.plan.sizes):
        owner = np.full(n, -1, dtype=np.int64)
        dev, row = np.nonzero(ids >= 0)
        owner[ids[dev, row]] = dev
        assert np.all(owner >= 0), "a neuron without an owner"
        parts.append(owner)
    return tuple(parts)


def _manager(directory: Path, *, keep: int | None = None, create: bool = False) -> ocp.CheckpointManager:
    policy = ocp.checkpoint_managers.LatestN(keep) if keep else None
    options = ocp.CheckpointManagerOptions(create=create, enable_async_checkpointing=False, preservation_policy=policy)
    return ocp.CheckpointManager(directory, options=options, item_names=_ITEMS)


def latest_step(directory: str | os.PathLike) -> int | None:
    """The highest saved step in ``directory`` (temporary directories of unfinished saves do not
    count), or ``None`` when there is none or no such directory."""
    with _manager(Path(directory).absolute()) as mngr:
        return mngr.latest_step()


def saved_steps(directory: str | os.PathLike) -> list[int]:
    """The steps saved in ``directory``, read off the file system without starting JAX or orbax
    (what a command line checks before it sets up its devices): orbax names a finished step's
    directory by its number and an unfinished one ``<step>.orbax-checkpoint-tmp-*``."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def _is_sparse(x) -> bool:
    return isinstance(x, SparseParams)


def _kind(x) -> str | None:
    """How a leaf is stored: "sparse", "python", "key" (typed PRNG key), "array" or None (unsupported)."""
    if _is_sparse(x):
        return "sparse"
    if isinstance(x, _PYTHON):
        return "python"
    if isinstance(x, (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct)):
        return "key" if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else "array"
    return None


def _flatten(tree):
    """``[(path string, leaf)]`` with every SparseParams node as one leaf."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_sparse)
    return [(jax.tree_util.keystr(p), x) for p, x in flat]


def _layer_keys(model: Model):
    return [str(k) for k in range(1, model.num_layers + 1)]


def _check_layout(where: str, path: str, node: SparseParams, model: Model) -> None:
    """Refuses a SparseParams node whose leaf shapes are not ``model``'s layout."""
    shapes = param_shapes(model)
    want = ([list(ws) for ws in shapes.w], list(shapes.b))
    have = ([[tuple(getattr(a, "shape", ())) for a in ws] for ws in node.w],
            [tuple(getattr(b, "shape", ())) for b in node.b])
    if have != want:
        raise ValueError(f"{where}: the SparseParams at {path or 'the root'} has shapes w={have[0]} b={have[1]}, "
                         f"the model lays its network out as w={want[0]} b={want[1]}; use the model it belongs to")


def save_tree(directory: str | os.PathLike, tree, model: Model, *, step: int | None = None,
              metadata: dict | None = None, keep: int | None = 3) -> Path:
    """Saves ``tree`` as step ``step`` of ``directory`` (atomically; a collective on many hosts).

    Args:
        directory: the checkpoint directory (created if missing); the step goes to ``directory/step``.
        tree: any pytree of jax arrays, NumPy arrays and scalars, Python scalars and strings, and
            :class:`~jaxsdnn.forward.SparseParams` nodes of ``model`` (stored in CSR order).
        model: the :class:`~jaxsdnn.forward.Model` the sparse nodes are laid out for.
        step: the step number; None: one more than the latest saved step (0 in an empty directory).
        metadata: JSON-ready values stored with it (:func:`checkpoint_metadata` returns them).
        keep: newest steps kept (older ones are deleted after this one is complete); None: all.

    Returns:
        the step directory.

    Raises:
        ValueError: a leaf of another type, a SparseParams node not laid out for ``model``,
            metadata that is not JSON, or a step that is already saved.
    """
    directory = Path(directory).absolute()
    if keep is not None and int(keep) < 1:
        raise ValueError(f"save_tree: keep={keep}, expected at least 1 (or None: keep all)")
    try:
        user = json.loads(json.dumps(metadata or {}))
    except (TypeError, ValueError) as e:
        raise ValueError(f"save_tree: metadata is not JSON-serialisable ({e})") from None
    flat = _flatten(tree)
    sparse = gather_to_host([x for _, x in flat if isinstance(x, SparseParams)])  # one collective
    sparse, layers = iter(sparse), _layer_keys(model)
    plan, network = model.plan, model.schedule.network
    arrays, leaves = {}, []
    for i, (path, x) in enumerate(flat):
        kind = _kind(x)
        info = {"path": path, "kind": kind}
        if kind == "sparse":
            _check_layout("save_tree", path, x, model)
            net = _network_of(model, next(sparse))
            arrays[str(i)] = {"w": dict(zip(layers, (w.data for w in net.weights))),
                              "b": dict(zip(layers, (np.asarray(b, np.float32) for b in net.biases)))}
        elif kind == "python":
            info["value"] = x
        elif kind == "key":
            arrays[str(i)] = data = jax.random.key_data(x)
            info.update(shape=list(x.shape), dtype=str(x.dtype), impl=str(jax.random.key_impl(x)),
                        data_shape=list(data.shape))
        elif kind == "array" and not isinstance(x, jax.ShapeDtypeStruct):
            arrays[str(i)] = x if isinstance(x, jax.Array) else np.asarray(x)
            info.update(shape=list(x.shape), dtype=str(x.dtype))
        else:
            raise ValueError(f"save_tree: the leaf at {path} is of type {type(x).__name__}; a checkpoint holds arrays, "
                             "Python scalars and strings (put other values in metadata=)")
        leaves.append(info)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "fingerprint": network.fingerprint(),
        "sizes": list(network.sizes),
        "nnz": list(network.nnz),
        "cap": network.cap,
        "num_parts": int(plan.num_parts),
        "mesh": {str(k): int(v) for k, v in model.mesh.shape.items()},
        "leaves": leaves,
        "metadata": user,
    }
    parts = {str(k): p.astype(np.int32) for k, p in enumerate(model_partition(model))}
    with _manager(directory, keep=keep, create=True) as mngr:
        if step is None:
            latest = mngr.latest_step()
            step = 0 if latest is None else latest + 1
        step = int(step)
        if step in mngr.all_steps():
            raise ValueError(f"save_tree: {directory / str(step)} already exists; save under another step")
        meta["step"] = step
        items = {"jaxsdnn": ocp.args.JsonSave(meta), "partition": ocp.args.StandardSave(parts)}
        if arrays:  # orbax refuses an empty item
            items["state"] = ocp.args.StandardSave(arrays)
        mngr.save(step, args=ocp.args.Composite(**items), force=True)
    return directory / str(step)


def _read(mngr: ocp.CheckpointManager, directory: Path, step: int | None, **items):
    """``(step, path, restored items)`` for ``step`` (None: the latest), with ValueErrors that name
    the path for a missing directory or step and for a directory orbax or we cannot read."""
    if step is None:
        step = mngr.latest_step()
        if step is None:
            missing = "" if directory.is_dir() else " (no such directory)"
            raise ValueError(f"{directory}: no checkpoint there{missing}")
    path = directory / str(int(step))
    if int(step) not in mngr.all_steps():
        raise ValueError(f"{path}: no such checkpoint (saved steps: {list(mngr.all_steps())})")
    try:
        got = mngr.restore(int(step), args=ocp.args.Composite(**items))
    except Exception as e:  # orbax and tensorstore raise KeyError, FileNotFoundError, ValueError, ...
        raise ValueError(f"{path}: not a readable jaxsdnn checkpoint ({type(e).__name__}: {e})") from e
    meta = got["jaxsdnn"] if "jaxsdnn" in items else None
    if meta is not None and (not isinstance(meta, dict) or meta.get("format") != FORMAT
                             or meta.get("version") != VERSION):
        found = (meta.get("format"), meta.get("version")) if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{path}: not a jaxsdnn pytree checkpoint (found {found}, expected {FORMAT!r} v{VERSION})")
    return int(step), path, got


def checkpoint_metadata(directory: str | os.PathLike, step: int | None = None) -> dict:
    """What was saved with a checkpoint (step None: the latest).

    Returns:
        a dict with ``path``, ``step``, ``fingerprint``, ``sizes``, ``nnz`` and ``cap`` of the
        network, ``num_parts`` and ``mesh`` (axis sizes) of the model, ``parts`` (``L+1`` int64
        owner arrays: pass them to :func:`~jaxsdnn.forward.shard_model` to keep the partition),
        ``leaves`` (path and kind of every stored leaf) and ``metadata`` (the user's).

    Raises:
        ValueError: no such directory or step, or not a jaxsdnn checkpoint.
    """
    directory = Path(directory).absolute()
    with _manager(directory) as mngr:
        step, path, got = _read(mngr, directory, step, jaxsdnn=ocp.args.JsonRestore())
        meta = got["jaxsdnn"]
        L = len(meta["sizes"]) - 1
        target = {str(k): jax.ShapeDtypeStruct((n,), np.int32) for k, n in enumerate(meta["sizes"])}
        _, _, got = _read(mngr, directory, step, partition=ocp.args.StandardRestore(target))
    out = {k: v for k, v in meta.items() if k not in ("format", "version")}
    out.update(path=path, step=step, parts=tuple(np.asarray(got["partition"][str(k)], np.int64) for k in range(L + 1)))
    return out


def _describe(x) -> str:
    if isinstance(x, SparseParams):
        return "SparseParams"
    if isinstance(x, _PYTHON):
        return f"Python {type(x).__name__}"
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f"{type(x).__name__} {x.dtype}{list(x.shape)}"
    return type(x).__name__


def _check_structure(path: Path, saved: list[str], like: list[str]) -> None:
    if saved == like:
        return
    only_saved = [p for p in saved if p not in set(like)]
    only_like = [p for p in like if p not in set(saved)]
    detail = "; ".join(s for s in (
        f"only in the checkpoint: {only_saved[:5]}{' ...' if len(only_saved) > 5 else ''}" if only_saved else "",
        f"only in like: {only_like[:5]}{' ...' if len(only_like) > 5 else ''}" if only_like else "",
    ) if s) or "the same leaves in another order"
    raise ValueError(f"{path}: like's tree structure differs from the saved one ({len(saved)} leaves saved, "
                     f"{len(like)} in like): {detail}")


def _target(info: dict, x, where: str, meta: dict):
    """The orbax restore target of one saved leaf (None: nothing stored in orbax), after checking
    that the like leaf ``x`` is of the same kind, shape and dtype."""
    kind = info["kind"]
    if _kind(x) != kind:
        raise ValueError(f"{where}: saved as {kind}, like has a {_describe(x)}")
    if kind == "python":
        if type(x) is not type(info["value"]):
            raise ValueError(f"{where}: saved as a Python {type(info['value']).__name__}, like has a {_describe(x)}")
        return None
    if kind == "sparse":
        return {"w": {str(k): jax.ShapeDtypeStruct((n,), np.float32) for k, n in enumerate(meta["nnz"], 1)},
                "b": {str(k): jax.ShapeDtypeStruct((n,), np.float32) for k, n in enumerate(meta["sizes"][1:], 1)}}
    if list(x.shape) != info["shape"] or str(x.dtype) != info["dtype"]:  # orbax would pad or cast silently
        raise ValueError(f"{where}: saved as {info['dtype']}{info['shape']}, like has a {_describe(x)}")
    if kind == "key":  # its key data, to the host: placed after wrapping
        return jax.ShapeDtypeStruct(tuple(info["data_shape"]), np.uint32)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=_sharding_of(x))  # no sharding: to the host


def _sharding_of(x):
    """Where a like leaf lives: its sharding, or None for NumPy, uncommitted arrays (``jnp.zeros``:
    jit may move them, and so may the restored leaf) and ShapeDtypeStructs without one."""
    if isinstance(x, jax.Array):
        return x.sharding if x.committed else None
    return getattr(x, "sharding", None)


def _place(a, x, default=None):
    """Restored value ``a`` as the like leaf ``x`` is: NumPy (array or scalar) on the host, else a jax
    array with ``x``'s sharding (or ``default``; neither: uncommitted, on the default device)."""
    if isinstance(x, np.generic):
        return x.dtype.type(np.asarray(a)[()])
    if isinstance(x, np.ndarray):
        return np.asarray(a, x.dtype)
    sharding = _sharding_of(x) or default
    if isinstance(a, jax.Array) and a.sharding == sharding:
        return a  # orbax placed it
    a = np.asarray(a, x.dtype)
    if sharding is None:
        return jnp.asarray(a)
    return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])


def restore_tree(directory: str | os.PathLike, model: Model, like, *, step: int | None = None, partial: bool = False):
    """Restores a checkpoint into the structure of ``like``, laid out for ``model``.

    Args:
        directory: the checkpoint directory given to :func:`save_tree`.
        model: the target :class:`~jaxsdnn.forward.Model`: the same network as the saved one, in any
            partition, device count or mesh.
        like: a pytree of the saved structure built for ``model`` (e.g. ``(params, opt.init(params),
            dense, {"step": 0, "rng": key})``, or ``jax.eval_shape`` of it): its leaves give each
            restored leaf its type and sharding. A SparseParams node is filled from the stored CSR
            values and placed with its leaves' shardings (default: split over the model axis).
        step: the step to restore; None: the latest.
        partial: ``like`` may hold only some of the saved leaves (matched by path, e.g.
            ``{"params": params}`` of a saved ``{"params", "opt_state", ...}``); the others are not read.

    Returns:
        a pytree of ``like``'s structure: jax arrays where ``like`` has jax arrays or shardings,
        NumPy where it has NumPy, the saved Python scalars where it has Python scalars.

    Raises:
        ValueError: no such directory or step, not a jaxsdnn checkpoint, a checkpoint of another
            network, or a ``like`` of another structure, leaf shape, dtype or kind (the paths named).
    """
    directory = Path(directory).absolute()
    network = model.schedule.network
    with _manager(directory) as mngr:
        step, path, got = _read(mngr, directory, step, jaxsdnn=ocp.args.JsonRestore())
        meta = got["jaxsdnn"]
        if meta["fingerprint"] != network.fingerprint():
            raise ValueError(
                f"{path}: saved for another network (sizes {tuple(meta['sizes'])}, nnz {tuple(meta['nnz'])}, "
                f"fingerprint {meta['fingerprint'][:12]}); this model's has sizes {network.sizes}, "
                f"nnz {network.nnz}, fingerprint {network.fingerprint()[:12]}")
        flat, infos = _flatten(like), meta["leaves"]
        if partial:
            by_path = {info["path"]: (i, info) for i, info in enumerate(infos)}
            missing = [p for p, _ in flat if p not in by_path]
            if missing:
                saved = list(by_path)
                raise ValueError(f"{path}: like has leaves the checkpoint does not: {missing[:5]}"
                                 f"{' ...' if len(missing) > 5 else ''} (saved: {saved[:5]}"
                                 f"{' ...' if len(saved) > 5 else ''})")
            chosen = [by_path[p] for p, _ in flat]
        else:
            _check_structure(path, [info["path"] for info in infos], [p for p, _ in flat])
            chosen = list(enumerate(infos))
        target = {}
        for (i, info), (p, x) in zip(chosen, flat):
            if (t := _target(info, x, f"{path}: leaf {p or '(root)'}", meta)) is not None:
                target[str(i)] = t
            if info["kind"] == "sparse":
                _check_layout(str(path), p, x, model)
        how = (ocp.args.PyTreeRestore(target, partial_restore=True) if partial  # to the host; placed below
               else ocp.args.StandardRestore(target))
        stored = _read(mngr, directory, step, state=how)[2]["state"] if target else {}
    by_model, layers = NamedSharding(model.mesh, Spec(MODEL_AXIS)), _layer_keys(model)
    out = []
    for (i, info), (_, x) in zip(chosen, flat):
        kind, a = info["kind"], stored.get(str(i))
        if kind == "python":
            out.append(info["value"])
        elif kind == "array":
            out.append(_place(a, x))
        elif kind == "key":
            data = _place(a, jax.ShapeDtypeStruct(a.shape, np.uint32, sharding=_sharding_of(x)))
            out.append(jax.random.wrap_key_data(data, impl=info["impl"]))
        else:
            net = network.with_values([a["w"][k] for k in layers], [a["b"][k] for k in layers])
            node = _host_params(model, net)
            out.append(jax.tree.map(lambda v, xl: _place(v, xl, by_model), node, x))
    return jax.tree.unflatten(jax.tree.structure(like, is_leaf=_is_sparse), out)
