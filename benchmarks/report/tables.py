"""The Markdown tables of a :class:`benchmarks.rows.Result`, one captioned table each."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..rows import (
    BEAM_TIMINGS,
    FAMILIES,
    AblationRow,
    MethodRow,
    Metrics,
    Result,
    TableSet,
    present_ks,
)

DASH = "–"
_PREFIX = dict((name, prefix) for prefix, name in FAMILIES)
Column = tuple[str, str, int]  # header ("P@10"), Metrics field ("precision"), K
ABLATION_CAPTIONS = (
    ("ids", "**Table 3-style.** Ablation of the item identifiers"),
    ("length", "**Table 4-style.** Ablation of the identifier length T"),
    ("fresh", "**Table 6-style.** Fresh data per update variant and split"),
)


def markdown(result: Result) -> str:
    """All tables that ``result`` has data for, each under a one-line caption."""
    where = result.dataset
    ks, metrics = result.column_ks(), result.all_metrics()
    p_cols, r_cols = columns("precision", ks), columns("recall", ks)
    mrr_cols = columns("mrr", present_ks(metrics, "mrr"))
    map_cols = columns("map", present_ks(metrics, "map"))
    method_tables = (
        (f"**Table 1-style.** Precision@K (%) per method on {where}.", p_cols),
        (f"**Table 2-style.** Recall@K (%) per method on {where}.", r_cols),
        (f"**Fig. 4 and Table 5 metrics.** MRR@K and MAP@K (%) per method on {where} (the "
         "paper plots MRR@K in Fig. 4; its Table 5 gives MAP@100 on million-scale sets).",
         mrr_cols + map_cols),
    )
    blocks = [f"## Results on {_where(result)}"]
    if any(row.seeds for row in result.rows):
        blocks.append("A row built with several seeds gives their mean [min, max]; a "
                      "difference smaller than that spread is a tie.")
    for caption, cols in method_tables:
        body = [[row.method, _text(row.backbone)] + _row_cells(row, cols)
                for row in result.rows]
        blocks.append(_table(caption, ["method", "backbone"] + [c[0] for c in cols], body, 2))
    for key, caption in ABLATION_CAPTIONS:
        if result.ablations.get(key):
            blocks.append(_ablation_table(result.ablations[key], key == "fresh",
                                          f"{caption}, precision@K and recall@K (%) on "
                                          f"{where}.", p_cols + r_cols))
    blocks.append(_cost_table(result))
    if result.beam_sweep:
        blocks.append(_beam_table(result))
    return "\n\n".join(b for b in blocks if b) + "\n"


def table_set_markdown(tables: TableSet) -> str:
    """The tables of a measuring script, each under its caption, then its notes."""
    blocks = [_table(table.caption, list(table.header), [list(row) for row in table.rows],
                     table.text_columns, every=True) for table in tables.tables]
    notes = ["\n".join(tables.notes)] if tables.notes else []
    return "\n\n".join([b for b in blocks if b] + notes) + "\n"


def columns(name: str, ks: Sequence[int]) -> list[Column]:
    return [(f"{_PREFIX[name]}@{k}", name, k) for k in ks]


def _ablation_table(entries: Sequence[AblationRow], with_split: bool, caption: str,
                    cols: list[Column]) -> str:
    keys = ["variant", "split"] if with_split else ["variant"]
    body = [[entry.variant] + ([_text(entry.split)] if with_split else [])
            + _metric_cells(entry.metrics, cols) for entry in entries]
    return _table(caption, keys + [c[0] for c in cols], body, len(keys))


def _cost_table(result: Result) -> str:
    if not result.rows:
        return ""
    database, where = result.database, result.dataset
    has_note = any(row.note for row in result.rows)
    header = ["method", "backbone", "R@10 vs exact (%)", "seeds", "build s", "queries/s",
              "bytes", "bytes/item"]
    body = []
    for row in result.rows:
        per_item = row.bytes / database if row.bytes is not None and database else None
        cells = [row.method, _text(row.backbone), _percent(row.exact_recall),
                 _text(row.seeds), _quantity(row.build_s), _quantity(row.qps),
                 DASH if row.bytes is None else f"{row.bytes:,.0f}", _quantity(per_item)]
        body.append(cells + ([row.note or ""] if has_note else []))
    what = (f"**Cost.** Recall@10 against exact search on the same features, build time, "
            f"search throughput and index size per method on {where}")
    caption = (f"{what} (bytes/item = bytes / {database:,} database items)." if database
               else f"{what}.")
    return _table(caption, header + (["note"] if has_note else []), body, 2, has_note)


def _beam_table(result: Result) -> str:
    entries = result.sorted_sweep()
    found = [entry.metrics for entry in entries]
    extra = [c for _, name in FAMILIES for c in columns(name, present_ks(found, name))]
    header = (["beam size", "queries/s"] + [f"{label} s" for _, label in BEAM_TIMINGS]
              + [c[0] for c in extra])
    body = [[str(entry.beam_size), _quantity(entry.qps)]
            + [_quantity(getattr(entry, key)) for key, _ in BEAM_TIMINGS]
            + _metric_cells(entry.metrics, extra) for entry in entries]
    from benchmarks.sweep import SWEEP_QUERIES

    caption = (f"**Fig. 5 as a table.** Beam-search speed per beam size on {result.dataset} "
               f"({min(result.queries, SWEEP_QUERIES):,} queries): queries/s, seconds in the "
               "encoder, decoder and trie check, and accuracy (%).")
    return _table(caption, header, body, 1)


def _table(caption: str, header: list[str], body: list[list[str]], text_columns: int,
           text_last: bool = False, every: bool = False) -> str:
    """A captioned Markdown table, or "" when every number cell is absent (``every``:
    shown all the same). The first ``text_columns`` columns (and the last, with
    ``text_last``) hold text, the rest numbers."""
    numbers_end = len(header) - text_last
    if not body or not every and all(cell == DASH for row in body
                                     for cell in row[text_columns:numbers_end]):
        return ""
    align = ["---:" if text_columns <= i < numbers_end else "---" for i in range(len(header))]
    lines = [caption, "", _line(header), _line(align)] + [_line(row) for row in body]
    return "\n".join(lines)


def _line(cells: Sequence[str]) -> str:
    clean = [c.replace("|", "\\|").replace("\n", " ") for c in cells]
    return "| " + " | ".join(clean) + " |"


def _row_cells(row: MethodRow, cols: Sequence[Column]) -> list[str]:
    """A method row's metric cells: its value, with [min, max] over its seeds."""
    cells = _metric_cells(row.metrics, cols)
    if row.low is None or row.high is None:
        return cells
    return [f"{cell} [{low}, {high}]" if cell != DASH else cell for cell, low, high in
            zip(cells, _metric_cells(row.low, cols), _metric_cells(row.high, cols))]


def _metric_cells(metrics: Metrics, cols: Sequence[Column]) -> list[str]:
    return [_percent(getattr(metrics, name).get(k)) for _, name, k in cols]


def _text(value: str | None) -> str:
    return DASH if value is None else str(value)


def _percent(value: float | None) -> str:
    if value is None:
        return DASH
    return "NaN" if math.isnan(value) else f"{100 * value:.1f}"


def _quantity(value: float | None) -> str:
    """Seconds, queries/s or bytes: three significant digits below 100, whole numbers above."""
    if value is None:
        return DASH
    value = float(value)
    if math.isnan(value):
        return "NaN"
    return f"{value:#.3g}" if value < 100 else f"{value:,.0f}"


def _where(result: Result) -> str:
    sizes = [f"{count:,} {label}" for count, label in
             ((result.database, "database items"), (result.queries, "queries"))
             if count is not None]
    if result.split is not None:
        sizes.append("validation split" if result.split == "val" else "reported queries")
    return f"{result.dataset} ({', '.join(sizes)})" if sizes else result.dataset
