"""Config validation: defaults, typos with suggestions, types, ranges, overrides, safe YAML."""

import re

import pytest

from charrnn.config import Config, ConfigError, apply_overrides, from_dict, load_config


def test_defaults_are_the_dataclass_values():
    cfg = from_dict({"data": "d", "out_dir": "o"})
    assert cfg.model.hidden_size == Config().model.hidden_size
    assert cfg.train.optimizer == "adam" and cfg.train.time_limit is None


def test_typo_is_an_error_naming_the_closest_key():
    with pytest.raises(ConfigError, match=r"unknown key 'train.lerning_rate'; did you mean 'train.learning_rate'"):
        from_dict({"data": "d", "train": {"lerning_rate": 0.1}})
    with pytest.raises(ConfigError, match=r"did you mean 'model'"):
        from_dict({"data": "d", "modle": {}})


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("model", "hidden_size", "big", "must be an integer"),
        ("model", "hidden_size", -4, "must be > 0"),
        ("model", "hidden_size", 1.5, "must be an integer"),
        ("train", "learning_rate", 0, "must be > 0"),
        ("train", "learning_rate", "fast", "must be a number"),
        ("train", "batch_size", True, "must be an integer"),
        ("train", "optimizer", "adamw", "did you mean 'adam'"),
        ("model", "activation", "sigmoid", "one of tanh, relu"),
        ("model", "cell", "lstn", "did you mean 'lstm'"),
        ("model", "dropout", 1.0, r"\[0, 1\)"),
        ("model", "dropout", -0.1, r"\[0, 1\)"),
        ("train", "beta2", 1.0, r"\[0, 1\)"),
        ("model", "weight_drop", 1.0, r"\[0, 1\)"),
        ("model", "embed_dropout", -0.5, r"\[0, 1\)"),
        ("model", "variational_dropout", 1, "true or false"),
        ("train", "ema_decay", 1.0, r"\[0, 1\)"),
        ("train", "time_limit", "soon", "duration"),
    ],
)  # fmt: skip
def test_wrong_types_and_ranges_name_the_key(section, key, value, message):
    with pytest.raises(ConfigError, match=message) as e:
        from_dict({"data": "d", section: {key: value}})
    assert f"{section}.{key}" in str(e.value)


