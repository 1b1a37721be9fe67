"""The PyTorch reference: the same model, batch layout and update as charrnn, for side-by-side timing.

Model: one-hot input -> nn.RNN(V, H, L, nonlinearity="tanh", batch_first=True), or
nn.LSTM / nn.GRU(V, H, L, batch_first=True) for the gated cells, -> nn.Linear(H, V);
loss: cross-entropy (mean over B*T positions); update: Adam
(lr 2e-3, PyTorch defaults otherwise) after clipping the global gradient norm to 5;
batches: the same (B, T) windows of B parallel streams (charrnn.train.train_window),
the hidden state carried across windows and detached (truncated BPTT). Sampling:
one character at a time from softmax(logits / temperature) with torch.multinomial.
Only the benchmark imports this file; torch is never a runtime dependency.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn


class TorchCharRNN(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, num_layers: int, cell: str = "rnn"):
        super().__init__()
        self.V = vocab_size
        if cell == "rnn":
            self.rnn = nn.RNN(vocab_size, hidden_size, num_layers, nonlinearity="tanh", batch_first=True)
        else:
            module = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
            self.rnn = module(vocab_size, hidden_size, num_layers, batch_first=True)
        self.fc = nn.Linear(hidden_size, vocab_size)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None):
        inp = nn.functional.one_hot(x, self.V).float()  # (B, T, V)
        out, h = self.rnn(inp, h)  # (B, T, H)
        return self.fc(out), h  # (B, T, V)


class TorchTrainer:
    """Adam + global-norm clipping over carried-state windows, like charrnn's train_step."""

    def __init__(self, vocab_size: int, hidden_size: int, num_layers: int, cell: str = "rnn", lr: float = 2e-3,
                 clip: float = 5.0, device: str = "cpu"):  # fmt: skip
        torch.manual_seed(0)
        self.device = device  # cuda: nn.RNN/LSTM/GRU run cuDNN's fused kernels
        self.model = TorchCharRNN(vocab_size, hidden_size, num_layers, cell).to(device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.clip = clip
        self.h = None

    def step(self, x: np.ndarray, y: np.ndarray):
        """One update; the loss as a float on the CPU, a device tensor on a GPU (as charrnn's: nothing
        waits for the device within a step; bench.throughput reads the last one back)."""
        xt, yt = torch.from_numpy(x).long().to(self.device), torch.from_numpy(y).long().to(self.device)
        logits, h = self.model(xt, self.h)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), yt.reshape(-1))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        self.h = tuple(t.detach() for t in h) if isinstance(h, tuple) else h.detach()  # LSTM: (h, c)
        return loss.item() if self.device == "cpu" else loss.detach()


@torch.no_grad()
def torch_batch_sample_speed(vocab_size: int, hidden_size: int, n: int, k: int, cell: str, device: str) -> float:
    """Characters per second generating k samples of n characters at once (batch of k), on device."""
    torch.manual_seed(0)
    model = TorchCharRNN(vocab_size, hidden_size, 1, cell).to(device).eval()
    x = torch.zeros((k, 1), dtype=torch.long, device=device)
    h = None
    t0 = time.perf_counter()
    for _ in range(n):
        logits, h = model(x, h)
        x = torch.multinomial(torch.softmax(logits[:, -1], dim=-1), 1)  # (k, 1)
    x.cpu()  # the last draw: the stream has finished
    return k * n / (time.perf_counter() - t0)


@torch.no_grad()
def torch_sample_speed(vocab_size: int, hidden_size: int, n: int, temperature: float = 1.0, cell: str = "rnn") -> float:
    """Characters per second generating n characters one at a time (batch of one)."""
    torch.manual_seed(0)
    model = TorchCharRNN(vocab_size, hidden_size, 1, cell).eval()
    x = torch.zeros((1, 1), dtype=torch.long)
    h = None
    t0 = time.perf_counter()
    for _ in range(n):
        logits, h = model(x, h)
        p = torch.softmax(logits[0, -1] / temperature, dim=-1)
        x = torch.multinomial(p, 1).view(1, 1)
    return n / (time.perf_counter() - t0)
