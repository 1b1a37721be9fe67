"""Sampling: filters, determinism, batching, prime handling, the CLI's stdout discipline."""

import json

import numpy as np
import pytest
from conftest import write_config
from typer.testing import CliRunner

import charrnn
from charrnn import CharRNN, checkpoint
from charrnn.cli import app
from charrnn.config import load_config
from charrnn.data import Vocab
from charrnn.sampling import Decoding, SampleError, generate, probabilities, sample_rngs
from charrnn.train import train

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny model trained to memorise one repeated line."""
    tmp = tmp_path_factory.mktemp("mem")
    from charrnn.data import prepare

    prepare("the quick brown fox jumps over the lazy dog. " * 60, tmp / "data")
    cfg = load_config(write_config(tmp, tmp / "data", hidden_size=None, max_steps=300, eval_every=100,
                                   learning_rate=0.02, batch_size=8, seq_length=32))  # fmt: skip
    train(cfg)
    return tmp / "run"


def test_temperature_matches_the_softmax_formula():
    logits = np.array([[2.0, 1.0, 0.0, -1.0]])
    for T in (0.5, 1.0, 2.0):
        expected = np.exp(logits / T) / np.exp(logits / T).sum()
        np.testing.assert_allclose(probabilities(logits, T), expected, rtol=1e-12)


def test_top_k_and_top_p_keep_the_likeliest_characters():
    logits = np.log(np.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    np.testing.assert_allclose(probabilities(logits, top_k=2), [[0.5 / 0.7, 0.2 / 0.7, 0, 0, 0]])
    np.testing.assert_allclose(probabilities(logits, top_p=0.6), [[0.5 / 0.7, 0.2 / 0.7, 0, 0, 0]])
    np.testing.assert_allclose(probabilities(logits, top_p=0.45), [[1, 0, 0, 0, 0]])
    np.testing.assert_allclose(probabilities(logits, top_p=1.0), np.exp(logits))


def small_model():
    vocab = Vocab(tuple("abcdefgh"))
    return CharRNN(8, 16, 2, seed=4), vocab


def test_same_seed_same_text_other_seed_other_text():
    m, v = small_model()
    a = generate(m, v, 200, seed=1)[0]
    assert a == generate(m, v, 200, seed=1)[0]
    assert a != generate(m, v, 200, seed=2)[0]


def test_argmax_is_the_greedy_choice_step_by_step_and_top_k_1_equals_it():
    m, v = small_model()
    text = generate(m, v, 30, prime="abc", decoding=Decoding(argmax=True))[0]
    ids = v.encode("abc")
    _, h = m.forward(ids[None, :-1])
    logits, h = m.step(ids[-1:], h)
    greedy = []
    for _ in range(30):
        nxt = int(logits[0].argmax())
        greedy.append(v.chars[nxt])
        logits, h = m.step(np.array([nxt]), h)
    assert text == "".join(greedy)
    assert generate(m, v, 30, prime="abc", decoding=Decoding(top_k=1), seed=9)[0] == text


@pytest.mark.parametrize("top_p", [None, 0.95])  # the Gumbel-max draw and the filtered CDF draw
def test_batched_samples_equal_single_samples_with_the_same_generators(monkeypatch, top_p):
    import charrnn.sampling as sample_module

    m, v = small_model()
    n = 600  # past two blocks of noise (256 steps each)
    batch = generate(m, v, n, prime="ab", seed=5, num_samples=3, decoding=Decoding(0.9, top_p=top_p))
    assert len(set(batch)) == 3 and all(len(text) == n for text in batch)
    assert batch[0] == generate(m, v, n, prime="ab", seed=5, decoding=Decoding(0.9, top_p=top_p))[0]
    # sample k draws from SeedSequence(seed, spawn_key=(k,)): replay each alone with that generator
    for k in range(3):
        rng = sample_rngs(5, 3)[k]
        monkeypatch.setattr(sample_module, "sample_rngs", lambda seed, n, r=rng: [r])
        assert generate(m, v, n, prime="ab", seed=5, decoding=Decoding(0.9, top_p=top_p))[0] == batch[k]


def test_bad_options_are_refused():
    m, v = small_model()
    for kwargs in (dict(temperature=0), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=0)):
        with pytest.raises(SampleError):
            generate(m, v, 5, decoding=Decoding(**kwargs))
    with pytest.raises(SampleError):
        generate(m, v, -1)


def test_a_trained_checkpoint_reproduces_its_memorised_text(run_dir):
    text = charrnn.sample(run_dir, 40, prime="the quick brown fox ", argmax=True)
    assert text == "jumps over the lazy dog. the quick brown"


def test_cli_stdout_holds_only_the_sample(run_dir):
    r = runner.invoke(app, ["sample", "--ckpt", str(run_dir), "-n", "100", "--seed", "7", "--prime", "the "])
    assert r.exit_code == 0 and r.stderr == ""
    assert r.stdout.startswith("the ") and len(r.stdout) == 4 + 100 + 1
    again = runner.invoke(app, ["sample", "--ckpt", str(run_dir), "-n", "100", "--seed", "7", "--prime", "the "])
    assert again.stdout == r.stdout
    r = runner.invoke(app, ["sample", "--ckpt", str(run_dir / "last.npz"), "-n", "10", "--seed", "7",
                            "--prime", "the ", "--no-prime-echo"])  # fmt: skip
    assert len(r.stdout) == 11


def test_cli_num_samples_json_and_separator(run_dir):
    r = runner.invoke(app, ["sample", "--ckpt", str(run_dir), "-n", "20", "--seed", "1", "-k", "3", "--json"])
    assert r.exit_code == 0
    d = json.loads(r.stdout)
    assert len(d["samples"]) == 3 and all(len(s) == 20 for s in d["samples"]) and d["seed"] == 1
    r = runner.invoke(app, ["sample", "--ckpt", str(run_dir), "-n", "20", "--seed", "1", "-k", "2", "--separator", "=="])
    assert r.stdout.split("\n==\n")[0] == d["samples"][0]


def test_cli_unknown_prime_characters(run_dir):
    r = runner.invoke(app, ["sample", "--ckpt", str(run_dir), "-n", "5", "--prime", "THE fox"])
    assert r.exit_code == 1 and "'EHT'" in r.stderr and r.stdout == ""
    r = runner.invoke(app, ["sample", "--ckpt", str(run_dir), "-n", "5", "--prime", "THE fox", "--unknown", "skip"])
    assert r.exit_code == 0 and r.stdout.startswith(" fox")


def test_cli_bad_options_are_usage_errors(run_dir):
    for args in (["--temperature", "0"], ["--top-p", "1.5"], ["-n", "-1"], ["--top-k", "0"]):
        r = runner.invoke(app, ["sample", "--ckpt", str(run_dir), *args])
        assert r.exit_code == 2, args


def test_cli_temperature_zero_points_to_argmax_and_argmax_refuses_what_it_would_ignore(run_dir):
    r = runner.invoke(app, ["sample", "--ckpt", str(run_dir), "--temperature", "0"])
    assert r.exit_code == 2 and "use --argmax" in r.stderr and r.stdout == ""
    for args in (["-t", "0.5"], ["--top-k", "3"], ["--top-p", "0.9"]):
        r = runner.invoke(app, ["sample", "--ckpt", str(run_dir), "-n", "5", "--argmax", *args])
        assert r.exit_code == 2 and "--argmax always takes the most likely character" in r.stderr, args
    r = runner.invoke(app, ["sample", "--ckpt", str(run_dir), "-n", "5", "--argmax"])
    assert r.exit_code == 0 and len(r.stdout) == 6


def test_checkpoint_holds_everything_needed_to_sample(run_dir, tmp_path):
    # copy the checkpoint away from its data folder: sampling needs nothing else
    dst = tmp_path / "alone.npz"
    dst.write_bytes((run_dir / "best.npz").read_bytes())
    model, vocab, _ = checkpoint.load_model(dst)
    assert vocab.size == model.vocab_size
    assert charrnn.sample(dst, 10, seed=1) == charrnn.sample(model, 10, seed=1, vocab=vocab)


def test_a_closed_pipe_ends_quietly(run_dir):
    import subprocess
    import sys

    cmd = f"{sys.executable} -m charrnn sample --ckpt {run_dir} -n 200000 --seed 1 --stream | head -c 100"
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert len(r.stdout) == 100
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and r.stderr == ""


def test_unfiltered_draws_follow_the_softmax():
    # Gumbel-max must sample softmax(logits / T): compare frequencies over many draws
    import charrnn.sampling as sampling

    class Fixed:
        vocab_size, dtype = 4, np.float32
        logits = np.log(np.array([[0.1, 0.2, 0.3, 0.4]], dtype=np.float32))

        def initial_state(self, k):
            return np.zeros((1, k, 1), np.float32)

        def stepper(self, h):
            return self

        def feed(self, ids):
            return np.repeat(self.logits, len(ids), axis=0)

        def feed_one(self, c):
            return self.logits[0]

    expected = probabilities(Fixed.logits, 2.0)[0]
    # one sample (the 1-D loop) and a batch of two (the batched loop)
    for k in (1, 2):
        vocab = Vocab(tuple("abcd"))
        texts = sampling.generate(Fixed(), vocab, 40000, prime="a", decoding=sampling.Decoding(2.0), seed=0,
                                  num_samples=k)  # fmt: skip
        for text in texts:
            freq = np.array([text.count(c) for c in "abcd"]) / len(text)
            np.testing.assert_allclose(freq, expected, atol=0.01)


@pytest.fixture(scope="module", params=["lstm", "gru"])
def gated_run(request, tmp_path_factory):
    """A small gated model with dropout, trained to memorise one repeated line."""
    tmp = tmp_path_factory.mktemp(request.param)
    from charrnn.data import prepare

    prepare("the quick brown fox jumps over the lazy dog. " * 60, tmp / "data")
    cfg = load_config(write_config(tmp, tmp / "data", {"cell": request.param, "dropout": 0.1, "num_layers": 2},
                                   hidden_size=24, max_steps=250, eval_every=125, learning_rate=0.02,
                                   batch_size=8, seq_length=32))  # fmt: skip
    train(cfg)
    return tmp / "run"


def test_gated_checkpoints_sample_with_every_option(gated_run):
    assert charrnn.sample(gated_run, 40, prime="the quick brown fox ", argmax=True) == (
        "jumps over the lazy dog. the quick brown"
    )
    model, vocab, _ = checkpoint.load_model(gated_run)
    assert model.cell.name in ("lstm", "gru") and model.dropout == 0.1
    one = generate(model, vocab, 300, prime="the", seed=3, decoding=Decoding(0.7))[0]
    assert one == generate(model, vocab, 300, prime="the", seed=3, decoding=Decoding(0.7))[0]
    batch = generate(model, vocab, 300, prime="the", seed=3, decoding=Decoding(0.7), num_samples=3)
    assert batch[0] == one and len(set(batch)) > 1
    for kw, k in ((dict(top_k=3), 1), (dict(top_p=0.9), 1), (dict(top_k=5, top_p=0.8), 2)):
        texts = generate(model, vocab, 50, prime="lazy", seed=1, decoding=Decoding(**kw), num_samples=k)
        assert all(len(t) == 50 and set(t) <= set(vocab.chars) for t in texts)
    r = runner.invoke(app, ["sample", "--ckpt", str(gated_run), "-n", "30", "--seed", "2", "-k", "2", "--json"])
    assert r.exit_code == 0 and r.stderr == ""
    assert len(json.loads(r.stdout)["samples"]) == 2
