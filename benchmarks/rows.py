"""Benchmark results as typed rows: what run.py measures and report/ prints.

Every metric value is a fraction in [0, 1] keyed by its K; a K a row lacks is
simply absent. ``Result.to_json`` writes ``dataclasses.asdict`` of the result
(JSON object keys are strings, so K comes back as a string) and
``Result.from_json`` reads it back into the same dataclasses.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

# (column prefix, Metrics field), in the order the tables list them
FAMILIES = (("P", "precision"), ("R", "recall"), ("MRR", "mrr"), ("MAP", "map"))
# (BeamRow field, what it times), in the order the Fig. 5 table and plot stack them
BEAM_TIMINGS = (("encoder_s", "encoder"), ("decoder_s", "decoder"), ("trie_s", "trie check"))


@dataclass(frozen=True)
class Metrics:
    """Precision@K, recall@K, MRR@K and MAP@K, each ``{K: value}``."""

    precision: dict[int, float] = field(default_factory=dict)
    recall: dict[int, float] = field(default_factory=dict)
    mrr: dict[int, float] = field(default_factory=dict)
    map: dict[int, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Metrics:
        return cls(**{name: {int(k): v for k, v in data.get(name, {}).items()}
                      for _, name in FAMILIES})


@dataclass(frozen=True)
class PRCurve:
    """Mean precision and recall after each rank 1..K."""

    precision: tuple[float, ...]
    recall: tuple[float, ...]


@dataclass(frozen=True)
class MethodRow:
    """One method on one backbone's features: quality and cost. A row of ``seeds``
    builds holds their mean in ``metrics`` (and in ``qps``, ``build_s``, the curve)
    and the per-value minimum and maximum in ``low`` and ``high``. ``exact_recall``:
    the share of exact search's top 10 (same features, same metric) in its top 10."""

    method: str
    backbone: str | None = None
    metrics: Metrics = field(default_factory=Metrics)
    qps: float | None = None
    build_s: float | None = None
    bytes: int | None = None
    note: str | None = None
    pr_curve: PRCurve | None = None
    exact_recall: float | None = None
    seeds: int | None = None
    low: Metrics | None = None
    high: Metrics | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodRow:
        curve = data.get("pr_curve")
        bounds = {name: None if data.get(name) is None else Metrics.from_dict(data[name])
                  for name in ("low", "high")}
        return cls(**{**data, **bounds,
                      "metrics": Metrics.from_dict(data.get("metrics") or {}),
                      "pr_curve": None if curve is None else PRCurve(
                          tuple(curve["precision"]), tuple(curve["recall"]))})


def mean_row(rows: list[MethodRow]) -> MethodRow:
    """One row of several seeds' rows of one method: means, with min and max."""
    first = rows[0]

    def each(reduce, metrics: list[Metrics]) -> Metrics:
        return Metrics(**{name: {k: float(reduce([getattr(m, name)[k] for m in metrics]))
                                 for k in getattr(first.metrics, name)}
                          for _, name in FAMILIES})

    def mean(values) -> float | None:
        return None if any(v is None for v in values) else sum(values) / len(values)

    found = [row.metrics for row in rows]
    curves = [row.pr_curve for row in rows]
    curve = None if any(c is None for c in curves) else PRCurve(
        *(tuple(sum(v) / len(v) for v in zip(*(getattr(c, part) for c in curves)))
          for part in ("precision", "recall")))
    return dataclasses.replace(
        first, metrics=each(lambda v: sum(v) / len(v), found), low=each(min, found),
        high=each(max, found), seeds=len(rows), pr_curve=curve,
        qps=mean([row.qps for row in rows]), build_s=mean([row.build_s for row in rows]),
        exact_recall=mean([row.exact_recall for row in rows]))


@dataclass(frozen=True)
class AblationRow:
    """One variant of an ablation: identifiers (``length`` = T), length, or fresh data."""

    variant: str
    metrics: Metrics = field(default_factory=Metrics)
    length: int | None = None
    split: str | None = None
    train_s: float | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AblationRow:
        return cls(**{**data, "metrics": Metrics.from_dict(data.get("metrics") or {})})


@dataclass(frozen=True)
class FreshRow:
    """One index of the fresh-data benchmark (benchmarks/fresh.py): quality, the shares of
    a query's relevant trained-on (old) and added (new) items found in its top 10, times,
    and how it serves the classes training never saw."""

    name: str
    metrics: Metrics
    old_at_10: float
    new_at_10: float
    train_s: float
    search_s: float
    # the queries of classes never trained on (None: no such class): their precision@1,
    # and the share of their classes' items whose identifier no trained-on item has
    unseen_p1: float | None = None
    own_ids: float | None = None


