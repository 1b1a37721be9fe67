"""The training config: dataclasses whose defaults are the documented values, read from YAML.

    data: data/shakespeare          # folder written by `charrnn prepare`
    out_dir: runs/shakespeare       # checkpoints and metrics (default: runs/<config file stem>)
    model:  {cell, hidden_size, num_layers, activation, dropout, variational_dropout, weight_drop,
             embed_dropout, dtype}
    train:  {batch_size, seq_length, max_steps, optimizer, learning_rate, ...}

Validation happens up front: an unknown key is an error that names the closest
valid key, a wrong type or out-of-range value names the key and what it takes.
Values can be overridden with "key.path=value" strings (the CLI's --set). YAML is
read with the safe loader only. Paths are relative to the working directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .cells import CELL_NAMES, cell_activations
from .errors import CharRNNError


class ConfigError(CharRNNError):
    """A config that cannot be used."""


@dataclass
class ModelConfig:
    cell: str = "rnn"  # rnn | lstm | gru
    hidden_size: int = 256
    num_layers: int = 1
    activation: str = "tanh"  # tanh | relu (relu for cell rnn only)
    dropout: float = 0.0  # probability of dropping each unit of every layer's output, in training
    variational_dropout: bool = False  # one dropout mask per window for all its steps (locked); off without dropout
    weight_drop: float = 0.0  # DropConnect on each layer's recurrent matrix Whh, one mask per window
    embed_dropout: float = 0.0  # probability of dropping a whole character (its embedding row) for a window
    dtype: str = "float32"  # float32 | float64


# Training-only settings that are off by default. Off, they are left out of the stored config (Config.to_dict),
# so a checkpoint that does not use them stays readable by releases before them (0.2.0 refuses unknown keys).
OPTIONAL_OFF = {("model", "variational_dropout"): False, ("model", "weight_drop"): 0.0,
                ("model", "embed_dropout"): 0.0, ("train", "ema_decay"): 0.0, ("train", "device"): "cpu"}  # fmt: skip


ARCHITECTURE = ("cell", "hidden_size", "num_layers", "activation")  # the keys that fix the parameters' shapes


def model_differences(checkpoint: ModelConfig, config: ModelConfig, keys=ARCHITECTURE) -> list[str]:
    """'model.KEY: checkpoint A, config B' for each of keys whose value differs."""
    return [f"model.{k}: checkpoint {getattr(checkpoint, k)!r}, config {getattr(config, k)!r}"
            for k in keys if getattr(checkpoint, k) != getattr(config, k)]  # fmt: skip


@dataclass
class TrainConfig:
    batch_size: int = 64  # parallel streams through the text
    seq_length: int = 100  # BPTT window; the state is carried across windows
    max_steps: int = 2000
    random_offset: bool = True  # shift the streams by a random offset every epoch after the first
    optimizer: str = "adam"  # sgd | momentum | adagrad | rmsprop | adam
    learning_rate: float = 2e-3
    lr_schedule: str = "cosine"  # constant | step | cosine (all after a linear warmup)
    warmup_steps: int = 100
    min_lr_frac: float = 0.1  # cosine: final learning rate as a fraction of learning_rate
    lr_decay_every: int = 1000  # step: multiply the rate by lr_decay every this many steps
    lr_decay: float = 0.5
    momentum: float = 0.9  # momentum
    beta1: float = 0.9  # adam
    beta2: float = 0.999  # adam
    rms_decay: float = 0.99  # rmsprop
    eps: float = 1e-8  # adagrad, rmsprop, adam
    input_lr_scale: float = 1.0  # learning-rate multiplier for layers.0.Wxh (the character embeddings)
    weight_decay: float = 0.0  # decoupled, on weight matrices only (not biases)
    ema_decay: float = 0.0  # weight averaging: evaluate, keep and sample an EMA of the parameters; 0 = off
    grad_clip: float = 5.0  # clip the global gradient norm; 0 disables
    eval_every: int = 200
    log_every: int = 10  # append the mean training loss of every this many steps to out_dir/train.jsonl
    eval_chars: int = 0  # validation characters per evaluation; 0 = the whole split, exactly once
    patience: int = 0  # stop after this many evaluations without a better val loss; 0 = never
    seed: int = 0
    threads: int = 0  # BLAS threads for the matrix products; 0 = the library's default (every core)
    device: str = "cpu"  # cpu | cuda (an NVIDIA GPU through CuPy: pip install -e ".[gpu]", docs/gpu.md)
    init_from: str | None = None  # fine-tune: start from this checkpoint file or run folder (docs/commands.md)
    time_limit: float | None = None  # wall-clock budget in seconds ("90s", "10m", "1.5h" also read)
    sample_chars: int = 200  # characters sampled after each evaluation; 0 = none
    sample_temperature: float = 0.8


@dataclass
class Config:
    data: str = ""
    out_dir: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        """The config as stored (checkpoints, tune's configs). The keys of OPTIONAL_OFF are left out at their
        defaults (train.device cpu, the regularisers off): releases before them (0.2.0) refuse unknown keys, so
        checkpoints that do not use them stay readable there."""
        d = dataclasses.asdict(self)
        for (section, key), off in OPTIONAL_OFF.items():
            if d[section][key] == off:
                del d[section][key]
        return d


CHOICES = {
    "model.cell": CELL_NAMES,
    "model.activation": ("tanh", "relu"),
    "model.dtype": ("float32", "float64"),
    "train.optimizer": ("sgd", "momentum", "adagrad", "rmsprop", "adam"),
    "train.lr_schedule": ("constant", "step", "cosine"),
    "train.device": ("cpu", "cuda"),
}
POSITIVE = {  # must be > 0
    "model.hidden_size", "model.num_layers", "train.batch_size", "train.seq_length", "train.max_steps",
    "train.learning_rate", "train.eval_every", "train.log_every", "train.lr_decay_every", "train.eps",
    "train.sample_temperature", "train.input_lr_scale",
}  # fmt: skip
NON_NEGATIVE = {
    "train.warmup_steps", "train.weight_decay", "train.grad_clip", "train.eval_chars", "train.patience",
    "train.sample_chars", "train.seed", "train.threads",
}  # fmt: skip
UNIT_INTERVAL = {  # must lie in [0, 1)
    "model.dropout",
    "model.weight_drop",
    "model.embed_dropout",
    "train.ema_decay",
    "train.momentum",
    "train.beta1",
    "train.beta2",
    "train.rms_decay",
}
FRACTION = {"train.min_lr_frac", "train.lr_decay"}  # must lie in [0, 1]

# What char-rnn, torch-rnn and nanoGPT call our keys (their flags and config names), and common short forms:
# a user who types one is pointed to ours, where spelling alone would suggest a wrong key (lr -> lr_decay).
FOREIGN_NAMES = {
    "lr": "train.learning_rate", "rnn_size": "model.hidden_size", "n_embd": "model.hidden_size",
    "hidden": "model.hidden_size", "n_layer": "model.num_layers", "layers": "model.num_layers",
    "model": "model.cell", "rnn_type": "model.cell", "cell_type": "model.cell", "batch": "train.batch_size",
    "block_size": "train.seq_length", "seq_len": "train.seq_length", "bptt": "train.seq_length",
    "max_iters": "train.max_steps", "steps": "train.max_steps", "warmup_iters": "train.warmup_steps",
    "eval_interval": "train.eval_every", "eval_val_every": "train.eval_every",
    "checkpoint_every": "train.eval_every", "log_interval": "train.log_every", "print_every": "train.log_every",
    "decay_rate": "train.rms_decay", "learning_rate_decay": "train.lr_decay", "dataset": "data",
    "data_dir": "data", "input": "data", "checkpoint_dir": "out_dir",
}  # fmt: skip

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*(s|m|min|h)?\s*$", re.I)


# Top-level sections that other commands read and `charrnn train` leaves alone, so that one file serves both:
# tune (the search space of `charrnn tune`, validated by charrnn/tune/space.py).
OTHER_SECTIONS = ("tune",)


def _sections() -> dict[str, type]:
    return {"model": ModelConfig, "train": TrainConfig}


def valid_keys() -> list[str]:
    """Every dotted key the config accepts."""
    keys = [f.name for f in dataclasses.fields(Config) if f.name not in _sections()]
    for name, cls in _sections().items():
        keys += [f"{name}.{f.name}" for f in dataclasses.fields(cls)]
    return keys


def _suggest(key: str) -> str:
    """'; did you mean ...?' for what the user most likely meant, or ''.

    In order: the same name in another section (train.dropout -> model.dropout),
    the same key in other letter case, our name for another tool's (lr ->
    train.learning_rate), then the closest spelling at the same level.
    """
    name = key.rpartition(".")[2]
    for guess in (
        [k for k in valid_keys() if k.rpartition(".")[2] == name.lower()]
        + [k for k in valid_keys() if k == key.lower()]
        + [FOREIGN_NAMES.get(name.lower())]
    ):
        if guess and guess != key:
            return f"; did you mean '{guess}'?"
    if "." in key:
        section = key.split(".", 1)[0]
        candidates = [k for k in valid_keys() if k.startswith(section + ".")] or valid_keys()
    else:
        candidates = [f.name for f in dataclasses.fields(Config)] + list(OTHER_SECTIONS)
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def _coerce(key: str, value: Any, typ: str) -> Any:
    """Check and convert one value to the field's declared type."""

    def bad(what: str) -> ConfigError:
        return ConfigError(f"{key} must be {what}, got {value!r} ({type(value).__name__})")

    if typ == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise bad("an integer")
        return value
    if typ == "float":
        if isinstance(value, bool):
            raise bad("a number")
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 2e-3 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                raise bad("a number") from None
        else:
            raise bad("a number")
        if not math.isfinite(number):  # YAML's .inf and .nan: no setting means either
            raise bad("a finite number")
        return number
    if typ == "float | None":
        if value is None:
            return None
        if isinstance(value, str) and key == "train.time_limit":
            seconds = parse_duration(value)
            if seconds is None:
                raise bad("a duration in seconds or like '90s', '10m', '1.5h'")
            return seconds
        return _coerce(key, value, "float")
    if typ == "str | None":
        return None if value is None else _coerce(key, value, "str")
    if typ == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if typ == "str":
        if not isinstance(value, str):
            raise bad("a string")
        return value
    raise AssertionError(typ)


