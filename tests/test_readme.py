"""The README's Python example runs and does what its comments say."""

import contextlib
import io
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "README has no python example"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(blocks[0], "README.md", "exec"), {})
    loss_line, next_char = buf.getvalue().splitlines()
    assert float(loss_line.split()[1]) < 0.05
    assert next_char == "e"


def test_every_shipped_config_loads_and_the_readme_names_it():
    from charrnn.config import load_config

    configs = sorted((README.parent / "configs").glob("*.yaml"))
    assert len(configs) >= 5
    text = README.read_text(encoding="utf-8")
    for path in configs:
        cfg = load_config(path)  # unknown keys, bad values or duplicate keys would raise
        assert cfg.out_dir == f"runs/{path.stem}"
        assert f"configs/{path.name}" in text, path.name
    gated = {p.stem: load_config(p).model.cell for p in configs if p.stem.startswith("shakespeare-")}
    assert gated["shakespeare-lstm"] == "lstm" and gated["shakespeare-gru"] == "gru"
