"""Every cell equals PyTorch's nn.RNN / nn.LSTM / nn.GRU autograd in float64: loss, every gradient, the last state.

Runs when torch is installed (the `bench` extra: pip install -e ".[bench]") and is skipped otherwise.
The weights map by transposing: weight_ih = Wxh^T, weight_hh = Whh^T, bias_ih = bh, bias_hh = 0
except GRU's n block, which is bhn; the output layer is nn.Linear with weight Why^T, bias by.
"""

import numpy as np
import pytest

from charrnn import CharRNN

torch = pytest.importorskip("torch")
nn = torch.nn

TOL = 1e-7  # largest |ours - torch| relative to the largest |torch| of each array
MODULES = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def max_rel(ours, theirs) -> float:
    theirs = np.asarray(theirs)
    return float(np.abs(np.asarray(ours) - theirs).max() / max(np.abs(theirs).max(), 1e-300))


def torch_layers(m: CharRNN, per_layer: bool):
    """PyTorch modules holding m's weights: one L-layer module, or L one-layer modules (for our dropout masks)."""
    H, L, V = m.hidden_size, m.num_layers, m.vocab_size
    Module = MODULES[m.cell.name]
    kw = dict(batch_first=True, dtype=torch.float64)
    if m.cell.name == "rnn":
        kw["nonlinearity"] = m.activation
    mods = [Module(V if i == 0 else H, H, 1, **kw) for i in range(L)] if per_layer else [Module(V, H, L, **kw)]
    for i in range(L):
        mod, k = (mods[i], 0) if per_layer else (mods[0], i)
        p = {name: torch.from_numpy(np.array(a, dtype=np.float64)) for name, a in m.layer_params(i).items()}
        bias_hh = torch.zeros_like(p["bh"])
        if "bhn" in p:
            bias_hh[2 * H :] = p["bhn"]
        with torch.no_grad():
            getattr(mod, f"weight_ih_l{k}").copy_(p["Wxh"].T)
            getattr(mod, f"weight_hh_l{k}").copy_(p["Whh"].T)
            getattr(mod, f"bias_ih_l{k}").copy_(p["bh"])
            getattr(mod, f"bias_hh_l{k}").copy_(bias_hh)
    out = nn.Linear(H, V, dtype=torch.float64)
    with torch.no_grad():
        out.weight.copy_(torch.from_numpy(m.params["Why"].T.copy()))
        out.bias.copy_(torch.from_numpy(m.params["by"]))
    return mods, out


def torch_grads(m: CharRNN, mods, out, per_layer: bool) -> dict[str, np.ndarray]:
    """Their gradients under our names."""
    H = m.hidden_size
    g = {"Why": out.weight.grad.numpy().T, "by": out.bias.grad.numpy()}
    for i in range(m.num_layers):
        mod, k = (mods[i], 0) if per_layer else (mods[0], i)
        g[f"layers.{i}.Wxh"] = getattr(mod, f"weight_ih_l{k}").grad.numpy().T
        g[f"layers.{i}.Whh"] = getattr(mod, f"weight_hh_l{k}").grad.numpy().T
        g[f"layers.{i}.bh"] = getattr(mod, f"bias_ih_l{k}").grad.numpy()
        if m.cell.name == "gru":
            g[f"layers.{i}.bhn"] = getattr(mod, f"bias_hh_l{k}").grad.numpy()[2 * H :]
    return g


def split_state(m: CharRNN, s: torch.Tensor):
    """Our one state array (L, B, S) as PyTorch's: h, or (h, c) for the LSTM."""
    H = m.hidden_size
    return (s[..., :H].contiguous(), s[..., H:].contiguous()) if m.cell.name == "lstm" else s


def join_state(m: CharRNN, s) -> np.ndarray:
    return torch.cat(s, dim=-1).detach().numpy() if m.cell.name == "lstm" else s.detach().numpy()


def problem(m: CharRNN, seed: int):
    rng = np.random.default_rng(seed)
    B, T = 3, 9
    x, y = rng.integers(0, m.vocab_size, (B, T)), rng.integers(0, m.vocab_size, (B, T))
    h0 = rng.uniform(-0.5, 0.5, (m.num_layers, B, m.state_size))
    mask = np.ones((B, T))
    mask[:, 4] = 0
    mask[0, -2:] = 0
    return x, y, h0, mask


def randomised_model(cell, layers, seed, activation="tanh", dropout=0.0):
    m = CharRNN(11, 7, layers, cell, activation, dropout, seed=seed, dtype=np.float64)
    rng = np.random.default_rng(seed + 10)
    for p in m.params.values():  # non-zero biases, so that each is proven to sit where PyTorch has it
        if p.ndim == 1:
            p[:] = rng.uniform(-0.5, 0.5, p.shape)
    return m


def torch_loss(m, logits, y, mask):
    V = m.vocab_size
    nll = nn.functional.cross_entropy(logits.reshape(-1, V), torch.from_numpy(y).reshape(-1), reduction="none")
    w = torch.from_numpy(mask).reshape(-1)
    return (nll * w).sum() / w.sum()


