"""docs/ cannot drift from the code: the config reference matches the config dataclasses, and links resolve."""

import dataclasses
import pathlib
import re

import pytest
import yaml

from charrnn.config import Config, ModelConfig, TrainConfig, valid_keys

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CONFIG_DOC = DOCS / "config.md"
# Keys without a plain default: `data` is required, `out_dir` defaults to runs/<config file stem>. The
# reference shows an example value for them, and says so; their dataclass default is the empty string.
NO_PLAIN_DEFAULT = {"data", "out_dir"}


def _yaml_block(text: str) -> str:
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1, "docs/config.md must hold exactly one ```yaml block: the key reference"
    return blocks[0]


def _flatten(mapping: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_doc_problems(text: str, config: Config, keys: list[str]) -> list[str]:
    """What the config reference (the text of docs/config.md) gets wrong about `config`'s keys and defaults."""
    block = _yaml_block(text)
    documented = _flatten(yaml.safe_load(block))
    defaults = _flatten(dataclasses.asdict(config))
    problems = [f"{k}: missing from docs/config.md" for k in keys if k not in documented]
    problems += [f"{k}: documented but not a config key" for k in documented if k not in keys]
    for key in keys:
        if key not in documented:
            continue
        doc, default = documented[key], defaults[key]
        if key in NO_PLAIN_DEFAULT:
            if default != "":
                problems.append(f"{key}: now has the default {default!r}; document it as the default")
        elif doc != default or type(doc) is not type(default):
            problems.append(f"{key}: documented default {doc!r}, the dataclass says {default!r}")
    # every key's line says what it means (a comment after the value)
    for line in block.splitlines():
        m = re.match(r"^\s*([a-z_]+):\s*(\S[^#]*?)?\s*(#.*)?$", line)
        if m and m.group(2) is not None and not m.group(3):
            problems.append(f"{m.group(1)}: no comment saying what it means")
    return problems


def test_the_config_reference_lists_every_key_with_its_default():
    assert config_doc_problems(CONFIG_DOC.read_text(encoding="utf-8"), Config(), valid_keys()) == []


def test_the_config_reference_check_catches_drift():
    """The check above fails for a missing key, an extra key, a changed default or a new section key."""
    text = CONFIG_DOC.read_text(encoding="utf-8")
    keys = valid_keys()
    without = re.sub(r"\n  patience: .*", "", text)
    assert any("train.patience: missing" in p for p in config_doc_problems(without, Config(), keys))
    extra = text.replace("  seed: 0 ", "  seeds: 0 ", 1)
    assert any("train.seeds: documented but not" in p for p in config_doc_problems(extra, Config(), keys))
    changed = Config(model=ModelConfig(hidden_size=128), train=TrainConfig(learning_rate=1e-3))
    problems = config_doc_problems(text, changed, keys)
    assert any(p.startswith("model.hidden_size: documented default 256") for p in problems), problems
    assert any(p.startswith("train.learning_rate: documented default 0.002") for p in problems), problems
    assert any("train.new_key: missing" in p for p in config_doc_problems(text, Config(), [*keys, "train.new_key"]))
    typed = text.replace("dropout: 0.0 ", "dropout: 0   ", 1)  # 0 is an int, the default a float
    assert any(p.startswith("model.dropout:") for p in config_doc_problems(typed, Config(), keys))
    assert any(
        "no comment" in p for p in config_doc_problems(text.replace("  # H: units per layer", ""), Config(), keys)
    )


MARKDOWN = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted(DOCS.glob("*.md"))]


def _anchors(path: pathlib.Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, -1, -2 for repeats."""
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not re.match(r"^#{1,6} ", line):
            continue
        slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: p.name)
def test_markdown_links_between_files_resolve(path):
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        assert dest.exists(), f"{path.name}: {target}: no such file"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{path.name}: {target}: no such heading in {dest.name}"


def test_no_document_points_into_our_workspace():
    for path in MARKDOWN:
        assert "../shared" not in path.read_text(encoding="utf-8"), path.name


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_bytes()) < 15_000
