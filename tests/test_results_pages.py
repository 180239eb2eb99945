"""Results pages: rendered from stored runs only, and the committed ones still match."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from benchmarks.report import page, render
from benchmarks.report.pages import INDEX, index, stored_pages
from benchmarks.rows import Provenance, Result, Table, TableSet, load

from .test_report import full_result

DOCS = Path(__file__).resolve().parent.parent / "docs" / "results"
PROVENANCE = Provenance("python benchmarks/run.py --dataset toy", "abc1234", "a CPU", "2026-01-01")


def _tables() -> TableSet:
    return TableSet("Search speed", (Table("sizes", ("N", "s"), (("10,000", "0.5"),
                                                                 ("100,000", "0.6"))),),
                    notes=("- [ok] flat",), plots=("speed_beams.png",), provenance=PROVENANCE)


def _stored(folder: Path, result) -> Path:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(result.to_json())
    return folder


def test_the_committed_pages_are_what_the_renderer_makes_of_the_committed_results():
    stored = stored_pages(DOCS)
    assert {"emoji", "speed"} <= set(stored), "the main job's and speed.py's pages"
    for name, result in stored.items():
        committed = (DOCS / f"{name}.md").read_text()
        assert committed == page(result, name), f"docs/results/{name}.md is stale: render it"
    assert (DOCS / INDEX).read_text() == index(stored)


def test_the_main_pages_hold_the_decoders_ablation_and_the_label_aware_baselines():
    emoji = stored_pages(DOCS)["emoji"]
    names = {row.method for row in emoji.rows}
    assert {"f_cls exact scan", "f_cls HNSW", "ncm on f_cls", "ncm", "classifier",
            "linear"} <= names
    assert any(name.startswith("genindex") for name in names)
    assert emoji.provenance is not None and emoji.split == "test"


def test_render_copies_the_results_and_writes_a_page_and_an_index(tmp_path):
    result = dataclasses.replace(full_result(), provenance=PROVENANCE)
    runs = _stored(tmp_path / "results" / "toy", result)
    speed = _stored(tmp_path / "results" / "speed", _tables())
    (speed / "speed_beams.png").write_bytes(b"png")
    docs = tmp_path / "docs"
    written = render([runs, speed], docs)
    assert sorted(p.name for p in written) == ["index.md", "speed.md", "toy.md"]
    text = (docs / "toy.md").read_text()
    assert text == page(load((docs / "toy" / "results.json").read_text()), "toy")
    assert "`python benchmarks/run.py --dataset toy`" in text and "`abc1234`" in text
    assert "a CPU" in text and "| linear |" in text
    for link in [line.split("](")[1].rstrip(")") for line in text.splitlines()
                 if line.startswith("![")]:
        assert (docs / link).is_file(), link
    speed_page = (docs / "speed.md").read_text()
    assert "| 100,000 | 0.6 |" in speed_page and "- [ok] flat" in speed_page
    assert (docs / "speed" / "speed_beams.png").read_bytes() == b"png"
    listed = (docs / "index.md").read_text()
    assert "[Results on toy](toy.md)" in listed and "[Search speed](speed.md)" in listed


def test_a_changed_result_changes_its_page(tmp_path):
    result = dataclasses.replace(full_result(), provenance=PROVENANCE)
    row = dataclasses.replace(result.rows[0], qps=4321.0)
    changed = dataclasses.replace(result, rows=(row,) + result.rows[1:])
    assert page(changed, "toy") != page(result, "toy")
    assert page(load(result.to_json()), "toy") == page(result, "toy")
    assert page(load(_tables().to_json()), "speed") == page(_tables(), "speed")


def test_a_source_without_results_is_refused_and_nothing_is_written(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="results.json: no such file"):
        render([tmp_path / "empty"], tmp_path / "docs")
    assert not (tmp_path / "docs" / "empty.md").exists()


def test_an_unknown_kind_of_results_is_refused():
    with pytest.raises(ValueError, match="unknown kind 'other'"):
        load('{"kind": "other"}')


def test_a_run_result_round_trips_with_its_provenance():
    result = dataclasses.replace(full_result(), provenance=PROVENANCE)
    assert Result.from_json(result.to_json()) == result
    assert TableSet.from_json(_tables().to_json()) == _tables()
