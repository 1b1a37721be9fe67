"""The training loop: truncated BPTT over parallel streams, evaluation, checkpoints, resume.

Batching. The train split is cut into B = batch_size contiguous streams of
S = (N - 1) // B characters. Step w of an epoch reads window w of every stream
(T = seq_length characters, targets shifted by one), so consecutive windows
continue each stream and the hidden state is carried from one to the next. After
S // T windows the streams wrap and the state restarts from zero (an epoch). With
train.random_offset, every epoch after the first shifts all streams by a random
offset in [0, S) (reading the text as a circle), so the window boundaries and the
stretches each stream starts cold differ from epoch to epoch.

Evaluation reads the validation split (or its first eval_chars characters) cut
into B streams the same way, every target exactly once; the ragged last window
is masked. The loop never prints: it reports through `callback(kind, info)`
("start", "step", "eval", "sample", "checkpoint", "end") and the CLI renders.

Randomness: one generator, seeded from train.seed, draws the initial parameters,
then, in the order training meets them, each step's dropout masks (none without
dropout) and each new epoch's offset. Evaluation and the samples draw nothing
from it, so how often they run does not change the parameters.

Checkpoints (see checkpoint.py) hold everything the loop needs to continue, the
generator's state included: with the same config, N steps + resume + N steps give
the same parameters as 2N steps. They also hold a fingerprint of the data (see
data.fingerprint): resuming on another text is refused, since the run's best
loss and best.npz belong to the old one (fine-tuning is the way to go on). A new
run starts from fresh parameters or, with train.init_from, from a trained
checkpoint's (fine-tuning, see finetune.py).

Logs in out_dir: metrics.jsonl, one record per evaluation, whose train_loss is
the mean training loss of the steps since the previous evaluation; train.jsonl,
the mean loss of every train.log_every steps (and of the steps before a stop). A
new run starts both afresh; a resumed one cuts them back to its checkpoint's
step. The run holds out_dir's lock (runlock.py) from before its first write to
its end, so no second run writes the same folder.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import checkpoint, finetune
from .backend import backend_of, get_backend
from .config import ARCHITECTURE, Config, model_differences
from .data import DataError, Dataset, fingerprint, load_dataset
from .errors import CharRNNError, plural
from .files import atomic_write
from .model import DTYPES, CharRNN, init_params
from .optim import apply_update, clip_by_global_norm, init_state, learning_rate
from .runlock import RunLock
from .sampling import Decoding, generate
from .threads import set_threads

METRICS_FILE = "metrics.jsonl"  # one record per evaluation
TRAIN_LOG = "train.jsonl"  # one record per train.log_every steps: the mean loss over them
LN2 = math.log(2)
DISPLAY_DECAY = 0.9  # the live display's loss: an EMA over ~10 steps, debiased (see LossEMA)
SCHEDULE_KEYS = ("learning_rate", "lr_schedule", "warmup_steps", "min_lr_frac", "lr_decay_every", "lr_decay",
                 "max_steps")  # fmt: skip


class TrainError(CharRNNError):
    """Training cannot start or cannot go on."""


class DivergedError(TrainError):
    """The training or validation loss stopped being finite (a learning rate too high, say)."""


# --------------------------------------------------------------------------- batching


def windows_per_epoch(n: int, batch_size: int, seq_length: int) -> int:
    """How many (B, T) windows one pass over n ids gives (0 if the split is too short)."""
    return ((n - 1) // batch_size) // seq_length


def train_window(
    ids: np.ndarray, batch_size: int, seq_length: int, w: int, offset: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Window w of the B streams of ids: inputs x (B, T) and next characters y (B, T).

    Stream b starts at b * S + offset, S = (N - 1) // B; positions wrap around the
    end of the text (read as a circle of N - 1 inputs), so any offset is valid.
    """
    S = (len(ids) - 1) // batch_size
    idx = (np.arange(batch_size) * S + offset)[:, None] + (w * seq_length + np.arange(seq_length))  # (B, T)
    idx %= len(ids) - 1
    x = np.asarray(ids[idx], dtype=np.intp)
    y = np.asarray(ids[idx + 1], dtype=np.intp)
    return x, y


