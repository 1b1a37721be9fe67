"""Checkpoints: one .npz file that holds everything needed to sample, evaluate or resume.

Keys of the archive:

    layers.0.Wxh, ..., Why, by   the parameters, named exactly as in CharRNN.params
    optim.<slot>.<param name>    optimizer state (for example optim.m.Why)
    ema.<param name>             the averaged parameters (train.ema_decay > 0): what evaluation,
                                 sampling and fine-tuning use; the plain names hold the weights
                                 being trained, which resuming goes on from
    state.h                      the state carried into the next window (L, B, S)
    meta                         a JSON document (as a 0-d unicode array): format and
                                 version, the resolved config, the vocabulary, the step,
                                 the data position, the random generator state, the
                                 train/val history, early-stopping counters

Reading never unpickles (allow_pickle=False): an archive holding object arrays is
refused. Every array is checked against the architecture in the stored config
before use. Writing goes to a temporary file in the same folder, is flushed to
disk, then renamed over the old file, so a crash at any moment leaves either the
old or the new checkpoint, never a broken one.

Format versions: 1 (charrnn 0.1.0) knew only the vanilla cell and its config has
no model.cell or model.dropout; it is read as cell rnn without dropout, which is
what it was. 2 adds them. 3 adds the ema.* arrays and the config keys of
config.OPTIONAL_OFF (train.device, the regularisers), which a version-2 reader does not
know; a checkpoint that holds none of them (every CPU run with those options off) is still
written as version 2, so that releases that read only 2 (0.2.0) still read it.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backend import to_host
from .cells import make_cell
from .config import OPTIONAL_OFF, ConfigError, config_from_json
from .data import DataError, Vocab
from .errors import CharRNNError
from .files import atomic_write
from .model import DTYPES, CharRNN, param_shapes

FORMAT = "charrnn-checkpoint"
FORMAT_VERSION = 3  # the newest this release reads and writes (see the module doc for when it writes 3)
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
    ema: dict[str, np.ndarray] | None = None  # the averaged parameters, when the run kept them

    @property
    def config(self):
        return config_from_json(self.meta["config"])

    @property
    def vocab(self) -> Vocab:
        return Vocab.from_json(self.meta["vocab"])

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    def weights(self, averaged: bool = True) -> str:
        """Which weights `model(averaged=...)` gives: "averaged" or "trained" (a checkpoint without an average
        has only the latter)."""
        return "averaged" if averaged and self.ema is not None else "trained"

    @property
    def inference_params(self) -> dict[str, np.ndarray]:
        """The parameters to evaluate, sample and fine-tune from: the averaged ones if the run kept them."""
        return self.params if self.ema is None else self.ema

    def model(self, device: str = "cpu", averaged: bool = True) -> CharRNN:
        """The model, on device (cpu or cuda) whichever device trained it: the file holds numpy arrays.

        averaged: the averaged parameters if the checkpoint holds them (what its val loss
        was measured on); False for the weights being trained (what resuming goes on from).
        """
        m = self.config.model
        params = self.inference_params if averaged else self.params
        return CharRNN.from_params(params, m.cell, m.activation, m.dropout, device)


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


def save(path: str | os.PathLike, params, meta: dict, optim_state=None, h=None, ema=None) -> None:
    """Write a checkpoint atomically (temporary file in the same folder, fsync, rename).

    The arrays may live on a GPU: they are saved as numpy arrays, so that any device loads them.
    ema: the averaged parameters, keyed like params, or None.
    """
    path = Path(path)
    arrays: dict[str, np.ndarray] = {name: to_host(p) for name, p in params.items()}
    for name, arr in (optim_state or {}).items():
        arrays[f"optim.{name}"] = to_host(arr)
    for name, arr in (ema or {}).items():
        arrays[f"ema.{name}"] = to_host(arr)
    if h is not None:
        arrays["state.h"] = to_host(h)
    stored = meta.get("config", {})
    new_keys = any(key in stored.get(section, {}) for section, key in OPTIONAL_OFF)
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION if ema or new_keys else 2, **meta}
    arrays["meta"] = np.array(json.dumps(doc, ensure_ascii=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(path, lambda f: np.savez(f, **arrays))
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {path}: {e.strerror or e}; the previous one is kept") from None


def _expected_shapes(config, vocab: Vocab) -> dict[str, tuple[int, ...]]:
    m = config.model
    return param_shapes(vocab.size, m.hidden_size, m.num_layers, m.cell)


MAX_META_CHARS = 16 << 20  # the JSON record; a real one is a few kB plus the history


class _Archive:
    """An .npz read as a zip of .npy members, each header checked before its data is read.

    Only uncompressed members (what np.savez writes) are accepted, and a member's
    declared shape and dtype must account for exactly its stored size, so a crafted
    file cannot make the loader allocate more than the file holds. Object dtypes
    (pickles) are refused before any byte of them is read.
    """

    def __init__(self, path: Path):
        self.path = path
        self.zf = zipfile.ZipFile(path)
        self.members = {}
        for info in self.zf.infolist():
            if not info.filename.endswith(".npy"):
                raise CheckpointError(f"{path} is not a charrnn checkpoint (unexpected member {info.filename!r})")
            if info.compress_type != zipfile.ZIP_STORED:
                raise CheckpointError(f"{path} is not a charrnn checkpoint (compressed member {info.filename!r})")
            self.members[info.filename[:-4]] = info

    def __contains__(self, key: str) -> bool:
        return key in self.members

    def __iter__(self):
        return iter(list(self.members))

    def header(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
        info = self.members[key]
        with self.zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise CheckpointError(f"{self.path}: {key} has an unknown .npy version {version}")
            header_len = f.tell()
        if dtype.hasobject:
            raise CheckpointError(f"{self.path}: {key} holds pickled Python objects, which are never loaded")
        if fortran:
            raise CheckpointError(f"{self.path}: {key} is not in C order")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if header_len + nbytes != info.file_size:
            raise CheckpointError(
                f"{self.path}: {key} declares {nbytes} bytes but stores {info.file_size - header_len}"
            )
        return tuple(shape), dtype

    def read(self, key: str, shape=None, dtype=None) -> np.ndarray:
        """The array `key`, after checking its header against shape/dtype (each None = any)."""
        if key not in self.members:
            raise CheckpointError(f"{self.path} lacks {key}")
        got_shape, got_dtype = self.header(key)
        if (shape is not None and got_shape != tuple(shape)) or (dtype is not None and got_dtype != dtype):
            want = f"{tuple(shape) if shape is not None else 'any shape'} {dtype if dtype is not None else ''}".strip()
            raise CheckpointError(f"{self.path}: {key} has shape {got_shape} {got_dtype}, expected {want}")
        with self.zf.open(self.members[key]) as f:
            return np.lib.format.read_array(f, allow_pickle=False)


def _read_meta(z: _Archive) -> dict:
    p = z.path
    if "meta" not in z:
        raise CheckpointError(f"{p} is not a charrnn checkpoint (no meta record)")
    shape, dtype = z.header("meta")
    if dtype.kind != "U" or shape != () or dtype.itemsize // 4 > MAX_META_CHARS:
        raise CheckpointError(f"{p} is not a charrnn checkpoint (bad meta record)")
    meta = json.loads(str(z.read("meta")))
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not a charrnn checkpoint")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{p} has an invalid format version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{p} has checkpoint format version {version}, newer than this charrnn reads ({FORMAT_VERSION}); "
            f"upgrade charrnn"
        )
    step = meta.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"{p}: invalid step {step!r}")
    rng = meta.get("rng")
    if rng is not None:
        np.random.PCG64().state = rng  # raises on anything but a valid PCG64 state
    return meta


def load(path: str | os.PathLike) -> Checkpoint:
    """Read and validate a checkpoint file or run folder; any defect is a CheckpointError."""
    p = resolve(path)
    try:
        with open(p, "rb") as fh:
            z = _Archive(p) if zipfile.is_zipfile(fh) else None
        if z is None:
            raise CheckpointError(f"{p} is not a charrnn checkpoint (not an .npz archive)")
        with z.zf:
            meta = _read_meta(z)
            config = config_from_json(meta["config"])
            vocab = Vocab.from_json(meta["vocab"])
            shapes = _expected_shapes(config, vocab)
            dtype = np.dtype(DTYPES[config.model.dtype])
            params = {name: _finite(z.read(name, shape, dtype), name, p) for name, shape in shapes.items()}
            optim_state, h, ema = {}, None, {}
            for key in z:
                if key.startswith("optim."):
                    slot_name = key[len("optim.") :]
                    pname = slot_name.partition(".")[2]
                    if pname not in shapes:
                        raise CheckpointError(f"{p}: optimizer state {key} names no parameter")
                    optim_state[slot_name] = _finite(z.read(key, shapes[pname], dtype), key, p)
                elif key.startswith("ema."):
                    pname = key[len("ema.") :]
                    if pname not in shapes:
                        raise CheckpointError(f"{p}: averaged parameter {key} names no parameter")
                    ema[pname] = _finite(z.read(key, shapes[pname], dtype), key, p)
                elif key == "state.h":
                    m = config.model
                    S = make_cell(m.cell, m.activation).state_size(m.hidden_size)
                    h = _finite(z.read(key, (m.num_layers, config.train.batch_size, S), dtype), key, p)
                elif key != "meta" and key not in shapes:
                    raise CheckpointError(f"{p}: unexpected array {key}")
    except CheckpointError:
        raise
    except (ConfigError, DataError) as e:
        raise CheckpointError(f"{p} holds an invalid config or vocabulary: {e}") from None
    except Exception as e:  # any failure to parse an untrusted file means the file is bad
        raise CheckpointError(f"cannot read checkpoint {p}: {str(e) or type(e).__name__}") from None
    if ema and set(ema) != set(shapes):
        raise CheckpointError(f"{p}: the averaged parameters lack {', '.join(sorted(set(shapes) - set(ema)))}")
    return Checkpoint(str(p), params, optim_state, h, meta, ema or None)


def _finite(arr: np.ndarray, key: str, p: Path) -> np.ndarray:
    if not np.all(np.isfinite(arr)):
        raise CheckpointError(f"{p}: {key} holds NaN or infinite values")
    return arr


def load_model(
    path: str | os.PathLike, device: str = "cpu", averaged: bool = True
) -> tuple[CharRNN, Vocab, Checkpoint]:
    """The model (on device) and vocabulary of a checkpoint (file or run folder); averaged as in `Checkpoint.model`."""
    ckpt = load(path)
    return ckpt.model(device, averaged), ckpt.vocab, ckpt
