"""Sampling: filters, determinism, batching, prime handling, the CLI's stdout discipline."""

import json
import subprocess
import sys

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
        monkeypatch.setattr(sample_module, "sample_rngs", lambda seed, n, start=0, r=rng: [r])
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
    r = runner.invoke(
        app, ["sample", "--ckpt", str(run_dir), "-n", "20", "--seed", "1", "-k", "2", "--separator", "=="]
    )
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

    fixed = FixedLogits(np.log(np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32)))
    expected = probabilities(fixed.logits, 2.0)[0]
    # one sample (the 1-D loop) and a batch of two (the batched loop)
    for k in (1, 2):
        vocab = Vocab(tuple("abcd"))
        texts = sampling.generate(fixed, vocab, 40000, prime="a", decoding=sampling.Decoding(2.0), seed=0,
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


# ----------------------------------------------------------------------------- issue 18: extreme temperatures


class FixedLogits:
    """A stand-in model whose logits are always the same (V,) row."""

    dtype = np.float32

    def __init__(self, logits):
        self.logits = np.asarray(logits, dtype=np.float32)[None, :]
        self.vocab_size = self.logits.shape[1]

    def initial_state(self, k):
        return np.zeros((1, k, 1), np.float32)

    def forward(self, x, h):
        return None, np.zeros((1, x.shape[0], 1), np.float32)

    def stepper(self, h):
        return self

    def feed(self, ids):
        return np.repeat(self.logits, len(ids), axis=0)

    def feed_one(self, c):
        return self.logits[0]


def draws(logits, decoding, n, k=1):
    """The frequencies (V,) of each id over n draws per sample, every sample pooled, with warnings as errors."""
    import warnings

    V = len(logits)
    vocab = Vocab(tuple("abcdefgh"[:V]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow warning fails the test
        texts = generate(FixedLogits(logits), vocab, n, prime="a", decoding=decoding, seed=0, num_samples=k)
    text = "".join(texts)
    return np.array([text.count(c) for c in vocab.chars]) / len(text)


LOGITS = [4.0, -3.0, 0.5, 2.0, -1.0, 3.0, 0.0, 1.0]


@pytest.mark.parametrize("T", [1e300, 1e308])
@pytest.mark.parametrize("k, top_p", [(1, None), (2, None), (1, 0.999)])  # 1-D loop, batched loop, filtered
def test_a_huge_temperature_samples_the_uniform_distribution(T, k, top_p):
    # 8000 draws of 1/8: a frequency's standard deviation is 0.0037, the bound 0.025 is 6.7 of them. The old
    # draw overflowed T G to +-inf (ties at inf went to the lowest ids: id 0 got ~30%) and warned
    freq = draws(LOGITS, Decoding(T, top_p=top_p), 8000 // k, k)
    assert np.abs(freq - 1 / 8).max() < 0.025, freq


@pytest.mark.parametrize("T", [1e-300, 1e-308])
@pytest.mark.parametrize("k, top_k", [(1, None), (2, None), (1, 3)])
def test_a_tiny_temperature_samples_the_argmax_and_shares_ties(T, k, top_k):
    freq = draws(LOGITS, Decoding(T, top_k=top_k), 200, k)
    np.testing.assert_array_equal(freq, np.eye(8)[0])
    # two characters tie at the max: each half the time (the old draw lost the noise and always took the first;
    # the filtered one divided 3 by 1e-308 into inf, then inf - inf). 4000 draws: standard deviation 0.008,
    # the bound is 6 of them
    freq = draws([1.0, 3.0, 3.0, 0.0], Decoding(T, top_k=top_k), 4000 // k, k)
    assert freq[0] == freq[3] == 0 and abs(freq[1] - 0.5) < 0.048, freq


def test_moderate_temperatures_keep_the_fast_draw():
    # inside [2^-10, 2^10] the draw is argmax(z + T G), as before: the pinned 0.1.0 samples (test_compat) rely on it
    import charrnn.sampling as sampling

    assert all(sampling._fast(T) for T in (2**-10, 0.05, 0.8, 1.0, 2.0, 1000.0))
    assert not any(sampling._fast(T) for T in (1e-300, 1e-4, 2000.0, 1e300))


def test_infinite_and_nan_temperatures_are_refused_like_zero(run_dir):
    import re

    for T in (float("inf"), float("nan"), 0.0, -1.0):
        with pytest.raises(SampleError, match="must be a finite number > 0"):
            Decoding(T)
    lines = set()
    for t in ("inf", "nan", "0", "-1"):
        r = runner.invoke(app, ["sample", "--ckpt", str(run_dir), "-n", "5", "-t", t])
        assert r.exit_code == 2 and r.stdout == "" and r.stderr.count("\n") == 1, (t, r.stderr)
        assert "must be a finite number > 0" in r.stderr and "--argmax" in r.stderr
        lines.add(re.sub(r"got \S+;", "got X;", r.stderr))
    assert len(lines) == 1, lines  # the same wording whatever the bad value


# ----------------------------------------------------------------------------- issue 18: streaming, memory


def test_iter_samples_yields_text_as_it_is_made_and_keeps_none_of_it():
    from charrnn.sampling import iter_samples

    m, v = small_model()
    # 10^12 characters: nothing of that size may be allocated before the first piece comes out
    for k in (1, 3):
        pieces = iter_samples(m, v, 10**12, prime="ab", seed=1, num_samples=k)
        first = [next(pieces) for _ in range(3)]
        assert all(kk == 0 for kk, _ in first) and 0 < sum(len(p) for _, p in first) <= 3 * 256
    joined = {}
    for k, piece in iter_samples(m, v, 700, prime="ab", seed=1, num_samples=3):
        joined[k] = joined.get(k, "") + piece
    assert list(joined.values()) == generate(m, v, 700, prime="ab", seed=1, num_samples=3)


def test_samples_run_in_groups_and_a_group_is_a_batch(monkeypatch):
    import charrnn.sampling as sampling

    m, v = small_model()
    assert sampling.group_size(5, 100) == 5 and sampling.group_size(10**6, 10) == sampling._MAX_GROUP == 16384
    assert sampling.group_size(5, 2**20) == 1 and sampling.group_size(3, 10**12) == 1
    whole = generate(m, v, 300, prime="ab", seed=2, num_samples=5, decoding=Decoding(0.9))
    monkeypatch.setattr(sampling, "_MAX_GROUP", 2)  # groups of 2, 2 and 1: the same samples
    assert generate(m, v, 300, prime="ab", seed=2, num_samples=5, decoding=Decoding(0.9)) == whole
    monkeypatch.setattr(sampling, "_NOISE_BYTES", 1)  # one step of noise per block: the same draws
    assert generate(m, v, 300, prime="ab", seed=2, num_samples=5, decoding=Decoding(0.9)) == whole


def test_memory_needed_is_flat_in_n_unless_the_text_is_kept():
    from charrnn.sampling import memory_needed

    m, v = small_model()
    assert memory_needed(m, v, 10**6) == memory_needed(m, v, 10**12) < 2**20
    assert memory_needed(m, v, 10**6, 3) == memory_needed(m, v, 10**12, 3)
    assert memory_needed(m, v, 10**12, keep_text=True) > 10**12
    # many short samples: the noise blocks and groups are bounded (the old sampler held (10, K, V) float64 at once)
    assert memory_needed(m, v, 10, 100_000) < 64 * 2**20


def test_a_request_that_cannot_fit_is_refused_before_it_starts(run_dir, monkeypatch):
    import charrnn.sampling as sampling

    monkeypatch.setattr(sampling, "available_memory", lambda: 2**20)
    r = runner.invoke(app, ["sample", "--ckpt", str(run_dir), "-n", "1000", "-k", "3000", "--seed", "1"])
    assert r.exit_code == 1 and r.stdout == "" and r.stderr.count("\n") == 1, r.stderr
    assert "needs about" in r.stderr and "1.0 MiB available; lower --num-samples or --chars" in r.stderr
    monkeypatch.setattr(sampling, "available_memory", lambda: None)  # unknown: never refused
    r = runner.invoke(app, ["sample", "--ckpt", str(run_dir), "-n", "10", "-k", "3", "--seed", "1"])
    assert r.exit_code == 0 and r.stderr == ""
    monkeypatch.undo()
    r = runner.invoke(app, ["sample", "--ckpt", str(run_dir), "-n", str(10**13), "--seed", "1", "--json"])
    assert r.exit_code == 1 and "needs about" in r.stderr and r.stdout == ""  # the whole text cannot be kept


def test_sampling_into_a_pipe_streams_and_ends_with_the_reader(run_dir):
    import subprocess
    import sys

    # no --stream: a pipe is streamed too, so `head` gets its 100 bytes at once and ends the run (the old
    # sampler generated all 10^9 characters first); several samples stream one after another
    for k in ("1", "3"):
        cmd = f"{sys.executable} -m charrnn sample --ckpt {run_dir} -n 1000000000 -k {k} --seed 1 | head -c 100"
        r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=60)
        assert len(r.stdout) == 100 and r.returncode == 0 and r.stderr == "", (k, r.stderr)


def test_streamed_samples_equal_the_printed_when_done_ones(run_dir):
    args = ["sample", "--ckpt", str(run_dir), "-n", "300", "-k", "3", "--seed", "4", "--prime", "the "]
    streamed = runner.invoke(app, [*args, "--stream"])
    at_end = runner.invoke(app, [*args, "--no-stream"])
    assert streamed.exit_code == 0 and streamed.stdout == at_end.stdout
    d = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    assert streamed.stdout == "\n---\n".join(d["samples"]) + "\n"
    r = runner.invoke(app, ["sample", "--ckpt", str(run_dir), "-n", "0", "-k", "2", "--no-prime-echo", "--seed", "1"])
    assert r.stdout == "\n---\n\n"  # empty samples still show their separator


# ----------------------------------------------------------------------------- issue 18: prime and seed


def test_dropped_prime_characters_are_named_and_an_empty_prime_is_refused(run_dir):
    from charrnn.sampling import sample_from_checkpoint

    r = runner.invoke(app, ["sample", "--ckpt", str(run_dir), "-n", "5", "--prime", "THE fox", "--unknown", "skip",
                            "--seed", "1"])  # fmt: skip
    assert r.exit_code == 0 and r.stdout.startswith(" fox")
    assert r.stderr == "dropped 3 prime characters not in the model's vocabulary: 'EHT'\n"
    r = runner.invoke(app, ["sample", "--ckpt", str(run_dir), "-n", "5", "--prime", "Tfox", "--unknown", "skip",
                            "--seed", "1"])  # fmt: skip
    assert r.stderr == "dropped 1 prime character not in the model's vocabulary: 'T'\n"
    r = runner.invoke(app, ["sample", "--ckpt", str(run_dir), "-n", "5", "--prime", "THE", "--unknown", "skip"])
    assert r.exit_code == 1 and r.stdout == "" and r.stderr.count("\n") == 1
    assert "every character of the prime is outside the model's vocabulary ('EHT')" in r.stderr
    result = sample_from_checkpoint(run_dir, 5, prime="THE fox", unknown="skip", seed=1)
    assert result["dropped"] == "EHT" and result["prime"] == " fox"


def test_a_drawn_seed_is_reported_on_stderr_and_repeats_the_sample(run_dir):
    import re

    r = runner.invoke(app, ["sample", "--ckpt", str(run_dir), "-n", "50"])
    m = re.fullmatch(r"seed (\d+) \(repeat with --seed \1\)\n", r.stderr)
    assert r.exit_code == 0 and m, r.stderr
    again = runner.invoke(app, ["sample", "--ckpt", str(run_dir), "-n", "50", "--seed", m.group(1)])
    assert again.stdout == r.stdout and again.stderr == ""
    r = runner.invoke(app, ["sample", "--ckpt", str(run_dir), "-n", "5", "--argmax"])  # nothing random
    assert r.exit_code == 0 and r.stderr == ""


def test_the_memory_check_counts_the_process_address_space_limit():
    # a container's or a scheduler's limit (cgroup, ulimit -v) binds before the machine's free memory does
    code = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, resource.RLIM_INFINITY)); "
            "from charrnn.sampling import available_memory; print(available_memory())")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert 0 < int(out.stdout) < 4 << 30