def eval_windows(ids: np.ndarray, batch_size: int, seq_length: int):
    """Yield (x, y, mask) windows that score every target of ids exactly once.

    The n = len(ids) - 1 targets are cut into B = min(batch_size, n) streams of
    S = ceil(n / B); positions past a stream's end (the ragged tail) are masked.
    """
    n = len(ids) - 1
    B = min(batch_size, n)
    S = -(-n // B)
    starts = (np.arange(B) * S)[:, None]  # (B, 1)
    for w0 in range(0, S, seq_length):
        j = w0 + np.arange(min(seq_length, S - w0))  # positions within the streams
        g = starts + j  # (B, T') global target index
        mask = g < n
        g = np.minimum(g, n - 1)
        x = np.asarray(ids[g], dtype=np.intp)
        y = np.asarray(ids[g + 1], dtype=np.intp)
        yield x, y, mask


def evaluate(model: CharRNN, ids: np.ndarray, batch_size: int, seq_length: int) -> float:
    """Mean NLL (nats/char) over every target of ids, the state carried along each stream.

    Where the backend keeps scalars on the device (cuda), the windows' losses are summed
    there and the total comes back once, at the end.
    """
    total, count = 0.0, 0.0
    h = None
    for x, y, mask in eval_windows(ids, batch_size, seq_length):
        c = float(mask.sum())
        if c:
            loss, h = model.loss(x, y, h, mask)
            total += loss * c
        else:
            _, h = model.forward(x, h)
        count += c
    (total,) = model.backend.to_floats([total])
    return nonnegative(total / count)


def nonnegative(loss: float) -> float:
    """A mean NLL as reported: never below 0 (a one-character text's loss is 0; rounding made it -0.0000).

    NaN and infinities pass through unchanged, for the divergence checks.
    """
    return 0.0 if loss <= 0 else loss


class LossEMA:
    """The live display's smoothed training loss: an exponential moving average, debiased.

    ema_n = d ema_{n-1} + (1 - d) loss_n from ema_0 = 0, shown as ema_n / (1 - d^n),
    the bias correction of Adam's moments (Kingma & Ba 2015): a weighted mean of
    the steps so far, never the stale first loss. d = DISPLAY_DECAY, 0.9: the last
    ~10 steps, so it follows a falling loss closely at the start of a run (0.98, the
    old value seeded with the first loss, showed 3.17 where the last 20 steps'
    mean was 2.14). Display only: the logs hold exact means.
    """

    def __init__(self, decay: float = DISPLAY_DECAY):
        self.decay, self.ema, self.n = decay, 0.0, 0

    def update(self, loss: float) -> float:
        self.n += 1
        self.ema = self.decay * self.ema + (1 - self.decay) * loss
        return nonnegative(self.ema / (1 - self.decay**self.n))


# --------------------------------------------------------------------------- one update


def train_step(model: CharRNN, opt_state: dict, x, y, h, step: int, tc, lr_scale=None, rng=None, ema=None):
    """One update on the window (x, y) from state h: returns (loss, grad norm, lr, new state).

    rng draws the masks of dropout and the other regularisers (a model without them
    draws nothing); ema, the averaged parameters (train.ema_decay > 0), follows the
    update (`update_ema`). The new state is None, and the parameters are left untouched,
    when the loss or the gradient norm is not finite. The benchmark times exactly this function.

    Where the backend keeps scalars on the device (`Backend.eager_scalars` False: cuda),
    loss and norm are 0-d device arrays and nothing here waits for the device: the update
    is applied whatever they are, and the caller checks them when it reads them back (the
    training loop does, before it writes anything: `_StepLog`).
    """
    loss, grads, h_new = model.loss_and_grads(x, y, h, rng=rng)
    norm = clip_by_global_norm(grads, tc.grad_clip)
    lr = learning_rate(step, tc)
    if model.backend.eager_scalars and not (math.isfinite(loss) and math.isfinite(norm)):
        return loss, norm, lr, None
    apply_update(tc.optimizer, model.params, grads, opt_state, lr, step + 1, tc, lr_scale)
    if ema is not None:
        update_ema(ema, model.params, step + 1, tc.ema_decay, scratch=grads)
    return loss, norm, lr, h_new


def ema_rate(t: int, decay: float) -> float:
    """The averaging's decay at update t (1-based): min(decay, (1 + t) / (10 + t)).

    The warm-up of TensorFlow's ExponentialMovingAverage (its num_updates): the
    first updates' average follows the parameters closely (0.18 at t = 1, 0.5 at
    t = 8), so it never holds on to the random initial weights for the ~1/(1 - decay)
    steps a fixed decay would; from t = (10 decay - 1) / (1 - decay) on (8,990 for
    0.999) it is the decay itself. So in a shorter run every decay above (1 + T) / (10 + T),
    T its last step (0.9960 at 2,250 steps), gives the same average: the warm-up rules.
    """
    return min(decay, (1 + t) / (10 + t))


def update_ema(ema: dict, params: dict, t: int, decay: float, scratch: dict | None = None) -> None:
    """ema <- d ema + (1 - d) params in place, d = ema_rate(t, decay); scratch (the gradients) saves allocations.

    Weight averaging (Polyak & Juditsky 1992, as an exponential moving average): the
    averaged weights lie nearer the centre of the region the last updates wander
    about, and evaluate better than the last iterate; AWD-LSTM (Merity et al. 2018)
    averages its final phase for the same reason. It never feeds back into training.
    """
    d = ema_rate(t, decay)
    for name, avg in ema.items():
        p = params[name]
        xp = backend_of(p).xp
        diff = xp.subtract(p, avg, out=scratch[name]) if scratch is not None else p - avg
        diff *= p.dtype.type(1 - d)
        avg += diff  # avg + (1 - d)(p - avg) = d avg + (1 - d) p


@contextlib.contextmanager
def averaged_weights(model: CharRNN, ema: dict | None):
    """model runs on the averaged parameters inside the block (nothing changes when ema is None)."""
    if ema is None:
        yield model
        return
    live, model.params = model.params, ema
    try:
        yield model
    finally:
        model.params = live


# --------------------------------------------------------------------------- state


@dataclass
class TrainState:
    """Everything that changes during training, besides the parameters and optimizer state."""

    step: int = 0
    epoch: int = 0
    window: int = 0  # next window within the epoch
    offset: int = 0  # where the streams start in this epoch (see train_window)
    interval_loss: float = 0.0  # sum of the training losses since the last evaluation
    interval_steps: int = 0  # how many steps that sum holds
    best_val: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0
    elapsed: float = 0.0  # training seconds over all runs
    history: list[dict] = field(default_factory=list)
    init_from: dict | None = None  # a fine-tuned run's origin (finetune.Origin), kept in all its checkpoints
    data_fingerprint: dict | None = None  # data.fingerprint() of the text (None: from charrnn 0.2.0 or older)

    def to_json(self) -> dict:
        return {
            "step": self.step, "position": {"epoch": self.epoch, "window": self.window, "offset": self.offset},
            "interval_loss": self.interval_loss, "interval_steps": self.interval_steps,
            "best_val": self.best_val, "best_step": self.best_step,
            "evals_since_best": self.evals_since_best, "elapsed": self.elapsed, "history": self.history,
            "init_from": self.init_from, "data_fingerprint": self.data_fingerprint,
        }  # fmt: skip

    @classmethod
    def from_json(cls, meta: dict) -> TrainState:
        pos = meta.get("position", {})
        return cls(
            step=int(meta["step"]), epoch=int(pos.get("epoch", 0)), window=int(pos.get("window", 0)),
            offset=int(pos.get("offset", 0)),
            interval_loss=float(meta.get("interval_loss", 0.0)), interval_steps=int(meta.get("interval_steps", 0)),
            best_val=meta.get("best_val"), best_step=meta.get("best_step"),
            evals_since_best=int(meta.get("evals_since_best", 0)), elapsed=float(meta.get("elapsed", 0.0)),
            history=list(meta.get("history", [])), init_from=meta.get("init_from"),
            data_fingerprint=meta.get("data_fingerprint"),
        )  # fmt: skip


@dataclass
class TrainResult:
    status: str  # "done", "early_stop", "time_limit", "interrupted"
    step: int
    out_dir: str
    best_val: float | None
    last_val: float | None
    elapsed: float
    checkpoint: str


def _noop(kind: str, info: dict) -> None:
    pass


def check_compatible(cfg: Config, ckpt: checkpoint.Checkpoint, ds: Dataset) -> dict:
    """A resumed checkpoint must have the config's architecture and the data's vocabulary and text.

    Returns the data's fingerprint. Raises TrainError saying what differs; for other
    data, it points to fine-tuning (--init-from), the way to go on training on it.
    """
    diffs = model_differences(ckpt.config.model, cfg.model, (*ARCHITECTURE, "dtype"))
    if diffs:
        raise TrainError(f"cannot resume {ckpt.path}: the architecture differs ({'; '.join(diffs)})")
    to_new_text = (f"to go on training this model on the new text, fine-tune it: --init-from {ckpt.path} "
                   f"with another out_dir")  # fmt: skip
    if ckpt.vocab.chars != ds.vocab.chars:
        raise TrainError(f"cannot resume {ckpt.path}: its vocabulary differs from the data's in {cfg.data} "
                         f"({ckpt.vocab.difference(ds.vocab)}); {to_new_text}")  # fmt: skip
    now = fingerprint(ds)
    then = ckpt.meta.get("data_fingerprint")
    if not isinstance(then, dict):  # written before fingerprints: the character counts of the text still tell
        then = None
        counts = ckpt.vocab.counts
        if counts is not None and ds.vocab.counts is not None and counts != ds.vocab.counts:
            then = {"train_chars": now["train_chars"], "val_chars": now["val_chars"]}
            if sum(counts) != now["train_chars"] + now["val_chars"]:
                then = {"text_chars": sum(counts)}
    if then is not None and then != now:
        changes = [f"{split} split {plural(then[key], 'character')} then, {now[key]:,} now"
                   for split, key in (("train", "train_chars"), ("val", "val_chars"))
                   if then.get(key) is not None and then[key] != now[key]]  # fmt: skip
        if "text_chars" in then:
            changes.append(
                f"{plural(then['text_chars'], 'character')} then, {now['train_chars'] + now['val_chars']:,} now"
            )
        raise TrainError(
            f"cannot resume {ckpt.path}: {cfg.data} no longer holds the text this run trained on "
            f"({'; '.join(changes) or 'the same sizes, other content'}), and its best loss and best.npz belong to "
            f"that text; {to_new_text}, or start over here with --force"
        )
    return now


def schedule_change(old, new, step: int) -> str | None:
    """What a resumed run's schedule now does, when the config changed it (say train.max_steps): or None.

    old and new are the checkpoint's and the config's TrainConfig; step is the
    first step the resumed run trains.
    """
    changed = [k for k in SCHEDULE_KEYS if getattr(old, k) != getattr(new, k)]
    was, now = learning_rate(step, old), learning_rate(step, new)
    if not changed or math.isclose(was, now, rel_tol=1e-9):
        return None
    keys = ", ".join(f"train.{k} {getattr(old, k)} -> {getattr(new, k)}" for k in changed)
    keep = f"--set train.lr_schedule=constant --set train.learning_rate={was:.6g}"
    if step < new.warmup_steps:
        keep += " --set train.warmup_steps=0"
    return (f"the learning-rate schedule changed ({keys}): step {step + 1} trains at {now:.2e}, where the "
            f"checkpoint's schedule gave {was:.2e}; to go on at that rate instead, resume with "
            f"{keep}")  # fmt: skip


# --------------------------------------------------------------------------- setup


@dataclass
class Run:
    """What the loop starts from: the model, its optimizer state, the loop's state, the generator, the carried h."""

    model: CharRNN
    opt_state: dict
    st: TrainState
    rng: np.random.Generator
    h: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)  # what the user should know as the run starts
    ema: dict | None = None  # the averaged parameters (train.ema_decay > 0), on the model's device


