"""Training: data -> model -> partition -> plan -> sharded steps with optax -> metrics and checkpoints.

:func:`train` runs one configuration (:mod:`jaxsdnn.config`) in a run directory::

    run_dir/
        config.yaml         the full configuration (defaults filled in)
        metrics.jsonl       one JSON object per line: {"step", "epoch", "loss", "lr", "samples_per_s"}
                            every ``log_every`` steps ("loss" is the mean over those steps),
                            {"event": "compiled", "seconds"} once per call, {"step", "epoch",
                            "eval_accuracy", "eval_set"} after every epoch
        checkpoints/        one orbax step directory per checkpoint, ``checkpoints/<step>``
                            (:func:`jaxsdnn.pytree_checkpoint.save_tree`)
        summary.json        what :func:`train` returns

Reproducibility: the batches of epoch ``e`` are a permutation drawn from ``(train.seed, e)``
(:func:`jaxsdnn.data.batches`, last partial batch dropped), the model from ``network.seed``, and a
checkpoint holds the exact float32 weights, optimizer state, step, epoch and position in the
epoch (``{"params", "opt_state", "rng"}`` through :func:`~jaxsdnn.pytree_checkpoint.save_tree`, the
loop counters and the configuration in its metadata: the same calls a user's own loop makes). A
run resumed from a checkpoint therefore produces the same losses as an uninterrupted one
(same devices and mesh; a different data-parallel size reorders float sums). ``resume=True`` needs a
checkpoint, refuses a configuration whose ``data`` / ``network`` / optimizer / batch / seed /
partition method, epsilon and seed (and, with a cosine schedule, epochs and warm-up) differ from the
saved one, keeps the checkpoint's partition, and drops ``metrics.jsonl`` lines written after
that checkpoint. Without ``resume`` a run directory holding checkpoints is refused.

The step is :func:`make_step`: ``jax.value_and_grad`` of a loss of :func:`jaxsdnn.apply` and an
optax update, built from the public API only, so a user's own loop can use the same pieces (or
this one); ``train(..., loss=..., optimizer=...)`` takes a loss and an optax transformation from
Python.

Multi-host: every process runs the same steps; only process 0 writes the configuration, metrics
and summary, and every process joins each checkpoint (a collective; orbax writes it).

Compiled steps are cached per (model schedule, batch, optimizer, loss) in the process, and
prediction is one module-level ``jit`` of :func:`jaxsdnn.apply`, so several runs of one
configuration in one process (tests, resume) compile once.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import optax
import yaml
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as Spec

from jaxsdnn import checkpoint as ckpt_lib
from jaxsdnn import data as data_lib
from jaxsdnn import forward
from jaxsdnn import losses as losses_lib
from jaxsdnn import models
from jaxsdnn import plan as plan_lib
from jaxsdnn import pytree_checkpoint as pck
from jaxsdnn import sharded
from jaxsdnn.engine import to_host
from jaxsdnn._atomic import atomic_write
from jaxsdnn.config import Config, config_to_dict, load_config, save_config
from jaxsdnn.network import SparseNetwork

__all__ = ["block_parts", "checkpoint_state", "load_data", "make_optimizer", "make_step", "partition_parts", "train", "trained_network"]

REPO_ROOT = Path(__file__).resolve().parent.parent
"""Relative data/network paths that do not exist under the cwd are looked up here."""

# sections / keys that must not change when a run is resumed
_FIXED_ON_RESUME = (
    "data", "network", "train.optimizer", "train.batch_size", "train.seed",
    "partition.method", "partition.epsilon", "partition.seed",  # the checkpoint holds the partition
)
_CACHE_SIZE = 4
_STEP_CACHE: collections.OrderedDict = collections.OrderedDict()


# ----------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------
def load_data(cfg) -> tuple[data_lib.Dataset, data_lib.Dataset, data_lib.Dataset | None]:
    """``(train, test, validation or None)`` for a :class:`~jaxsdnn.config.DataConfig`."""
    path = cfg.path
    if path and not os.path.exists(path) and (REPO_ROOT / path).exists():
        path = str(REPO_ROOT / path)
    train_ds, test_ds = data_lib.load_dataset(cfg.name, path, cfg.test_fraction, cfg.seed)
    if cfg.image_side:
        train_ds = data_lib.resize_images(train_ds, cfg.image_side)
        test_ds = data_lib.resize_images(test_ds, cfg.image_side)
    val_ds = None
    if cfg.validation_fraction > 0:
        train_ds, val_ds = data_lib.split(train_ds, cfg.validation_fraction, cfg.seed + 1)
    return train_ds, test_ds, val_ds


def block_parts(network, num_parts: int) -> list[np.ndarray]:
    """Contiguous blocks: neuron ``i`` of a layer of ``n`` goes to device ``i * P // n``."""
    return [np.arange(n, dtype=np.int64) * num_parts // n for n in network.sizes]


def partition_parts(network, num_parts: int, method: str = "block", epsilon: float = 0.03, seed: int = 0,
                    threads: int = 1):
    """A partition of ``network`` (:func:`jaxsdnn.partition.partition_network` when available),
    reused from the partition cache for the same job (:mod:`jaxsdnn.partition_cache`).

    Without :mod:`jaxsdnn.partition` only ``method="block"`` works (:func:`block_parts`).
    """
    try:
        from jaxsdnn.partition_cache import cached_partition
    except ImportError:
        if method != "block":
            raise ValueError(
                f"partition.method={method!r} needs jaxsdnn.partition, which is not importable; use 'block'"
            ) from None
        return block_parts(network, num_parts)
    return cached_partition(network, num_parts, method=method, epsilon=epsilon, seed=seed, threads=threads)[0]


def make_optimizer(cfg, total_steps: int) -> tuple[optax.GradientTransformation, callable]:
    """The optax transformation and its learning-rate schedule ``step -> lr`` for a :class:`TrainConfig`."""
    if cfg.schedule == "cosine":
        main = optax.cosine_decay_schedule(cfg.lr, max(1, total_steps - cfg.warmup_steps))
    else:
        main = optax.constant_schedule(cfg.lr)
    if cfg.warmup_steps:
        schedule = optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps), main], [cfg.warmup_steps])
    else:
        schedule = main
    lr = cfg.lr if (cfg.schedule == "constant" and not cfg.warmup_steps) else schedule
    if cfg.optimizer == "adam":
        opt = optax.adam(lr)
    elif cfg.optimizer == "adamw":
        opt = optax.adamw(lr, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "sgd":
        opt = optax.sgd(lr, momentum=cfg.momentum or None)
    else:
        raise ValueError(f"train.optimizer: unknown optimizer {cfg.optimizer!r}, expected 'adam', 'adamw' or 'sgd'")
    if cfg.clip_norm:
        opt = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)
    return opt, schedule


