"""Markdown tables and PNG plots, shaped like the IRGen paper's section 4, from run.py's results.

``markdown(result)`` returns the tables as one Markdown string; ``plots(result,
out_dir)`` writes PNG figures and returns their paths. Both are pure (no prints,
no global state, the input is never changed) and deterministic.

``result`` is what run.py writes to ``results.json``: ``dataset``, ``database``,
``queries``, optionally ``ks``, ``rows`` (one per method and backbone, with
``metrics``, ``qps``, ``build_s``, ``bytes``, optionally ``note`` and ``pr_curve``),
and the optional ``beam_sweep`` and ``ablations`` (``ids``, ``length``, ``fresh``).
Metric values are fractions in [0, 1] and are printed as percentages with one
decimal, as in the paper; a metric a row lacks prints as "–". A table or plot
whose data is absent altogether is left out.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

DASH = "–"
TIMINGS = (("encoder_s", "encoder"), ("decoder_s", "decoder"), ("trie_s", "trie check"))
_METRIC_KEY = re.compile(r"^(P|R|MRR|MAP)@(\d+)$")
_FAMILY_ORDER = {"P": 0, "R": 1, "MRR": 2, "MAP": 3}


# ---------------------------------------------------------------- Markdown


def markdown(result: Mapping[str, Any]) -> str:
    """All tables that ``result`` has data for, each under a one-line caption."""
    rows = _check_result(result)
    where = str(result.get("dataset", "an unnamed data set"))
    ks = _ks(result)
    blocks = [f"## Results on {_where(result)}"]
    p_cols, r_cols = [f"P@{k}" for k in ks], [f"R@{k}" for k in ks]
    mrr_cols = [f"MRR@{k}" for k in _metric_ks(_all_metrics(result), "MRR")]
    map_cols = [f"MAP@{k}" for k in _metric_ks(_all_metrics(result), "MAP")]
    method_tables = (
        (f"**Table 1-style.** Precision@K (%) per method on {where}.", p_cols),
        (f"**Table 2-style.** Recall@K (%) per method on {where}.", r_cols),
        (f"**Fig. 4 and Table 5 metrics.** MRR@K and MAP@K (%) per method on {where} (the "
         "paper plots MRR@K in Fig. 4; its Table 5 gives MAP@100 on million-scale sets).",
         mrr_cols + map_cols),
    )
    for caption, columns in method_tables:
        body = [[str(row["method"]), str(row.get("backbone", DASH))]
                + _metric_cells(row.get("metrics"), columns, f"rows[{i}]")
                for i, row in enumerate(rows)]
        blocks.append(_table(caption, ["method", "backbone"] + columns, body, 2))
    ablations = result.get("ablations") or {}
    _check_mapping(ablations, "result['ablations']")
    for key, caption in (("ids", "**Table 3-style.** Ablation of the item identifiers"),
                         ("length", "**Table 4-style.** Ablation of the identifier length T"),
                         ("fresh", "**Table 6-style.** Fresh data per update variant and split")):
        if ablations.get(key):
            blocks.append(_ablation_table(ablations[key], key, f"{caption}, "
                                          f"precision@K and recall@K (%) on {where}.",
                                          p_cols + r_cols))
    blocks.append(_cost_table(result, rows, where))
    if result.get("beam_sweep"):
        blocks.append(_beam_table(result["beam_sweep"], where))
    return "\n\n".join(b for b in blocks if b) + "\n"


def _ablation_table(entries: Any, key: str, caption: str, columns: list[str]) -> str:
    name = f"result['ablations'][{key!r}]"
    _check_list(entries, name)
    keys = ["variant", "split"] if key == "fresh" else ["variant"]
    body = []
    for i, entry in enumerate(entries):
        _check_mapping(entry, f"{name}[{i}]")
        labels = [str(entry.get(k, DASH)) for k in keys]
        body.append(labels + _metric_cells(entry.get("metrics"), columns, f"{name}[{i}]"))
    return _table(caption, keys + columns, body, len(keys))


def _cost_table(result: Mapping[str, Any], rows: list[Mapping], where: str) -> str:
    if not rows:
        return ""
    database = _count(result, "database")
    has_note = any(row.get("note") for row in rows)
    header = ["method", "backbone", "build s", "queries/s", "bytes", "bytes/item"]
    body = []
    for i, row in enumerate(rows):
        size = _number(row.get("bytes"), f"rows[{i}]['bytes']")
        per_item = size / database if size is not None and database else None
        cells = [str(row["method"]), str(row.get("backbone", DASH)),
                 _quantity(_number(row.get("build_s"), f"rows[{i}]['build_s']")),
                 _quantity(_number(row.get("qps"), f"rows[{i}]['qps']")),
                 DASH if size is None else f"{size:,.0f}", _quantity(per_item)]
        body.append(cells + ([str(row.get("note") or "")] if has_note else []))
    caption = (f"**Cost.** Build time, search throughput and index size per method on {where}"
               f" (bytes/item = bytes / {database:,} database items)." if database else
               f"**Cost.** Build time, search throughput and index size per method on {where}.")
    return _table(caption, header + (["note"] if has_note else []), body, 2, has_note)


def _beam_table(sweep: Any, where: str) -> str:
    entries = _sorted_sweep(sweep)
    extra = _metric_keys(entries)
    header = ["beam size", "queries/s"] + [f"{label} s" for _, label in TIMINGS] + extra
    body = []
    for i, entry in enumerate(entries):
        name = f"result['beam_sweep'][{i}]"
        cells = [str(entry["beam_size"]), _quantity(_number(entry.get("qps"), f"{name}['qps']"))]
        cells += [_quantity(_number(entry.get(k), f"{name}[{k!r}]")) for k, _ in TIMINGS]
        body.append(cells + _metric_cells(entry, extra, name))
    caption = (f"**Fig. 5 as a table.** Beam-search speed per beam size on {where}: queries/s, "
               "seconds in the encoder, decoder and trie check, and accuracy (%).")
    return _table(caption, header, body, 1)


def _table(caption: str, header: list[str], body: list[list[str]], text_columns: int,
           text_last: bool = False) -> str:
    """A captioned Markdown table, or "" when every number cell is absent. The first
    ``text_columns`` columns (and the last, with ``text_last``) hold text, the rest numbers."""
    numbers_end = len(header) - text_last
    if not body or all(cell == DASH for row in body for cell in row[text_columns:numbers_end]):
        return ""
    align = ["---:" if text_columns <= i < numbers_end else "---" for i in range(len(header))]
    lines = [caption, "", _line(header), _line(align)] + [_line(row) for row in body]
    return "\n".join(lines)


def _line(cells: Sequence[str]) -> str:
    clean = [c.replace("|", "\\|").replace("\n", " ") for c in cells]
    return "| " + " | ".join(clean) + " |"


def _metric_cells(metrics: Any, columns: Sequence[str], where: str) -> list[str]:
    if metrics is None:
        return [DASH] * len(columns)
    _check_mapping(metrics, f"{where}['metrics']")
    return [_percent(_fraction(metrics.get(c), f"{where} metric {c!r}")) for c in columns]


def _percent(value: float | None) -> str:
    if value is None:
        return DASH
    return "NaN" if math.isnan(value) else f"{100 * value:.1f}"


def _quantity(value: float | None) -> str:
    """Seconds, queries/s or bytes: three significant digits below 100, whole numbers above."""
    if value is None:
        return DASH
    if math.isnan(value):
        return "NaN"
    return f"{value:#.3g}" if value < 100 else f"{value:,.0f}"


# ---------------------------------------------------------------- checks and lookups


def _check_result(result: Any) -> list[Mapping]:
    _check_mapping(result, "result")
    rows = result.get("rows")
    _check_list(rows, "result['rows']")
    for i, row in enumerate(rows):
        _check_mapping(row, f"result['rows'][{i}]")
        if "method" not in row:
            raise ValueError(f"result['rows'][{i}] has no 'method'")
    return list(rows)


def _check_mapping(value: Any, name: str) -> None:
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a dict, got {type(value).__name__}")


def _check_list(value: Any, name: str) -> None:
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a list, got {type(value).__name__}")


def _number(value: Any, name: str) -> float | None:
    """A non-negative real number, None (absent) passed through."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if value < 0:
        raise ValueError(f"{name} = {value!r} is negative")
    return value


