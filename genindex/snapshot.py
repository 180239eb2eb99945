"""The immutable snapshot an index searches: its model and its items.

An index holds one :class:`Snapshot` and replaces it whole under its lock
(copy-on-write): a search reads the reference once and sees one consistent
model and item set, whatever updates run meanwhile.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .decoder import Decoder
from .store import VectorStore
from .tokenizer import SemanticTokenizer
from .trie import Trie

NO_IDS = np.zeros(0, np.int64)
NO_IDS.flags.writeable = False


class Snapshot(NamedTuple):
    """All that a search reads: replaced whole under the lock, never edited."""

    tokenizer: SemanticTokenizer
    decoder: Decoder
    trie: Trie  # every item's identifier, and its id
    vectors: VectorStore | None  # the items' feature vectors, by id (store_vectors)
    # ids added since the decoder was last trained or refreshed (sorted); see refresh
    fresh: np.ndarray = NO_IDS

    @classmethod
    def empty(cls, tokenizer: SemanticTokenizer, decoder: Decoder, d: int,
              store_vectors: bool) -> Snapshot:
        """Trained models and no items (a store for ``d``-dimensional vectors if asked)."""
        quantizer = tokenizer.quantizer
        trie = Trie.empty(quantizer.num_codebooks, quantizer.codebook_size)
        return cls(tokenizer, decoder, trie, VectorStore.empty(d) if store_vectors else None)

    def with_items_of(self, held: Snapshot | None) -> Snapshot:
        """This snapshot plus the items of ``held`` (a flat index's, or None), under the
        identifiers this tokenizer gives their stored vectors, as fresh items."""
        if held is None or not len(held.trie) or held.vectors is None:
            return self  # (no stored vectors: nothing to encode the items from)
        ids = held.trie.ids
        vectors = held.vectors.get(ids)
        device = self.tokenizer.quantizer.codebooks.device
        with torch.inference_mode():
            codes = self.tokenizer.encode_vectors(torch.from_numpy(vectors).to(device))
        return self.insert(codes.cpu().numpy(), vectors, ids, fresh=True)

    def insert(self, codes: np.ndarray, vectors: np.ndarray | None, ids: np.ndarray,
               fresh: bool) -> Snapshot:
        """This snapshot with the items ``ids`` too (``fresh``: as added after training)."""
        store = None if self.vectors is None else self.vectors.insert(ids, vectors)
        return self._replace(trie=self.trie.insert(codes, ids), vectors=store,
                             fresh=with_fresh(self.fresh, ids) if fresh else self.fresh)

    def remove(self, ids: np.ndarray) -> Snapshot:
        """This snapshot without the items ``ids`` (those absent are ignored)."""
        vectors = None if self.vectors is None else self.vectors.remove(ids)
        return self._replace(trie=self.trie.remove(ids), vectors=vectors,
                             fresh=with_fresh(self.fresh, removed=ids))

    def renumber(self, removed: np.ndarray) -> Snapshot:
        """This snapshot, whose ids are positions 0..n-1, without the items ``removed``
        and the others numbered 0..n-1 again in the same order (``faiss.IndexFlat``)."""
        gone = np.unique(np.asarray(removed, dtype=np.int64))
        kept = self.remove(gone)

        def shift(ids: np.ndarray) -> np.ndarray:
            return ids - np.searchsorted(gone, ids)

        trie = Trie(kept.trie.codes, shift(kept.trie.ids), kept.trie.codebook_size)
        vectors = None if kept.vectors is None else VectorStore(shift(kept.vectors.ids),
                                                                kept.vectors.vectors)
        return kept._replace(trie=trie, vectors=vectors, fresh=with_fresh(shift(kept.fresh)))


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