def start_ema(model: CharRNN, decay: float) -> dict | None:
    """The averaged parameters' starting point, a copy of the model's (None when decay is 0: no averaging)."""
    return {name: model.backend.copy(p) for name, p in model.params.items()} if decay > 0 else None


def set_regularization(model: CharRNN, mc) -> None:
    """The config's training-only settings on a model (a resumed one may change them, like the learning rate)."""
    model.dropout, model.variational_dropout = mc.dropout, mc.variational_dropout
    model.weight_drop, model.embed_dropout = mc.weight_drop, mc.embed_dropout


def new_run(cfg: Config, ds: Dataset) -> Run:
    """A run from step 0: fresh parameters, or a checkpoint's when train.init_from names one (fine-tuning).

    The generator draws the initial parameters first in both cases, so a fine-tuned
    run's new characters get exactly the rows a run from scratch would give them.
    """
    mc = cfg.model
    rng = np.random.default_rng(cfg.train.seed)
    params = init_params(ds.vocab.size, mc.hidden_size, mc.num_layers, mc.cell, mc.activation, rng, DTYPES[mc.dtype])
    st = TrainState(data_fingerprint=fingerprint(ds))
    if cfg.train.init_from:
        params, origin = finetune.init_from(cfg.train.init_from, cfg, ds.vocab, params)
        st.init_from = origin.to_json()
    model = CharRNN(ds.vocab.size, mc.hidden_size, mc.num_layers, mc.cell, mc.activation, mc.dropout,
                    dtype=DTYPES[mc.dtype], params=params, device=cfg.train.device)  # fmt: skip
    set_regularization(model, mc)
    return Run(model, init_state(cfg.train.optimizer, model.params), st, rng, ema=start_ema(model, cfg.train.ema_decay))


