"""Optimizers, learning-rate schedules and gradient clipping over a flat dict of named arrays.

Each optimizer's state is a flat dict of arrays named "<slot>.<param name>" (for
example "m.layers.0.Whh", "v.Why"), so it is saved in checkpoints as it is. The
update rules (g the gradient, after clipping; lr the scheduled rate; t = 1, 2, ...):

    sgd       p -= lr * g
    momentum  v = momentum * v + g;                       p -= lr * v
    adagrad   G += g^2;                                   p -= lr * g / (sqrt(G) + eps)
    rmsprop   s = rms_decay * s + (1 - rms_decay) * g^2;  p -= lr * g / (sqrt(s) + eps)
    adam      m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr * m^ / (sqrt(v^) + eps),
              m^ = m / (1 - b1^t), v^ = v / (1 - b2^t)       (Kingma & Ba 2015)

Weight decay is decoupled (Loshchilov & Hutter 2019): p -= lr * weight_decay * p,
applied to weight matrices only, never to biases, at the scheduled rate (a
per-parameter lr_scale speeds up the update, not the decay). Updates are in place, in the
parameters' dtype.
"""

from __future__ import annotations

import math

import numpy as np

from .backend import backend_of

OPTIMIZERS = ("sgd", "momentum", "adagrad", "rmsprop", "adam")
SLOTS = {"sgd": (), "momentum": ("v",), "adagrad": ("G",), "rmsprop": ("s",), "adam": ("m", "v")}


def init_state(optimizer: str, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Zeroed state arrays for every slot of the optimizer and every parameter."""
    if optimizer not in SLOTS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    return {f"{slot}.{name}": backend_of(p).xp.zeros_like(p) for slot in SLOTS[optimizer] for name, p in params.items()}


def global_norm(grads: dict[str, np.ndarray]) -> float:
    """sqrt of the sum of squares of every gradient entry (accumulated in float64; on a GPU, on the device).

    A Python float, or a 0-d float64 device array where the backend keeps scalars on the
    device (`Backend.eager_scalars` False: cuda).
    """
    if not grads:
        return 0.0
    be = backend_of(next(iter(grads.values())))
    total = be.sum_squares(grads.values())
    return math.sqrt(total) if be.eager_scalars else be.xp.sqrt(total)


def clip_by_global_norm(grads: dict[str, np.ndarray], max_norm: float) -> float:
    """Scale all gradients in place so their global norm is at most max_norm (0 disables).

    Returns the norm before clipping (as `global_norm` gives it). The scale is
    max_norm / (norm + 1e-6) when norm > max_norm: where the norm stays on the device,
    it is chosen there too (1 otherwise) and every gradient is multiplied by it, so
    nothing waits for the device.
    """
    norm = global_norm(grads)
    if max_norm <= 0 or not grads:
        return norm
    be = backend_of(next(iter(grads.values())))
    if be.eager_scalars:
        if norm > max_norm:
            scale = max_norm / (norm + 1e-6)
            for g in grads.values():
                g *= g.dtype.type(scale)
        return norm
    scale = be.xp.where(norm > max_norm, max_norm / (norm + 1e-6), 1.0)  # 0-d float64, on the device
    cast: dict = {}  # the scale in each gradient dtype, cast once
    for g in grads.values():
        if g.dtype not in cast:
            cast[g.dtype] = scale.astype(g.dtype)
        g *= cast[g.dtype]  # x 1.0 where the norm is within bounds: the gradients unchanged, bit for bit
    return norm


def learning_rate(step: int, cfg) -> float:
    """The rate for update number `step` (0-based): linear warmup, then the schedule.

    cfg has learning_rate, lr_schedule, warmup_steps, max_steps, min_lr_frac,
    lr_decay_every, lr_decay (a TrainConfig).
    """
    base = cfg.learning_rate
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return base * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return base
    if cfg.lr_schedule == "step":
        return base * cfg.lr_decay ** ((step - cfg.warmup_steps) // cfg.lr_decay_every)
    if cfg.lr_schedule == "cosine":
        span = max(1, cfg.max_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        lo = base * cfg.min_lr_frac
        return lo + 0.5 * (base - lo) * (1 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr_schedule {cfg.lr_schedule!r}")


def apply_update(
    optimizer: str,
    params: dict[str, np.ndarray],
    grads: dict[str, np.ndarray],
    state: dict[str, np.ndarray],
    lr: float,
    t: int,
    cfg,
    lr_scale: dict[str, float] | None = None,
) -> None:
    """One in-place update of params. t is the 1-based update count (Adam's bias correction).

    cfg carries the hyperparameters (momentum, beta1, beta2, rms_decay, eps, weight_decay);
    lr_scale optionally multiplies the rate of named parameters. grads are used as
    scratch space and left modified.
    """
    wd = cfg.weight_decay
    base_lr = lr
    xp = backend_of(next(iter(params.values()))).xp if params else np
    for name, p in params.items():
        g = grads[name]
        dt = p.dtype.type
        if wd and p.ndim > 1:
            p *= dt(1 - base_lr * wd)  # at the scheduled rate, whatever lr_scale says
        lr = base_lr * lr_scale.get(name, 1.0) if lr_scale else base_lr
        if optimizer == "sgd":
            g *= dt(lr)
            p -= g
        elif optimizer == "momentum":
            v = state[f"v.{name}"]
            v *= dt(cfg.momentum)
            v += g
            p -= dt(lr) * v
        elif optimizer == "adagrad":
            G = state[f"G.{name}"]
            G += g * g
            g /= xp.sqrt(G) + dt(cfg.eps)
            g *= dt(lr)
            p -= g
        elif optimizer == "rmsprop":
            s = state[f"s.{name}"]
            s *= dt(cfg.rms_decay)
            s += dt(1 - cfg.rms_decay) * (g * g)
            g /= xp.sqrt(s) + dt(cfg.eps)
            g *= dt(lr)
            p -= g
        elif optimizer == "adam":
            m, v = state[f"m.{name}"], state[f"v.{name}"]
            b1, b2 = cfg.beta1, cfg.beta2
            m *= dt(b1)
            m += dt(1 - b1) * g
            v *= dt(b2)
            g *= g
            g *= dt(1 - b2)
            v += g
            # p -= lr_t * m / (sqrt(v) + eps_t): the bias corrections folded into two scalars
            lr_t = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
            eps_t = cfg.eps * math.sqrt(1 - b2**t)
            xp.sqrt(v, out=g)
            g += dt(eps_t)
            xp.divide(m, g, out=g)
            g *= dt(lr_t)
            p -= g
        else:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
