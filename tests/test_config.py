import re

import pytest

from bnrank.config import RunConfig, load_run_config, override, per_member, validate
from bnrank.errors import ConfigError


def test_defaults_validate_and_member_seeds():
    cfg = validate(RunConfig, {"members": 3, "seed": 10})
    assert cfg.member_seeds() == [10, 11, 12]
    assert validate(RunConfig, {"members": 2, "seeds": [5, 9]}).member_seeds() == [5, 9]
    assert per_member(0.1, 3) == [0.1, 0.1, 0.1]


@pytest.mark.parametrize(
    "data, message",
    [
        ({"model": {"widht": 3}}, "model.widht: unknown key"),
        ({"model": {"width": 0}}, "model.width"),
        ({"model": {"depth": -2}}, "model.depth"),
        ({"train": {"lam": -1}}, "train.lam"),
        ({"train": {"phases": [{"lr": 0}]}}, "train.phases.0.lr"),
        ({"train": {"phases": [{"steps": 0}]}}, "train.phases.0.steps"),
        ({"train": {"phases": [{"optimizer": "newton"}]}}, "train.phases.0.optimizer"),
        ({"train": {"phases": [{"optimizer": "sgd"}]}}, "batch_size"),
        ({"train": {"phases": []}}, "train.phases"),
        ({"task": {"n_train": 0}}, "task.n_train"),
        ({"task": {"rank": 9, "latent_dim": 8}}, "rank"),
        ({"members": 2, "train": {"lam": [0.1, 0.2, 0.3]}}, "train.lam has 3 values but members = 2"),
        ({"train": {"lam": float("nan")}}, "train.lam"),
        ({"train": {"mse_reduction": "median"}}, "train.mse_reduction"),
        ("just a string", "mapping"),
    ],
)
def test_bad_configs_fail_with_one_line_naming_the_field(data, message):
    with pytest.raises(ConfigError) as info:
        validate(RunConfig, data)
    text = str(info.value)
    assert message in text and "\n" not in text


def test_override_sets_nested_keys_and_list_items():
    data = {"train": {"phases": [{"lr": 0.1}, {"lr": 0.2}]}}
    out = override(data, ["train.phases.1.lr=0.5", "model.depth=12", "train.lam=[0.1, 0.2]"])
    assert out["train"]["phases"][1]["lr"] == 0.5 and out["model"]["depth"] == 12
    assert out["train"]["lam"] == [0.1, 0.2] and data["train"]["phases"][1]["lr"] == 0.2
    with pytest.raises(ConfigError, match="key=value"):
        override({}, ["model.depth"])
    with pytest.raises(ConfigError, match="index"):
        override(data, ["train.phases.5.lr=1"])


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {depth: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_run_config(tmp_path / "missing.yaml")
    good = tmp_path / "good.yaml"
    good.write_text("members: 2\nmodel: {depth: 4}\n")
    assert load_run_config(good, ["model.width=7"]).model.width == 7


@pytest.mark.parametrize(
    "key, value, message",
    [("model.depth=true", None, "model.depth: Input should be a valid integer, got true"),
     ("model.width=8.0", None, "model.width: Input should be a valid integer, got 8.0"),
     ("model.width='8'", None, "model.width: Input should be a valid integer, got '8'"),
     ("task.n_train=false", None, "task.n_train: Input should be a valid integer, got false"),
     ("train.lam=true", None, "train.lam: Input should be a valid number, got true"),
     ("train.phases=[{lr: '0.1'}]", None, "train.phases.0.lr: Input should be a valid number, got '0.1'")],
)
def test_values_are_not_coerced(key, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_run_config(None, [key])


def test_integers_still_fill_float_fields_and_lists_fill_tuples():
    cfg = load_run_config(None, ["train.lam=1", "model.depth=3", "train.phases=[{betas: [0, 0.5]}]", "task.kind=symmetry",
                                 "task.axis=[1, 0, 0]"])
    assert cfg.train.lam == 1.0 and isinstance(cfg.train.lam, float) and cfg.model.depth == 3
    assert cfg.train.phases[0].betas == (0.0, 0.5) and cfg.task.axis == (1.0, 0.0, 0.0)
    assert load_run_config(None, []).model_dump(mode="json") == validate(RunConfig, load_run_config(None, []).model_dump(mode="json")).model_dump(mode="json")


def test_a_batch_larger_than_the_training_set_is_refused():
    with pytest.raises(ConfigError, match=re.escape("train.phases.0.batch_size = 33 exceeds task.n_train = 32")):
        load_run_config(None, ["task.n_train=32", "train.phases=[{optimizer: sgd, batch_size: 33}]"])
    assert load_run_config(None, ["task.n_train=32", "train.phases=[{optimizer: sgd, batch_size: 32}]"])


def test_a_binary_file_is_not_a_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(bytes(range(128, 256)))
    with pytest.raises(ConfigError, match="not a text file"):
        load_run_config(path)