def resumed_run(cfg: Config, ds: Dataset, path: Path) -> Run:
    """The run saved in path (its last.npz), to continue exactly where it stopped."""
    if not path.is_file():
        raise TrainError(f"nothing to resume: {path} does not exist")
    ckpt = checkpoint.load(path)
    data_fingerprint = check_compatible(cfg, ckpt, ds)
    model = ckpt.model(cfg.train.device, averaged=False)  # whichever device wrote it; the weights being trained
    set_regularization(model, cfg.model)  # training settings, like the learning rate: the config's apply
    if set(ckpt.optim_state) != set(init_state(cfg.train.optimizer, model.params)):
        raise TrainError(f"cannot resume {path}: it was trained with another optimizer than {cfg.train.optimizer!r}")
    try:
        st = TrainState.from_json(ckpt.meta)
        rng = np.random.default_rng(cfg.train.seed)
        rng.bit_generator.state = ckpt.meta["rng"]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise TrainError(f"cannot resume {path}: its training state is damaged ({e})") from None
    st.data_fingerprint = data_fingerprint  # a checkpoint written before fingerprints gets one from now on
    h = ckpt.h if ckpt.h is not None and ckpt.h.shape[1] == cfg.train.batch_size else None
    change = schedule_change(ckpt.config.train, cfg.train, st.step)
    opt_state = {name: model.backend.asarray(a) for name, a in ckpt.optim_state.items()}
    notes = [change] if change else []
    ema = None
    if cfg.train.ema_decay > 0:
        if ckpt.ema is not None:
            ema = {name: model.backend.copy(a) for name, a in ckpt.ema.items()}
        else:
            ema = start_ema(model, cfg.train.ema_decay)
            notes.append(f"train.ema_decay {cfg.train.ema_decay:g}: the weight average starts here, from the "
                         f"step-{st.step} weights (the checkpoint holds none)")  # fmt: skip
    elif ckpt.ema is not None:
        notes.append("train.ema_decay is 0: the checkpoint's weight average is dropped, and evaluation, best.npz "
                     "and sampling use the trained weights from here on")  # fmt: skip
    return Run(model, opt_state, st, rng, h, notes=notes, ema=ema)