def test_yaml_quirks_are_handled(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data: d\ntrain:\n  learning_rate: 2e-3\n  time_limit: 10m\n")  # YAML 1.1 reads 2e-3 as a string
    cfg = load_config(p)
    assert cfg.train.learning_rate == 0.002 and cfg.train.time_limit == 600.0
    assert cfg.out_dir == "runs/c"  # default: runs/<config stem>


def test_overrides_are_validated_too(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data: d\n")
    cfg = load_config(p, ["train.max_steps=7", "model.activation=relu", "out_dir=x"])
    assert cfg.train.max_steps == 7 and cfg.model.activation == "relu" and cfg.out_dir == "x"
    with pytest.raises(ConfigError, match=r"did you mean 'train.max_steps'"):
        load_config(p, ["train.max_step=7"])
    with pytest.raises(ConfigError, match=r"key.path=value"):
        apply_overrides({}, ["train.max_steps"])


@pytest.mark.parametrize(
    "content, message",
    [("- a\n- b\n", "mapping"), ("data: [unclosed\n", "not valid YAML"),
     ("!!python/object/apply:os.system ['echo hi']\n", "not valid YAML"),
     ("train:\n  learning_rate: 0.1\n  batch_size: 4\n  learning_rate: 0.2\n",
      "line 4, column 3: duplicate key 'learning_rate' (first at line 2)"),
     ("model:\n  hidden_size: 8\nmodel:\n  num_layers: 2\n", "duplicate key 'model'")],
)  # fmt: skip
def test_bad_files_are_clear_errors(tmp_path, content, message):
    p = tmp_path / "c.yaml"
    p.write_text(content)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(p)


def test_missing_file_and_missing_data():
    with pytest.raises(ConfigError, match="no such config"):
        load_config("/nonexistent/cfg.yaml")
    with pytest.raises(ConfigError, match="needs 'data'"):
        from_dict({"train": {}})


def test_cells_and_dropout(tmp_path):
    cfg = from_dict({"data": "d", "out_dir": "o"})
    assert cfg.model.cell == "rnn" and cfg.model.dropout == 0.0  # what every earlier config meant
    cfg = from_dict({"data": "d", "out_dir": "o", "model": {"cell": "gru", "dropout": 0.25}})
    assert cfg.model.cell == "gru" and cfg.model.dropout == 0.25
    for cell in ("lstm", "gru"):
        with pytest.raises(ConfigError, match=f"model.activation 'relu' does not fit model.cell '{cell}'"):
            from_dict({"data": "d", "model": {"cell": cell, "activation": "relu"}})
    relu = from_dict({"data": "d", "out_dir": "o", "model": {"cell": "rnn", "activation": "relu"}})
    assert relu.model.activation == "relu"


@pytest.mark.parametrize(
    "raw, suggestion",
    [
        ({"train": {"lr": 0.1}}, "train.learning_rate"),  # difflib alone said lr_decay
        ({"lr": 0.1}, "train.learning_rate"),
        ({"train": {"dropout": 0.1}}, "model.dropout"),  # our own name, in the other section
        ({"batch_size": 8}, "train.batch_size"),
        ({"model": {"rnn_size": 128}}, "model.hidden_size"),  # char-rnn's and torch-rnn's names
        ({"train": {"max_iters": 10}}, "train.max_steps"),  # nanoGPT's
        ({"train": {"Batch_Size": 8}}, "train.batch_size"),
    ],
)
def test_unknown_keys_suggest_what_the_user_meant(raw, suggestion):
    with pytest.raises(ConfigError, match=rf"did you mean '{re.escape(suggestion)}'"):
        from_dict({"data": "d", **raw})


def test_choices_are_read_in_any_letter_case():
    cfg = from_dict({"data": "d", "out_dir": "o", "model": {"cell": "LSTM", "activation": "Tanh"},
                     "train": {"optimizer": "Adam"}})  # fmt: skip
    assert (cfg.model.cell, cfg.model.activation, cfg.train.optimizer) == ("lstm", "tanh", "adam")


@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf"])
def test_no_setting_takes_an_infinite_or_nan_number(tmp_path, value):
    path = tmp_path / "c.yaml"
    path.write_text(f"data: d\ntrain:\n  sample_temperature: {value}\n")
    with pytest.raises(ConfigError, match=r"train.sample_temperature must be a finite number"):
        load_config(path)


def test_the_regularisers_are_stored_only_when_on():
    # off (the default), they stay out of the stored config, so that 0.2.0 still reads those checkpoints
    stored = from_dict({"data": "d", "out_dir": "o"}).to_dict()
    assert not {"variational_dropout", "weight_drop", "embed_dropout"} & set(stored["model"])
    assert "ema_decay" not in stored["train"]
    on = from_dict({"data": "d", "out_dir": "o", "model": {"weight_drop": 0.2, "variational_dropout": True,
                    "dropout": 0.1}, "train": {"ema_decay": 0.999}})  # fmt: skip
    d = on.to_dict()
    assert d["model"]["weight_drop"] == 0.2 and d["model"]["variational_dropout"] is True
    assert d["train"]["ema_decay"] == 0.999 and "embed_dropout" not in d["model"]
    assert from_dict(d) == on
    # variational dropout is a way of drawing dropout's masks: without dropout it is off, and not stored
    alone = from_dict({"data": "d", "out_dir": "o", "model": {"variational_dropout": True}})
    assert alone.model.variational_dropout is False and "variational_dropout" not in alone.to_dict()["model"]
