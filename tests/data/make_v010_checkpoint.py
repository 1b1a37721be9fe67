"""How tests/data/v010-rnn.npz and v010-rnn.json were made: with charrnn 0.1.0 (commit 8b3359a), before cells existed.

    python tests/data/make_v010_checkpoint.py   # run at that commit; the files are committed

A 2-layer tanh model (H 8) trained 12 steps on conftest.VERSE * 30, and what that
release computed from it: the loss of a fixed window and a seeded sample. The
test suite checks that later releases load the file and compute the same.
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from conftest import VERSE  # noqa: E402

from charrnn import checkpoint  # noqa: E402
from charrnn.config import from_dict  # noqa: E402
from charrnn.data import prepare  # noqa: E402
from charrnn.sampling import generate  # noqa: E402
from charrnn.train import train  # noqa: E402

with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    prepare(VERSE * 30, tmp / "data", val_frac=0.1)
    cfg = from_dict(
        {
            "data": str(tmp / "data"),
            "out_dir": str(tmp / "run"),
            "model": {"hidden_size": 8, "num_layers": 2},
            "train": {
                "batch_size": 4,
                "seq_length": 16,
                "max_steps": 12,
                "eval_every": 6,
                "learning_rate": 0.01,
                "warmup_steps": 2,
                "sample_chars": 0,
            },
        }
    )
    train(cfg)
    shutil.copy(tmp / "run" / "last.npz", HERE / "v010-rnn.npz")
model, vocab, ck = checkpoint.load_model(HERE / "v010-rnn.npz")
rng = np.random.default_rng(0)
x = rng.integers(0, vocab.size, (3, 10))
y = rng.integers(0, vocab.size, (3, 10))
loss, h = model.loss(x, y)
expected = {
    "x": x.tolist(),
    "y": y.tolist(),
    "loss": loss,
    "h_last": h.tolist(),
    "sample": generate(model, vocab, 80, prime="All:", seed=7)[0],
    "sample_batch": generate(model, vocab, 40, prime="All:", seed=7, num_samples=2, top_k=5),
}
(HERE / "v010-rnn.json").write_text(json.dumps(expected, indent=1) + "\n")
print(expected["loss"], repr(expected["sample"]))