def _fraction(value: Any, name: str) -> float | None:
    value = _number(value, name)
    if value is not None and value > 1:
        raise ValueError(f"{name} = {value!r} is above 1: metrics are fractions, "
                         "not percentages")
    return value


def _count(result: Mapping[str, Any], key: str) -> int | None:
    value = result.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                              or value < 0):
        raise TypeError(f"result[{key!r}] must be a non-negative integer, got {value!r}")
    return value


def _where(result: Mapping[str, Any]) -> str:
    sizes = [f"{_count(result, k):,} {label}" for k, label in
             (("database", "database items"), ("queries", "queries"))
             if result.get(k) is not None]
    name = str(result.get("dataset", "an unnamed data set"))
    return f"{name} ({', '.join(sizes)})" if sizes else name


def _all_metrics(result: Mapping[str, Any]) -> list[Mapping]:
    found = [row.get("metrics") for row in result.get("rows") or []]
    for entries in (result.get("ablations") or {}).values():
        found += [entry.get("metrics") for entry in entries or [] if isinstance(entry, Mapping)]
    return [m for m in found if isinstance(m, Mapping)]


def _metric_ks(metrics: list[Mapping], family: str) -> list[int]:
    ks = {int(m.group(2)) for keys in metrics for m in map(_METRIC_KEY.match, keys)
          if m and m.group(1) == family}
    return sorted(ks)


