"""Generate text from a model: prime it, then draw one character at a time.

Generation feeds the prime through the network in one batched pass (its hidden
state warms up on it), then repeats: one step of a `Stepper` (model.py: one
matrix product per layer) on the last ids, then a draw of the next id. Without
top-k/top-p filters the draw is Gumbel-max, argmax(logits + T G) with G standard
Gumbel noise (-log of Exp(1) draws, made 256 steps at a time), an exact sample of
softmax(logits / T) in two array operations; with filters the kept
probabilities are renormalised and drawn by inverting their CDF. Nothing else is
re-run. One sample without filters (the common case) runs a 1-D loop with int ids.

Seeding: sample k of a batch draws from its own generator,
``np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(k,)))``, so a batch
of K samples equals K separate runs with those generators, and the first sample of
a batch equals the single sample with the same seed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from . import checkpoint
from .data import Vocab
from .errors import CharRNNError
from .model import CharRNN


class SampleError(CharRNNError):
    """Bad sampling options or prime text."""


def fresh_seed() -> int:
    """A seed from the OS entropy pool, for runs without --seed (reported so they can be repeated)."""
    return int(np.random.SeedSequence().entropy % (2**63))


def sample_rngs(seed: int | None, k: int) -> list[np.random.Generator]:
    """The per-sample generators of the seeding scheme (see module doc)."""
    if seed is None:
        seed = fresh_seed()
    return [np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,))) for i in range(k)]


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
        if not (self.temperature > 0 and np.isfinite(self.temperature)):
            raise SampleError(f"temperature must be > 0, got {self.temperature} (use argmax for greedy decoding)")
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
    is always kept). The kept probabilities are renormalised.
    """
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
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


_NOISE_BLOCK = 256  # Gumbel noise is drawn this many steps at a time


def _scaled_gumbel(rng: np.random.Generator, steps: int, V: int, temperature: float) -> np.ndarray:
    """T * G for the next `steps` draws, (steps, V) float64, G iid standard Gumbel.

    -log E is standard Gumbel for E ~ Exp(1), 3x cheaper than rng.gumbel; one call
    for many steps consumes the same stream as one call per step.
    """
    noise = np.log(rng.standard_exponential((steps, V)))
    noise *= -temperature
    return noise


def generate(
    model: CharRNN,
    vocab: Vocab,
    n: int,
    prime: str = "",
    decoding: Decoding | None = None,
    seed: int | None = None,
    num_samples: int = 1,
    on_step: Callable[[list[str]], None] | None = None,
) -> list[str]:
    """num_samples continuations of n characters each (the prime is not included).

    on_step, if given, receives the K new characters after every step (for streaming).
    """
    _check_length(n)
    decoding = decoding or Decoding()
    temperature, argmax = decoding.temperature, decoding.argmax
    if vocab.size != model.vocab_size:
        raise SampleError(f"vocabulary has {vocab.size} characters, the model {model.vocab_size}")
    K, V = num_samples, model.vocab_size
    rngs = sample_rngs(seed, K)
    h = model.initial_state(K)
    if not prime and "\n" in vocab.chars:
        prime = "\n"  # no prime: start as after a line break, the most common place for text to begin
    if prime:
        ids = vocab.encode(prime)
        if ids.size > 1:
            _, h = model.forward(np.tile(ids[:-1], (K, 1)), h)
        stepper = model.stepper(h)
        logits = stepper.feed(np.full(K, ids[-1]))
    else:  # nothing to start from: the zero state and a uniform first character
        stepper = model.stepper(h)
        logits = np.zeros((K, V), dtype=model.dtype)
    chars = vocab.chars
    filtered = decoding.filtered
    if K == 1 and not filtered:
        return [vocab.decode(_generate_one(stepper, logits[0], n, rngs[0], temperature, argmax, on_step, chars))]
    out = np.empty((K, n), dtype=np.int64)
    scores = np.empty((K, V))  # (K, V) logits + noise, float64
    for t in range(n):
        if argmax:
            nxt = logits.argmax(axis=-1)
        elif filtered:
            nxt = draw(probabilities(logits, temperature, decoding.top_k, decoding.top_p), rngs)
        else:  # Gumbel-max: argmax(z / T + G) = argmax(z + T G), G iid standard Gumbel, is a draw from softmax(z / T)
            j = t % _NOISE_BLOCK
            if j == 0:  # t = 0 included: the noise of the next steps, per sample
                block = min(_NOISE_BLOCK, n - t)
                noise = np.stack([_scaled_gumbel(r, block, V, temperature) for r in rngs], axis=1)  # (block, K, V)
            nxt = np.add(noise[j], logits, out=scores).argmax(axis=-1)
        out[:, t] = nxt
        if on_step is not None:
            on_step([chars[i] for i in nxt.tolist()])
        if t + 1 < n:
            logits = stepper.feed(nxt)
    return [vocab.decode(row) for row in out]


def _generate_one(stepper, logits, n, rng, temperature, argmax, on_step, chars) -> list[int]:
    """`generate`'s loop for one sample without filters: the same draws, in 1-D and with int ids.

    At hidden 512 a character costs ~11.5 us of matrix-vector product; this loop keeps
    the rest to a handful of array calls on 1-D views (~16 us in all; the batched loop's
    fancy indexing and (K, V) reductions add a few us per character).
    """
    ids: list[int] = []
    V = logits.shape[-1]
    scores = np.empty(V)  # float64: logits + noise
    for start in range(0, n, _NOISE_BLOCK):
        block = min(_NOISE_BLOCK, n - start)
        # argmax(logits + 0) is the greedy choice; otherwise Gumbel-max, as in generate
        noise = np.zeros((block, V)) if argmax else _scaled_gumbel(rng, block, V, temperature)  # (block, V)
        for row in noise:
            c = int(np.add(row, logits, out=scores).argmax())
            ids.append(c)
            if on_step is not None:
                on_step([chars[c]])
            logits = stepper.feed_one(c)  # also after the last character: cheaper than a test per step
    return ids


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

    on_text, if given, receives the text as it is produced (single sample): the
    echoed prime first, then each new character.
    """
    _check_length(n)
    decoding = decoding or Decoding()
    model, vocab, ckpt = checkpoint.load_model(path)
    missing = vocab.unknown(prime)
    if missing:
        if unknown != "skip":
            raise SampleError(
                f"the prime holds characters not in the model's vocabulary: {''.join(missing)!r} "
                f"(use --unknown skip to drop them)"
            )
        prime = "".join(c for c in prime if c not in set(missing))
    if seed is None:
        seed = fresh_seed()
    head = prime if prime_echo else ""
    on_step = None
    if on_text is not None:
        on_text(head)
        on_step = lambda chars: on_text(chars[0])  # noqa: E731
    texts = generate(model, vocab, n, prime, decoding, seed, num_samples, on_step)
    return {
        "samples": [head + t for t in texts], "checkpoint": ckpt.path, "step": ckpt.step, "seed": seed,
        **asdict(decoding), "n": n, "prime": prime, "num_samples": num_samples,
    }  # fmt: skip


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