@dataclass(frozen=True)
class BeamRow:
    """Genindex at one beam size: queries/s, seconds per 100 queries by part, quality."""

    beam_size: int
    qps: float | None = None
    encoder_s: float | None = None
    decoder_s: float | None = None
    trie_s: float | None = None
    metrics: Metrics = field(default_factory=Metrics)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BeamRow:
        return cls(**{**data, "metrics": Metrics.from_dict(data.get("metrics") or {})})


@dataclass(frozen=True)
class Provenance:
    """Where a stored result comes from: the command that printed it, the commit it ran
    at (``+changes`` when tracked files differed from it), the machine and the day."""

    command: str
    commit: str
    machine: str
    date: str


@dataclass(frozen=True)
class Result:
    """One run of benchmarks/run.py on one data set."""

    dataset: str
    rows: tuple[MethodRow, ...] = ()
    database: int | None = None
    queries: int | None = None
    ks: tuple[int, ...] | None = None  # the precision/recall columns; None: every K found
    split: str | None = None  # "test" (the reported queries) or "val" (the validation split)
    metric: str | None = None
    threads: int | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    beam_sweep: tuple[BeamRow, ...] = ()
    ablations: dict[str, tuple[AblationRow, ...]] = field(default_factory=dict)
    provenance: Provenance | None = None
    kind: str = "run"

    def all_metrics(self) -> list[Metrics]:
        """The metrics of every method row and ablation row."""
        return [row.metrics for row in self.rows] + [
            row.metrics for rows in self.ablations.values() for row in rows]

    def column_ks(self) -> list[int]:
        """``ks``, or else every K that any precision or recall value has."""
        if self.ks is not None:
            return list(self.ks)
        metrics = self.all_metrics()
        return sorted(set(present_ks(metrics, "precision")) | set(present_ks(metrics, "recall")))

    def sorted_sweep(self) -> list[BeamRow]:
        return sorted(self.beam_sweep, key=lambda row: row.beam_size)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, default=str)

    @classmethod
    def from_json(cls, text: str) -> Result:
        data = json.loads(text)
        ks = data.get("ks")
        return cls(**{
            **data, "ks": None if ks is None else tuple(ks),
            "provenance": _provenance(data.get("provenance")),
            "rows": tuple(MethodRow.from_dict(row) for row in data.get("rows", ())),
            "beam_sweep": tuple(BeamRow.from_dict(row) for row in data.get("beam_sweep", ())),
            "ablations": {name: tuple(AblationRow.from_dict(row) for row in rows)
                          for name, rows in (data.get("ablations") or {}).items()}})


@dataclass(frozen=True)
class Table:
    """One captioned table of a script that prints tables: its cells as printed, the
    first ``text_columns`` of them text, the rest numbers."""

    caption: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    text_columns: int = 1


@dataclass(frozen=True)
class TableSet:
    """The tables one run of a measuring script printed (speed.py, scale.py,
    unlabelled.py), with lines of text after them (``notes``) and the plots it wrote
    beside its ``results.json``."""

    title: str
    tables: tuple[Table, ...] = ()
    notes: tuple[str, ...] = ()
    plots: tuple[str, ...] = ()
    provenance: Provenance | None = None
    kind: str = "tables"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> TableSet:
        data = json.loads(text)
        return cls(**{**data, "notes": tuple(data.get("notes", ())),
                      "plots": tuple(data.get("plots", ())),
                      "provenance": _provenance(data.get("provenance")),
                      "tables": tuple(Table(**{**t, "header": tuple(t["header"]),
                                               "rows": tuple(map(tuple, t["rows"]))})
                                      for t in data.get("tables", ()))})


def load(text: str) -> Result | TableSet:
    """A stored ``results.json``: a run.py :class:`Result` or a :class:`TableSet`."""
    kind = json.loads(text).get("kind", "run")
    if kind not in ("run", "tables"):
        raise ValueError(f"results.json: unknown kind {kind!r}")
    return Result.from_json(text) if kind == "run" else TableSet.from_json(text)


def _provenance(data: dict[str, Any] | None) -> Provenance | None:
    return None if data is None else Provenance(**data)


def present_ks(metrics: list[Metrics], name: str) -> list[int]:
    """Every K that any of ``metrics`` has a ``name`` value for (``name``: a Metrics field)."""
    return sorted({k for m in metrics for k in getattr(m, name)})


__all__ = ["BEAM_TIMINGS", "FAMILIES", "AblationRow", "BeamRow", "FreshRow", "MethodRow",
           "Metrics", "PRCurve", "Provenance", "Result", "Table", "TableSet", "load",
           "mean_row", "present_ks"]
