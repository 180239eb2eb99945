"""GenerativeIndex: IRGen behind the API of a Faiss index.

>>> index = GenerativeIndex.fit(xb, labels)        # or GenerativeIndex(d) + train + add
>>> D, I = index.search(xq, k=10)                  # D: log-probabilities, I: int64 ids

``D`` is float32 (n, k), larger is better; ``I`` is int64 (n, k) with ``-1``
(and ``D = -inf``) where a query has fewer than k results.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, NamedTuple

import numpy as np
import torch

from . import checks
from .beam import beam_search, top_items
from .config import IndexConfig
from .decoder import Decoder
from .persist import IndexFormatError, read_folder, write_folder
from .store import VectorStore
from .tokenizer import SemanticTokenizer
from .train import PartnerSampler, TrainHistory, train_decoder, train_tokenizer
from .trie import Trie

log = logging.getLogger(__name__)
_SEARCH_CHUNK = 1024  # queries decoded together; bounds memory for big batches


class SearchResult(NamedTuple):
    """What :meth:`GenerativeIndex.search` returns; unpacks as ``D, I``."""

    scores: np.ndarray  # (n, k) float32 log-probability of each result's identifier
    ids: np.ndarray  # (n, k) int64 item ids, -1 where there is no result


class _State(NamedTuple):
    """All that a search reads: replaced whole under the lock, never edited."""

    tokenizer: SemanticTokenizer
    decoder: Decoder
    trie: Trie
    vectors: VectorStore | None


class GenerativeIndex:
    """A generative retrieval index over d-dimensional vectors.

    ``search`` may run from many threads at once. Updates (``train``, ``add``,
    ``add_with_ids``, ``remove_ids``, ``reset``) take a lock and publish a new
    immutable snapshot of the model and items (copy-on-write), so a search
    sees the index before or after an update, never a mix.
    """

    def __init__(self, d: int, config: IndexConfig | None = None) -> None:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d <= 0:
            raise ValueError(f"d must be a positive integer, got {d!r}")
        if config is not None and not isinstance(config, IndexConfig):
            raise TypeError(f"config must be an IndexConfig, got {type(config).__name__}")
        self._d = int(d)
        self.config = config or IndexConfig()
        self.history: TrainHistory | None = None
        self.device = torch.device("cpu")
        self._state: _State | None = None
        self._next_id = 0
        self._lock = threading.RLock()

    # -------------------------------------------------------------- building
    @classmethod
    def fit(cls, x: Any, labels: Any = None, config: IndexConfig | None = None, *,
            device: str | torch.device | None = None, progress: bool = True) -> GenerativeIndex:
        """Train on ``x`` (n, d) with optional class ``labels``, then add ``x`` (ids 0..n-1)."""
        x = checks.as_vectors(x, _dim_of(x))
        index = cls(x.shape[1], config)
        if device is not None:
            index.to(device)
        index.train(x, labels, progress=progress)
        index.add(x)
        return index

    def train(self, x: Any, labels: Any = None, *, progress: bool = True) -> TrainHistory:
        """Train the tokenizer, then the decoder, on ``x``; items are added separately.

        With labels, the decoder learns to write the identifier of a random
        item of the query's class (the paper). Without, that of one of its
        nearest neighbours.
        """
        x = checks.as_vectors(x, self.d)
        y = None if labels is None else checks.as_labels(labels, len(x))
        if len(x) < 2:
            raise ValueError(f"x must have at least 2 rows to train on, got {len(x)}")
        if self.ntotal:
            raise ValueError(f"the index holds {self.ntotal} items, whose identifiers a new "
                             "tokenizer would invalidate: call reset() before train()")
        config, device = self.config, self.device
        xt = _tensor(x, device)
        yt = None if y is None else _tensor(y, device)
        generator = torch.Generator().manual_seed(config.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            tokenizer, tokenizer_loss = train_tokenizer(xt, yt, config, generator, progress)
            codes = tokenizer.encode(xt)
            decoder = Decoder(config.decoder, tokenizer.quantizer.codebook_size,
                              tokenizer.quantizer.num_codebooks, self.d).to(device)
            partners = PartnerSampler(xt, yt, config.decoder.neighbors)
            decoder_loss = train_decoder(decoder, xt, codes, partners, config, generator,
                                         progress)
        quantizer = tokenizer.quantizer
        trie = Trie.empty(quantizer.num_codebooks, quantizer.codebook_size)
        vectors = VectorStore.empty(self.d) if config.store_vectors else None
        with self._lock:
            self._state = _State(tokenizer, decoder, trie, vectors)
            self.history = TrainHistory(tokenizer_loss, decoder_loss)
        return self.history

    def add(self, x: Any) -> None:
        """Add items with consecutive new ids (after the largest id ever used)."""
        x = checks.as_vectors(x, self.d)
        with self._lock:
            self._require_trained()
            self._insert(x, np.arange(self._next_id, self._next_id + len(x), dtype=np.int64))

    def add_with_ids(self, x: Any, ids: Any) -> None:
        """Add items under the given distinct int64 ids, none of them already present."""
        x = checks.as_vectors(x, self.d)
        ids = checks.as_ids(ids, len(x), nonnegative=True)
        with self._lock:
            self._require_trained()
            present = self._state.trie.contains(ids)
            if present.any():
                raise ValueError(f"ids already in the index: {ids[present][:10].tolist()}")
            self._insert(x, ids)

    def remove_ids(self, ids: Any) -> int:
        """Remove the items with these ids; returns how many were present."""
        ids = np.unique(checks.as_ids(ids, distinct=False))
        with self._lock:
            state = self._require_trained()
            removed = int(state.trie.contains(ids).sum())
            if removed:
                vectors = None if state.vectors is None else state.vectors.remove(ids)
                self._state = state._replace(trie=state.trie.remove(ids), vectors=vectors)
            return removed

    def reset(self) -> None:
        """Remove every item; the trained model stays."""
        with self._lock:
            state = self._state
            if state is not None:
                vectors = None if state.vectors is None else VectorStore.empty(self.d)
                self._state = state._replace(trie=state.trie.remove(state.trie.ids),
                                             vectors=vectors)
            self._next_id = 0

    # ---------------------------------------------------------------- search
    def search(self, x: Any, k: int, *, beam_size: int | None = None) -> SearchResult:
        """The ``k`` best items for each query row of ``x``: ``D, I = index.search(x, k)``.

        ``beam_size`` (default ``max(k, 10)``) is the number of identifiers kept
        at each step. With ``beam_size >= k`` every row is full whenever the
        index holds at least k items; with fewer beams a row may end in ``-1``.
        """
        state = self._require_trained()
        x = checks.as_vectors(x, self.d)
        k = checks.as_k(k)
        beam_size = checks.as_beam_size(beam_size, k)
        scores = np.empty((len(x), k), np.float32)
        ids = np.empty((len(x), k), np.int64)
        with torch.inference_mode():
            for start in range(0, len(x), _SEARCH_CHUNK):
                queries = _tensor(x[start:start + _SEARCH_CHUNK], self.device)
                beams = beam_search(state.decoder, queries, state.trie, beam_size)
                distance = None
                if state.vectors is not None:
                    distance = state.vectors.distance(self.device, queries)
                s, i = top_items(state.trie, beams, k, distance)
                scores[start:start + len(queries)] = s.cpu().numpy()
                ids[start:start + len(queries)] = i.cpu().numpy()
        return SearchResult(scores, ids)

    def encode(self, x: Any) -> np.ndarray:
        """The identifier (n, M) the tokenizer gives each row of ``x``."""
        tokenizer = self._require_trained().tokenizer
        x = checks.as_vectors(x, self.d)
        with torch.inference_mode():
            return tokenizer.encode(_tensor(x, self.device)).cpu().numpy()

    # ------------------------------------------------------------ properties
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
    def ids(self) -> np.ndarray:
        """The ids of all items, in identifier order."""
        state = self._state
        return np.zeros(0, np.int64) if state is None else state.trie.ids.copy()

    @property
    def tokenizer(self) -> SemanticTokenizer | None:
        return None if self._state is None else self._state.tokenizer

    @property
    def decoder(self) -> Decoder | None:
        return None if self._state is None else self._state.decoder

    def to(self, device: str | torch.device) -> GenerativeIndex:
        """Run training and search on ``device`` (e.g. ``"cuda"``); not during a search."""
        with self._lock:
            self.device = torch.device(device)
            if self._state is not None:
                self._state.tokenizer.to(self.device)
                self._state.decoder.to(self.device)
        return self

    def __repr__(self) -> str:
        return (f"GenerativeIndex(d={self.d}, ntotal={self.ntotal}, "
                f"is_trained={self.is_trained})")

    # ----------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the index to the folder ``path`` (atomically; see genindex.persist)."""
        with self._lock:
            state, next_id = self._require_trained(), self._next_id
        tensors = {**{f"tokenizer.{k}": v for k, v in state.tokenizer.state_dict().items()},
                   **{f"decoder.{k}": v for k, v in state.decoder.state_dict().items()}}
        arrays = {"ids": state.trie.ids, "codes": state.trie.codes}
        if state.vectors is not None:
            arrays["vector_ids"], arrays["vectors"] = state.vectors.ids, state.vectors.vectors
        body = {"d": self.d, "config": self.config.to_dict(), "next_id": next_id,
                "num_classes": state.tokenizer.num_classes,
                "codebook_size": state.tokenizer.quantizer.codebook_size}
        write_folder(path, body, tensors, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu"
             ) -> GenerativeIndex:
        """Read an index written by :meth:`save`; never unpickles anything."""
        body, tensors, arrays = read_folder(path)
        try:
            index = cls(body["d"], IndexConfig.from_dict(body["config"]))
            index._restore(body, tensors, arrays)
        except IndexFormatError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise IndexFormatError(f"{path} does not hold a consistent index: {error}") from None
        return index.to(device)

    # --------------------------------------------------------------- private
    def _restore(self, body: dict, tensors: dict, arrays: dict) -> None:
        config = self.config
        tokenizer = SemanticTokenizer(self.d, config.tokenizer, body["num_classes"],
                                      body["codebook_size"])
        decoder = Decoder(config.decoder, body["codebook_size"],
                          config.tokenizer.num_codebooks, self.d)
        for prefix, module in (("tokenizer.", tokenizer), ("decoder.", decoder)):
            module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items()
                                    if k.startswith(prefix)}, strict=True)
            module.eval()
        trie = Trie(arrays["codes"], arrays["ids"], body["codebook_size"])
        vectors = None
        if config.store_vectors:
            vectors = VectorStore(arrays["vector_ids"], arrays["vectors"])
            if not np.array_equal(vectors.ids, np.sort(trie.ids)):
                raise IndexFormatError("the stored vectors do not match the stored ids")
        self._state = _State(tokenizer, decoder, trie, vectors)
        self._next_id = int(body["next_id"])

    def _insert(self, x: np.ndarray, ids: np.ndarray) -> None:
        """Encode and insert checked rows (the caller holds the lock)."""
        state = self._state
        with torch.inference_mode():
            codes = state.tokenizer.encode(_tensor(x, self.device)).cpu().numpy()
        vectors = None if state.vectors is None else state.vectors.insert(ids, x)
        self._state = state._replace(trie=state.trie.insert(codes, ids), vectors=vectors)
        self._next_id = max(self._next_id, int(ids.max()) + 1)

    def _require_trained(self) -> _State:
        state = self._state
        if state is None:
            raise RuntimeError("the index is not trained: call index.train(x, labels) "
                               "or build it with GenerativeIndex.fit(x, labels)")
        return state


def _tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A tensor on ``device`` that shares a writable array's memory on the CPU."""
    return torch.from_numpy(array if array.flags.writeable else array.copy()).to(device)


def _dim_of(x: Any) -> int:
    shape = getattr(x, "shape", None) or np.shape(x)
    if len(shape) != 2:
        raise ValueError(f"x must be a 2-D array of shape (n, d), got shape {tuple(shape)}")
    return int(shape[1])
