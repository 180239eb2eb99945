"""The documentation runs: its Python blocks and genindex command lines, in order."""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from genindex import DecoderConfig, GenerativeIndex, IndexConfig, TokenizerConfig, container
from genindex.cli import main

DOCS = Path(__file__).resolve().parents[1] / "docs"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.DOTALL | re.MULTILINE)


def blocks(name: str) -> list[tuple[str, str]]:
    """``(language, code)`` of every fenced block of ``docs/name``, in order."""
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer((DOCS / name).read_text())]


@pytest.mark.parametrize("name", ["getting-started.md", "migrating.md"])
def test_snippets_run(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{name}"}
    ran = commands = 0
    for language, code in blocks(name):
        if language == "python":
            exec(compile(code, f"docs/{name}", "exec"), namespace)  # noqa: S102
            ran += 1
        elif language == "bash":
            for line in code.splitlines():
                if line.startswith("genindex "):
                    assert main(shlex.split(line)[1:] + ["-q"]) == 0, line
                    commands += 1
    capsys.readouterr()
    assert ran >= 5
    if name == "getting-started.md":
        assert commands == 5  # every subcommand once
        assert container.is_index_file(tmp_path / "cli.index")


def test_the_readme_example_runs_and_finds_each_query_itself(tmp_path, monkeypatch):
    """The README's first Python block, as written: well-separated classes, so every
    query's results are of its class, in ascending squared L2 (the default order)."""
    monkeypatch.chdir(tmp_path)
    readme = (DOCS.parent / "README.md").read_text()
    code = next(m.group(2) for m in BLOCK.finditer(readme) if m.group(1) == "python")
    namespace: dict = {"__name__": "readme"}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
    D, I, index, labels = (namespace[name] for name in ("D", "I", "index", "labels"))
    assert I.shape == (5, 10) and I.dtype.name == "int64" and index.ntotal == 1000
    assert (labels[I] == labels[:5, None]).all() and (np.diff(D, axis=1) >= 0).all()
    assert (tmp_path / "my.index").is_file()


def test_the_readme_stays_short_and_links_only_what_exists():
    readme = DOCS.parent / "README.md"
    text = readme.read_text()
    assert len(text.splitlines()) <= 120 and "## When to use it" in text
    for target in re.findall(r"\]\(([\w./-]+\.md)\)", text):
        assert (readme.parent / target).is_file(), f"README links to {target}"


def test_the_api_reference_names_everything_public():
    text = (DOCS / "api.md").read_text()
    names = [n for n in dir(GenerativeIndex) if not n.startswith("_")]
    for config in (IndexConfig, TokenizerConfig, DecoderConfig):
        names += [f.name for f in dataclasses.fields(config)]
    code = " ".join(re.findall(r"`([^`\n]+)`", BLOCK.sub("", text)))  # inline code
    missing = sorted({n for n in names if not re.search(rf"\b{n}\b", code)})
    assert not missing, f"document these in docs/api.md: {missing}"


def test_links_between_docs_resolve():
    for page in DOCS.glob("*.md"):
        for target in re.findall(r"\]\(([\w./-]+\.md)\)", page.read_text()):
            assert (page.parent / target).is_file(), f"{page.name} links to {target}"


def test_the_architecture_page_names_only_what_exists():
    """docs/architecture.md stays true: every ``module.name`` it cites resolves, and
    every module of the package has a row in its ownership table."""
    import importlib
    import pkgutil

    import genindex

    text = (DOCS / "architecture.md").read_text()
    modules = {m.name for m in pkgutil.iter_modules(genindex.__path__)} - {"__main__"}
    cited = 0
    for span in re.findall(r"`([A-Za-z_][\w.]*)`", text):
        head, *rest = span.split(".")
        if head in modules and rest:
            target = importlib.import_module(f"genindex.{head}")
            for part in rest:
                target = getattr(target, part)  # AttributeError names what went stale
            cited += 1
        elif head == "GenerativeIndex" and rest:
            assert hasattr(GenerativeIndex, rest[0]), span
    table = text[text.index("## Who owns what"):]
    owned = set(re.findall(r"`(\w+)`", table))
    assert cited >= 40 and modules <= owned, sorted(modules - owned)
