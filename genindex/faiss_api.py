"""The parts of a Faiss index's API that Faiss client code calls, for GenerativeIndex.

:class:`FaissMethods` is a mixin of :class:`genindex.GenerativeIndex`: ``d``,
``ntotal``, ``is_trained``, ``reset``, ``metric_type``, ``nprobe`` (the default
beam size), ``reconstruct*``, ``sa_encode``/``sa_decode`` (``IndexFlat``'s codes),
``search_and_reconstruct``, ``range_search``, ``merge_from`` and the refusal of
attributes an index does not have, so that a Faiss knob is never silently
ignored (``save``/``load`` and pickling: :mod:`genindex.persistence`). Query
parameters come as keywords or as ``params``: a :class:`SearchParameters` or a
``faiss.SearchParameters`` (``sel`` becomes the filter) /
``faiss.SearchParametersIVF`` (``nprobe`` becomes the beam size).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from . import checks
from .snapshot import with_fresh

log = logging.getLogger(__name__)

METRIC_INNER_PRODUCT = 0  # Faiss's values of faiss.METRIC_INNER_PRODUCT / METRIC_L2
METRIC_L2 = 1
ORDERS = ("metric", "generative", "semantic")


@dataclass(frozen=True)
class SearchParameters:
    """genindex's query parameters for ``search(..., params=...)``; None: the default."""

    beam_size: int | None = None  # identifiers kept at each step (default: nprobe or max(k, 10))
    order: str | None = None  # "metric" (default with stored vectors), "generative", "semantic"
    k_factor: float | None = None  # candidates ranked by the metric: k * k_factor (default 1)
    fusion: float | None = None  # weight of the query's codeword cosines in the beam (0)
    filter: Any = None  # allowed ids, a boolean mask or a Faiss IDSelector


class Query(NamedTuple):
    """A search's query parameters, resolved and checked."""

    beam_size: int
    metric: str | None  # what the candidates are ranked by: "l2", "ip", "semantic"; None:
    # the generative order
    k_factor: float
    fusion: float  # weight of the codeword cosines added in the beam (genindex.fusion)
    filter: Any


class SearchAndReconstructResult(NamedTuple):
    """What ``search_and_reconstruct`` returns; unpacks as ``D, I, R``."""

    scores: np.ndarray  # (n, k) float32, as search
    ids: np.ndarray  # (n, k) int64, -1 where there is no result
    vectors: np.ndarray  # (n, k, d) float32 stored vectors, NaN where there is no result


class RangeSearchResult(NamedTuple):
    """What ``range_search`` returns; unpacks as Faiss's ``lims, D, I``."""

    lims: np.ndarray  # (n + 1,) int64: query i's results are [lims[i], lims[i + 1])
    scores: np.ndarray  # float32 metric values, best first within each query
    ids: np.ndarray  # int64


def as_metric(metric: Any, store_vectors: bool) -> str | None:
    """``metric`` ("l2", "ip" or Faiss's integer constants) as "l2" / "ip"; None without
    stored vectors, where search ranks by log-probability only."""
    if not store_vectors:
        if metric is not None:
            raise ValueError(f"metric={metric!r}: an index without stored vectors "
                             "(store_vectors=False) ranks by log-probability only")
        return None
    names = {"l2": "l2", "ip": "ip", METRIC_L2: "l2", METRIC_INNER_PRODUCT: "ip", None: "l2"}
    if isinstance(metric, bool) or not isinstance(metric, (str, int, type(None))) or (
            metric not in names):
        raise ValueError(f"metric must be 'l2', 'ip', faiss.METRIC_L2 or "
                         f"faiss.METRIC_INNER_PRODUCT, got {metric!r}")
    return names[metric]


def resolve_query(index: Any, k: int, params: Any, given: dict[str, Any]) -> Query:
    """The query parameters of one search: keywords, then ``params``, then defaults."""
    values = dict(_from_params(params))
    for name, value in given.items():
        if value is not None:
            if values.get(name) is not None:
                raise ValueError(f"{name} is given twice: as a keyword and in params")
            values[name] = value
    order = values.get("order", "metric" if index.metric is not None else "generative")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if order != "generative" and index.metric is None:
        raise ValueError(f"order={order!r} ranks by the stored vectors; this index has none "
                         "(store_vectors=False): use order='generative'")
    k_factor = checks.as_k_factor(values.get("k_factor", index.k_factor))
    beam = values.get("beam_size", index.nprobe)
    measure = {"metric": index.metric, "generative": None, "semantic": "semantic"}[order]
    fusion = checks.as_nonnegative(values.get("fusion", 0.0), "fusion")
    return Query(checks.as_beam_size(beam, k), measure, k_factor, fusion, values.get("filter"))