def parse_duration(text: str) -> float | None:
    """'90', '90s', '10m', '1.5h' -> seconds (float); None when text is not a duration."""
    m = _DURATION.match(str(text))
    if not m:
        return None
    return float(m.group(1)) * {"s": 1, "m": 60, "min": 60, "h": 3600}[(m.group(2) or "s").lower()]


def field_types() -> dict[str, str]:
    """Every dotted key the config accepts -> its declared type ("int", "float", "str | None", ...)."""
    types = {f.name: str(f.type) for f in dataclasses.fields(Config) if f.name not in _sections()}
    for name, cls in _sections().items():
        types |= {f"{name}.{f.name}": str(f.type) for f in dataclasses.fields(cls)}
    return types


def check_value(key: str, value: Any, typ: str | None = None) -> Any:
    """One value of a dotted key, as the config reads it: converted to the key's type (or typ), a choice in
    lower case (cell: LSTM means lstm), within the key's range. Raises ConfigError naming the key."""
    value = _coerce(key, value, typ or field_types()[key])
    if key in CHOICES and isinstance(value, str):
        value = value.lower()
    _check_range(key, value)
    return value


def _check_range(key: str, value: Any) -> None:
    if value is None:
        return
    if key in CHOICES and value not in CHOICES[key]:
        close = difflib.get_close_matches(str(value), CHOICES[key], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{key} must be one of {', '.join(CHOICES[key])}, got {value!r}{hint}")
    if key in POSITIVE and not value > 0:
        raise ConfigError(f"{key} must be > 0, got {value!r}")
    if key in NON_NEGATIVE and not value >= 0:
        raise ConfigError(f"{key} must be >= 0, got {value!r}")
    if key in UNIT_INTERVAL and not 0 <= value < 1:
        raise ConfigError(f"{key} must lie in [0, 1), got {value!r}")
    if key in FRACTION and not 0 <= value <= 1:
        raise ConfigError(f"{key} must lie in [0, 1], got {value!r}")
    if key == "train.time_limit" and not value > 0:
        raise ConfigError(f"{key} must be > 0 seconds, got {value!r}")


def from_dict(raw: Any, default_out_dir: str = "") -> Config:
    """Validate a nested mapping (as read from YAML) into a Config."""
    if not isinstance(raw, dict):
        raise ConfigError(f"the config must be a mapping of keys to values, got {type(raw).__name__}")
    cfg = Config()
    top_fields = {f.name: f for f in dataclasses.fields(Config)}
    for key, value in raw.items():
        key = str(key)
        if key in OTHER_SECTIONS:
            continue
        if key not in top_fields:
            raise ConfigError(f"unknown key '{key}'{_suggest(key)}")
        if key in _sections():
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{key} must be a mapping, got {value!r}")
            section = getattr(cfg, key)
            fields = {f.name: f for f in dataclasses.fields(section)}
            for sub, v in value.items():
                dotted = f"{key}.{sub}"
                if sub not in fields:
                    raise ConfigError(f"unknown key '{dotted}'{_suggest(dotted)}")
                setattr(section, sub, check_value(dotted, v, str(fields[sub].type)))
        else:
            setattr(cfg, key, _coerce(key, value, str(top_fields[key].type)))
    if not cfg.model.dropout:  # locked dropout is a way of drawing dropout's masks: without dropout it is off
        cfg.model.variational_dropout = False
    allowed = cell_activations(cfg.model.cell)
    if cfg.model.activation not in allowed:
        why = " (relu is for cell rnn only)" if cfg.model.activation == "relu" else ""
        raise ConfigError(
            f"model.activation {cfg.model.activation!r} does not fit model.cell {cfg.model.cell!r}, "
            f"which takes {', '.join(allowed)}{why}"
        )
    if not cfg.data:
        raise ConfigError("the config needs 'data': the folder written by `charrnn prepare`")
    cfg.out_dir = cfg.out_dir or default_out_dir
    if not cfg.out_dir:
        raise ConfigError("the config needs 'out_dir': where checkpoints go")
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.max_steps=200' -> (['train', 'max_steps'], 200); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set takes key.path=value, got {text!r}")
    key, _, value = text.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError(f"--set takes key.path=value, got {text!r}")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.split("."), parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply --set overrides to the raw mapping before validation (so they are validated too)."""
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return raw


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load's loader (no tags that build objects), refusing a key given twice in one mapping:
    the later value would win silently, and the user would not know which of the two trains."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read, override and validate a YAML config."""
    raw = apply_overrides(read_yaml(path), overrides or [])
    return from_dict(raw, default_out_dir=str(Path("runs") / Path(path).stem))


def read_yaml(path: str | Path) -> dict:
    """The mapping a YAML config file holds, unvalidated (ConfigError when it cannot be read or is not one)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"no such config file: {path}" if not p.exists() else f"{path} is not a file")
    try:
        raw = yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # a SafeLoader
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ConfigError(f"{path} is not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values, got {type(raw).__name__}")
    return raw


def config_from_json(d: dict) -> Config:
    """The resolved config stored in a checkpoint."""
    return from_dict(d)