def compare(m, loss, grads, h_last, dh0, t_loss, t_grads, t_last, t_dh0):
    errors = {"loss": abs(loss - t_loss) / abs(t_loss), "h_last": max_rel(h_last, t_last), "h0": max_rel(dh0, t_dh0)}
    errors.update({k: max_rel(grads[k], t_grads[k]) for k in m.params})
    bad = {k: e for k, e in errors.items() if not e < TOL}
    assert not bad, bad
    return errors


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_loss_gradients_and_state_equal_pytorch(cell, layers):
    m = randomised_model(cell, layers, seed=layers)
    x, y, h0, mask = problem(m, seed=layers)
    loss, cache, h_last = m.forward_loss(x, y, h0, mask)
    grads, dh0 = m.backward(cache)

    mods, out = torch_layers(m, per_layer=False)
    s0 = torch.tensor(h0, requires_grad=True)
    inp = nn.functional.one_hot(torch.from_numpy(x), m.vocab_size).double()
    seq, s_last = mods[0](inp, split_state(m, s0))
    t_loss = torch_loss(m, out(seq), y, mask)
    t_loss.backward()
    compare(m, loss, grads, h_last, dh0, t_loss.item(), torch_grads(m, mods, out, False), join_state(m, s_last),
            s0.grad.numpy())  # fmt: skip


def test_relu_rnn_equals_pytorch():
    m = randomised_model("rnn", 2, seed=4, activation="relu")
    x, y, h0, mask = problem(m, seed=4)
    h0 = np.abs(h0)
    loss, cache, h_last = m.forward_loss(x, y, h0, mask)
    grads, dh0 = m.backward(cache)
    mods, out = torch_layers(m, per_layer=False)
    s0 = torch.tensor(h0, requires_grad=True)
    seq, s_last = mods[0](nn.functional.one_hot(torch.from_numpy(x), m.vocab_size).double(), s0)
    t_loss = torch_loss(m, out(seq), y, mask)
    t_loss.backward()
    compare(m, loss, grads, h_last, dh0, t_loss.item(), torch_grads(m, mods, out, False), s_last.detach().numpy(),
            s0.grad.numpy())  # fmt: skip


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_dropout_equals_pytorch_with_the_same_masks(cell):
    # PyTorch's own dropout draws other masks (and skips the top layer); so the reference runs one
    # module per layer and multiplies each layer's output by the masks our generator drew
    m = randomised_model(cell, 2, seed=5, dropout=0.4)
    x, y, h0, mask = problem(m, seed=5)
    loss, cache, h_last = m.forward_loss(x, y, h0, mask, rng=np.random.default_rng(9))
    grads, dh0 = m.backward(cache)
    assert all(mk is not None for mk in cache.masks)

    mods, out = torch_layers(m, per_layer=True)
    s0 = torch.tensor(h0, requires_grad=True)
    inp = nn.functional.one_hot(torch.from_numpy(x), m.vocab_size).double()
    last = []
    for i, mod in enumerate(mods):
        seq, s_i = mod(inp, split_state(m, s0[i : i + 1]))
        last.append(join_state(m, s_i))
        inp = seq * torch.from_numpy(cache.masks[i]).transpose(0, 1)  # ours are time-major (T, B, H)
    t_loss = torch_loss(m, out(inp), y, mask)
    t_loss.backward()
    compare(m, loss, grads, h_last, dh0, t_loss.item(), torch_grads(m, mods, out, True), np.concatenate(last),
            s0.grad.numpy())  # fmt: skip


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_weight_drop_embedding_and_variational_dropout_equal_pytorch_with_the_same_masks(cell):
    # AWD-LSTM's regularisers through autograd: each layer's module runs on Whh * M (weight drop) and layer 0
    # on Wxh * m (embedding dropout) built from leaf tensors of our weights (torch.func.functional_call), so
    # the gradients into the raw weights are PyTorch's own; the variational masks (1, B, H) hold for every step
    m = randomised_model(cell, 2, seed=6, dropout=0.3)
    m.variational_dropout, m.weight_drop, m.embed_dropout = True, 0.4, 0.3
    x, y, h0, mask = problem(m, seed=6)
    loss, cache, h_last = m.forward_loss(x, y, h0, mask, rng=np.random.default_rng(3))
    grads, dh0 = m.backward(cache)
    assert cache.embed_mask is not None and cache.embed_mask.min() == 0  # a character is dropped
    assert all(mk.shape == (1, 3, m.hidden_size) for mk in cache.masks)

    mods, out = torch_layers(m, per_layer=True)
    H = m.hidden_size
    s0 = torch.tensor(h0, requires_grad=True)
    inp = nn.functional.one_hot(torch.from_numpy(x), m.vocab_size).double()
    leaves, last = [], []
    for i, mod in enumerate(mods):
        p = {k: torch.tensor(np.array(a, dtype=np.float64), requires_grad=True) for k, a in m.layer_params(i).items()}
        leaves.append(p)
        Wxh = p["Wxh"] * torch.from_numpy(cache.embed_mask) if i == 0 else p["Wxh"]
        bias_hh = torch.cat([torch.zeros(2 * H, dtype=torch.float64), p["bhn"]]) if "bhn" in p else None
        weights = {
            "weight_ih_l0": Wxh.T,
            "weight_hh_l0": (p["Whh"] * torch.from_numpy(cache.weight_masks[i])).T,
            "bias_ih_l0": p["bh"],
            "bias_hh_l0": torch.zeros_like(p["bh"]) if bias_hh is None else bias_hh,
        }
        seq, s_i = torch.func.functional_call(mod, weights, (inp, split_state(m, s0[i : i + 1])))
        last.append(join_state(m, s_i))
        inp = seq * torch.from_numpy(cache.masks[i]).transpose(0, 1)  # (B, 1, H): the same mask at every step
    t_loss = torch_loss(m, out(inp), y, mask)
    t_loss.backward()
    t_grads = {"Why": out.weight.grad.numpy().T, "by": out.bias.grad.numpy()}
    for i, p in enumerate(leaves):
        t_grads.update({f"layers.{i}.{k}": t.grad.numpy() for k, t in p.items()})
    compare(m, loss, grads, h_last, dh0, t_loss.item(), t_grads, np.concatenate(last), s0.grad.numpy())