def _metric_keys(entries: list[Mapping]) -> list[str]:
    """Metric keys (P@k, R@k, MRR@k, MAP@k) present in any entry, in a fixed order."""
    keys = {key for entry in entries for key in entry if _METRIC_KEY.match(key)}
    return sorted(keys, key=lambda k: (_FAMILY_ORDER[_METRIC_KEY.match(k).group(1)],
                                       int(_METRIC_KEY.match(k).group(2))))


def _ks(result: Mapping[str, Any]) -> list[int]:
    """``result['ks']``, or else every K of a P@K or R@K key found in the metrics."""
    ks = result.get("ks")
    if ks is None:
        metrics = _all_metrics(result)
        return sorted(set(_metric_ks(metrics, "P")) | set(_metric_ks(metrics, "R")))
    _check_list(ks, "result['ks']")
    if not all(isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in ks):
        raise ValueError(f"result['ks'] must hold positive integers, got {list(ks)!r}")
    return list(ks)


def _sorted_sweep(sweep: Any) -> list[Mapping]:
    _check_list(sweep, "result['beam_sweep']")
    for i, entry in enumerate(sweep):
        _check_mapping(entry, f"result['beam_sweep'][{i}]")
        size = entry.get("beam_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"result['beam_sweep'][{i}]['beam_size'] must be a positive "
                             f"integer, got {size!r}")
    return sorted(sweep, key=lambda entry: entry["beam_size"])


def _label(row: Mapping, rows: list[Mapping]) -> str:
    """The method's name, with its backbone when the rows use several backbones."""
    if len({r.get("backbone") for r in rows}) > 1:
        return f"{row['method']} ({row.get('backbone', DASH)})"
    return str(row["method"])


# ---------------------------------------------------------------- plots


def plots(result: Mapping[str, Any], out_dir: Path | str) -> list[Path]:
    """Write the PNG figures ``result`` has data for; return their paths in a fixed order.

    ``precision_at_k.png``: precision@K per method (Table 1 as lines);
    ``pr_curve.png``: precision against recall for the rows with ``pr_curve`` (Fig. 3);
    ``mrr_at_k.png``: MRR@K per method (Fig. 4); ``beam_sweep.png``: the encoder,
    decoder and trie-check seconds stacked per beam size, with queries/s on a second
    axis (Fig. 5). Everything is checked before the first file is written.
    """
    rows = _check_result(result)
    out_dir = Path(out_dir)
    name = str(result.get("dataset", "an unnamed data set"))
    mrr_ks = _metric_ks([r["metrics"] for r in rows if isinstance(r.get("metrics"), Mapping)],
                        "MRR")
    planned = [
        ("precision_at_k.png", _draw_at_k, _at_k_series(rows, "P", _ks(result)),
         ("precision@K (%)", f"Precision@K on {name}")),
        ("pr_curve.png", _draw_pr, _pr_series(rows), (f"Precision-recall on {name}",)),
        ("mrr_at_k.png", _draw_at_k, _at_k_series(rows, "MRR", mrr_ks),
         ("MRR@K (%)", f"MRR@K on {name}")),
        ("beam_sweep.png", _draw_sweep, _sweep_data(result.get("beam_sweep")),
         (f"Beam-search speed on {name}",)),
    ]
    figure_class = _figure_class() if any(data for _, _, data, _ in planned) else None
    written = []
    for filename, draw, data, titles in planned:
        if not data:
            continue
        figure = figure_class(figsize=(6.4, 4.4), dpi=100, layout="constrained")
        draw(figure, data, *titles)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / filename
        figure.savefig(path, format="png", metadata={"Software": None})
        written.append(path)
    return written


