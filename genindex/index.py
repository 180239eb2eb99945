"""GenerativeIndex: IRGen behind the API of a Faiss index.

>>> index = GenerativeIndex.fit(xb, labels)        # or GenerativeIndex(d) + train + add
>>> D, I = index.search(xq, k=10)                  # D: squared L2, ascending; I: int64 ids
>>> index = GenerativeIndex.fit(paths, labels, backbone="efficientnet-lite0")
>>> D, I = index.search(query_paths, k=10)         # images in, ids out

``D`` (n, k) float32 is in the metric's units, as Faiss's: squared L2, ascending,
or inner products, descending; with ``order="generative"`` or no stored vectors,
log-probabilities, descending; with ``order="semantic"``, f_cls cosines,
descending. ``I`` (n, k) int64 is ``-1`` past the results (``D``:
:data:`genindex.beam.PADDING`). Ids are positions,
renumbered by ``remove_ids`` (``faiss.IndexFlat``), or with ``id_map=True``
those given (``faiss.IndexIDMap2``). With a backbone, data is images
(:mod:`genindex.inputs`) or, unless end to end, the backbone's features.

Every bad argument is refused with a ValueError or TypeError that names it,
before anything changes: a failed call leaves the index as it was.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, NamedTuple

import numpy as np
import torch

from . import checks, faiss_api
from .backbones import Backbone, get_backbone
from .beam import search, search_dtype
from .cache import FeatureCache
from .checks import NotTrainedError, default_device
from .config import PRESET_TABLE, IndexConfig
from .decoder import Decoder
from .flat import models_for
from .inputs import ModelInputs, model_inputs, open_cache
from .persistence import Persistence, unpickle
from .refresh import RefreshHistory, refresh
from .snapshot import NO_IDS, Snapshot
from .tokenizer import SemanticTokenizer
from .train import Models, TrainHistory
from .trie import FilterCache

log = logging.getLogger(__name__)


class SearchResult(NamedTuple):
    """What :meth:`GenerativeIndex.search` returns; unpacks as ``D, I``."""

    scores: np.ndarray  # (n, k) float32 log-probability of each result's identifier
    ids: np.ndarray  # (n, k) int64 item ids, -1 where there is no result


class GenerativeIndex(faiss_api.FaissMethods, Persistence):
    """A generative retrieval index over d-dimensional vectors or images.

    ``search`` may run from many threads at once. Updates (``train``, ``add``,
    ``add_with_ids``, ``remove_ids``, ``merge_from``, ``reset``, ``refresh``) take a
    lock and publish a new immutable snapshot of the model and items (copy-on-write):
    a search sees the index before or after an update, never a mix, and never waits
    for one. Updates wait for each other (``add`` during ``train``: for the new models).
    """

    def __init__(self, d: int | None = None, config: IndexConfig | None = None, *,
                 metric: str | int | None = None, id_map: bool = False,
                 backbone: str | Backbone | None = None,
                 cache_dir: str | os.PathLike | None = None, cache: bool = True) -> None:
        """``d``: the vector dimension (with a backbone, its feature size by default).

        ``metric``: ``"l2"`` (default) or ``"ip"`` (or Faiss's constants), the
        units and order of ``D``; none without stored vectors. ``id_map``: ids
        given to ``add_with_ids``, kept (``faiss.IndexIDMap2``); default, ids
        are positions (``faiss.IndexFlat``). ``backbone``: see
        :mod:`genindex.backbones`. ``cache_dir``: where image features are cached
        (default: the user's cache folder, see :mod:`genindex.cache`);
        ``cache=False``: no feature cache.
        """
        if config is not None and not isinstance(config, IndexConfig):
            raise TypeError(f"config must be an IndexConfig, got {type(config).__name__}")
        if not isinstance(id_map, bool):
            raise TypeError(f"id_map must be True or False, got {id_map!r}")
        self.backbone = None if backbone is None else get_backbone(backbone)
        self._d = checks.as_dim(d, None if self.backbone is None else self.backbone.feature_dim)
        checks.check_cache(cache_dir, cache)
        self.config = config or IndexConfig()
        self._preset = config is None  # trained without labels: IndexConfig.unlabelled
        self.metric = faiss_api.as_metric(metric, self.config.store_vectors)
        self.id_map, self.verbose, self._nprobe, self._k_factor = id_map, False, None, 1.0
        self.cache_dir, self.cache = cache_dir, cache
        self._cache: FeatureCache | None = None
        self.history: TrainHistory | None = None
        self.device = torch.device("cpu")
        self._state: Snapshot | None = None
        self._next_id, self._refreshes = 0, 0
        self._filters = FilterCache()
        self._lock = threading.RLock()

    # -------------------------------------------------------------- building
    @classmethod
    def fit(cls, x: Any, labels: Any = None, config: IndexConfig | None = None, *,
            metric: str | int | None = None, id_map: bool = False,
            backbone: str | Backbone | None = None, device: str | torch.device | None = None,
            cache_dir: str | os.PathLike | None = None, cache: bool = True,
            progress: bool = True) -> GenerativeIndex:
        """Train on ``x`` with optional class ``labels``, then add ``x`` (ids 0..n-1).

        ``x``: vectors (n, d), or images with a ``backbone``. ``device``: where
        to train and search (default: CUDA when present, else the CPU). The
        other arguments are the constructor's.
        """
        if backbone is None:
            x = checks.as_vectors(x, checks.dim_of(x))
        index = cls(None if backbone else x.shape[1], config, metric=metric, id_map=id_map,
                    backbone=backbone, cache_dir=cache_dir, cache=cache)
        index.to(default_device() if device is None else device)
        inputs = index._inputs(x, progress)
        models = index._train(inputs, labels, progress)
        vectors = models.vectors.float().cpu().numpy() if inputs.vectors is None else inputs.vectors
        with index._lock:  # the codes and vectors training computed: no second pass
            index._state = index._state.insert(models.codes.cpu().numpy(), vectors,
                                               np.arange(len(vectors), dtype=np.int64), fresh=False)
            index._next_id = len(inputs.tensor)
        return index

    def train(self, x: Any, labels: Any = None, *, progress: bool = True) -> TrainHistory:
        """Train the tokenizer, then the decoder, on ``x``; items are added separately.

        With labels, the decoder learns to write the identifier of a random
        item of the query's class (the paper). Without, that of one of its
        nearest neighbours.
        """
        return self._train(self._inputs(x, progress), labels, progress).history

    def add(self, x: Any, *, progress: bool | None = None) -> None:
        """Add items with consecutive new ids (after the largest id ever used).

        The decoder is not retrained: see :meth:`refresh`.
        """
        self._require_trained()
        inputs = self._inputs(x, self.verbose if progress is None else progress)
        with self._lock:
            self._insert(inputs, checks.next_ids(self._next_id, len(inputs.tensor)))

    def add_with_ids(self, x: Any, ids: Any, *, progress: bool | None = None) -> None:
        """Add items under the given distinct int64 ids, none of them already present
        (an ``id_map=True`` index only, as Faiss's ``IndexIDMap2``)."""
        if not self.id_map:
            raise ValueError("add_with_ids: this index numbers items by position, as "
                             "faiss.IndexFlat; build it with id_map=True to give ids")
        self._require_trained()
        inputs = self._inputs(x, self.verbose if progress is None else progress)
        ids = checks.as_ids(ids, len(inputs.tensor), nonnegative=True)
        with self._lock:
            present = self._state.trie.contains(ids)
            if present.any():
                raise ValueError(f"ids already in the index: {ids[present][:10].tolist()}")
            self._insert(inputs, ids)

    def remove_ids(self, ids: Any) -> int:
        """Remove the items with these ids (an id array or a Faiss ``IDSelector``);
        returns how many were present. Positions (no ``id_map``) are renumbered
        0..n-1 in order, as ``faiss.IndexFlat`` does."""
        with self._lock:
            state = self._require_trained()
            ids = checks.as_removal(ids, state.trie.ids)
            present = ids[state.trie.contains(ids)]
            if len(present) and self.id_map:
                self._state = state.remove(present)
            elif len(present):
                self._state = state.renumber(present)
                self._next_id = len(self._state.trie)
            return len(present)

    # ---------------------------------------------------------------- search
    def search(self, x: Any, k: int, *, params: Any = None, D: np.ndarray | None = None,
               I: np.ndarray | None = None, beam_size: int | None = None,  # noqa: E741
               order: str | None = None, k_factor: float | None = None, filter: Any = None,
               fusion: float | None = None, dtype: Any = None,
               timings: dict[str, float] | None = None, progress: bool | None = None
               ) -> SearchResult:
        """The ``k`` best items for each query row of ``x``: ``D, I = index.search(x, k)``.

        ``order``: ``"metric"`` (default with stored vectors), the generative top
        ``k * k_factor`` items ranked by exact distance, ``D`` in metric units;
        ``"generative"``, the paper's order, ``D`` log-probabilities; ``"semantic"``,
        the same candidates ranked by the cosine of their f_cls (the tokenizer's
        feature, which identifiers quantize) to the query's, ``D`` cosines, descending.
        ``beam_size`` (default ``nprobe`` or ``max(k, 10)``): identifiers kept per
        step. ``fusion`` (default 0): weight of the query's codeword cosines in the
        beam (:mod:`genindex.fusion`). ``k`` may exceed the items (padded); a result
        too big for free memory is refused. ``filter``: allowed ids, a boolean mask
        by id or a Faiss ``IDSelector``. ``params``: these as a ``SearchParameters``
        or ``faiss.SearchParameters``. ``D``, ``I``: output arrays, as Faiss's.
        ``dtype``: decoder precision, float32 (exact), bfloat16, float16; None: the config's
        (``"auto"``: bfloat16 where native). ``timings``: seconds per part (beam.TIMED_PARTS).
        """
        return self._search(self._require_trained(), x, k, params=params, D=D, I=I,
                            beam_size=beam_size, order=order, k_factor=k_factor, filter=filter,
                            fusion=fusion, dtype=dtype, timings=timings, progress=progress)

    def _search(self, state: Snapshot, x: Any, k: int, *, params: Any = None,
                D: np.ndarray | None = None, I: np.ndarray | None = None,  # noqa: E741
                beam_size: int | None = None, order: str | None = None,
                k_factor: float | None = None, filter: Any = None, fusion: float | None = None,
                dtype: Any = None, timings: dict[str, float] | None = None,
                progress: bool | None = None) -> SearchResult:
        """:meth:`search` on the snapshot ``state``, read once by the caller."""
        k = checks.as_k(k)
        checks.check_result_size(1, k)  # before any work: even one row would not fit
        query = faiss_api.resolve_query(self, k, params, {
            "beam_size": beam_size, "order": order, "k_factor": k_factor, "filter": filter,
            "fusion": fusion})
        dtype = search_dtype(dtype, self.device, self.config.precision)
        checks.check_timings(timings)
        trie = None
        if query.filter is not None:
            trie = self._filters.restrict(state.trie, checks.as_filter(query.filter,
                                                                       state.trie.ids))
        progress = self.verbose if progress is None else progress
        queries = self._inputs(x, progress).tensor
        checks.check_result_size(len(queries), k)
        out = checks.as_outputs(D, I, len(queries), k)
        scores, ids = search(state, queries, k, query.beam_size, metric=query.metric,
                             k_factor=query.k_factor, fusion=query.fusion, trie=trie, dtype=dtype,
                             timings=timings, progress=progress)
        if out is None:
            return SearchResult(scores, ids)
        out[0][...], out[1][...] = scores, ids
        return SearchResult(*out)

    def refresh(self, labels: Any = None, ids: Any = None, *, steps: int | None = None,
                replay: float = 1.0, progress: bool = False) -> RefreshHistory:
        """Fine-tune the decoder on the items added since it was last trained or refreshed.

        ``add`` gives new items identifiers the decoder was never taught to write;
        ``refresh`` teaches them (:mod:`genindex.refresh`), replaying ``replay`` times
        as many old items. ``labels``: classes of the items ``ids`` (default: every
        item, by id), every fresh item among them; without labels, pairs come from
        nearest neighbours. ``steps``: optimizer steps (default: about 10 passes).
        Needs stored vectors, not end to end. A label new since the last training
        is a new class, whose items move to a leaf of their own. Searches run on
        the old decoder until the new one replaces it; other updates wait.
        """
        with self._lock:
            state = self._require_trained()
            if state.vectors is None or self.end_to_end:
                raise ValueError("refresh fine-tunes on the stored feature vectors: it needs "
                                 "IndexConfig(store_vectors=True) and end_to_end=False")
            refreshed, history = refresh(state, self.config, labels, ids, steps=steps,
                                         replay=replay, refreshes=self._refreshes,
                                         device=self.device, progress=progress)
            if history.items:
                self._state = refreshed._replace(fresh=NO_IDS)
                self._refreshes += 1
        return history

    @property
    def fresh_ids(self) -> np.ndarray:
        """Ids added since the decoder was last trained or refreshed, sorted."""
        state = self._state
        return NO_IDS.copy() if state is None else state.fresh.copy()

    def identifiers(self, ids: Any) -> np.ndarray:
        """The identifiers (n, M) int64 the index holds for the items ``ids``: what
        :meth:`encode` gave them when added, unless a refresh moved them."""
        state = self._require_trained()
        ids = checks.as_ids(ids)
        present = state.trie.contains(ids)
        if not present.all():
            raise ValueError(f"ids: not in the index: {ids[~present][:10].tolist()}")
        return state.trie.codes_of(ids).astype(np.int64)

    def encode(self, x: Any) -> np.ndarray:
        """The identifier (n, M) the tokenizer gives each input."""
        tokenizer, inputs = self._require_trained().tokenizer, self._inputs(x, False).tensor
        with torch.inference_mode():
            return tokenizer.encode(inputs).cpu().numpy()

    def embed(self, x: Any, *, progress: bool = False) -> np.ndarray:
        """The global feature vectors (n, d) of the inputs, as the index stores them:
        a new float32 array (vectors given as such are copied)."""
        inputs = self._inputs(x, progress)
        if inputs.vectors is not None:
            return inputs.vectors.copy()
        with torch.inference_mode():
            tokenizer = self._require_trained().tokenizer
            return tokenizer.feature_vectors(inputs.tensor).float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        """Sizes, shapes, models and configuration of the index, as plain values."""
        state = self._require_trained()
        quantizer = state.tokenizer.quantizer
        return {"ntotal": len(state.trie), "d": self.d, "num_codebooks": quantizer.num_codebooks,
                "codebook_size": quantizer.codebook_size,
                "decoder_layers": self.config.decoder.n_layer,
                "decoder_parameters": sum(p.numel() for p in state.decoder.parameters()),
                "tokenizer_parameters": sum(p.numel() for p in state.tokenizer.parameters()),
                "backbone": None if self.backbone is None else self.backbone.spec(),
                "end_to_end": self.end_to_end, "store_vectors": self.config.store_vectors,
                "config": self.config.to_dict()}

    # ------------------------------------------------------------ properties
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
        device = checks.as_device(device)
        with self._lock:
            self.device, state = device, self._state
            modules = [] if state is None else [state.tokenizer, state.decoder]
            for module in modules + ([] if self.backbone is None else [self.backbone]):
                module.to(device)
        return self

    @property
    def end_to_end(self) -> bool:
        """Whether pixels go through fine-tuned backbones (else: frozen features)."""
        return self.backbone is not None and self.config.end_to_end

    def __copy__(self) -> GenerativeIndex:
        """A cheap copy sharing the immutable snapshot: updating one leaves the other alone
        (but ``to`` moves the shared models of both)."""
        clone = object.__new__(type(self))
        with self._lock:
            clone.__dict__.update(self.__dict__)
        clone._lock, clone._filters = threading.RLock(), FilterCache()
        return clone

    def __repr__(self) -> str:
        return f"GenerativeIndex(d={self.d}, ntotal={self.ntotal}, is_trained={self.is_trained})"

    # --------------------------------------------------------------- private
    def _inputs(self, x: Any, progress: bool) -> ModelInputs:
        """Images or vectors in, what the models take out (see ModelInputs)."""
        if self._cache is None and self.backbone is not None and self.cache:
            self._cache = open_cache(self.backbone, self.cache_dir)
        return model_inputs(x, d=self.d, backbone=self.backbone, pixels=self.end_to_end,
                            cache=self._cache, device=self.device, progress=progress)

    def _train(self, inputs: ModelInputs, labels: Any, progress: bool) -> Models:
        n = len(inputs.tensor)
        y = None if labels is None else checks.as_labels(labels, n)
        with self._lock:  # updates wait for training (searches do not): none is lost
            if self.ntotal and not self.is_flat:
                raise ValueError(f"the index holds {self.ntotal} items, whose identifiers a "
                                 "new tokenizer would invalidate: call reset() before train()")
            yt = None if y is None else torch.from_numpy(y).to(self.device)
            preset = y is None and self._preset and not self.end_to_end
            config = IndexConfig.unlabelled(n) if preset else self.config
            models = models_for(inputs.tensor, yt, config,
                                self.backbone if self.end_to_end else None, progress)
            if config is not self.config:  # the unlabelled preset and its search defaults
                self.config = config
                self._take_search_defaults(PRESET_TABLE["unlabelled"]["search"])
            self._state = Snapshot.empty(models.tokenizer, models.decoder, self.d,
                                         self.config.store_vectors).with_items_of(self._state)
            self.history, self._refreshes = models.history, 0
        return models

    def _insert(self, inputs: ModelInputs, ids: np.ndarray) -> None:
        """Encode and insert checked items as fresh ones (the caller holds the lock)."""
        state = self._state
        with torch.inference_mode():
            features, vectors = inputs.tensor, inputs.vectors
            if vectors is None:  # pixels: embedded once, for the codes and the store
                features = state.tokenizer.feature_vectors(inputs.tensor)
                vectors = features.float().cpu().numpy()
            codes = state.tokenizer.encode_vectors(features).cpu().numpy()
        self._state = state.insert(codes, vectors, ids, fresh=True)
        self._next_id = max(self._next_id, int(ids.max()) + 1)

    def _require_trained(self) -> Snapshot:
        state = self._state
        if state is None:
            raise NotTrainedError()
        return state


def _unpickle(blob: Any, device: Any, cache_dir: Any, cache: Any, verbose: Any) -> Any:
    """Pickles written before :mod:`genindex.persistence` existed name this function."""
    return unpickle(GenerativeIndex, blob, device, cache_dir, cache, verbose)
