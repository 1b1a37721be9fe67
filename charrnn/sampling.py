"""Generate text from a model: prime it, then draw one character at a time.

Generation feeds the prime through the network once (batch 1: its hidden state warms
up on it), then repeats: one step of a `Stepper` (model.py: one matrix product per
layer) on the last ids, then a draw of the next id. Without top-k/top-p filters the
draw is Gumbel-max: argmax(z / T + G), with G standard Gumbel noise (-log of Exp(1)
draws, made up to 256 steps at a time), is an exact sample of softmax(z / T); for T in
[2^-10, 2^10] it is computed as argmax(z + T G) (two array operations), outside as
argmax((z - max z) / T + G), which cannot overflow (see `_fast`). With filters the
kept probabilities are renormalised and drawn by inverting their CDF. One sample
without filters (the common case) runs a 1-D loop with int ids.

Seeding: sample k of a batch draws from its own generator,
``np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(k,)))``, so a batch
of K samples equals K separate runs with those generators, and the first sample of
a batch equals the single sample with the same seed.

Memory: `iter_samples` yields the text as it is made and keeps none of it. K samples
run in groups (`group_size`) of at most 1024 that keep at most 2^20 characters of
ids between them: many short samples are batched for speed, a long one runs alone
and streams. A group's noise blocks hold at most 16 MiB; `memory_needed` estimates
the bytes of a request and `open_run` refuses one that cannot fit.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import checkpoint
from .backend import backend_of, get_backend
from .data import Vocab
from .errors import CharRNNError, plural
from .model import CharRNN


class SampleError(CharRNNError):
    """Bad sampling options or prime text, or a request too large for the memory available."""


TEMPERATURE_RANGE = "must be a finite number > 0"  # the accepted temperatures, in the CLI's words too

_FAST_T = (2.0**-10, 2.0**10)  # Gumbel-max in its fast form, argmax(z + T G), for T in this range


def _fast(temperature: float) -> bool:
    """Whether argmax(z + T G) is as exact as argmax((z - max z) / T + G) at this temperature.

    Both are argmax(z / T + G) scaled by T > 0, so they differ only in float64 rounding.
    In units of the noise G, z + T G rounds by at most (|z| / T + |G|) 2^-53: for
    T >= 2^-10 and logits |z| <= 2^13 that is <= 2^-30 (|G| < 40 for every Exp(1)
    draw), far below the float32 logits' own rounding (2^-24 relative), and T G can
    neither overflow (T |G| < 2^16) nor vanish next to z. Outside the range it can: at
    T = 1e308, T G overflows to +-inf (ties then go to the lowest ids); at T = 1e-300,
    T G is lost in z's rounding (ties at the max go to the lowest id). The shifted form
    has neither fault at any T > 0: z - max z <= 0, so a tiny T gives -inf or 0 (never
    NaN) and a huge T gives ~0 + G (uniform). It costs three more array operations a
    step, hence only outside the range, which also keeps ordinary samples what they were.
    """
    return _FAST_T[0] <= temperature <= _FAST_T[1]


def fresh_seed() -> int:
    """A seed from the OS entropy pool, for runs without --seed (reported so they can be repeated)."""
    return int(np.random.SeedSequence().entropy % (2**63))


def sample_rngs(seed: int | None, k: int, start: int = 0) -> list[np.random.Generator]:
    """The generators of samples start .. start + k - 1 in the seeding scheme (see module doc)."""
    if seed is None:
        seed = fresh_seed()
    return [np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,))) for i in range(start, start + k)]


@dataclass(frozen=True)
class Decoding:
    """How each next character is chosen: a draw from softmax(logits / temperature), kept to the top_k
    likeliest characters and/or the top_p nucleus, or (argmax) the likeliest one every time.

    One object for the options that generation, checkpoint sampling and the CLI pass
    along; it checks itself when made (a SampleError names the bad value).
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    argmax: bool = False

    def __post_init__(self):
        if not (self.temperature > 0 and np.isfinite(self.temperature)):  # NaN fails the first test
            raise SampleError(
                f"temperature {TEMPERATURE_RANGE}, got {self.temperature} (use argmax for greedy decoding)"
            )
        if self.top_k is not None and self.top_k < 1:
            raise SampleError(f"top-k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise SampleError(f"top-p must lie in (0, 1], got {self.top_p}")

    @property
    def filtered(self) -> bool:
        """Whether top-k or top-p removes characters (then the draw inverts the filtered CDF)."""
        return self.top_k is not None or (self.top_p is not None and self.top_p < 1)


def _check_length(n: int) -> None:
    if n < 0:
        raise SampleError(f"the number of characters must be >= 0, got {n}")


def probabilities(logits: np.ndarray, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None):
    """Next-character distributions (B, V) from logits (B, V): softmax(logits / T), then filters.

    top_k keeps the k most likely characters; top_p keeps the smallest set of most
    likely characters whose probability reaches p (the nucleus; the most likely one
    is always kept). The kept probabilities are renormalised. Any finite temperature
    > 0 works without overflow: a tiny one gives the argmax (ties share it), a huge
    one the uniform distribution.
    """
    z = np.asarray(logits, dtype=np.float64)
    if _fast(temperature):  # z / T cannot overflow here: the arithmetic (and the draws) of before
        z = z / temperature
        z -= z.max(axis=-1, keepdims=True)
    else:  # z - max <= 0: a tiny T gives -inf (exp 0) or 0 (exp 1), never inf - inf
        with np.errstate(over="ignore", under="ignore"):
            z = (z - z.max(axis=-1, keepdims=True)) / temperature
    with np.errstate(under="ignore"):
        p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    if top_k is not None and top_k < p.shape[-1]:
        kth = np.partition(p, -top_k, axis=-1)[..., -top_k, None]
        p = np.where(p >= kth, p, 0.0)
        p /= p.sum(axis=-1, keepdims=True)
    if top_p is not None and top_p < 1:
        order = np.argsort(-p, axis=-1, kind="stable")
        sorted_p = np.take_along_axis(p, order, axis=-1)
        before = np.cumsum(sorted_p, axis=-1) - sorted_p  # mass of the more likely characters
        keep_sorted = before < top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        p = np.where(keep, p, 0.0)
        p /= p.sum(axis=-1, keepdims=True)
    return p


def draw(p: np.ndarray, rngs: list[np.random.Generator]) -> np.ndarray:
    """One id per row of p (B, V), row b drawn with rngs[b] by inverting the CDF."""
    u = np.array([r.random() for r in rngs])  # (B,)
    cdf = np.cumsum(p, axis=-1)
    ids = (cdf < (u * cdf[:, -1])[:, None]).sum(axis=-1)
    return np.minimum(ids, p.shape[-1] - 1)


_NOISE_BLOCK = 256  # Gumbel noise is drawn at most this many steps at a time,
_NOISE_BYTES = 16 << 20  # and at most this many bytes of it per group
_MAX_GROUP = 1 << 14  # samples run side by side at most this many at a time,
_GROUP_CHARS = 1 << 20  # keeping at most this many characters of ids between them
_GENERATOR_BYTES = 1024  # a Generator with its SeedSequence (measured with tracemalloc: ~1 KB)


def _noise(rng: np.random.Generator, steps: int, V: int, temperature: float) -> np.ndarray:
    """Gumbel noise for the next `steps` draws, (steps, V) float64: T * G where `_fast(T)`, else G.

    G iid standard Gumbel; -log E is standard Gumbel for E ~ Exp(1), 3x cheaper than
    rng.gumbel; one call for many steps consumes the same stream as one call per
    step, so the block size changes no draw.
    """
    noise = np.log(rng.standard_exponential((steps, V)))
    noise *= -temperature if _fast(temperature) else -1.0
    return noise


def group_size(num_samples: int, n: int) -> int:
    """How many of K samples of n characters `iter_samples` runs side by side.

    Up to 1024 (batched steps cost little more than single ones), but a group keeps its
    ids until its samples are printed one after another, so at most 2^20 characters
    in all: one sample at a time (streamed, nothing kept) from n = 2^20 on.
    """
    return max(1, min(num_samples, _MAX_GROUP, _GROUP_CHARS // max(n, 1)))


def iter_samples(
    model: CharRNN,
    vocab: Vocab,
    n: int,
    prime: str = "",
    decoding: Decoding | None = None,
    seed: int | None = None,
    num_samples: int = 1,
) -> Iterator[tuple[int, str]]:
    """num_samples continuations of n characters each, as (k, piece) pairs made as they are drawn.

    Sample 0's pieces come first, then sample 1's, ...; the pieces of sample k joined are
    its n characters (the prime not included). Every sample yields at least one piece
    (an empty one when n = 0). Nothing is kept beyond the current group of samples
    (`group_size`), so memory does not grow with n for a long sample. Raises
    SampleError for n < 0 or a vocabulary that does not fit the model.
    """
    _check_length(n)
    decoding = decoding or Decoding()
    if vocab.size != model.vocab_size:
        raise SampleError(f"vocabulary has {vocab.size} characters, the model {model.vocab_size}")
    K, V = num_samples, model.vocab_size
    if seed is None:
        seed = fresh_seed()
    if not prime and "\n" in vocab.chars:
        prime = "\n"  # no prime: start as after a line break, the most common place for text to begin
    h1 = model.initial_state(1)  # (L, 1, S): the state after the prime, computed once for every sample
    if prime:
        ids = vocab.encode(prime)
        if ids.size > 1:
            _, h1 = model.forward(ids[None, :-1], h1)
        last = int(ids[-1])
    chars = vocab.chars
    g = group_size(K, n)
    for start in range(0, K, g):
        size = min(g, K - start)
        rngs = sample_rngs(seed, size, start)
        stepper = model.stepper(backend_of(h1).xp.repeat(h1, size, axis=1))  # on the model's device
        # (size, V) on the host; with nothing to start from, the zero state and a uniform first character
        logits = stepper.feed(np.full(size, last)) if prime else np.zeros((size, V), dtype=model.dtype)
        if size == 1 and not decoding.filtered:
            pieces = _pieces_one(stepper, logits[0], n, rngs[0], decoding.temperature, decoding.argmax, chars)
            yield start, ""
            for piece in pieces:
                yield start, piece
        elif size == 1:
            yield start, ""
            for block in _id_blocks(stepper, logits, n, rngs, decoding, _NOISE_BLOCK):
                yield start, vocab.decode(block[0])
        else:
            out = np.empty((size, n), dtype=np.int64)  # size * n <= 2^20
            t = 0
            for block in _id_blocks(stepper, logits, n, rngs, decoding, max(n, 1)):
                out[:, t : t + block.shape[1]] = block
                t += block.shape[1]
            for k in range(size):
                yield start + k, vocab.decode(out[k])


def generate(
    model: CharRNN,
    vocab: Vocab,
    n: int,
    prime: str = "",
    decoding: Decoding | None = None,
    seed: int | None = None,
    num_samples: int = 1,
) -> list[str]:
    """num_samples (K) continuations of n characters each (the prime is not included).

    `iter_samples`, joined: the whole text is kept (K n characters). Raises
    SampleError as iter_samples does.
    """
    texts: list[list[str]] = [[] for _ in range(num_samples)]
    for k, piece in iter_samples(model, vocab, n, prime, decoding, seed, num_samples):
        texts[k].append(piece)
    return ["".join(t) for t in texts]


def _id_blocks(stepper, logits, n, rngs, decoding, chunk) -> Iterator[np.ndarray]:
    """The batched loop for B = len(rngs) samples: yields their ids in (B, <= chunk) int64 blocks."""
    B, V = logits.shape
    temperature, argmax, filtered = decoding.temperature, decoding.argmax, decoding.filtered
    fast = _fast(temperature)
    steps = max(1, min(_NOISE_BLOCK, _NOISE_BYTES // (B * V * 8)))  # noise block: (steps, B, V) float64
    out = np.empty((B, min(chunk, n)), dtype=np.int64)
    scores = np.empty((B, V))  # float64: logits (or shifted, scaled logits) + noise
    for t in range(n):
        if argmax:
            nxt = logits.argmax(axis=-1)
        elif filtered:
            nxt = draw(probabilities(logits, temperature, decoding.top_k, decoding.top_p), rngs)
        else:  # Gumbel-max: argmax(z / T + G), G iid standard Gumbel, is a draw from softmax(z / T)
            j = t % steps
            if j == 0:  # t = 0 included: the noise of the next steps, per sample
                block = min(steps, n - t)
                noise = np.stack([_noise(r, block, V, temperature) for r in rngs], axis=1)  # (block, B, V)
            if fast:  # argmax(z + T G)
                nxt = np.add(noise[j], logits, out=scores).argmax(axis=-1)
            else:  # argmax((z - max z) / T + G)
                np.subtract(logits, logits.max(axis=-1, keepdims=True), out=scores, dtype=np.float64)
                with np.errstate(over="ignore", under="ignore"):
                    scores /= temperature
                nxt = np.add(scores, noise[j], out=scores).argmax(axis=-1)
        c = t % chunk
        out[:, c] = nxt
        if c == out.shape[1] - 1 or t == n - 1:
            yield out[:, : c + 1]
        if t + 1 < n:
            logits = stepper.feed(nxt)
    if n == 0:
        yield out


def _pieces_one(stepper, logits, n, rng, temperature, argmax, chars) -> Iterator[str]:
    """The loop for one sample without filters: the same draws as `_id_blocks`, in 1-D with int ids.

    Yields the text one noise block (256 characters) at a time. At hidden 512 a
    character costs ~11.5 us of matrix-vector product; this loop keeps the rest to a
    handful of array calls on 1-D views (~16 us in all; the batched loop's fancy
    indexing and (B, V) reductions add a few us per character).
    """
    V = logits.shape[-1]
    scores = np.empty(V)  # float64: logits (or shifted, scaled logits) + noise
    fast = argmax or _fast(temperature)
    for start in range(0, n, _NOISE_BLOCK):
        block = min(_NOISE_BLOCK, n - start)
        # argmax(logits + 0) is the greedy choice; otherwise Gumbel-max, as in _id_blocks
        noise = np.zeros((block, V)) if argmax else _noise(rng, block, V, temperature)  # (block, V)
        ids: list[int] = []
        if fast:
            for row in noise:
                c = int(np.add(row, logits, out=scores).argmax())
                ids.append(c)
                logits = stepper.feed_one(c)  # also after the last character: cheaper than a test per step
        else:
            with np.errstate(over="ignore", under="ignore"):
                for row in noise:
                    np.subtract(logits, logits.max(), out=scores, dtype=np.float64)
                    scores /= temperature
                    c = int(np.add(scores, row, out=scores).argmax())
                    ids.append(c)
                    logits = stepper.feed_one(c)
        yield "".join([chars[i] for i in ids])


def available_memory() -> int | None:
    """Bytes this process can still allocate, or None if unknown: the least of the machine's available
    memory (Linux MemAvailable, else free pages), the room left under its cgroup's limit (v2 memory.max
    minus memory.current, or v1 memory.limit_in_bytes minus usage: a container's, a SLURM job's --mem)
    and its address-space limit (RLIMIT_AS, ulimit -v)."""
    bounds = []
    try:
        with open("/proc/meminfo") as f:
            bounds += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    if not bounds:
        with contextlib.suppress(AttributeError, OSError, ValueError):
            bounds.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    cgroups = (("memory.max", "memory.current"), ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"))
    for limit, usage in cgroups:  # v2, then v1
        room = _cgroup_room(limit, usage)
        if room is not None:
            bounds.append(room)
            break
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            bounds.append(max(soft - _virtual_bytes(), 0))
    except (ImportError, OSError, ValueError):
        pass
    return min(bounds) if bounds else None


def _cgroup_room(limit_file: str, usage_file: str) -> int | None:
    """Bytes left under this process's cgroup memory limit, or None without one (v2 files, or v1 under memory/)."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
        v2 = "/" not in limit_file
        paths = [ln.split(":", 2)[2] for ln in lines if (ln.startswith("0::") if v2 else ":memory:" in ln)]
        if not paths:
            return None
        base = Path("/sys/fs/cgroup") / ("" if v2 else "memory") / paths[0].lstrip("/")
        limit = (base / limit_file.rpartition("/")[2]).read_text().strip()
        if limit == "max" or int(limit) >= 1 << 60:  # no limit (v1 writes a huge number)
            return None
        return max(int(limit) - int((base / usage_file.rpartition("/")[2]).read_text()), 0)
    except (OSError, ValueError, IndexError):
        return None


def _virtual_bytes() -> int:
    """This process's virtual size (what RLIMIT_AS counts), from /proc/self/statm; 0 where unknown."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return 0


def memory_needed(model: CharRNN, vocab: Vocab, n: int, num_samples: int = 1, prime_chars: int = 0,
                  keep_text: bool = False) -> int:  # fmt: skip
    """An estimate of the bytes `iter_samples` needs beyond the model (and, keep_text, the K texts).

    Per sample of a group (`group_size`): its state and Stepper buffers, its generator, its
    kept ids (int64) and decoded text, a row of scores; the group's noise block (<= 16 MiB);
    the prime's forward pass (batch 1). keep_text adds the K whole texts of n +
    prime_chars characters three times over (the strings, the JSON, its UTF-8 bytes) at
    the widest character's width (1, 2 or 4 bytes per character in a Python str).
    """
    K, V = num_samples, model.vocab_size
    L, H, S = model.num_layers, model.hidden_size, model.state_size
    GH, item = model.cell.gates * H, model.dtype.itemsize
    g = group_size(K, n)
    state = L * (2 * S + (H + 16) + 2 * (GH + max(V, GH))) * item + 2 * V * 8  # h, buffers, logits, scores
    kept = 0 if g == 1 else min(n, _GROUP_CHARS) * (8 + 4)  # a group's ids, then its decoded texts
    steps = max(1, min(_NOISE_BLOCK, _NOISE_BYTES // (g * V * 8)))
    noise = 2 * min(steps, max(n, 1)) * g * V * 8  # the block, and np.stack's inputs
    prime = prime_chars * L * (3 * GH + 2 * S + V) * item  # forward's activations and caches
    need = g * (state + _GENERATOR_BYTES + kept) + noise + prime
    if keep_text:
        top = max(map(ord, vocab.chars), default=0)
        width = 4 if top > 0xFFFF else 2 if top > 0xFF else 1
        need += 3 * K * (n + prime_chars) * width
    return need


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def check_memory(needed: int) -> None:
    """Raise SampleError when `needed` bytes exceed the memory available (nothing if that is unknown)."""
    free = available_memory()
    if free is not None and needed > free:
        raise SampleError(
            f"this request needs about {_gib(needed)}, {_gib(free)} available; lower --num-samples or --chars"
        )


class SampleRun:
    """A checked request to sample a checkpoint: what `charrnn sample` runs.

    Made by `open_run`, which raises every error (bad options, unknown prime characters,
    not enough memory) before a character is drawn. Then `info` holds the --json fields
    except the samples, `dropped` the prime characters that --unknown skip removed
    (distinct, sorted) and `dropped_count` how many there were; `pieces()` yields
    (k, text) as it is made, the echoed prime first in each sample.
    """

    def __init__(self, model, vocab, info: dict, head: str, dropped: str, dropped_count: int):
        self.model, self.vocab, self.info, self.head = model, vocab, info, head
        self.dropped, self.dropped_count = dropped, dropped_count

    def dropped_message(self) -> str | None:
        """One line naming the dropped prime characters, or None when none were dropped."""
        if not self.dropped_count:
            return None
        return (f"dropped {plural(self.dropped_count, 'prime character')} not in the model's vocabulary: "
                f"{self.dropped!r}")  # fmt: skip

    def pieces(self) -> Iterator[tuple[int, str]]:
        i = self.info
        decoding = Decoding(i["temperature"], i["top_k"], i["top_p"], i["argmax"])
        current = -1
        for k, piece in iter_samples(self.model, self.vocab, i["n"], i["prime"], decoding, i["seed"], i["num_samples"]):
            if k != current:  # a new sample: its echoed prime first (possibly empty: every sample shows up)
                current = k
                yield k, self.head
            if piece:
                yield k, piece

    def result(self, on_text: Callable[[str], None] | None = None) -> dict:
        """The --json result: info with "samples", the K whole texts; on_text, if given, also
        receives each piece as it is made."""
        texts = [[] for _ in range(self.info["num_samples"])]
        for k, piece in self.pieces():
            texts[k].append(piece)
            if on_text is not None:
                on_text(piece)
        return {"samples": ["".join(t) for t in texts], **self.info}


def open_run(
    path,
    n: int,
    prime: str = "",
    decoding: Decoding | None = None,
    seed: int | None = None,
    num_samples: int = 1,
    unknown: str = "error",
    prime_echo: bool = True,
    keep_text: bool = True,
    device: str = "cpu",
    averaged: bool = True,
) -> SampleRun:
    """Load a checkpoint and check a sampling request; returns the `SampleRun` that draws it.

    unknown: "error" (prime characters outside the vocabulary raise SampleError) or
    "skip" (they are dropped; a prime dropped entirely raises). keep_text: whether the
    caller keeps the K texts (--json, --no-stream); counted in the memory check, which
    raises SampleError when the request needs more than the memory available.
    Without a seed one is drawn (`fresh_seed`); info["seed"] says which. device: where the
    model runs (cpu, or cuda: the draws stay on the host, from the same generators). averaged: the
    checkpoint's weight average if it has one, else its weights (False: the weights being trained);
    info["weights"] says which.
    """
    _check_length(n)
    decoding = decoding or Decoding()
    get_backend(device)  # cuda without CuPy or a GPU: that line first
    model, vocab, ckpt = checkpoint.load_model(path, device, averaged)
    missing = vocab.unknown(prime)
    dropped_count = 0
    if missing:
        if unknown != "skip":
            raise SampleError(
                f"the prime holds characters not in the model's vocabulary: {''.join(missing)!r} "
                f"(use --unknown skip to drop them)"
            )
        kept = "".join(c for c in prime if c not in set(missing))
        dropped_count = len(prime) - len(kept)
        if not kept:
            raise SampleError(
                f"every character of the prime is outside the model's vocabulary ({''.join(missing)!r}): "
                f"nothing would be left to prime with"
            )
        prime = kept
    check_memory(memory_needed(model, vocab, n, num_samples, len(prime), keep_text))
    if seed is None:
        seed = fresh_seed()
    info = {
        "checkpoint": ckpt.path, "step": ckpt.step, "seed": seed, **asdict(decoding), "n": n, "prime": prime,
        "num_samples": num_samples, "dropped": "".join(missing), "weights": ckpt.weights(averaged),
    }  # fmt: skip
    return SampleRun(model, vocab, info, prime if prime_echo else "", "".join(missing), dropped_count)


def sample_from_checkpoint(
    path,
    n: int,
    prime: str = "",
    decoding: Decoding | None = None,
    seed: int | None = None,
    num_samples: int = 1,
    unknown: str = "error",
    prime_echo: bool = True,
    on_text: Callable[[str], None] | None = None,
) -> dict:
    """Load a checkpoint and generate; returns {"samples": [...], "seed": ..., ...} (the CLI's --json).

    on_text, if given, receives the text as it is produced: each sample's echoed prime,
    then its pieces, sample after sample. Raises SampleError as `open_run` does; the
    prime characters that unknown="skip" dropped are in result["dropped"].
    """
    return open_run(path, n, prime, decoding, seed, num_samples, unknown, prime_echo, keep_text=True).result(on_text)


def sample(
    model_or_ckpt,
    n: int,
    prime: str = "",
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    *,
    vocab: Vocab | None = None,
    argmax: bool = False,
) -> str:
    """n characters continuing prime (the prime itself not included).

    model_or_ckpt is a checkpoint path (file or run folder) or a CharRNN, in which
    case vocab must be given. The decoding options are those of `Decoding`.
    """
    decoding = Decoding(temperature, top_k, top_p, argmax)
    if isinstance(model_or_ckpt, CharRNN):
        if vocab is None:
            raise SampleError("sampling a bare model needs its vocabulary: sample(model, n, vocab=...)")
        model = model_or_ckpt
    else:
        model, vocab, _ = checkpoint.load_model(model_or_ckpt)
    return generate(model, vocab, n, prime, decoding, seed)[0]
