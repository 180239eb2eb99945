"""benchmarks/report: Markdown tables checked cell by cell, PNG plots checked as images."""

from __future__ import annotations

import copy
import dataclasses
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.report import DASH, markdown, plots
from benchmarks.rows import AblationRow, BeamRow, MethodRow, Metrics, PRCurve, Result

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
KS = (1, 3, 10)
FAMILY_KS = {"precision": KS, "recall": KS, "mrr": (1, 2, 4, 8), "map": (100,)}
PREFIX = {"precision": "P", "recall": "R", "mrr": "MRR", "map": "MAP"}
# column header -> (Metrics field, K), in table order
COLUMNS = {f"{PREFIX[name]}@{k}": (name, k) for name, ks in FAMILY_KS.items() for k in ks}
ALL_KEYS = list(COLUMNS)


def make_metrics(values: dict[str, float]) -> Metrics:
    """Metrics from ``{column header: value}``."""
    fields: dict[str, dict[int, float]] = {name: {} for name in FAMILY_KS}
    for column, value in values.items():
        name, k = COLUMNS[column]
        fields[name][k] = value
    return Metrics(**fields)


def value(metrics: Metrics, column: str) -> float | None:
    name, k = COLUMNS[column]
    return getattr(metrics, name).get(k)


def _metrics(seed: float, drop: tuple[str, ...] = ()) -> Metrics:
    """Distinct fractions per key (so a value in the wrong column is caught)."""
    return make_metrics({key: round(seed + 0.0123 * i, 4) for i, key in enumerate(ALL_KEYS)
                         if key not in drop})


def _curve(scale: float) -> PRCurve:
    recall = tuple(i / 20 for i in range(1, 21))
    return PRCurve(tuple(scale * (1 - r / 2) for r in recall), recall)


def _rows(with_curve: bool = False) -> tuple[MethodRow, ...]:
    return (MethodRow("linear", "bb", _metrics(0.5), qps=1234.5, build_s=0.25, bytes=102400,
                      pr_curve=_curve(0.9) if with_curve else None),
            MethodRow("ivfpq", "bb", _metrics(0.3, drop=("P@10", "R@3", "MAP@100")),
                      qps=5000.0, build_s=2.5, bytes=6400, note="nprobe=8 | 4x8 PQ"))


def minimal_result() -> Result:
    return Result("toy", _rows(), database=200, queries=50, ks=KS)


def full_result() -> Result:
    genindex = MethodRow("genindex", "bb", _metrics(0.6), qps=30.0, build_s=300.0,
                         bytes=50000, pr_curve=_curve(0.95))
    return dataclasses.replace(
        minimal_result(), rows=_rows(with_curve=True) + (genindex,),
        beam_sweep=(  # out of order on purpose: the table and plot sort by beam size
            BeamRow(10, qps=40.0, encoder_s=0.1, decoder_s=1.0, trie_s=0.2,
                    metrics=make_metrics({"P@1": 0.61})),
            BeamRow(1, qps=120.0, encoder_s=0.1, decoder_s=0.3, trie_s=0.05,
                    metrics=make_metrics({"P@1": 0.55}))),
        ablations={
            "ids": (AblationRow("random", _metrics(0.2)), AblationRow("ours", _metrics(0.6))),
            "length": (AblationRow("T=2", _metrics(0.4, drop=("R@10",)), length=2),),
            "fresh": (AblationRow("add", _metrics(0.55), split="old"),
                      AblationRow("add", _metrics(0.25), split="new")),
        })


def parse_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """Caption (first bold words) -> rows as {header: cell}."""
    tables, caption, header = {}, None, None
    for line in text.splitlines():
        if line.startswith("**"):
            caption, header = line.split("**")[1], None
            tables[caption] = []
        elif line.startswith("|"):
            cells = [c.strip().replace("\\|", "|") for c in
                     line.strip("|").replace("\\|", "\0").split("|")]
            cells = [c.replace("\0", "|") for c in cells]
            if header is None:
                header = cells
            elif not all(set(c) <= set("-:") for c in cells):
                tables[caption].append(dict(zip(header, cells)))
    return tables


def percent(value: float) -> str:
    return f"{100 * value:.1f}"


def test_metric_tables_put_each_value_in_its_column():
    result = minimal_result()
    tables = parse_tables(markdown(result))
    wanted = {"Table 1-style.": [f"P@{k}" for k in KS], "Table 2-style.": [f"R@{k}" for k in KS],
              "Fig. 4 and Table 5 metrics.": ["MRR@1", "MRR@2", "MRR@4", "MRR@8", "MAP@100"]}
    for caption, columns in wanted.items():
        rows = tables[caption]
        assert list(rows[0]) == ["method", "backbone"] + columns
        assert [r["method"] for r in rows] == ["linear", "ivfpq"]
        for row, source in zip(rows, result.rows):
            for column in columns:
                expected = value(source.metrics, column)
                assert row[column] == (DASH if expected is None else percent(expected)), column
    assert tables["Table 1-style."][0]["P@1"] == "50.0"
    assert tables["Table 1-style."][1]["P@10"] == DASH
    assert tables["Table 2-style."][1]["R@3"] == DASH
    assert tables["Fig. 4 and Table 5 metrics."][1]["MAP@100"] == DASH


