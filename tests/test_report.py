"""benchmarks/report.py: Markdown tables checked cell by cell, PNG plots checked as images."""

from __future__ import annotations

import copy
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.report import DASH, markdown, plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
KS = [1, 3, 10]
ALL_KEYS = ([f"P@{k}" for k in KS] + [f"R@{k}" for k in KS]
            + [f"MRR@{k}" for k in (1, 2, 4, 8)] + ["MAP@100"])


def _metrics(seed: float, drop: tuple[str, ...] = ()) -> dict[str, float]:
    """Distinct fractions per key (so a value in the wrong column is caught)."""
    return {key: round(seed + 0.0123 * i, 4) for i, key in enumerate(ALL_KEYS)
            if key not in drop}


def _curve(scale: float) -> dict[str, list[float]]:
    recall = [i / 20 for i in range(1, 21)]
    return {"precision": [scale * (1 - r / 2) for r in recall], "recall": recall}


def minimal_result() -> dict:
    return {
        "dataset": "toy", "database": 200, "queries": 50, "ks": KS,
        "rows": [
            {"method": "linear", "backbone": "bb", "metrics": _metrics(0.5),
             "qps": 1234.5, "build_s": 0.25, "bytes": 102400},
            {"method": "ivfpq", "backbone": "bb",
             "metrics": _metrics(0.3, drop=("P@10", "R@3", "MAP@100")),
             "qps": 5000.0, "build_s": 2.5, "bytes": 6400, "note": "nprobe=8 | 4x8 PQ"},
        ],
    }


def full_result() -> dict:
    result = minimal_result()
    result["rows"][0]["pr_curve"] = _curve(0.9)
    result["rows"].append(
        {"method": "genindex", "backbone": "bb", "metrics": _metrics(0.6), "qps": 30.0,
         "build_s": 300.0, "bytes": 50000, "pr_curve": _curve(0.95)})
    result["beam_sweep"] = [  # out of order on purpose: the table and plot sort by beam size
        {"beam_size": 10, "qps": 40.0, "encoder_s": 0.1, "decoder_s": 1.0, "trie_s": 0.2,
         "P@1": 0.61},
        {"beam_size": 1, "qps": 120.0, "encoder_s": 0.1, "decoder_s": 0.3, "trie_s": 0.05,
         "P@1": 0.55},
    ]
    result["ablations"] = {
        "ids": [{"variant": "random", "metrics": _metrics(0.2)},
                {"variant": "ours", "metrics": _metrics(0.6)}],
        "length": [{"variant": "T=2", "metrics": _metrics(0.4, drop=("R@10",))}],
        "fresh": [{"variant": "add", "split": "old", "metrics": _metrics(0.55)},
                  {"variant": "add", "split": "new", "metrics": _metrics(0.25)}],
    }
    return result


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
        for row, source in zip(rows, result["rows"]):
            for column in columns:
                value = source["metrics"].get(column)
                assert row[column] == (DASH if value is None else percent(value)), column
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
                       "note": ""}
    assert rows[1]["bytes/item"] == "32.0" and rows[1]["queries/s"] == "5,000"
    assert rows[1]["note"] == "nprobe=8 | 4x8 PQ"  # the pipe is escaped, not a new column


def test_optional_tables_when_present():
    result = full_result()
    tables = parse_tables(markdown(result))
    ids = tables["Table 3-style."]
    assert [r["variant"] for r in ids] == ["random", "ours"]
    assert ids[1]["P@10"] == percent(result["ablations"]["ids"][1]["metrics"]["P@10"])
    assert tables["Table 4-style."][0]["R@10"] == DASH
    fresh = tables["Table 6-style."]
    assert [(r["variant"], r["split"]) for r in fresh] == [("add", "old"), ("add", "new")]
    assert fresh[1]["R@1"] == percent(result["ablations"]["fresh"][1]["metrics"]["R@1"])
    sweep = tables["Fig. 5 as a table."]
    assert [r["beam size"] for r in sweep] == ["1", "10"]
    assert sweep[1] == {"beam size": "10", "queries/s": "40.0", "encoder s": "0.100",
                        "decoder s": "1.00", "trie check s": "0.200", "P@1": "61.0"}


def test_ks_are_inferred_when_absent_and_markdown_is_pure():
    result = full_result()
    del result["ks"]
    before = copy.deepcopy(result)
    text = markdown(result)
    assert result == before and markdown(result) == text
    assert list(parse_tables(text)["Table 1-style."][0])[2:] == [f"P@{k}" for k in KS]


def test_a_table_with_no_values_is_left_out():
    result = {"dataset": "toy", "ks": [1], "rows": [{"method": "linear", "metrics": {}}]}
    assert parse_tables(markdown(result)) == {}


@pytest.mark.parametrize(("change", "error", "words"), [
    (lambda r: r["rows"][0]["metrics"].update({"P@1": 57.0}), ValueError, "percentages"),
    (lambda r: r["rows"][0]["metrics"].update({"R@3": "high"}), TypeError, "R@3"),
    (lambda r: r["rows"][1].pop("method"), ValueError, "method"),
    (lambda r: r.update({"rows": "linear"}), TypeError, "rows"),
    (lambda r: r.update({"ks": [0, 1]}), ValueError, "ks"),
    (lambda r: r["rows"][0].update({"qps": -1.0}), ValueError, "qps"),
    (lambda r: r["beam_sweep"][0].update({"beam_size": "ten"}), ValueError, "beam_size"),
])
def test_bad_input_is_refused_by_name(change, error, words):
    result = full_result()
    change(result)
    with pytest.raises(error, match=words):
        markdown(result)


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.sampled_from(ALL_KEYS), st.floats(0, 1), max_size=len(ALL_KEYS)))
def test_every_cell_is_its_value_or_a_dash(values):
    result = {"dataset": "toy", "ks": KS, "rows": [
        {"method": "a", "metrics": values}, {"method": "b", "metrics": _metrics(0.1)}]}
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
    for row in result["rows"]:
        row["metrics"] = {k: v for k, v in row["metrics"].items() if k.startswith("P@")}
    paths = plots(result, tmp_path)
    assert [p.name for p in paths] == ["precision_at_k.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precision_at_k.png"]
    nothing = {"dataset": "toy", "rows": [{"method": "linear", "metrics": {}}]}
    assert plots(nothing, tmp_path / "empty") == []
    assert not (tmp_path / "empty").exists()


def test_sweep_plot_without_timings(tmp_path):
    result = minimal_result()
    result["beam_sweep"] = [{"beam_size": 1, "qps": 100.0}, {"beam_size": 5, "qps": 30.0}]
    paths = plots(result, tmp_path)
    assert "beam_sweep.png" in [p.name for p in paths]
    _check_png(tmp_path / "beam_sweep.png")


def test_bad_pr_curve_is_refused_before_any_file(tmp_path):
    result = full_result()
    result["rows"][2]["pr_curve"]["recall"].pop()
    with pytest.raises(ValueError, match="pr_curve"):
        plots(result, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_matplotlib_is_a_clear_error(tmp_path, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends",
                 "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plots(full_result(), tmp_path)