def _figure_class():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("plots() needs matplotlib: pip install matplotlib "
                          "(or pip install 'genindex[bench]')") from error

    def make(**kwargs):
        figure = Figure(**kwargs)
        FigureCanvasAgg(figure)  # Agg without pyplot: no global backend state is touched
        return figure

    return make


def _at_k_series(rows: list[Mapping], family: str, ks: list[int]) -> list[tuple]:
    """(label, ks, percentages) per row that has any ``family@k`` value."""
    series = []
    for i, row in enumerate(rows):
        metrics = row.get("metrics") or {}
        _check_mapping(metrics, f"rows[{i}]['metrics']")
        points = [(k, _fraction(metrics.get(f"{family}@{k}"), f"rows[{i}] metric {family}@{k}"))
                  for k in ks]
        points = [(k, 100 * v) for k, v in points if v is not None and not math.isnan(v)]
        if points:
            series.append((_label(row, rows), [k for k, _ in points], [v for _, v in points]))
    return series


def _pr_series(rows: list[Mapping]) -> list[tuple]:
    """(label, recall %, precision %) per row that has a ``pr_curve``."""
    series = []
    for i, row in enumerate(rows):
        curve = row.get("pr_curve")
        if curve is None:
            continue
        name = f"rows[{i}]['pr_curve']"
        _check_mapping(curve, name)
        for key in ("precision", "recall"):
            _check_list(curve.get(key), f"{name}[{key!r}]")
        precision, recall = curve["precision"], curve["recall"]
        if len(precision) != len(recall) or not precision:
            raise ValueError(f"{name} needs precision and recall of one non-zero length, got "
                             f"{len(precision)} and {len(recall)}")
        series.append((_label(row, rows),
                       [100 * _fraction(v, f"{name}['recall'][{j}]") for j, v in
                        enumerate(recall)],
                       [100 * _fraction(v, f"{name}['precision'][{j}]") for j, v in
                        enumerate(precision)]))
    return series


def _sweep_data(sweep: Any) -> dict | None:
    """Beam sizes, queries/s and the timings every entry has; None when there is no sweep."""
    if not sweep:
        return None
    entries = _sorted_sweep(sweep)
    data = {"beam": [e["beam_size"] for e in entries], "timings": []}
    qps = [_number(e.get("qps"), f"beam_sweep entry {e['beam_size']} 'qps'") for e in entries]
    data["qps"] = qps if all(v is not None for v in qps) else None
    for key, label in TIMINGS:
        values = [_number(e.get(key), f"beam_sweep entry {e['beam_size']} {key!r}")
                  for e in entries]
        if all(v is not None for v in values):
            data["timings"].append((label, values))
    return data if data["qps"] or data["timings"] else None


def _draw_at_k(figure, series: list[tuple], ylabel: str, title: str) -> None:
    axes = figure.add_subplot()
    for label, ks, values in series:
        axes.plot(ks, values, marker="o", label=label)
    axes.set_xticks(sorted({k for _, ks, _ in series for k in ks}))
    axes.set(xlabel="K", ylabel=ylabel, title=title)
    axes.grid(alpha=0.3)
    axes.legend()


def _draw_pr(figure, series: list[tuple], title: str) -> None:
    axes = figure.add_subplot()
    for label, recall, precision in series:
        axes.plot(recall, precision, label=label)
    axes.set(xlabel="recall (true positive rate, %)", ylabel="precision (%)", title=title)
    axes.grid(alpha=0.3)
    axes.legend()


def _draw_sweep(figure, data: dict, title: str) -> None:
    axes = figure.add_subplot()
    positions = list(range(len(data["beam"])))
    bottom = [0.0] * len(positions)
    for label, values in data["timings"]:
        axes.bar(positions, values, width=0.6, bottom=bottom, label=f"{label} s")
        bottom = [b + v for b, v in zip(bottom, values)]
    axes.set_xticks(positions, [str(b) for b in data["beam"]])
    axes.set(xlabel="beam size", title=title)
    if data["timings"]:
        axes.set_ylabel("seconds")
    line_axes = axes.twinx() if data["timings"] and data["qps"] else axes
    if data["qps"]:
        line_axes.plot(positions, data["qps"], color="black", marker="o", label="queries/s")
        line_axes.set_ylabel("queries/s")
        line_axes.set_ylim(bottom=0)
    handles, labels = axes.get_legend_handles_labels()
    if line_axes is not axes:
        more_handles, more_labels = line_axes.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    axes.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.12),
                ncols=len(labels), frameon=False)
