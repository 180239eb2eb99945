"""Search methods behind one small interface, as ann-benchmarks keeps them.

A method takes its build parameters in its constructor, is built once on
database features with ``fit``, takes its query parameters through
``set_query_arguments`` (no refit: one built index is swept over them) and
answers ``search`` with ids; the runner computes every metric itself. Exact
search and genindex live here, the approximate baselines in
:mod:`benchmarks.baselines`.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


class Method:
    name = "method"

    def fit(self, db: np.ndarray, labels: np.ndarray, images: Any = None) -> None:
        raise NotImplementedError

    def set_query_arguments(self) -> None:
        """Set the query parameters by keyword, each one left out back to its default
        (a method without query parameters takes none)."""

    def search(self, queries: np.ndarray, k: int, images: Any = None) -> np.ndarray:
        """Result ids (n, k) int64, -1 where there is no result."""
        raise NotImplementedError

    def nbytes(self) -> int:
        raise NotImplementedError


def _faiss():
    try:
        import faiss
    except ImportError:
        raise RuntimeError("this method needs faiss: pip install 'genindex[bench]'") from None
    return faiss


def _prepare(x: np.ndarray, metric: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype="float32")
    if metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


class Linear(Method):
    """Exact search: Faiss flat index, cosine (inner product of unit vectors) or L2."""

    name = "linear"

    def __init__(self, metric: str = "l2") -> None:
        self.metric = metric

    def fit(self, db, labels, images=None):
        faiss = _faiss()
        x = _prepare(db, self.metric)
        self.index = (faiss.IndexFlatIP if self.metric == "cosine" else faiss.IndexFlatL2)(
            x.shape[1])
        self.index.add(x)

    def search(self, queries, k, images=None):
        return self.index.search(_prepare(queries, self.metric), k)[1]

    def nbytes(self):
        return int(_faiss().serialize_index(self.index).nbytes)


class GenIndex(Method):
    """genindex's GenerativeIndex; reads the images through its backbone when given.
    Query parameters: ``beam_size`` (None: the index's default, ``max(k, 10)``) and
    ``order``: ``"generative"`` (the paper's ranking), ``"metric"`` (the generative
    top k ranked by exact L2 distance, what Faiss code reads) or ``"semantic"`` (the
    same candidates ranked by the cosine of the tokenizer's f_cls), and ``k_factor``
    (None: the index's), and ``fusion`` (the weight of the query's codeword cosines
    in the beam, :mod:`genindex.fusion`). ``rows``: the table rows one built index
    gives, by name (``label``, ``label + ", metric order"``, ``label + ", semantic
    order"``; with ``fusion``, ``label + ", fused order"``, the generative order at
    that weight; with ``wide`` (``beam_size`` and ``k_factor``), the semantic order
    over that many candidates), with their query arguments."""

    name = "genindex"

    def __init__(self, config=None, backbone=None, device: str = "cpu",
                 progress: bool = True, note: str | None = None,
                 label: str = "genindex", wide: dict[str, Any] | None = None,
                 fusion: float | None = None) -> None:
        self.config, self.backbone, self.device = config, backbone, device
        self.progress, self.note, self.label = progress, note, label
        self.rows = {label: {"order": "generative"},
                     f"{label}, metric order": {"order": "metric"},
                     f"{label}, semantic order": {"order": "semantic"}}
        if fusion:
            self.rows[f"{label}, fused order"] = {"order": "generative", "fusion": fusion}
        if wide is not None:  # the semantic order over more candidates
            name = f"beam {wide['beam_size']}, k_factor {wide['k_factor']:g}"
            self.rows[f"{label}, semantic order, {name}"] = {"order": "semantic", **wide}
        self.set_query_arguments()

    def fit(self, db, labels, images=None):
        from genindex import GenerativeIndex

        use_images = images is not None and self.backbone is not None
        data, backbone = (images, self.backbone) if use_images else (db, None)
        self.index = GenerativeIndex.fit(data, labels, self.config, backbone=backbone,
                                         device=self.device, progress=self.progress)

    def phases(self) -> str:
        """Seconds of the build's phases, as the index recorded them."""
        history = self.index.history
        return f"tokenizer {history.tokenizer_s:.1f} s, decoder {history.decoder_s:.1f} s"

    def f_cls(self, x: np.ndarray) -> np.ndarray:
        """The built tokenizer's f_cls (n, dim) float32 of feature vectors ``x`` (an index
        built on features, not images)."""
        import torch

        tokenizer = self.index._require_trained().tokenizer
        device = next(tokenizer.parameters()).device
        v = torch.from_numpy(np.ascontiguousarray(x, dtype="float32"))
        with torch.no_grad():
            return torch.cat([tokenizer.f_cls(chunk.to(device)).float().cpu()
                              for chunk in v.split(4096)]).numpy()

    def set_query_arguments(self, beam_size: int | None = None, order: str = "generative",
                            k_factor: float | None = None, fusion: float = 0.0) -> None:
        self.beam_size, self.order, self.k_factor = beam_size, order, k_factor
        self.fusion = fusion

    def search(self, queries, k, images=None, timings: dict[str, float] | None = None):
        """``timings``, if given, accumulates seconds per part of the search
        (``genindex.beam.TIMED_PARTS``)."""
        data = images if images is not None and self.backbone is not None else queries
        return self.index.search(data, k, beam_size=self.beam_size, order=self.order,
                                 k_factor=self.k_factor, fusion=self.fusion,
                                 timings=timings).ids

    def nbytes(self):
        with tempfile.TemporaryDirectory() as folder:
            self.index.save(Path(folder) / "index.gidx")
            return (Path(folder) / "index.gidx").stat().st_size


def timed(call, *args, **kwargs) -> tuple[Any, float]:
    start = time.perf_counter()
    result = call(*args, **kwargs)
    return result, time.perf_counter() - start