def _from_params(params: Any) -> dict[str, Any]:
    if params is None:
        return {}
    if isinstance(params, SearchParameters):
        return {k: v for k, v in vars(params).items() if v is not None}
    kind = type(params).__name__
    if type(params).__module__.startswith("faiss") and kind in ("SearchParameters",
                                                                "SearchParametersIVF"):
        values = {"filter": params.sel} if params.sel is not None else {}
        if kind == "SearchParametersIVF" and params.nprobe > 0:
            values["beam_size"] = int(params.nprobe)
        return values
    raise ValueError(f"params must be a genindex.SearchParameters, faiss.SearchParameters or "
                     f"faiss.SearchParametersIVF, got {kind}")


class FaissMethods:
    """Faiss's index API beyond search/add/remove (a mixin of GenerativeIndex)."""

    @property
    def d(self) -> int:
        return self._d

    @property
    def ntotal(self) -> int:
        state = self._state
        return 0 if state is None else len(state.trie)

    @property
    def is_trained(self) -> bool:
        return self._state is not None

    @property
    def is_flat(self) -> bool:
        """Whether the index was trained on too few items for models (fewer than L):
        every item has one identifier and a search ranks them all exactly (``IndexFlat``).
        ``train`` on enough items then trains the models, keeping the items."""
        state = self._state
        return state is not None and state.tokenizer.quantizer.codebook_size == 1

    def reset(self) -> None:
        """Remove every item; the trained model stays."""
        with self._lock:
            state = self._state
            if state is not None:
                self._state = state.remove(state.trie.ids)
            self._next_id = 0

    @property
    def metric_type(self) -> int:
        """Faiss's metric constant: METRIC_L2 (1) or METRIC_INNER_PRODUCT (0). Without
        stored vectors D is a log-probability, larger is better: METRIC_INNER_PRODUCT."""
        return METRIC_L2 if self.metric == "l2" else METRIC_INNER_PRODUCT

    @property
    def nprobe(self) -> int | None:
        """The default beam size (Faiss's name for the speed/recall knob), 1 to 2**31;
        None: ``max(k, 10)``. Saved with the index."""
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int | None) -> None:
        value = None if value is None else checks.as_beam_size(value, 1)
        if value is not None and value > checks.MAX_NPROBE:
            raise ValueError(f"nprobe must be at most 2**31 (a search keeps at most as many "
                             f"beams as the index has identifiers), got {value}")
        self._nprobe = value

    @property
    def k_factor(self) -> float:
        """The default share of candidates the metric order ranks: the generative top
        ``k * k_factor`` items (Faiss's ``IndexRefine.k_factor``); 1 by default. Saved."""
        return self._k_factor

    @k_factor.setter
    def k_factor(self, value: float) -> None:
        self._k_factor = checks.as_k_factor(value)

    def _take_search_defaults(self, search: dict[str, Any]) -> None:
        """A preset's default ``nprobe`` and ``k_factor``, where the caller set none."""
        self._nprobe = search["nprobe"] if self._nprobe is None else self._nprobe
        self._k_factor = search["k_factor"] if self._k_factor == 1 else self._k_factor

    def __setattr__(self, name: str, value: Any) -> None:
        if (not name.startswith("_") and name not in self.__dict__
                and not isinstance(getattr(type(self), name, None), property)
                and "_lock" in self.__dict__):
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}; setting "
                                 "it would change nothing (the beam size is nprobe)")
        object.__setattr__(self, name, value)

    # ----------------------------------------------------------- vectors
    def reconstruct(self, key: int) -> np.ndarray:
        """The stored vector (d,) of the item with id ``key``."""
        return self.reconstruct_batch(np.array([key]))[0]

    def reconstruct_n(self, i0: int, ni: int) -> np.ndarray:
        """The stored vectors (ni, d) of the ids ``i0 .. i0 + ni - 1``."""
        i0, ni = _as_count(i0, "i0"), _as_count(ni, "ni")
        return self.reconstruct_batch(np.arange(i0, i0 + ni, dtype=np.int64))

    def reconstruct_batch(self, keys: Any) -> np.ndarray:
        """The stored vectors (n, d) of the items with ids ``keys``, in that order."""
        store = self._stored_vectors("reconstruct").vectors
        keys = checks.as_ids(keys, None, distinct=False)
        missing = ~np.isin(keys, store.ids)
        if missing.any():
            raise ValueError(f"keys not in the index: {keys[missing][:10].tolist()}")
        return store.get(keys).copy()

    def search_and_reconstruct(self, x: Any, k: int, **query: Any) -> SearchAndReconstructResult:
        """``search(x, k, **query)`` and the stored vectors of its results: ``D, I, R``,
        both read from one snapshot of the index."""
        state = self._stored_vectors("search_and_reconstruct")
        scores, ids = self._search(state, x, k, **query)
        store = state.vectors
        vectors = np.full((*ids.shape, self.d), np.nan, np.float32)
        found = ids >= 0
        vectors[found] = store.get(ids[found])
        return SearchAndReconstructResult(scores, ids, vectors)

    def range_search(self, x: Any, radius: float, *, beam_size: int | None = None,
                     filter: Any = None) -> RangeSearchResult:
        """The items within ``radius`` (L2: squared distance < radius; inner product:
        > radius) among the beam's candidates: the items of the ``beam_size`` (default
        ``nprobe`` or 64) best identifiers. Faiss's ``lims, D, I``."""
        self._stored_vectors("range_search")
        if isinstance(radius, bool) or not isinstance(radius, (int, float, np.number)):
            raise TypeError(f"radius must be a number, got {type(radius).__name__}")
        beam = checks.as_beam_size(beam_size if beam_size is not None else self.nprobe or 64, 1)
        scores, ids = self.search(x, beam, beam_size=beam, order="metric", filter=filter)
        inside = (ids >= 0) & ((scores < radius) if self.metric == "l2" else (scores > radius))
        lims = np.zeros(len(ids) + 1, np.int64)
        lims[1:] = np.cumsum(inside.sum(axis=1))
        return RangeSearchResult(lims, scores[inside], ids[inside])

    # ------------------------------------------------- standalone codes
    def sa_code_size(self) -> int:
        """Bytes of one item's standalone code: its float32 vector, as ``IndexFlat``'s."""
        self._check_sa("sa_code_size")
        return 4 * self.d

    def sa_encode(self, x: Any) -> np.ndarray:
        """(n, 4 * d) uint8: the float32 bytes of the vectors the index would store for
        ``x`` (images: their backbone features), as ``IndexFlat.sa_encode``."""
        self._check_sa("sa_encode")
        return self.embed(x).view(np.uint8)

    def sa_decode(self, codes: Any) -> np.ndarray:
        """(n, d) float32: the vectors of :meth:`sa_encode`'s codes (n, 4 * d) uint8."""
        self._check_sa("sa_decode")
        codes = np.asarray(codes)
        if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != 4 * self.d:
            raise ValueError(f"codes must be a uint8 array (n, {4 * self.d}) (sa_code_size "
                             f"bytes a row), got {codes.dtype} {codes.shape}")
        return np.ascontiguousarray(codes).view(np.float32).copy()

    def _check_sa(self, method: str) -> None:
        if not self.config.store_vectors:
            raise ValueError(f"{method}: the standalone code of an item is its stored vector; "
                             "this index stores none (IndexConfig(store_vectors=False))")

    def _stored_vectors(self, method: str):
        """The index's snapshot, read once, checked to hold stored vectors."""
        state = self._require_trained()
        if state.vectors is None:
            raise ValueError(f"{method} needs the stored vectors; this index has none "
                             "(IndexConfig(store_vectors=False))")
        return state

    # ----------------------------------------------------------- merging
    def merge_from(self, other: Any, add_id: int = 0) -> None:
        """Move the items of ``other`` into this index, as Faiss does (``other`` is left
        empty). Both must share one trained model (same weights), metric and id rule.
        Ids: appended after this index's (positions), or kept plus ``add_id`` (id_map)."""
        if not isinstance(other, type(self)):
            raise TypeError(f"merge_from takes a {type(self).__name__}, got "
                            f"{type(other).__name__}")
        if other is self:
            raise ValueError("merge_from: an index cannot merge itself")
        first, second = sorted((self, other), key=id)  # one lock order: no two merges deadlock
        with first._lock, second._lock:
            state, theirs = self._require_trained(), other._require_trained()
            self._check_mergeable(other, state, theirs, add_id)
            ids = checks.as_add_id(len(state.trie) if not self.id_map else add_id,
                                   theirs.trie.ids)
            if self.id_map and state.trie.contains(ids).any():
                raise ValueError("merge_from: the other index holds ids this one has "
                                 f"(first: {ids[state.trie.contains(ids)][:5].tolist()})")
            vectors = None if theirs.vectors is None else theirs.vectors.get(theirs.trie.ids)
            merged = state.insert(theirs.trie.codes, vectors, ids, fresh=False)
            fresh = ids[np.isin(theirs.trie.ids, theirs.fresh)]
            self._state = merged._replace(fresh=with_fresh(merged.fresh, fresh))
            self._next_id = max(self._next_id, int(ids.max(initial=-1)) + 1)
            other.reset()

    def _check_mergeable(self, other: Any, state: Any, theirs: Any, add_id: int) -> None:
        """Refuse, with the reason, two indexes that do not share one trained model."""
        reasons = []
        if (self.d, self.metric, self.id_map) != (other.d, other.metric, other.id_map):
            reasons.append("their d, metric or id rule differ")
        if not self.id_map and (isinstance(add_id, bool) or add_id != 0):
            reasons.append("add_id applies to id_map indexes only")
        if self.config != other.config or not _same_weights(state, theirs):
            reasons.append("they were not trained as one model (config or weights differ)")
        if reasons:
            raise ValueError(f"merge_from: {'; '.join(reasons)}")


def _as_count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def _same_weights(a: Any, b: Any) -> bool:
    if a.tokenizer is b.tokenizer and a.decoder is b.decoder:
        return True
    pairs = [(a.tokenizer, b.tokenizer), (a.decoder, b.decoder)]
    for one, two in pairs:
        first, second = one.state_dict(), two.state_dict()
        if first.keys() != second.keys() or not all(
                torch.equal(first[k].cpu(), second[k].cpu()) for k in first):
            return False
    return True