def _check_sizes(cfg: Config, ds: Dataset) -> int:
    """Windows per epoch; a TrainError when a split is too short for the batch shape."""
    B, T = cfg.train.batch_size, cfg.train.seq_length
    n_windows = windows_per_epoch(len(ds.train), B, T)
    if n_windows < 1:  # each of the B streams needs T inputs, and the last input its next character
        raise TrainError(
            f"the training split ({plural(len(ds.train), 'character')}) is too short for "
            f"batch_size {B} x seq_length {T}, which needs at least {B * T + 1:,} (B x T inputs and the next "
            f"character of the last); lower them or prepare a longer text"
        )
    if len(ds.val) - 1 < T:  # a window of T inputs and their T next characters
        raise TrainError(
            f"seq_length {T} needs a validation split of at least {plural(T + 1, 'character')} (T inputs and the next "
            f"character of each), and it has {len(ds.val):,}: use seq_length <= {len(ds.val) - 1} or prepare with "
            f"a larger --val-frac"
        )
    return n_windows


# --------------------------------------------------------------------------- the loop


def train(
    cfg: Config,
    *,
    resume: bool = False,
    force: bool = False,
    callback: Callable[[str, dict], Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
    dataset: Dataset | None = None,
) -> TrainResult:
    """Train as cfg says; report through callback; return how and where it ended.

    should_stop() is polled after every step (the CLI sets it on Ctrl-C and
    SIGTERM); when it turns true the loop saves last.npz and returns status
    "interrupted". Raises TrainError (a subclass of CharRNNError) for anything the
    user can fix (or CharRNNError: a run folder that another process holds, runlock.RunLockedError),
    data that does not fit the config or the resumed checkpoint, a diverged loss,
    and any failed file operation (one line naming the file and the system's
    reason, a read-only file system say).
    """
    if cfg.train.threads:
        set_threads(cfg.train.threads)
    get_backend(cfg.train.device)  # cuda without CuPy or a GPU: one line (DeviceError) before anything is written
    ds = dataset or load_dataset(cfg.data)
    n_windows = _check_sizes(cfg, ds)
    out = Path(cfg.out_dir)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrainError(f"cannot create {out}: {e.strerror}") from None
    try:
        with RunLock(out, remove_if_unused=created) as lock:  # a refused new run leaves no empty folder
            notes = [lock.unlocked] if lock.unlocked else []
            return _train_locked(cfg, ds, n_windows, out, resume, force, callback or _noop,
                                 should_stop or (lambda: False), notes)  # fmt: skip
    except OSError as e:
        if isinstance(e, BrokenPipeError):  # the reader of the CLI's output went away: not a file problem
            raise
        where = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 else "") if e.filename else str(out)
        raise TrainError(f"cannot use {where}: {e.strerror or e}") from None


