"""Run configuration: a frozen dataclass tree with defaults, YAML files and ``--set`` overrides.

A YAML file gives any subset of the sections below; missing keys keep their defaults, unknown keys
and wrongly typed values are rejected with the key, the file, the expected type and the value::

    data:      {name: digits, path: "", test_fraction: 0.2, validation_fraction: 0.0, image_side: 0, seed: 0}
    network:   {kind: radixnet, width: 256, hidden_layers: 5, copies: 8, fan_in: 16, input_fan_in: 6,
                head_fan_in: 0, path: "", layers: 6, init: he, seed: 0}
    partition: {method: block, devices: 4, data_parallel: 1, epsilon: 0.03, seed: 0, threads: 1}
    train:     {optimizer: adam, lr: 0.003, momentum: 0.9, weight_decay: 0.0, clip_norm: 0.0,
                schedule: constant, warmup_steps: 0, epochs: 10, batch_size: 64, seed: 0, max_steps: null, eval_batch_size: 512, log_every: 10,
                checkpoint_every: 200, keep_checkpoints: 3}

Overrides are ``dotted.key=value`` strings; the value is parsed with ``yaml.safe_load`` and checked
against the field's type (``--set train.lr=1e-3 --set network.kind=random_fanin``). An ``int`` is
accepted for a ``float`` field, ``bool`` never for a number; a string such as ``1e-3`` (PyYAML reads
exponents without a dot as strings) is accepted for a float field when ``float()`` parses it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence

import yaml

from jaxsdnn._atomic import atomic_write

__all__ = [
    "Config",
    "DataConfig",
    "NetworkConfig",
    "PartitionConfig",
    "TrainConfig",
    "config_to_dict",
    "get",
    "load_config",
    "parse_overrides",
    "save_config",
]


def _choice(default, *choices):
    return dataclasses.field(default=default, metadata={"choices": choices})


def _at_least(default, low):
    return dataclasses.field(default=default, metadata={"min": low})


def _fraction(default):
    """A share in ``[0, 1)``."""
    return dataclasses.field(default=default, metadata={"min": 0.0, "below": 1.0})


_MAX_INT = 2**31 - 1  # seeds, sizes and counts: the bound every consumer (NumPy, the tools) accepts


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """``data``: which images.

    Attributes:
        name: ``digits`` (embedded in scikit-learn), ``mnist`` or ``fashion_mnist`` (IDX files in ``path``).
        path: directory of the IDX files.
        test_fraction: digits only: share held out (stratified, by ``seed``) as the test set.
        validation_fraction: share of the training samples held out for per-epoch evaluation
            (0: evaluate on the test set every epoch).
        image_side: resize images to ``side x side`` (integer upsampling, then zero padding);
            0 keeps them (digits 8x8 = 64 features, MNIST 28x28 = 784).
        seed: seeds the held-out splits.
    """

    name: str = _choice("digits", "digits", "mnist", "fashion_mnist")
    path: str = ""
    test_fraction: float = _fraction(0.2)
    validation_fraction: float = _fraction(0.0)
    image_side: int = _at_least(0, 0)
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """``network``: the sparse model (see :mod:`jaxsdnn.models`).

    Attributes:
        kind: ``radixnet`` | ``random_fanin`` | ``graphchallenge``.
        width: hidden neurons per layer (radixnet: ``copies * 2^m``).
        hidden_layers: ``width -> width`` layers after the input layer.
        copies: radixnet's ``c``: hidden fan-in ``2c``, density ``2c / width``.
        fan_in: random_fanin: incoming edges of every hidden neuron.
        input_fan_in: pixels read by every first-layer neuron (0: dense).
        head_fan_in: hidden neurons read by every class (0: dense).
        path: graphchallenge: the network directory (``n1024-l*.tsv.gz``).
        layers: graphchallenge: challenge layers used.
        init: graphchallenge: ``he`` (fresh fan-in scaled values) or ``keep`` (challenge values).
        seed: seeds the structure and the initial values.
    """

    kind: str = _choice("radixnet", "radixnet", "random_fanin", "graphchallenge")
    width: int = _at_least(256, 1)
    hidden_layers: int = _at_least(5, 0)
    copies: int = _at_least(8, 1)
    fan_in: int = _at_least(16, 1)
    input_fan_in: int = _at_least(6, 0)
    head_fan_in: int = _at_least(0, 0)
    path: str = ""
    layers: int = _at_least(6, 1)
    init: str = _choice("he", "he", "keep")
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class PartitionConfig:
    """``partition``: the device layout.

    Attributes:
        method: ``block`` | ``random`` | ``kahypar`` | ``mtkahypar`` (:func:`jaxsdnn.partition.partition_network`).
        devices: devices on the model axis (the partition's parts).
        data_parallel: devices on the data axis (the batch is split over them).
        epsilon: allowed imbalance of every layer (largest device load over the mean, minus 1).
            A layer no packing can balance that well (a 10-class head on 4 devices: 3 classes vs
            a mean of 2.5) gets the best packing the partitioner finds.
        seed: partitioner seed.
        threads: partitioner threads (mtkahypar).
    """

    method: str = _choice("block", "block", "random", "kahypar", "mtkahypar")
    devices: int = _at_least(4, 1)
    data_parallel: int = _at_least(1, 1)
    epsilon: float = _at_least(0.03, 0.0)
    seed: int = 0
    threads: int = _at_least(1, 1)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """``train``: optimisation, logging and checkpoints.

    Attributes:
        optimizer: ``adam`` | ``adamw`` (decoupled ``weight_decay``) | ``sgd`` (with ``momentum``; 0
            for plain SGD).
        lr: peak learning rate.
        momentum: SGD momentum.
        weight_decay: ``adamw``'s decoupled weight decay (0: none).
        clip_norm: clip the gradients to this global norm before the optimizer (0: no clipping).
            Padding slots hold zero gradients, so they change neither the norm nor a decay.
        schedule: ``constant`` | ``cosine`` (decay to 0 over all steps), after ``warmup_steps`` linear warm-up.
        warmup_steps: linear warm-up steps.
        epochs: passes over the training set.
        batch_size: global batch, a multiple of ``partition.data_parallel``.
        seed: seeds the data order (epoch ``e`` is a permutation drawn from ``(seed, e)``) and the RNG key.
        max_steps: stop (with a checkpoint) after this many steps in all; ``null``: run all epochs.
        eval_batch_size: batch of the evaluation passes (rounded up to the data axis).
        log_every: steps between metrics lines and progress updates.
        checkpoint_every: steps between checkpoints (0: only at the end).
        keep_checkpoints: newest checkpoints kept in ``run_dir/checkpoints``.
    """

    optimizer: str = _choice("adam", "adam", "adamw", "sgd")
    lr: float = _at_least(3e-3, 0.0)
    momentum: float = _at_least(0.9, 0.0)
    weight_decay: float = _at_least(0.0, 0.0)
    clip_norm: float = _at_least(0.0, 0.0)
    schedule: str = _choice("constant", "constant", "cosine")
    warmup_steps: int = _at_least(0, 0)
    epochs: int = _at_least(10, 0)
    batch_size: int = _at_least(64, 1)
    seed: int = 0
    max_steps: int | None = _at_least(None, 0)
    eval_batch_size: int = _at_least(512, 1)
    log_every: int = _at_least(10, 1)
    checkpoint_every: int = _at_least(200, 0)
    keep_checkpoints: int = _at_least(3, 1)


@dataclasses.dataclass(frozen=True)
class Config:
    """The whole run: ``data``, ``network``, ``partition``, ``train``."""

    data: DataConfig = DataConfig()
    network: NetworkConfig = NetworkConfig()
    partition: PartitionConfig = PartitionConfig()
    train: TrainConfig = TrainConfig()


# ----------------------------------------------------------------------------------------------
# type checking
# ----------------------------------------------------------------------------------------------
def _type_name(tp) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return "null" if tp is type(None) else tp.__name__


def _coerce(value, tp, key: str, where: str):
    """``value`` as type ``tp`` or a ValueError naming ``key``, the expected type and the value."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, where)
            except ValueError:
                pass
        raise ValueError(f"{where}{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if tp is float:
        v = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            v = float(value)
        elif isinstance(value, str):
            try:
                v = float(value)
            except ValueError:
                pass
        if v is not None:
            if not math.isfinite(v):
                raise ValueError(f"{where}{key}: expected a finite number, got {value!r}")
            return v
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > _MAX_INT:
                raise ValueError(f"{where}{key}: {value} is out of range (|value| <= {_MAX_INT})")
            return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ValueError(f"{where}{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _build(cls, values: Mapping, prefix: str, where: str):
    """A ``cls`` dataclass from a (partial) mapping: defaults for missing keys, errors for unknown ones."""
    if not isinstance(values, Mapping):
        raise ValueError(f"{where}{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in fields:
            raise ValueError(f"{where}unknown key {full!r}; expected one of {sorted(fields)} under {prefix.rstrip('.') or 'the top level'}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{full}.", where)
            continue
        v = _coerce(value, tp, full, where)
        choices = fields[key].metadata.get("choices")
        if choices and v not in choices:
            raise ValueError(f"{where}{full}: {v!r} is not one of {list(choices)}")
        low = fields[key].metadata.get("min")
        if low is not None and v is not None and v < low:
            raise ValueError(f"{where}{full}: {v!r} is below the minimum {low}")
        below = fields[key].metadata.get("below")
        if below is not None and v is not None and v >= below:
            raise ValueError(f"{where}{full}: {v!r} must be below {below}")
        kwargs[key] = v
    return dataclasses.replace(cls(), **kwargs)


def _merge(base: dict, extra: Mapping) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def config_to_dict(config: Config) -> dict:
    """Plain nested dict (YAML/JSON ready)."""
    return dataclasses.asdict(config)


def get(config: Config, key: str):
    """A value by dotted key (``"partition.devices"``) or by a field name unique across sections (``"devices"``).

    Raises:
        ValueError: an unknown key, or a bare name that several sections have (``"seed"``).
    """
    if "." in key:
        node = config
        for part in key.split("."):
            if not dataclasses.is_dataclass(node) or part not in {f.name for f in dataclasses.fields(node)}:
                raise ValueError(f"unknown config key {key!r}")
            node = getattr(node, part)
        return node
    owners = [s.name for s in dataclasses.fields(config) if key in {f.name for f in dataclasses.fields(getattr(config, s.name))}]
    if len(owners) != 1:
        what = "unknown config key" if not owners else f"ambiguous config key (in {', '.join(owners)})"
        raise ValueError(f"{what} {key!r}; use a dotted key such as 'partition.devices'")
    return getattr(getattr(config, owners[0]), key)


def parse_overrides(overrides: Sequence[str]) -> dict:
    """``["train.lr=1e-3", "network.kind=random_fanin"]`` -> nested dict (values via ``yaml.safe_load``).

    Raises:
        ValueError: an override without ``=`` or with an empty key.
    """
    out: dict = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ValueError(f"--set {item!r}: expected dotted.key=value, e.g. train.lr=0.001")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as e:
            raise ValueError(f"--set {item!r}: value is not valid YAML ({e})") from None
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {item!r}: {p!r} is both a value and a section")
        node[parts[-1]] = value
    return out


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = (),
                values: Mapping | None = None) -> Config:
    """Defaults, then the YAML file, then ``values``, then the ``--set`` overrides.

    Args:
        path: a YAML file (``None``: defaults only).
        overrides: ``dotted.key=value`` strings.
        values: a nested mapping applied after the file (for programmatic use).

    Raises:
        ValueError: unreadable file or invalid YAML, unknown key (named, with the file), wrong type
            (key, expected type, value) or value outside a field's choices.
    """
    tree: dict = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                loaded = yaml.safe_load(f)
        except OSError as e:
            raise ValueError(f"{path}: cannot read config ({e.strerror})") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: invalid YAML ({e})") from None
        if loaded is not None and not isinstance(loaded, Mapping):
            raise ValueError(f"{path}: expected a mapping of sections (data, network, partition, train), got {loaded!r}")
        tree = dict(loaded or {})
        _build(Config, tree, "", f"{path}: ")  # validates now, so errors name the file
    if values:
        _build(Config, values, "", "")
        tree = _merge(tree, values)
    if overrides:
        extra = parse_overrides(overrides)
        _build(Config, extra, "", "--set: ")
        tree = _merge(tree, extra)
    return _build(Config, tree, "", "")


def save_config(path: str | os.PathLike, config: Config) -> None:
    """Writes ``config`` as YAML (atomically); :func:`load_config` reads it back equal."""
    with atomic_write(path) as f:
        yaml.safe_dump(config_to_dict(config), f, sort_keys=False)
