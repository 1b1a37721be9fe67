"""Fine-tuning: start a new run from a trained checkpoint, on a text whose vocabulary may differ.

A vocabulary is sorted, so the same character can have another id in the new
text's vocabulary. The arrays with a vocabulary-sized axis (the layer-0 input
weights, whose rows are the character embeddings, the output weights' columns
and the output bias) are therefore copied character by character: each
character both vocabularies hold keeps its learned row (or column); a character
only the new text has keeps the fresh initialisation it was given; a character
only the old text had is dropped. Every other array is copied whole.

Which axes are vocabulary-sized is read from the model's own shape table (the
axes whose length changes with the vocabulary size), so no cell is named here.
The architecture (cell, width, depth, activation) must match; the dtype may
differ (the weights are cast to the new run's).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import checkpoint
from .config import Config, model_differences
from .data import Vocab
from .errors import CharRNNError, plural
from .model import param_shapes


class FineTuneError(CharRNNError):
    """A checkpoint that cannot start this run."""


@dataclass(frozen=True)
class Origin:
    """Where a fine-tuned run started from; stored in every checkpoint of the run."""

    path: str  # the checkpoint file read
    step: int  # its training step
    data: str  # the data folder it was trained on
    shared: int  # characters both vocabularies hold (their rows were kept)
    new: str  # characters only the new vocabulary holds (freshly initialised)
    dropped: str  # characters only the old vocabulary held

    def to_json(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, d: dict) -> Origin:
        return cls(str(d["path"]), int(d["step"]), str(d["data"]), int(d["shared"]), str(d["new"]),
                   str(d["dropped"]))  # fmt: skip

    def describe(self) -> str:
        text = f"fine-tuning from {self.path} (step {self.step}): {plural(self.shared, 'character')} shared"
        if self.new:
            text += f", {len(self.new)} new {self.new!r}"
        if self.dropped:
            text += f", {len(self.dropped)} dropped {self.dropped!r}"
        return text


def vocab_axes(hidden_size: int, num_layers: int, cell: str) -> dict[str, int]:
    """Parameter name -> its vocabulary-sized axis, for the arrays that have one."""
    a = param_shapes(2, hidden_size, num_layers, cell)
    b = param_shapes(3, hidden_size, num_layers, cell)
    axes = {}
    for name in a:
        diff = [i for i, (m, n) in enumerate(zip(a[name], b[name], strict=True)) if m != n]
        if diff:
            axes[name] = diff[0]
    return axes


def transfer(
    old: dict[str, np.ndarray], old_vocab: Vocab, fresh: dict[str, np.ndarray], new_vocab: Vocab, axes: dict[str, int]
) -> dict[str, np.ndarray]:
    """The fresh parameters with the old ones copied in: whole, or by character along the vocabulary axes.

    fresh is updated in place (its arrays keep their dtype and alignment) and returned.
    """
    index = {c: i for i, c in enumerate(old_vocab.chars)}
    pairs = [(j, index[c]) for j, c in enumerate(new_vocab.chars) if c in index]
    new_ids = np.array([j for j, _ in pairs], dtype=np.intp)
    old_ids = np.array([i for _, i in pairs], dtype=np.intp)
    for name, dst in fresh.items():
        src = old[name]
        if name not in axes:
            dst[...] = src
            continue
        ax = axes[name]
        sel_new = (slice(None),) * ax + (new_ids,)
        sel_old = (slice(None),) * ax + (old_ids,)
        dst[sel_new] = src[sel_old]
    return fresh


def init_from(path: str, cfg: Config, vocab: Vocab, fresh: dict[str, np.ndarray]) -> tuple[dict, Origin]:
    """Parameters for a new run of cfg on vocab, from the checkpoint at path (a file or a run folder).

    fresh holds the run's own initial parameters: the rows of new characters keep
    theirs. Raises FineTuneError when the architectures differ.
    """
    ckpt = checkpoint.load(path)
    old_cfg = ckpt.config
    diffs = model_differences(old_cfg.model, cfg.model)
    if diffs:
        raise FineTuneError(
            f"cannot fine-tune from {ckpt.path}: the architecture differs ({'; '.join(diffs)}); "
            f"set the model keys to the checkpoint's"
        )
    old_vocab = ckpt.vocab
    shared = set(old_vocab.chars) & set(vocab.chars)
    if not shared:
        raise FineTuneError(f"cannot fine-tune from {ckpt.path}: its vocabulary shares no character with {cfg.data}")
    m = cfg.model
    params = transfer(ckpt.inference_params, old_vocab, fresh, vocab, vocab_axes(m.hidden_size, m.num_layers, m.cell))
    origin = Origin(
        path=ckpt.path, step=ckpt.step, data=old_cfg.data, shared=len(shared),
        new="".join(old_vocab.unknown(vocab.chars)), dropped="".join(vocab.unknown(old_vocab.chars)),
    )  # fmt: skip
    return params, origin
