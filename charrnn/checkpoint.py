"""Checkpoints: one .npz file that holds everything needed to sample, evaluate or resume.

Keys of the archive:

    layers.0.Wxh, ..., Why, by   the parameters, named exactly as in CharRNN.params
    optim.<slot>.<param name>    optimizer state (for example optim.m.Why)
    state.h                      the hidden state carried into the next window (L, B, H)
    meta                         a JSON document (as a 0-d unicode array): format and
                                 version, the resolved config, the vocabulary, the step,
                                 the data position, the random generator state, the
                                 train/val history, early-stopping counters

Reading never unpickles (allow_pickle=False): an archive holding object arrays is
refused. Every array is checked against the architecture in the stored config
before use. Writing goes to a temporary file in the same folder, is flushed to
disk, then renamed over the old file, so a crash at any moment leaves either the
old or the new checkpoint, never a broken one.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import ConfigError, config_from_json
from .data import DataError, Vocab
from .errors import CharRNNError
from .model import DTYPES, CharRNN, param_shapes

FORMAT = "charrnn-checkpoint"
FORMAT_VERSION = 1
BEST, LAST = "best.npz", "last.npz"


class CheckpointError(CharRNNError):
    """A checkpoint that cannot be read or written."""


@dataclass
class Checkpoint:
    path: str
    params: dict[str, np.ndarray]
    optim_state: dict[str, np.ndarray]
    h: np.ndarray | None
    meta: dict

    @property
    def config(self):
        return config_from_json(self.meta["config"])

    @property
    def vocab(self) -> Vocab:
        return Vocab.from_json(self.meta["vocab"])

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    def model(self) -> CharRNN:
        return CharRNN.from_params(self.params, self.meta["config"]["model"]["activation"])


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run folder (then its best.npz, else its last.npz)."""
    p = Path(path)
    if p.is_dir():
        for name in (BEST, LAST):
            if (p / name).is_file():
                return p / name
        raise CheckpointError(f"no checkpoint in {path} (looked for {BEST} and {LAST})")
    if not p.exists():
        raise CheckpointError(f"no such checkpoint: {path}")
    return p


def save(path: str | os.PathLike, params, meta: dict, optim_state=None, h=None) -> None:
    """Write a checkpoint atomically (temporary file in the same folder, fsync, rename)."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = dict(params)
    for name, arr in (optim_state or {}).items():
        arrays[f"optim.{name}"] = arr
    if h is not None:
        arrays["state.h"] = h
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
    arrays["meta"] = np.array(json.dumps(doc, ensure_ascii=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise CheckpointError(f"cannot write checkpoint {path}: {e.strerror or e}; the previous one is kept") from None
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _expected_shapes(meta: dict) -> dict[str, tuple[int, ...]]:
    m = meta["config"]["model"]
    return param_shapes(len(meta["vocab"]["chars"]), m["hidden_size"], m["num_layers"])


def load(path: str | os.PathLike) -> Checkpoint:
    """Read and validate a checkpoint file or run folder."""
    p = resolve(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            if "meta" not in z.files:
                raise CheckpointError(f"{p} is not a charrnn checkpoint (no meta record)")
            meta_arr = z["meta"]
            if meta_arr.dtype.kind != "U" or meta_arr.shape != ():
                raise CheckpointError(f"{p} is not a charrnn checkpoint (bad meta record)")
            meta = json.loads(str(meta_arr))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise CheckpointError(f"{p} is not a charrnn checkpoint")
            version = meta.get("format_version")
            if not isinstance(version, int) or version < 1:
                raise CheckpointError(f"{p} has an invalid format version {version!r}")
            if version > FORMAT_VERSION:
                raise CheckpointError(
                    f"{p} has checkpoint format version {version}, newer than this charrnn reads "
                    f"({FORMAT_VERSION}); upgrade charrnn"
                )
            config = config_from_json(meta["config"])
            vocab = Vocab.from_json(meta["vocab"])
            shapes = _expected_shapes(meta)
            dtype = np.dtype(DTYPES[config.model.dtype])
            params = {}
            for name, shape in shapes.items():
                if name not in z.files:
                    raise CheckpointError(f"{p} lacks parameter {name}")
                params[name] = _read(z, name, p, shape, dtype)
            optim_state = {}
            for key in z.files:
                if key.startswith("optim."):
                    slot_name = key[len("optim.") :]
                    _, _, pname = slot_name.partition(".")
                    if pname not in shapes:
                        raise CheckpointError(f"{p}: optimizer state {key} names no parameter")
                    optim_state[slot_name] = _read(z, key, p, shapes[pname], dtype)
            h = None
            if "state.h" in z.files:
                L, H = config.model.num_layers, config.model.hidden_size
                h = z["state.h"]
                if h.ndim != 3 or h.shape[0] != L or h.shape[2] != H or h.dtype != dtype:
                    raise CheckpointError(f"{p}: carried state has shape {h.shape} {h.dtype}, expected ({L}, B, {H})")
    except CheckpointError:
        raise
    except (ConfigError, DataError) as e:
        raise CheckpointError(f"{p} holds an invalid config or vocabulary: {e}") from None
    except (ValueError, OSError, EOFError, KeyError, TypeError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        reason = "it holds pickled objects, which are never loaded" if "pickle" in str(e) else str(e) or type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {p}: {reason}") from None
    if vocab.size != shapes["by"][0]:
        raise CheckpointError(f"{p}: vocabulary and parameters disagree")
    return Checkpoint(str(p), params, optim_state, h, meta)


def _read(z, key: str, p: Path, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    arr = z[key]
    if arr.shape != shape or arr.dtype != dtype:
        raise CheckpointError(f"{p}: {key} has shape {arr.shape} {arr.dtype}, expected {shape} {dtype}")
    if not np.all(np.isfinite(arr)):
        raise CheckpointError(f"{p}: {key} holds NaN or infinite values")
    return arr


def load_model(path: str | os.PathLike) -> tuple[CharRNN, Vocab, Checkpoint]:
    """The model and vocabulary of a checkpoint (file or run folder)."""
    ckpt = load(path)
    return ckpt.model(), ckpt.vocab, ckpt
