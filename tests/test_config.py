"""Config loading: defaults, YAML files, --set overrides, and the errors for unknown keys and types."""

from __future__ import annotations

from pathlib import Path

import pytest

from jaxsdnn.config import Config, config_to_dict, get, load_config, parse_overrides, save_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_defaults():
    c = load_config()
    assert c == Config()
    assert c.train.optimizer == "adam" and c.train.max_steps is None and c.partition.devices == 4


def test_partial_file_keeps_defaults(tmp_path):
    c = load_config(write(tmp_path, "train:\n  lr: 0.01\n  epochs: 3\nnetwork:\n  kind: random_fanin\n"))
    assert c.train.lr == 0.01 and c.train.epochs == 3 and c.network.kind == "random_fanin"
    assert c.train.batch_size == Config().train.batch_size and c.data == Config().data


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "train:\n  learning_rate: 0.01\n")
    with pytest.raises(ValueError, match=f"{path}: unknown key 'train.learning_rate'; expected one of .*'lr'"):
        load_config(path)
    with pytest.raises(ValueError, match="unknown key 'model'"):
        load_config(write(tmp_path, "model: {}\n"))


@pytest.mark.parametrize(
    "text, message",
    [
        ("train:\n  epochs: 2.5\n", "train.epochs: expected int, got 2.5 \\(float\\)"),
        ("train:\n  epochs: true\n", "train.epochs: expected int, got True \\(bool\\)"),
        ("train:\n  lr: fast\n", "train.lr: expected float, got 'fast' \\(str\\)"),
        ("data:\n  path: 3\n", "data.path: expected str, got 3 \\(int\\)"),
        ("train:\n  max_steps: x\n", "train.max_steps: expected int or null, got 'x'"),
        ("train: 5\n", "train: expected a mapping of keys, got 5"),
        ("train:\n  optimizer: lamb\n", "train.optimizer: 'lamb' is not one of \\['adam', 'adamw', 'sgd'\\]"),
        ("train:\n  batch_size: 0\n", "train.batch_size: 0 is below the minimum 1"),
    ],
)
def test_wrong_type_names_key_type_and_value(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match=f"{path}: {message}"):
        load_config(path)


def test_not_a_mapping_and_bad_yaml(tmp_path):
    with pytest.raises(ValueError, match="expected a mapping of sections"):
        load_config(write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ValueError, match="invalid YAML"):
        load_config(write(tmp_path, "train: [\n"))
    with pytest.raises(ValueError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_overrides(tmp_path):
    path = write(tmp_path, "train:\n  lr: 0.01\n")
    c = load_config(path, ["train.lr=1e-3", "train.epochs=7", "network.kind=random_fanin", "train.max_steps=5",
                           "partition.epsilon=1"])
    assert c.train.lr == 1e-3  # PyYAML reads 1e-3 as a string; a float field accepts it
    assert c.train.epochs == 7 and c.network.kind == "random_fanin" and c.train.max_steps == 5
    assert c.partition.epsilon == 1.0 and isinstance(c.partition.epsilon, float)
    assert load_config(None, ["train.max_steps=null"]).train.max_steps is None
    with pytest.raises(ValueError, match="--set: unknown key 'train.lrate'"):
        load_config(path, ["train.lrate=1"])
    with pytest.raises(ValueError, match="--set: train.epochs: expected int, got 'many'"):
        load_config(path, ["train.epochs=many"])
    with pytest.raises(ValueError, match="expected dotted.key=value"):
        parse_overrides(["train.lr"])
    with pytest.raises(ValueError, match="expected dotted.key=value"):
        parse_overrides(["train..lr=1"])


def test_values_mapping_and_roundtrip(tmp_path):
    c = load_config(values={"train": {"epochs": 2}, "partition": {"devices": 2}})
    assert c.train.epochs == 2 and c.partition.devices == 2
    save_config(tmp_path / "saved.yaml", c)
    assert load_config(tmp_path / "saved.yaml") == c
    assert config_to_dict(c)["partition"]["devices"] == 2


@pytest.mark.parametrize("name", ["digits.yaml", "graphchallenge.yaml"])
def test_shipped_configs_load(name):
    c = load_config(CONFIGS / name)
    assert c.partition.devices == 4


def test_get():
    c = load_config(None, ["partition.devices=2"])
    assert get(c, "devices") == 2 and get(c, "partition.devices") == 2 and get(c, "train.lr") == c.train.lr
    with pytest.raises(ValueError, match="ambiguous config key .*'seed'"):
        get(c, "seed")
    with pytest.raises(ValueError, match="unknown config key 'train.nope'"):
        get(c, "train.nope")