def _train_locked(cfg: Config, ds: Dataset, n_windows: int, out: Path, resume: bool, force: bool, cb, stop,
                  notes: list[str]):  # fmt: skip
    """train(), once out_dir's lock is held; notes: what the user should know as the run starts."""
    tc = cfg.train
    B, T = tc.batch_size, tc.seq_length
    last_path = out / checkpoint.LAST
    if not resume and last_path.exists() and not force:
        raise TrainError(f"{out} already holds a run; use --resume to continue it or --force to start over")
    if not resume and tc.init_from and _clears(checkpoint.resolve(tc.init_from), out):
        raise TrainError(f"train.init_from {tc.init_from} is a checkpoint of out_dir {out}, which a new run "
                         f"replaces: copy it elsewhere, or set another out_dir")  # fmt: skip
    run = resumed_run(cfg, ds, last_path) if resume else new_run(cfg, ds)
    if not resume:  # a new run starts its logs afresh (a run killed before its first checkpoint left some)
        for p in (last_path, out / checkpoint.BEST, out / METRICS_FILE, out / TRAIN_LOG):
            p.unlink(missing_ok=True)
    else:  # records written after the checkpoint will be written again
        for p in (out / METRICS_FILE, out / TRAIN_LOG):
            _trim_log(p, run.st.step)
    model, st = run.model, run.st
    ev = _Evaluator(cfg, ds, run, out, cb, saved_step=st.step if resume else None)

    lr_scale = {"layers.0.Wxh": tc.input_lr_scale} if tc.input_lr_scale != 1.0 else None
    what = describe_model(cfg)
    cb("start", {"step": st.step, "max_steps": tc.max_steps, "resumed": resume, "model": what,
                 "params": model.num_params, "out_dir": str(out), "device": model.device, "vocab_size": ds.vocab.size,
                 "windows_per_epoch": n_windows, "time_limit": tc.time_limit, "elapsed_s": st.elapsed,
                 "init_from": st.init_from and finetune.Origin.from_json(st.init_from).describe(),
                 "notes": notes + run.notes})  # fmt: skip
    status = "done"
    # a fine-tuned run scores its starting point: the "before" of the curve
    if st.init_from and not st.history and ev.evaluate(learning_rate(0, tc), 0.0):
        status = "early_stop"
    run_start = time.perf_counter()
    base_elapsed = st.elapsed
    interval_start, interval_chars = time.perf_counter(), 0
    chars_per_sec = 0.0
    steps = _StepLog(cfg, model, out, st, cb, ev)

    while status == "done" and st.step < tc.max_steps:
        if stop():
            status = "interrupted"
            break
        if tc.time_limit is not None and st.elapsed >= tc.time_limit:
            status = "time_limit"
            break
        x, y = train_window(ds.train, B, T, st.window, st.offset)
        if st.window == 0:
            run.h = None  # a new epoch starts every stream from the zero state
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # non-finite results: see _StepLog
            loss, norm, lr, h_new = train_step(model, run.opt_state, x, y, run.h, st.step, tc, lr_scale, run.rng,
                                               run.ema)  # fmt: skip
        run.h = h_new
        st.step += 1
        st.window += 1
        if st.window >= n_windows:
            st.window, st.epoch = 0, st.epoch + 1
            if tc.random_offset:
                st.offset = int(run.rng.integers(0, (len(ds.train) - 1) // B))
        st.elapsed = base_elapsed + (time.perf_counter() - run_start)
        interval_chars += B * T
        now = time.perf_counter()
        if now - interval_start > 0:
            chars_per_sec = interval_chars / (now - interval_start)
        steps.add(loss, norm, lr, chars_per_sec)  # the step's callback and logs (on cuda, when it logs)

        if st.step % tc.eval_every == 0 or st.step == tc.max_steps:
            steps.flush()  # before the evaluation saves: a diverged step stops the run first
            st.elapsed = base_elapsed + (time.perf_counter() - run_start)  # with the flush's wait for the device
            if ev.evaluate(lr, chars_per_sec):
                status = "early_stop"
            # the evaluation and sample are not training time
            interval_start, interval_chars = time.perf_counter(), 0
            run_start, base_elapsed = time.perf_counter(), st.elapsed

    steps.close()  # the steps not read yet, and the record of a stop between two: before the save
    if ev.saved_step != st.step or not last_path.exists():
        ev.save(last_path)
    last_val = st.history[-1]["val_loss"] if st.history else None
    result = TrainResult(status, st.step, str(out), st.best_val, last_val, st.elapsed, str(last_path))
    cb("end", result.__dict__)
    return result


def describe_model(cfg: Config) -> str:
    """The model and its regularisers in words, for the start of a run: "lstm 2 x 512, dropout 0.25, ..."."""
    mc, parts = cfg.model, []
    if mc.dropout:
        parts.append(f"{'variational ' if mc.variational_dropout else ''}dropout {mc.dropout:g}")
    if mc.weight_drop:
        parts.append(f"weight drop {mc.weight_drop:g}")
    if mc.embed_dropout:
        parts.append(f"embedding dropout {mc.embed_dropout:g}")
    if cfg.train.ema_decay:
        parts.append(f"weight average {cfg.train.ema_decay:g}")
    return ", ".join([f"{mc.cell} {mc.num_layers} x {mc.hidden_size}", *parts])


def _log_train(out: Path, step: int, elapsed: float, losses: list[float], lr: float, norm: float,
               chars_per_sec: float) -> None:  # fmt: skip
    """Append the mean loss of the steps since the last record to train.jsonl, and start a new interval."""
    mean = nonnegative(sum(losses) / len(losses))
    _append(out / TRAIN_LOG, {"step": step, "train_loss": mean, "steps": len(losses), "lr": lr, "grad_norm": norm,
                              "chars_per_sec": chars_per_sec, "elapsed_s": round(elapsed, 3)})  # fmt: skip
    losses.clear()


class _StepLog:
    """Where each step's loss and gradient norm go: the NaN guard, the interval sums, the callback, train.jsonl.

    A step is recorded by `add` as it ends, with what the host knows of it (step, lr, speed,
    epoch, elapsed time). Where the backend reads scalars back at once (`Backend.eager_scalars`,
    the CPU) it is read at once. Where they stay on the device (cuda), the steps wait, their
    loss and norm 0-d device arrays, until the loop logs: every train.log_every steps, before
    an evaluation, at the end or a stop (`flush`, `close`); then all of them come back in one
    transfer (`Backend.to_floats`) and go through the same bookkeeping, in order, so the logs,
    the callback's "step" reports (late, in a burst) and the display's smoothed loss are those
    of a step-by-step read.

    The NaN guard is here: the first step whose loss or norm is not finite raises DivergedError
    naming it. On cuda the steps after it ran first, on damaged parameters; the loop saves only
    after a flush, so no checkpoint holds them, and the last good one is kept.
    """

    def __init__(self, cfg: Config, model: CharRNN, out: Path, st: TrainState, cb, ev: _Evaluator):
        self.cfg, self.model, self.out, self.st, self.cb, self.ev = cfg, model, out, st, cb, ev
        self.backend = model.backend
        self.pending: list[tuple] = []  # (step, loss, norm, lr, chars_per_sec, epoch, elapsed) not read yet
        self.losses: list[float] = []  # the losses since the last train.jsonl record
        self.last: tuple | None = None  # (step, elapsed, lr, norm, chars_per_sec) of the last step read
        self.shown = LossEMA()

    def add(self, loss, norm, lr: float, chars_per_sec: float) -> None:
        st = self.st
        self.pending.append((st.step, loss, norm, lr, chars_per_sec, st.epoch, st.elapsed))
        if self.backend.eager_scalars or st.step % self.cfg.train.log_every == 0:
            self.flush()

    def flush(self) -> None:
        """Read the pending steps back (one transfer) and log them; DivergedError at the first non-finite one."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        values = self.backend.to_floats([v for p in pending for v in p[1:3]])
        st, tc = self.st, self.cfg.train
        for (step, _, _, lr, cps, epoch, elapsed), loss, norm in zip(pending, values[::2], values[1::2], strict=True):
            if not (math.isfinite(loss) and math.isfinite(norm)):
                raise DivergedError(f"the loss became {'NaN' if math.isnan(loss) else loss} at step {step} "
                                 f"(gradient norm {norm:.3g}); {diverged_advice(self.cfg, self.model.cell)}; "
                                 f"{self.ev.kept()}")  # fmt: skip
            st.interval_loss += loss
            st.interval_steps += 1
            self.cb("step", {"step": step, "max_steps": tc.max_steps, "loss": loss,
                             "smooth_loss": self.shown.update(loss), "lr": lr, "grad_norm": norm,
                             "chars_per_sec": cps, "epoch": epoch, "elapsed_s": elapsed})  # fmt: skip
            self.losses.append(loss)
            self.last = (step, elapsed, lr, norm, cps)
            if step % tc.log_every == 0:
                _log_train(self.out, step, elapsed, self.losses, lr, norm, cps)

    def close(self) -> None:
        """The end of the loop: the steps not read yet, then the record of the steps since the last one
        (a stop between two records: resuming logs the rest on their own)."""
        self.flush()
        if self.losses:
            _log_train(self.out, *self.last[:2], self.losses, *self.last[2:])


def _clears(path: Path, out: Path) -> bool:
    """Whether a new run in out deletes the checkpoint at path (its last.npz or best.npz)."""
    return path.resolve() in {(out / checkpoint.LAST).resolve(), (out / checkpoint.BEST).resolve()}


def _append(path: Path, record: dict) -> None:
    """One JSON line at the end of a log."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:
        raise TrainError(f"cannot write {path}: {e.strerror}") from None


def _trim_log(path: Path, step: int) -> None:
    """Drop a log's records past step (a resumed run repeats the steps after its checkpoint)."""
    if not path.is_file():
        return
    lines = path.read_bytes().splitlines(keepends=True)

    def keep(line: bytes) -> bool:
        try:
            return int(json.loads(line)["step"]) <= step
        except (ValueError, KeyError, TypeError):  # UnicodeDecodeError is a ValueError
            return False  # a torn or damaged line from a killed run

    kept = [line for line in lines if keep(line)]
    if len(kept) != len(lines):
        atomic_write(path, lambda f: f.write(b"".join(kept)))


def diverged_advice(cfg: Config, cell) -> str:
    """What to change when the loss stops being finite (the cell may add its own advice)."""
    tc = cfg.train
    advice = f"lower train.learning_rate (now {tc.learning_rate:g})"
    if not tc.grad_clip:
        advice += " or set train.grad_clip"
    return advice + (f"; {cell.divergence_hint}" if cell.divergence_hint else "")


class _Evaluator:
    """The evaluate-record-save-sample block of the loop, and the checkpoints it writes."""

    def __init__(self, cfg: Config, ds: Dataset, run: Run, out: Path, cb, saved_step: int | None):
        self.cfg, self.ds, self.run, self.out, self.cb = cfg, ds, run, out, cb
        tc = cfg.train
        self.val_ids = ds.val if tc.eval_chars == 0 else ds.val[: tc.eval_chars + 1]
        self.saved_step = saved_step  # the step last.npz holds (None: not written by this run yet)

    def save(self, path: Path) -> None:
        st = self.run.st
        meta = {"config": self.cfg.to_dict(), "vocab": self.ds.vocab.to_json(),
                "rng": self.run.rng.bit_generator.state, **st.to_json()}  # fmt: skip
        checkpoint.save(path, self.run.model.params, meta, self.run.opt_state, self.run.h, ema=self.run.ema)
        self.saved_step = st.step
        self.cb("checkpoint", {"path": str(path), "step": st.step})

    def kept(self) -> str:
        """Which checkpoint survives a failure now, in words."""
        last = self.out / checkpoint.LAST
        if self.saved_step is None or not last.exists():
            return f"no checkpoint was written yet (the first comes at step {self.cfg.train.eval_every})"
        return f"the last good checkpoint (step {self.saved_step}) is kept in {last}"

    def evaluate(self, lr: float, chars_per_sec: float) -> bool:
        """Score the validation split, append to the metrics, save, sample; True when patience ran out."""
        tc, st, model = self.cfg.train, self.run.st, self.run.model
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"), averaged_weights(model, self.run.ema):
            val = evaluate(model, self.val_ids, tc.batch_size, tc.seq_length)
        if not math.isfinite(val):
            raise DivergedError(f"the validation loss became {val} at step {st.step}; "
                             f"{diverged_advice(self.cfg, model.cell)}; {self.kept()}")  # fmt: skip
        # train_loss: the mean training loss of the steps since the previous evaluation (None before any step)
        train_loss = nonnegative(st.interval_loss / st.interval_steps) if st.interval_steps else None
        record = {
            "step": st.step, "train_loss": train_loss, "train_steps": st.interval_steps, "val_loss": val,
            "val_bpc": val / LN2, "chars_per_sec": chars_per_sec, "elapsed_s": round(st.elapsed, 3), "lr": lr,
            "epoch": st.epoch,
        }  # fmt: skip
        st.interval_loss, st.interval_steps = 0.0, 0
        if tc.eval_chars:
            record["val_chars"] = int(len(self.val_ids) - 1)
        improved = st.best_val is None or val < st.best_val
        if improved:
            st.best_val, st.best_step, st.evals_since_best = val, st.step, 0
        else:
            st.evals_since_best += 1
        record["best_val"] = st.best_val
        st.history.append(record)
        _append(self.out / METRICS_FILE, record)
        self.cb("eval", record)
        self.save(self.out / checkpoint.LAST)
        if improved:
            self.save(self.out / checkpoint.BEST)
        if tc.sample_chars:
            with averaged_weights(model, self.run.ema):
                text = generate(model, self.ds.vocab, tc.sample_chars, decoding=Decoding(tc.sample_temperature),
                                seed=tc.seed + st.step)[0]  # fmt: skip
            self.cb("sample", {"step": st.step, "text": text})
        return bool(tc.patience and st.evals_since_best >= tc.patience)


def eval_checkpoint(path: str, data: str | None = None, batch_size: int | None = None, device: str = "cpu",
                    averaged: bool = True) -> dict:  # fmt: skip
    """Validation loss of a checkpoint over the whole val split of its data (or of `data`), on device.

    averaged: score the checkpoint's weight average if it has one (what its training scored), else
    its weights; False: the weights being trained. The result's "weights" says which ("averaged" or
    "trained").
    """
    get_backend(device)  # cuda without CuPy or a GPU: that line first
    ckpt = checkpoint.load(path)
    cfg = ckpt.config
    try:
        ds = load_dataset(data or cfg.data)
    except DataError as e:
        if data is not None:
            raise
        raise TrainError(f"{e}; or, if the data folder moved, name it with --data "
                         f"(this checkpoint was trained on {cfg.data})") from None  # fmt: skip
    if ds.vocab.chars != ckpt.vocab.chars:
        raise TrainError(f"the vocabulary of {ds.path} differs from the checkpoint's "
                         f"({ckpt.vocab.difference(ds.vocab)})")  # fmt: skip
    model = ckpt.model(device, averaged)
    B = batch_size or cfg.train.batch_size
    val = evaluate(model, ds.val, B, cfg.train.seq_length)
    return {"checkpoint": ckpt.path, "data": ds.path, "step": ckpt.step, "val_loss": val, "val_bpc": val / LN2,
            "val_chars": int(len(ds.val) - 1), "weights": ckpt.weights(averaged)}  # fmt: skip