def _optimizer_key(cfg, total_steps: int) -> tuple:
    uses_total = cfg.schedule != "constant"
    return (cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.clip_norm, cfg.schedule, cfg.warmup_steps,
            total_steps if uses_total else None)


def _cached(cache: collections.OrderedDict, key, build):
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    value = cache[key] = build()
    while len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)
    return value


def _shardings(model: forward.Model, params, opt_state):
    """Shardings of params (model axis) and of the optimizer state (params-like: model axis; rest replicated)."""
    by_model = NamedSharding(model.mesh, Spec(sharded.MODEL_AXIS))
    replicated = NamedSharding(model.mesh, Spec())
    p_sh = jax.tree.map(lambda _: by_model, params)
    o_sh = jax.tree.map(
        lambda x: jax.tree.map(lambda _: by_model, x) if ckpt_lib._is_params_like(x) else replicated,
        opt_state,
        is_leaf=ckpt_lib._is_params_like,
    )
    return p_sh, o_sh, replicated


def make_step(opt: optax.GradientTransformation, loss=None):
    """The training step of :func:`train`, from the public API only (not jitted)::

        step(model, params, opt_state, x, labels, weights=None) -> (params, opt_state, loss)

    ``loss(outputs, labels, weights)`` maps ``apply``'s ``[batch, n_L]`` logits, the labels and
    optional ``[batch]`` sample weights to a scalar; default
    :func:`jaxsdnn.losses.softmax_cross_entropy`.
    """
    loss = losses_lib.softmax_cross_entropy if loss is None else loss

    def step(model, params, opt_state, x, labels, weights=None):
        value, grads = jax.value_and_grad(lambda p: loss(forward.apply(model, p, x), labels, weights))(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return step


def _step_fn(model, params, batch: int, opt, opt_key, opt_state, loss):
    """Jitted ``step(model, params, opt_state, x, y) -> (params, opt_state, loss)`` (cached)."""
    key = (model.schedule, batch, jax.tree.structure(params), jax.tree.structure(model), opt_key, loss)

    def build():
        p_sh, o_sh, rep = _shardings(model, params, opt_state)
        return jax.jit(make_step(opt, loss), out_shardings=(p_sh, o_sh, rep), donate_argnums=(1, 2))

    return _cached(_STEP_CACHE, key, build)


def _predict(model, params, x):
    return jax.numpy.argmax(forward.apply(model, params, x), axis=1)


_predict_jit = jax.jit(_predict)


def _accuracy(model, params, dataset: data_lib.Dataset, batch_size: int, data_parallel: int) -> float | None:
    """Share of ``dataset`` predicted right (None for an empty set); batches padded to a multiple of the data axis."""
    if len(dataset) == 0:
        return None
    b = min(batch_size, len(dataset))
    b = -(-b // data_parallel) * data_parallel
    correct = 0
    for x, y, valid in data_lib.eval_batches(dataset, b):
        pred = to_host(_predict_jit(model, params, forward.shard_batch(model, np.asarray(x, np.float32))))
        correct += int(np.sum(pred[:valid] == y[:valid]))
    return correct / len(dataset)


# ----------------------------------------------------------------------------------------------
# run directory
# ----------------------------------------------------------------------------------------------
def _check_writable(run_dir: Path) -> None:
    """Creates ``run_dir`` and proves a file can be written there, or raises a ValueError."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "checkpoints").mkdir(exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ValueError(f"run_dir {run_dir}: cannot write there ({e.strerror or e}); choose a writable directory") from None


def _as_config(config, run_dir: Path, resume: bool) -> Config:
    if config is None:
        saved = run_dir / "config.yaml"
        if not (resume and saved.is_file()):
            raise ValueError(f"train: without a configuration, only a resumed run can read {saved}")
        return load_config(saved)
    if isinstance(config, Config):
        return config
    if isinstance(config, (str, os.PathLike)):
        return load_config(config)
    if isinstance(config, dict):
        return load_config(values=config)
    raise ValueError(f"train: config must be a Config, a YAML path or a dict, got {type(config).__name__}")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_resume_config(saved_path: Path, config: Config) -> None:
    if not saved_path.is_file():
        return
    with open(saved_path, encoding="utf-8") as f:
        saved = _flat(yaml.safe_load(f) or {})
    now = _flat(config_to_dict(config))
    diff = [k for k in now if k.startswith(_FIXED_ON_RESUME) and k in saved and saved[k] != now[k]]
    if now.get("train.schedule") == "cosine":  # it decays over all steps after the warm-up
        diff += [k for k in ("train.epochs", "train.warmup_steps") if saved.get(k, now[k]) != now[k]]
    if diff:
        details = ", ".join(f"{k}: {saved[k]!r} -> {now[k]!r}" for k in diff)
        raise ValueError(f"{saved_path}: cannot resume with a different {details}")


def _json_ready(x):
    """``x`` with NaN / infinity as None, so that files hold strict JSON (no ``NaN`` tokens)."""
    if isinstance(x, dict):
        return {k: _json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_ready(v) for v in x]
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


class _RunLock:
    """An exclusive ``flock`` on ``run_dir/.lock`` for the whole run: a second run into the same
    directory is refused instead of interleaving checkpoints and metrics."""

    def __init__(self, run_dir: Path):
        self.path, self.fd = run_dir / ".lock", None

    def __enter__(self):
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = None
            raise ValueError(
                f"{self.path.parent}: another training run is using this run directory (it holds {self.path}); "
                "wait for it to finish or use another run directory"
            ) from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None


def _check_resume_checkpoint(path, saved: dict, config: Config) -> None:
    """The checkpoint records the configuration it was written with (``saved``, flat): the fixed
    keys must match, also when ``config.yaml`` is missing."""
    now = json.loads(json.dumps(_flat(config_to_dict(config))))  # as stored: tuples are lists
    diff = [k for k in now if k.startswith(_FIXED_ON_RESUME) and k in saved and saved[k] != now[k]]
    if diff:
        details = ", ".join(f"{k}: {saved[k]!r} -> {now[k]!r}" for k in diff)
        raise ValueError(f"{path}: cannot resume with a different {details}")


def checkpoint_state(run_dir) -> tuple[int | None, Path | None]:
    """``(latest step, earlier-format file)`` of ``run_dir/checkpoints``, read off the file system
    without starting JAX (the CLI asks before it sets up its devices): the newest orbax step
    saved, and the newest ``.npz`` checkpoint of the earlier format (which :func:`train` refuses),
    each None when there is none."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    steps, old = pck.saved_steps(ckpt_dir), ckpt_lib.list_checkpoints(ckpt_dir)
    return (steps[-1] if steps else None), (old[-1] if old else None)


def _latest_step(run_dir: Path) -> int | None:
    """The newest checkpoint step; refuses a run directory of the earlier ``.npz`` format only."""
    latest, old = checkpoint_state(run_dir)
    if old is not None and latest is None:
        raise ValueError(f"{old}: a checkpoint of the earlier .npz format, which train() no longer resumes; "
                         "start a new run directory (jaxsdnn.checkpoint.load_checkpoint still reads the file)")
    return latest


def _truncate_metrics(path: Path, step: int) -> None:
    """Keeps the lines of ``metrics.jsonl`` up to ``step`` (a resumed run rewrites what came after)."""
    if not path.is_file():
        return
    keep = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if rec.get("step", 0) <= step:
                keep.append(json.dumps(rec) + "\n")
    with atomic_write(path) as f:
        f.writelines(keep)


class _Progress:
    """A one-line progress bar on stderr (plain text, ``\\r``)."""

    def __init__(self, enabled: bool):
        self.enabled, self.width = enabled, 0

    def update(self, text: str) -> None:
        if self.enabled:
            line = f"\r{text}"
            sys.stderr.write(line + " " * max(0, self.width - len(line)))
            sys.stderr.flush()
            self.width = len(line)

    def line(self, text: str) -> None:
        if self.enabled:
            sys.stderr.write("\r" + text.ljust(self.width) + "\n")
            sys.stderr.flush()
            self.width = 0


# ----------------------------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------------------------
def trained_network(run_dir, step: int | None = None, devices=None) -> SparseNetwork:
    """The network of a :func:`train` run with the weights of its checkpoint (step None: the
    latest), e.g. for :func:`jaxsdnn.engine.run_inference` or :func:`jaxsdnn.io.write_network`.

    Reads ``run_dir/config.yaml`` (the network's structure) and only the ``params`` of the
    checkpoint, laid out on ``devices`` (default: the first ``num_parts`` devices) as saved.

    Raises:
        ValueError: no configuration or checkpoint there, or a checkpoint of another network.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"{run_dir}: no config.yaml there (not a train() run directory)")
    config = load_config(run_dir / "config.yaml")
    ck = pck.checkpoint_metadata(run_dir / "checkpoints", step)
    train_ds, _, _ = load_data(config.data)
    network = models.build_model(config.network, train_ds.features, train_ds.num_classes, base_dir=REPO_ROOT)
    mesh = sharded.make_mesh(ck["num_parts"], 1, devices=devices)
    model, params = forward.shard_model(network, ck["parts"], mesh)
    got = pck.restore_tree(run_dir / "checkpoints", model, {"params": params}, step=ck["step"], partial=True)
    return forward.to_network(model, got["params"])


def train(config, run_dir, *, resume: bool = False, devices=None, data_parallel: int | None = None,
          method: str | None = None, progress: bool = True, model_parallel: int | None = None, loss=None,
          optimizer: optax.GradientTransformation | None = None) -> dict:
    """Trains the configured sparse network, neuron-partitioned over a ``(devices, data_parallel)`` mesh.

    Args:
        config: a :class:`~jaxsdnn.config.Config`, a YAML path, a nested dict of overrides of the
            defaults, or ``None`` with ``resume=True`` (use ``run_dir/config.yaml``).
        run_dir: where config, metrics, checkpoints and summary go (created; must be writable).
        resume: continue from the newest checkpoint in ``run_dir/checkpoints``.
        devices: an int overrides ``partition.devices`` (model axis); a sequence of JAX devices is
            the pool the mesh is built from (the first ``model * data`` of them; default ``jax.devices()``).
        data_parallel: overrides ``partition.data_parallel`` (data axis).
        method: overrides ``partition.method``.
        progress: show a progress bar on stderr.
        model_parallel: overrides ``partition.devices`` (the same as an int ``devices``).
        loss: ``loss(logits [batch, n_L], labels [batch], weights)`` -> scalar (``weights`` is
            None here), differentiated through :func:`jaxsdnn.apply`; default
            :func:`jaxsdnn.losses.softmax_cross_entropy`.
        optimizer: an optax transformation to use instead of the configured one (a resumed run
            cannot check that it is the same one; the ``lr`` column of the metrics is then null).

    Returns:
        a JSON-ready summary: ``test_accuracy``, ``steps``, ``seconds`` (wall time of this call),
        ``run_dir``, ``final_loss``, ``epochs`` (fractional epochs done), ``compile_seconds``,
        ``samples_per_s`` (after compilation), ``devices``, ``data_parallel``, ``method``,
        ``checkpoint``, ``resumed_from``, ``network`` (sizes, nnz, density) and ``plan`` stats.

    Raises:
        ValueError: unwritable ``run_dir``, bad configuration, nothing to resume (or checkpoints
            present without ``resume``), a checkpoint of another network / partition, a batch that
            is not a multiple of the data axis, or too few devices for the mesh.
    """
    t_start = time.perf_counter()
    if run_dir is None:
        raise ValueError("train: run_dir is required (where config, metrics and checkpoints go)")
    run_dir = Path(run_dir)
    writer = jax.process_index() == 0
    config = _as_config(config, run_dir, resume)
    if writer:
        _check_writable(run_dir)
        with _RunLock(run_dir):
            return _train(config, run_dir, t_start, writer, resume=resume, devices=devices,
                          data_parallel=data_parallel, method=method, progress=progress, model_parallel=model_parallel,
                          loss=loss, optimizer=optimizer)
    return _train(config, run_dir, t_start, writer, resume=resume, devices=devices, data_parallel=data_parallel,
                  method=method, progress=progress, model_parallel=model_parallel, loss=loss, optimizer=optimizer)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during training: raised after the checkpoint of the last complete step is saved."""


class Diverged(ValueError):
    """The loss became NaN or infinite; the run stopped without checkpointing the bad weights."""


def _train(config, run_dir: Path, t_start: float, writer: bool, *, resume, devices, data_parallel, method, progress,
           model_parallel, loss, optimizer) -> dict:
    device_pool = None
    if devices is not None and not isinstance(devices, (int, np.integer)):
        device_pool, devices = list(devices), None
    if devices is not None and model_parallel is not None and devices != model_parallel:
        raise ValueError(f"train: devices={devices} and model_parallel={model_parallel} disagree")
    model = model_parallel if model_parallel is not None else devices
    part_cfg = dataclasses.replace(
        config.partition,
        **{k: v for k, v in (("devices", model), ("data_parallel", data_parallel), ("method", method)) if v is not None},
    )
    config = dataclasses.replace(config, partition=part_cfg)
    P, D, tc = part_cfg.devices, part_cfg.data_parallel, config.train
    data_lib.check_batch_size(tc.batch_size, D, "train.batch_size")
    if writer:
        _check_writable(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    latest = _latest_step(run_dir)
    if resume:
        if latest is None:
            raise ValueError(f"{ckpt_dir}: no checkpoint to resume from")
        _check_resume_config(run_dir / "config.yaml", config)
    elif latest is not None:
        raise ValueError(f"{run_dir}: already holds checkpoints (step {latest}); resume it or use a new run directory")
    available = len(device_pool) if device_pool is not None else jax.device_count()
    if P * D > available:
        raise ValueError(
            f"partition.devices={P} x partition.data_parallel={D} needs {P * D} devices, "
            f"{available} available (on CPU set jax_num_cpu_devices before jax starts)"
        )

    # -- data, model, partition, plan ------------------------------------------------------------
    train_ds, test_ds, val_ds = load_data(config.data)
    network = models.build_model(config.network, train_ds.features, train_ds.num_classes, base_dir=REPO_ROOT)
    spe = data_lib.steps_per_epoch(len(train_ds), tc.batch_size)
    if spe == 0:
        raise ValueError(f"train.batch_size={tc.batch_size} exceeds the {len(train_ds)} training samples")
    total_steps = tc.epochs * spe
    ck = None
    if resume:
        ck = pck.checkpoint_metadata(ckpt_dir, latest)
        loop = ck["metadata"]
        if not {"epoch", "position", "config"} <= set(loop):
            raise ValueError(f"{ck['path']}: not a checkpoint of train() (its metadata has no loop state); "
                             "restore it with jaxsdnn.pytree_checkpoint.restore_tree")
        _check_resume_checkpoint(ck["path"], loop["config"], config)
        if ck["fingerprint"] != network.fingerprint():
            raise ValueError(f"{ck['path']}: saved for another network (sizes {tuple(ck['sizes'])}); this configuration "
                             f"builds sizes {network.sizes}")
        if ck["num_parts"] != P:
            raise ValueError(f"{ck['path']}: written with {ck['num_parts']} model-axis devices, this run asks for "
                             f"devices={P}")
        parts = list(ck["parts"])
    else:
        parts = partition_parts(network, P, part_cfg.method, part_cfg.epsilon, part_cfg.seed, part_cfg.threads)
    plan = plan_lib.build_plan(network, parts)
    parts = [np.asarray(p, dtype=np.int64) for p in getattr(parts, "parts", parts)]
    mesh = sharded.make_mesh(P, D, devices=device_pool)
    model, params = forward.shard_model(network, plan, mesh)

    opt, schedule = make_optimizer(tc, total_steps) if optimizer is None else (optimizer, None)
    template = opt.init(jax.device_get(params))
    _, o_sh, _ = _shardings(model, params, template)
    opt_state = jax.device_put(template, o_sh)
    rng = np.asarray(jax.random.key_data(jax.random.PRNGKey(tc.seed)), dtype=np.uint32)
    if ck is not None:
        got = pck.restore_tree(ckpt_dir, model, {"params": params, "opt_state": opt_state, "rng": rng}, step=ck["step"])
        params, opt_state, rng = got["params"], got["opt_state"], got["rng"]
        step, epoch, position = ck["step"], loop["epoch"], loop["position"]
        last_loss = loop.get("loss")
    else:
        step, epoch, position = 0, 0, 0
        last_loss = None
    opt_key = _optimizer_key(tc, total_steps) if optimizer is None else ("user", id(optimizer))
    step_fn = _step_fn(model, params, tc.batch_size, opt, opt_key, template, loss)
    x_all = np.asarray(train_ds.images, np.float32)
    eval_ds, eval_name = (val_ds, "validation") if val_ds is not None else (test_ds, "test")

    metrics_path = run_dir / "metrics.jsonl"
    if writer:
        save_config(run_dir / "config.yaml", config)
        if ck is not None:
            _truncate_metrics(metrics_path, step)
    # a fresh run starts a new metrics file; a resumed one appends after the checkpoint's step
    metrics = open(metrics_path, "a" if ck is not None else "w", encoding="utf-8") if writer else None

    def log(record: dict) -> None:
        if metrics is not None:
            metrics.write(json.dumps(_json_ready(record), allow_nan=False) + "\n")
            metrics.flush()

    def save() -> Path:  # a collective: every process saves (orbax writes from the primary host)
        loop = {"epoch": epoch, "position": position, "data_seed": tc.seed, "loss": last_loss,
                "total_steps": total_steps, "config": _flat(config_to_dict(config))}
        return pck.save_tree(ckpt_dir, {"params": params, "opt_state": opt_state, "rng": rng}, model, step=step,
                             metadata=_json_ready(loop), keep=tc.keep_checkpoints)

    bar = _Progress(progress and writer)
    stop_at = total_steps if tc.max_steps is None else min(total_steps, tc.max_steps)
    resumed_from = step if ck is not None else None
    saved_step, last_ckpt = (step, ck["path"]) if ck is not None else (-1, None)
    compile_s, window_losses, window_t, window_n = None, [], time.perf_counter(), 0
    run_samples, run_t = 0, 0.0

    def finite_losses() -> list[float]:
        """The window's losses; raises :class:`Diverged` at the first non-finite one."""
        values = [float(v) for v in window_losses]
        bad = [i for i, v in enumerate(values) if not np.isfinite(v)]
        if bad:
            first = step - len(values) + bad[0] + 1
            bar.line("")
            raise Diverged(
                f"train: the loss is {values[bad[0]]} at step {first}: the run diverged (a lower train.lr?); "
                f"stopped at step {step} without saving its weights; the last good checkpoint is "
                f"{last_ckpt if last_ckpt is not None else 'none (no checkpoint was written)'}"
            )
        return values

    def checked_save() -> Path | None:
        finite_losses()
        leaves = jax.tree.leaves(ckpt_lib.gather_to_host(params))
        if not all(np.all(np.isfinite(x)) for x in leaves):
            raise Diverged(
                f"train: the weights are not finite after step {step} (the run diverged; a lower train.lr?); "
                f"not saved; the last good checkpoint is {last_ckpt if last_ckpt is not None else 'none'}"
            )
        return save()

    interrupted = []

    def on_sigint(signum, frame):  # Ctrl-C: stop after the current step, with a checkpoint
        interrupted.append(step)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C interrupts at once

    import threading

    previous = signal.signal(signal.SIGINT, on_sigint) if threading.current_thread() is threading.main_thread() else None
    try:
        while step < stop_at and not interrupted:
            for idx, _, labels in data_lib.batches(train_ds, tc.batch_size, tc.seed, epoch, start=position):
                t0 = time.perf_counter()
                x, y = forward.shard_batch(model, x_all[idx], np.asarray(labels, np.int32))
                params, opt_state, loss_value = step_fn(model, params, opt_state, x, y)
                if compile_s is None:
                    loss_value.block_until_ready()
                    compile_s = time.perf_counter() - t0
                    log({"event": "compiled", "step": step + 1, "seconds": round(compile_s, 3)})
                    window_t = time.perf_counter()
                else:
                    run_samples += tc.batch_size
                    window_n += tc.batch_size
                window_losses.append(loss_value)
                step += 1
                position += 1
                if step % tc.log_every == 0 or step == stop_at or position == spe:
                    values = finite_losses()
                    now = time.perf_counter()
                    sps = window_n / max(now - window_t, 1e-9)
                    run_t += now - window_t
                    last_loss = values[-1]
                    log({"step": step, "epoch": epoch, "loss": float(np.mean(values)),
                         "lr": None if schedule is None else float(schedule(step - 1)),
                         "samples_per_s": round(sps, 1)})
                    bar.update(f"epoch {epoch + 1}/{tc.epochs} step {step}/{total_steps} "
                               f"loss {np.mean(values):.4f} {sps:,.0f} samples/s")
                    window_losses, window_n, window_t = [], 0, time.perf_counter()
                if position == spe:
                    acc = _accuracy(model, params, eval_ds, tc.eval_batch_size, D)
                    log({"step": step, "epoch": epoch, "eval_accuracy": acc, "eval_set": eval_name})
                    bar.line(f"epoch {epoch + 1}/{tc.epochs} step {step} {eval_name} accuracy "
                             + ("n/a (empty)" if acc is None else f"{acc:.4f}"))
                    epoch, position = epoch + 1, 0
                    window_t = time.perf_counter()
                if tc.checkpoint_every and step % tc.checkpoint_every == 0:
                    last_ckpt, saved_step = checked_save(), step
                    window_t = time.perf_counter()
                if step >= stop_at or interrupted:
                    break
        if saved_step != step:
            last_ckpt, saved_step = checked_save(), step
        if interrupted:
            bar.line("")
            raise Interrupted(f"interrupted at step {step}; saved {last_ckpt} (continue with resume)")
        test_acc = _accuracy(model, params, test_ds, tc.eval_batch_size, D)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        if metrics is not None:
            metrics.close()
    shown = "n/a (empty test set)" if test_acc is None else f"{test_acc:.4f}"
    bar.line(f"done: {step} steps, test accuracy {shown}, {time.perf_counter() - t_start:.1f} s")
    summary = {
        "run_dir": str(run_dir),
        "test_accuracy": test_acc,
        "final_loss": last_loss,
        "steps": step,
        "epochs": epoch + position / spe,
        "seconds": round(time.perf_counter() - t_start, 3),
        "compile_seconds": None if compile_s is None else round(compile_s, 3),
        "samples_per_s": round(run_samples / run_t, 1) if run_t > 0 and run_samples else None,
        "devices": P,
        "data_parallel": D,
        "method": part_cfg.method,
        "checkpoint": None if last_ckpt is None else str(last_ckpt),
        "resumed_from": resumed_from,
        "network": {
            "sizes": list(network.sizes),
            "nnz": list(network.nnz),
            "density": [round(d, 5) for d in models.layer_density(network)],
        },
        "plan": plan.stats(),
    }
    if writer:
        with atomic_write(run_dir / "summary.json") as f:
            json.dump(_json_ready(summary), f, indent=2, allow_nan=False)
    return summary
