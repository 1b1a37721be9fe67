"""Recurrent cells: one module per cell, one small interface, one registry.

A cell is the recurrence of one layer. The model computes the layer's input
pre-activations for every step at once, a = x Wxh + bh (T, B, G*H), with one
large product (a row lookup for layer 0); the cell runs the loop over time on
them. Everything else (the input gather, the output affine, dropout, the loss)
is shared and lives in the model. A cell offers:

    name, gates (G), activations     what it is called, G*H columns per weight, the nonlinearities it takes
    smooth                           False if its derivative has kinks (relu): gradcheck takes smaller steps
    state_size(H) -> S               the width of its state; [..., :H] is always h, what the layer above reads
    param_shapes(D, H)               {"Wxh": (D, G*H), "Whh": (H, G*H), "bh": (G*H,), ...}
    init_params(D, H, rng, embedding)  float64 initial values, drawn from rng in a fixed order
    forward(a, s0, p, buffer)        -> (hs (T, B, H), s_last (B, S), cache)
    backward(dhs, cache, buffer)     -> (da (T, B, G*H), ds0 (B, S), {"Whh": ..., extra recurrent params})
    split_bias(p) -> (b_in, b_rec)   the layer's biases as one on the input side and one on the recurrent side
    step_(ax, v, h, rest, xp=np)     one inference step in place: ax = x Wxh + b_in, v = h Whh + b_rec,
                                     h (K, H) and rest (K, S - H) hold the state before and after;
                                     xp the array module (numpy or cupy), bound by step_fn(xp)

forward and backward may overwrite their first argument (a, dhs) and return it
as an output; `buffer(name, shape)`, if given, supplies work arrays kept from
call to call (the model's; None allocates fresh ones). p maps the cell's own
parameter names (Wxh, Whh, bh and any extra) to arrays.

The registry maps a name to its module, imported on first use, and to the
nonlinearities it takes, so that naming and validating the cells (the config,
the CLI's --help) does not load numpy: `--threads` must act before numpy loads
its BLAS. A fourth cell is one new module with a `Cell` class and a line in each
table here.
"""

from __future__ import annotations

from importlib import import_module

REGISTRY = {  # name -> module in this package defining `Cell`
    "rnn": "rnn",
    "lstm": "lstm",
    "gru": "gru",
}
CELL_NAMES = tuple(REGISTRY)
ACTIVATIONS = {  # name -> the nonlinearities the cell takes, its default first (its Cell reads them from here)
    "rnn": ("tanh", "relu"),
    "lstm": ("tanh",),
    "gru": ("tanh",),
}


def cell_activations(name: str) -> tuple[str, ...]:
    """The nonlinearities a cell takes, without importing it (config validation runs before numpy loads)."""
    if name not in REGISTRY:
        raise ValueError(f"cell must be one of {', '.join(CELL_NAMES)}, got {name!r}")
    return ACTIVATIONS[name]


def cell_class(name: str):
    """The `Cell` class registered under name (ValueError for an unknown name)."""
    if name not in REGISTRY:
        raise ValueError(f"cell must be one of {', '.join(CELL_NAMES)}, got {name!r}")
    return import_module(f".{REGISTRY[name]}", __name__).Cell


def make_cell(name: str = "rnn", activation: str = "tanh"):
    """A cell instance: make_cell("rnn", "relu"), make_cell("lstm")."""
    return cell_class(name)(activation)
