"""The immutable snapshot an index searches, its checked restore, and filtered tries.

An index holds one :class:`State` and replaces it whole under its lock
(copy-on-write): a search reads the reference once and sees one consistent
model and item set, whatever updates run meanwhile.
"""

from __future__ import annotations

import copy
import hashlib
import threading
import weakref
from collections import OrderedDict
from typing import Any, NamedTuple

import numpy as np
import torch

from .backbones import Backbone, get_backbone
from .config import IndexConfig
from .decoder import Decoder
from .persist import IndexFormatError
from .store import VectorStore
from .tokenizer import SemanticTokenizer
from .trie import Trie

NO_IDS = np.zeros(0, np.int64)
NO_IDS.flags.writeable = False


class State(NamedTuple):
    """All that a search reads: replaced whole under the lock, never edited."""

    tokenizer: SemanticTokenizer
    decoder: Decoder
    trie: Trie
    vectors: VectorStore | None
    # ids added since the decoder was last trained or refreshed (sorted); see refresh
    fresh: np.ndarray = NO_IDS


def with_fresh(fresh: np.ndarray, added: np.ndarray | None = None,
               removed: np.ndarray | None = None) -> np.ndarray:
    """``fresh`` plus ``added`` minus ``removed``, sorted, read-only."""
    if added is not None:
        fresh = np.union1d(fresh, added)
    if removed is not None:
        fresh = np.setdiff1d(fresh, removed)
    fresh = np.asarray(fresh, dtype=np.int64)
    fresh.flags.writeable = False
    return fresh


def rows_of(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Positions of ``ids`` (all present) in the sorted array ``sorted_ids``."""
    return np.searchsorted(sorted_ids, ids)


def codes_of(trie: Trie, ids: np.ndarray) -> np.ndarray:
    """The identifiers (n, M) of ``ids`` (all present in ``trie``)."""
    order = np.argsort(trie.ids, kind="stable")
    return np.asarray(trie.codes)[order[np.searchsorted(trie.ids[order], ids)]]


def restore(body: dict[str, Any], arrays: dict[str, np.ndarray], tokenizer: SemanticTokenizer,
            decoder: Decoder, store_vectors: bool, d: int) -> tuple[State, int]:
    """The state and next id of a saved index, every array checked against the others.

    Memory-mapped ``codes`` and ``vectors`` stay mapped (see :func:`_keep_mapped`).
    """
    ids, codes = _array(arrays, "ids", 1, "i"), _array(arrays, "codes", 2, "iu")
    num_levels = tokenizer.quantizer.num_codebooks
    if codes.shape != (len(ids), num_levels):
        raise IndexFormatError(f"the code table has shape {codes.shape}, expected "
                               f"({len(ids)}, {num_levels})")
    if ids.size and ids.min() < 0:
        raise IndexFormatError("the stored ids include negative values")
    trie = _keep_mapped(Trie(codes, ids, int(body["codebook_size"])), "codes", codes)
    next_id = body["next_id"]
    if isinstance(next_id, bool) or not isinstance(next_id, int) or next_id < 0 or (
            ids.size and next_id <= ids.max()):
        raise IndexFormatError(f"next_id={next_id!r} is not above every stored id")
    vectors = None
    if store_vectors:
        vector_ids = _array(arrays, "vector_ids", 1, "i")
        stored = _array(arrays, "vectors", 2, "f")
        if stored.shape != (len(vector_ids), d) or not np.array_equal(vector_ids, np.sort(ids)):
            raise IndexFormatError("the stored vectors do not match the stored ids")
        if not np.isfinite(stored).all():
            raise IndexFormatError("the stored vectors hold NaN or Inf")
        vectors = _keep_mapped(VectorStore(vector_ids, stored), "vectors", stored)
    fresh = arrays.get("fresh_ids", NO_IDS)
    if fresh.ndim != 1 or fresh.dtype.kind != "i" or not np.isin(fresh, ids).all():
        raise IndexFormatError("the fresh ids are not stored ids")
    return State(tokenizer, decoder, trie, vectors, with_fresh(fresh)), next_id


def snapshot_files(state: State, backbone: Backbone | None, end_to_end: bool
                   ) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """The tensors and arrays :meth:`GenerativeIndex.save` writes.

    A frozen backbone is saved by name (its weights come back from the same
    source); a randomly initialised one with its weights.
    """
    tensors = {**{f"tokenizer.{k}": v for k, v in state.tokenizer.state_dict().items()},
               **{f"decoder.{k}": v for k, v in state.decoder.state_dict().items()}}
    if backbone is not None and not end_to_end and not backbone.pretrained_weights:
        tensors.update({f"backbone.{k}": v for k, v in backbone.state_dict().items()})
    arrays = {"ids": state.trie.ids, "codes": state.trie.codes, "fresh_ids": state.fresh}
    if state.vectors is not None:
        arrays["vector_ids"], arrays["vectors"] = state.vectors.ids, state.vectors.vectors
    return tensors, arrays


def _array(arrays: dict[str, np.ndarray], name: str, ndim: int, kinds: str) -> np.ndarray:
    if name not in arrays:
        raise IndexFormatError(f"the index has no {name} array")
    array = arrays[name]
    if array.ndim != ndim or array.dtype.kind not in kinds:
        raise IndexFormatError(f"the {name} array has shape {array.shape} and dtype "
                               f"{array.dtype}; expected {ndim} dimensions")
    return array


def _keep_mapped(value: Any, attribute: str, mapped: np.ndarray):
    """Let ``value`` keep the memory-mapped array it was built from instead of its copy.

    Saved tables are already in the order the trie and the store keep, so the
    copy equals the mapping: swapping frees the copy and leaves the data on
    disk, paged in on use. Skipped when the two differ in any way.
    """
    if isinstance(mapped, np.memmap):
        current = getattr(value, attribute)
        if (current.dtype == mapped.dtype and current.shape == mapped.shape
                and np.array_equal(current, mapped)):
            setattr(value, attribute, mapped)
    return value


class FilterCache:
    """Tries restricted to the allowed ids of a search filter, the last few kept.

    An entry holds its source trie weakly: once an update replaces that trie,
    the entry is dropped at the next filtered search.
    """

    def __init__(self, size: int = 4) -> None:
        self._entries: OrderedDict[tuple, tuple[weakref.ref, Trie]] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def restrict(self, trie: Trie, allowed: np.ndarray) -> Trie:
        """``trie`` without the items whose ids are not in ``allowed`` (sorted ids)."""
        key = (id(trie), len(allowed), hashlib.sha256(allowed.tobytes()).digest())
        with self._lock:
            for stale in [k for k, (source, _) in self._entries.items() if source() is None]:
                del self._entries[stale]
            hit = self._entries.get(key)
            if hit is not None and hit[0]() is trie:
                self._entries.move_to_end(key)
                return hit[1]
        restricted = trie.remove(trie.ids[~np.isin(trie.ids, allowed)])
        with self._lock:
            self._entries[key] = (weakref.ref(trie), restricted)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return restricted


def saved_backbone(spec: dict | None, config: IndexConfig, tokenizer: SemanticTokenizer,
                    tensors: dict[str, torch.Tensor]) -> Backbone | None:
    """The backbone of a saved index: the fine-tuned encoder end to end, else by name."""
    if spec is None:
        return None
    if config.end_to_end:
        return copy.deepcopy(tokenizer.encoder)
    weights = {k[len("backbone."):]: v for k, v in tensors.items() if k.startswith("backbone.")}
    backbone = get_backbone(spec, weights=not weights)
    if weights:
        backbone.load_state_dict(weights, strict=True)
    return backbone.eval()