def test_captions_name_the_dataset_and_optional_tables_are_absent():
    text = markdown(minimal_result())
    captions = [line for line in text.splitlines() if line.startswith("**")]
    assert len(captions) == 4 and all(" on toy" in c for c in captions)
    assert set(parse_tables(text)) == {"Table 1-style.", "Table 2-style.",
                                       "Fig. 4 and Table 5 metrics.", "Cost."}
    assert "5,571" not in text and "200 database items, 50 queries" in text


def test_cost_table_numbers_and_notes():
    rows = parse_tables(markdown(minimal_result()))["Cost."]
    assert rows[0] == {"method": "linear", "backbone": "bb", "build s": "0.250",
                       "queries/s": "1,234", "bytes": "102,400", "bytes/item": "512",
                       "note": "", "R@10 vs exact (%)": "–", "seeds": "–"}
    assert rows[1]["bytes/item"] == "32.0" and rows[1]["queries/s"] == "5,000"
    assert rows[1]["note"] == "nprobe=8 | 4x8 PQ"  # the pipe is escaped, not a new column


def test_optional_tables_when_present():
    result = full_result()
    tables = parse_tables(markdown(result))
    ids = tables["Table 3-style."]
    assert [r["variant"] for r in ids] == ["random", "ours"]
    assert ids[1]["P@10"] == percent(result.ablations["ids"][1].metrics.precision[10])
    assert tables["Table 4-style."][0]["R@10"] == DASH
    fresh = tables["Table 6-style."]
    assert [(r["variant"], r["split"]) for r in fresh] == [("add", "old"), ("add", "new")]
    assert fresh[1]["R@1"] == percent(result.ablations["fresh"][1].metrics.recall[1])
    sweep = tables["Fig. 5 as a table."]
    assert [r["beam size"] for r in sweep] == ["1", "10"]
    assert sweep[1] == {"beam size": "10", "queries/s": "40.0", "encoder s": "0.100",
                        "decoder s": "1.00", "trie check s": "0.200", "P@1": "61.0"}


def test_ks_are_inferred_when_absent_and_markdown_is_pure():
    result = dataclasses.replace(full_result(), ks=None)
    before = copy.deepcopy(result)
    text = markdown(result)
    assert result == before and markdown(result) == text
    assert list(parse_tables(text)["Table 1-style."][0])[2:] == [f"P@{k}" for k in KS]


def test_a_table_with_no_values_is_left_out():
    result = Result("toy", (MethodRow("linear"),), ks=(1,))
    assert parse_tables(markdown(result)) == {}


def test_results_json_round_trips_to_the_same_tables():
    result = full_result()
    text = result.to_json()
    again = Result.from_json(text)
    assert again == result and markdown(again) == markdown(result)
    assert Result.from_json(again.to_json()) == again


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.sampled_from(ALL_KEYS), st.floats(0, 1), max_size=len(ALL_KEYS)))
def test_every_cell_is_its_value_or_a_dash(values):
    result = Result("toy", (MethodRow("a", metrics=make_metrics(values)),
                            MethodRow("b", metrics=_metrics(0.1))), ks=KS)
    tables = parse_tables(markdown(result))
    for caption in ("Table 1-style.", "Table 2-style.", "Fig. 4 and Table 5 metrics."):
        row = tables[caption][0]
        for column, cell in list(row.items())[2:]:
            assert cell == (percent(values[column]) if column in values else DASH)


def _check_png(path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 0  # something was drawn


def test_plots_are_valid_pngs_and_deterministic(tmp_path):
    result = full_result()
    paths = plots(result, tmp_path / "a")
    assert [p.name for p in paths] == ["precision_at_k.png", "pr_curve.png", "mrr_at_k.png",
                                       "beam_sweep.png"]
    for path in paths:
        assert path.parent == tmp_path / "a"
        _check_png(path)
    again = plots(result, tmp_path / "b")
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]


def test_absent_data_gives_no_plot(tmp_path):
    result = minimal_result()
    result = dataclasses.replace(result, rows=tuple(
        dataclasses.replace(row, metrics=Metrics(precision=row.metrics.precision))
        for row in result.rows))
    paths = plots(result, tmp_path)
    assert [p.name for p in paths] == ["precision_at_k.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precision_at_k.png"]
    nothing = Result("toy", (MethodRow("linear"),))
    assert plots(nothing, tmp_path / "empty") == []
    assert not (tmp_path / "empty").exists()


def test_sweep_plot_without_timings(tmp_path):
    result = dataclasses.replace(minimal_result(),
                                 beam_sweep=(BeamRow(1, qps=100.0), BeamRow(5, qps=30.0)))
    paths = plots(result, tmp_path)
    assert "beam_sweep.png" in [p.name for p in paths]
    _check_png(tmp_path / "beam_sweep.png")


def test_missing_matplotlib_is_a_clear_error(tmp_path, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends",
                 "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plots(full_result(), tmp_path)
