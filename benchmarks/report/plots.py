"""The PNG figures of a :class:`benchmarks.rows.Result` (Agg, without pyplot)."""

from __future__ import annotations

import math
from pathlib import Path

from ..rows import BEAM_TIMINGS, BeamRow, MethodRow, Result, present_ks

LEGEND_ROW_INCHES = 0.16  # figure height added per line of the legend
LINE_STYLES = ("-", "--", ":", "-.")  # one per backbone (frozen, FT) of a figure


def plots(result: Result, out_dir: Path | str) -> list[Path]:
    """Write the PNG figures ``result`` has data for; return their paths in a fixed order.

    ``precision_at_k.png``: precision@K per method (Table 1 as lines);
    ``pr_curve.png``: precision against recall for the rows with ``pr_curve`` (Fig. 3);
    ``mrr_at_k.png``: MRR@K per method (Fig. 4); ``beam_sweep.png``: the encoder,
    decoder and trie-check seconds stacked per beam size, with queries/s on a second
    axis (Fig. 5).
    """
    out_dir, planned = Path(out_dir), _planned(result)
    figure_class = _figure_class() if planned else None
    written = []
    for filename, draw, data, titles in planned:
        lines = len(data) if isinstance(data, list) else 0
        figure = figure_class(figsize=(6.4, 4.4 + LEGEND_ROW_INCHES * lines),
                              dpi=100, layout="constrained")
        draw(figure, data, *titles)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / filename
        figure.savefig(path, format="png", metadata={"Software": None})
        written.append(path)
    return written


def plot_files(result: Result) -> list[str]:
    """The file names :func:`plots` writes for ``result``, in its order (nothing drawn)."""
    return [filename for filename, *_ in _planned(result)]


def _planned(result: Result) -> list[tuple]:
    """``(file name, draw, data, titles)`` of each figure ``result`` has data for."""
    rows, name = list(result.rows), result.dataset
    mrr_ks = present_ks([row.metrics for row in rows], "mrr")
    planned = [
        ("precision_at_k.png", _draw_at_k, _at_k_series(rows, "precision", result.column_ks()),
         ("precision@K (%)", f"Precision@K on {name}")),
        ("pr_curve.png", _draw_pr, _pr_series(rows), (f"Precision-recall on {name}",)),
        ("mrr_at_k.png", _draw_at_k, _at_k_series(rows, "mrr", mrr_ks),
         ("MRR@K (%)", f"MRR@K on {name}")),
        ("beam_sweep.png", _draw_sweep, _sweep_data(result.sorted_sweep()),
         (f"Beam-search speed on {name}",)),
    ]
    return [entry for entry in planned if entry[2]]


def _legend_below(axes) -> None:
    """The legend under the axes, where it covers no line."""
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize="x-small",
                frameon=False)


def _styles(labels: list[str]) -> list[dict]:
    """A colour per method (tab20) and a line style per backbone, so that no two of up
    to 20 methods' lines look the same; ``labels`` as :func:`_label` writes them."""
    from matplotlib import colormaps

    colours = colormaps["tab20"]
    parts = [label.partition(" (") for label in labels]
    methods = list(dict.fromkeys(method for method, _, _ in parts))
    backbones = list(dict.fromkeys(backbone for _, _, backbone in parts))
    return [{"color": colours(methods.index(method) % 20),
             "linestyle": LINE_STYLES[backbones.index(backbone) % len(LINE_STYLES)]}
            for method, _, backbone in parts]


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


def _label(row: MethodRow, rows: list[MethodRow]) -> str:
    """The method's name, with its backbone when the rows use several backbones."""
    if len({r.backbone for r in rows}) > 1:
        return f"{row.method} ({row.backbone or '–'})"
    return row.method


def _at_k_series(rows: list[MethodRow], name: str, ks: list[int]) -> list[tuple]:
    """(label, ks, percentages) per row that has any ``name`` value at these ks."""
    series = []
    for row in rows:
        values = getattr(row.metrics, name)
        points = [(k, 100 * values[k]) for k in ks
                  if values.get(k) is not None and not math.isnan(values[k])]
        if points:
            series.append((_label(row, rows), [k for k, _ in points], [v for _, v in points]))
    return series


def _pr_series(rows: list[MethodRow]) -> list[tuple]:
    """(label, recall %, precision %) per row that has a ``pr_curve``."""
    return [(_label(row, rows), [100 * v for v in row.pr_curve.recall],
             [100 * v for v in row.pr_curve.precision])
            for row in rows if row.pr_curve is not None]


def _sweep_data(entries: list[BeamRow]) -> dict | None:
    """Beam sizes, queries/s and the timings every entry has; None when there is no sweep."""
    if not entries:
        return None
    qps = [e.qps for e in entries]
    data = {"beam": [e.beam_size for e in entries], "timings": [],
            "qps": qps if all(v is not None for v in qps) else None}
    for key, label in BEAM_TIMINGS:
        values = [getattr(e, key) for e in entries]
        if all(v is not None for v in values):
            data["timings"].append((label, [float(v) for v in values]))
    return data if data["qps"] or data["timings"] else None


def _draw_at_k(figure, series: list[tuple], ylabel: str, title: str) -> None:
    axes = figure.add_subplot()
    for (label, ks, values), style in zip(series, _styles([label for label, *_ in series])):
        axes.plot(ks, values, marker="o", label=label, **style)
    ticks = sorted({k for _, ks, _ in series for k in ks})
    if ticks[-1] >= 20 * ticks[0]:  # K from 1 to 100 (Fig. 6): evenly spaced decades
        axes.set_xscale("log")
    axes.set_xticks(ticks, [str(k) for k in ticks])
    axes.minorticks_off()
    axes.set(xlabel="K", ylabel=ylabel, title=title)
    axes.grid(alpha=0.3)
    _legend_below(axes)


def _draw_pr(figure, series: list[tuple], title: str) -> None:
    axes = figure.add_subplot()
    for (label, recall, precision), style in zip(series, _styles([s[0] for s in series])):
        axes.plot(recall, precision, label=label, **style)
    axes.set(xlabel="recall (true positive rate, %)", ylabel="precision (%)", title=title)
    axes.grid(alpha=0.3)
    _legend_below(axes)


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
