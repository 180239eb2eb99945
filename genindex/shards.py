"""Shards of one trained model, searched and updated as one index.

A :class:`ShardedIndex` holds N shard files. Each is a saved
:class:`~genindex.GenerativeIndex` with the same trained model (tokenizer,
decoder, config) and its own items under global ids (``id_map=True``). It
answers with Faiss's contract, as ``faiss.IndexShards`` does:

* ``search(x, k)`` asks every shard the same question at once and merges the
  answers by distance (``faiss.ResultHeap``): squared L2 ascending, inner
  products and f_cls cosines (``order="semantic"``) descending, id -1 and
  Faiss's padding where there are fewer than ``k`` results. These values mean
  the same in every shard. Log-probabilities (``order="generative"``, or
  shards without stored vectors) do not: each shard's beam search normalises
  over its own identifiers, so they are refused.
* ``add`` routes a batch to the shard with the fewest items, under the next
  global ids; ``add_with_ids`` refuses an id held by any shard; ``remove_ids``
  and ``reset`` reach every shard; ``ntotal`` sums; ``save`` writes each shard
  changed since it was loaded or saved back to its file.

Two back ends answer behind the same class: ``backend="threads"`` loads every
shard in this process and calls them from a thread pool; ``backend="ray"``
starts one Ray actor per shard (:class:`ShardServer`, the shard loaded with
``mmap=True``), restarted from its file if it dies. A call that reaches a
restarting actor waits for it. A shard that restarted after updates it had not
saved would answer without them: every later call to it raises
:class:`ShardError` instead, never a partial answer. Ray is imported only here,
only for ``backend="ray"`` (``pip install 'genindex[ray]'``).
"""

from __future__ import annotations

import copy
import hashlib
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checks
from .beam import PADDING
from .faiss_api import METRIC_INNER_PRODUCT, METRIC_L2
from .index import GenerativeIndex, SearchResult

BACKENDS = ("threads", "ray")


class ShardError(RuntimeError):
    """A shard cannot answer: its process died for good, or it restarted from its
    file after updates it had not saved."""


def model_digest(index: GenerativeIndex) -> str:
    """SHA-256 of what a shard's answers depend on besides its items: the config,
    the metric and the trained tokenizer's and decoder's weights."""
    state = index._require_trained()
    digest = hashlib.sha256(f"{index.config.to_json()}|{index.metric}|{index.d}".encode())
    for prefix, module in (("tokenizer.", state.tokenizer), ("decoder.", state.decoder)):
        for name, tensor in sorted(module.state_dict().items()):
            digest.update((prefix + name).encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
                          .numpy().tobytes())
    return digest.hexdigest()


class ShardServer:
    """One shard: its index file loaded, answering :class:`ShardedIndex`'s calls, in
    this process or as a Ray actor. Every answer carries the server's incarnation,
    new each time it starts, so the router can tell a restart."""

    def __init__(self, path: str | os.PathLike, mmap: bool = True) -> None:
        self.path = os.fspath(path)
        self.index = GenerativeIndex.load(self.path, device="cpu", mmap=mmap)
        if not self.index.id_map:
            raise ValueError(f"{self.path}: a shard must keep global ids (an index built "
                             "with id_map=True), this one numbers its items by position")
        if not self.index.config.store_vectors:
            raise ValueError(f"{self.path}: a shard must store vectors: without them it "
                             "answers in log-probabilities, which do not merge across shards")
        self.incarnation = uuid.uuid4().hex

    def call(self, method: str, *args: Any) -> tuple[str, Any]:
        return self.incarnation, getattr(self, f"_{method}")(*args)

    def _info(self) -> dict[str, Any]:
        index = self.index
        return {"digest": model_digest(index), "d": index.d, "metric": index.metric,
                "ntotal": index.ntotal, "next_id": index._next_id, "pid": os.getpid()}

    def _search(self, x: np.ndarray, k: int, query: dict[str, Any]) -> tuple:
        return tuple(self.index.search(x, k, **query))

    def _contains(self, ids: np.ndarray) -> np.ndarray:
        return self.index._require_trained().trie.contains(ids)

    def _add_with_ids(self, x: np.ndarray, ids: np.ndarray) -> int:
        self.index.add_with_ids(x, ids)
        return self.index.ntotal

    def _remove_ids(self, ids: np.ndarray) -> int:
        return self.index.remove_ids(ids)

    def _reset(self) -> None:
        self.index.reset()

    def _save(self) -> None:
        self.index.save(self.path, overwrite=True)


class ShardedIndex:
    """N shard files of one trained model as one index (see the module's text)."""

    def __init__(self, paths: list[str | os.PathLike], *, backend: str = "threads",
                 mmap: bool = True, model: GenerativeIndex | None = None,
                 ray_options: dict[str, Any] | None = None) -> None:
        """``paths``: the shard files. ``model``: a trained index that every shard
        must share the model of (default: the first shard's). ``ray_options``: for
        ``backend="ray"``, options of each actor (e.g. ``{"num_cpus": 1}``)."""
        self.paths = [os.fspath(p) for p in paths]
        if not self.paths or len(set(self.paths)) != len(self.paths):
            raise ValueError(f"paths: one or more distinct shard files, got {self.paths}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "threads":
            if ray_options:
                raise ValueError("ray_options: only for backend='ray'")
            self._shards = _Threads(self.paths, mmap)
        else:
            self._shards = _Ray(self.paths, mmap, ray_options or {})
        self.backend, self._lock, self._dirty = backend, threading.RLock(), set()
        self._incarnations: list[str | None] = [None] * len(self.paths)
        try:
            info = self._call(range(len(self.paths)), "info")
            self._check_same_model(info, model)
        except BaseException:
            self._shards.close()
            raise
        self.d, self.metric = info[0]["d"], info[0]["metric"]
        self._ntotal = [i["ntotal"] for i in info]
        self._next_id = max(i["next_id"] for i in info)

    @classmethod
    def create(cls, model: GenerativeIndex, paths: list[str | os.PathLike],
               **kwargs: Any) -> ShardedIndex:
        """Empty shards of the trained ``model`` (an ``id_map=True`` index), one new file
        at each of ``paths``, opened as a :class:`ShardedIndex` (``kwargs``: its own)."""
        if not model.id_map:
            raise ValueError("model: shards keep global ids; train it with id_map=True")
        taken = [os.fspath(p) for p in paths if Path(p).exists()]
        if taken:
            raise FileExistsError(f"shard files already exist: {taken}")
        empty = copy.copy(model)
        empty.reset()
        for path in paths:
            empty.save(path)
        return cls(paths, model=model, **kwargs)

    # ------------------------------------------------------------- the index
    @property
    def ntotal(self) -> int:
        return sum(self._ntotal)

    @property
    def nshards(self) -> int:
        return len(self.paths)

    @property
    def is_trained(self) -> bool:
        return True

    @property
    def metric_type(self) -> int:
        """Faiss's metric constant: METRIC_L2 (1) or METRIC_INNER_PRODUCT (0)."""
        return METRIC_L2 if self.metric == "l2" else METRIC_INNER_PRODUCT

    def search(self, x: Any, k: int, **query: Any) -> SearchResult:
        """The ``k`` nearest items over all shards: ``D, I = sharded.search(x, k)``.
        ``query``: :meth:`GenerativeIndex.search`'s keywords (``beam_size``,
        ``order``, ``k_factor``, ``filter``, ``params``, ...), given to every shard."""
        x, k = checks.as_vectors(x, self.d), checks.as_k(k)
        merged = merged_values(query.get("order"), self.metric)
        return merge(self._call(range(self.nshards), "search", x, k, query), k, merged)

    def add(self, x: Any) -> None:
        """Add items under the next global ids, to the shard with the fewest items."""
        x = checks.as_vectors(x, self.d)
        with self._lock:
            self._add(x, checks.next_ids(self._next_id, len(x)))

    def add_with_ids(self, x: Any, ids: Any) -> None:
        """Add items under the given distinct ids, none of them in any shard."""
        x = checks.as_vectors(x, self.d)
        ids = checks.as_ids(ids, len(x), nonnegative=True)
        with self._lock:
            held = np.any(self._call(range(self.nshards), "contains", ids), axis=0)
            if held.any():
                raise ValueError(f"ids already in a shard: {ids[held][:10].tolist()}")
            self._add(x, ids)

    def remove_ids(self, ids: Any) -> int:
        """Remove these ids from every shard that holds them; how many were present."""
        ids = np.unique(checks.as_ids(ids, distinct=False))
        with self._lock:
            removed = self._call(range(self.nshards), "remove_ids", ids)
            for shard, count in enumerate(removed):
                if count:
                    self._dirty.add(shard)
                    self._ntotal[shard] -= count
            return int(sum(removed))

    def reset(self) -> None:
        """Remove every item of every shard; the model stays."""
        with self._lock:
            self._call(range(self.nshards), "reset")
            self._dirty.update(range(self.nshards))
            self._ntotal, self._next_id = [0] * self.nshards, 0

    def save(self) -> None:
        """Write every shard changed since it was loaded or saved back to its file."""
        with self._lock:
            changed = sorted(self._dirty)
            self._call(changed, "save")
            self._dirty.clear()

    def close(self) -> None:
        """Stop the shards' threads or actors."""
        self._shards.close()

    def __enter__(self) -> ShardedIndex:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"ShardedIndex(nshards={self.nshards}, ntotal={self.ntotal}, d={self.d}, "
                f"backend={self.backend!r})")

    # --------------------------------------------------------------- private
    def _add(self, x: np.ndarray, ids: np.ndarray) -> None:
        shard = int(np.argmin(self._ntotal))
        self._dirty.add(shard)
        (self._ntotal[shard],) = self._call([shard], "add_with_ids", x, ids)
        self._next_id = max(self._next_id, int(ids.max()) + 1)

    def _call(self, shards, method: str, *args: Any) -> list[Any]:
        """``method`` on each of ``shards`` at once; their answers, in order."""
        shards = list(shards)
        answers = self._shards.call(shards, method, *args)
        for shard, (incarnation, _) in zip(shards, answers):
            if incarnation != self._incarnations[shard]:
                if self._incarnations[shard] is not None and shard in self._dirty:
                    raise ShardError(f"shard {shard} ({self.paths[shard]}) restarted from "
                                     "its file and lost the updates made since it was last "
                                     "saved; open the shards again and redo them")
                self._incarnations[shard] = incarnation
        return [value for _, value in answers]

    def _check_same_model(self, info: list[dict], model: GenerativeIndex | None) -> None:
        expected = info[0]["digest"] if model is None else model_digest(model)
        for path, shard in zip(self.paths, info):
            if shard["digest"] != expected:
                raise ValueError(f"{path}: this shard's model (config, metric or weights) "
                                 f"is not {'the given' if model else 'the first shard'}'s; "
                                 "every shard must be a copy of one trained index")


def merged_values(order: str | None, metric: str) -> str:
    """What shards answering in ``order`` return, as :func:`merge` takes it: the index's
    ``metric`` (``"l2"``, ``"ip"``) or ``"semantic"``; the generative order is refused."""
    if order not in (None, "metric", "semantic"):
        raise ValueError(f"order={order!r}: shards merge distances ('metric') or f_cls "
                         "cosines ('semantic'); log-probabilities of different shards' "
                         "identifiers do not compare")
    return "semantic" if order == "semantic" else metric


def merge(answers: list[tuple[np.ndarray, np.ndarray]], k: int, metric: str) -> SearchResult:
    """The ``k`` best of every shard's ``(D, I)``, as ``faiss.ResultHeap`` merges:
    ``metric`` ``"l2"`` ascending, ``"ip"`` and ``"semantic"`` descending; id -1 and
    :data:`~genindex.beam.PADDING` past the results. Ties keep shard order."""
    D = np.concatenate([d for d, _ in answers], axis=1)
    I = np.concatenate([i for _, i in answers], axis=1)  # noqa: E741
    key = np.where(I < 0, np.inf, D if metric == "l2" else -D.astype(np.float64))
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    ids = np.take_along_axis(I, order, axis=1)
    scores = np.take_along_axis(D, order, axis=1).astype(np.float32)
    scores[ids < 0] = PADDING[metric]
    return SearchResult(np.ascontiguousarray(scores), np.ascontiguousarray(ids))


class _Threads:
    """Every shard in this process, called from a thread pool."""

    def __init__(self, paths: list[str], mmap: bool) -> None:
        self.servers = [ShardServer(path, mmap) for path in paths]
        self.pool = ThreadPoolExecutor(len(paths), thread_name_prefix="genindex-shard")

    def call(self, shards: list[int], method: str, *args: Any) -> list[Any]:
        pending = [self.pool.submit(self.servers[s].call, method, *args) for s in shards]
        return [future.result() for future in pending]

    def close(self) -> None:
        self.pool.shutdown()


class _Ray:
    """One Ray actor per shard, restarted from its file when it dies."""

    def __init__(self, paths: list[str], mmap: bool, options: dict[str, Any]) -> None:
        self.ray, self.paths = import_ray(), paths
        options = {"max_restarts": -1, "max_task_retries": -1, **options}
        actor = self.ray.remote(_ShardActor).options(**options)
        self.actors = [actor.remote(path, mmap) for path in paths]

    def call(self, shards: list[int], method: str, *args: Any) -> list[Any]:
        pending = [self.actors[s].call.remote(method, *args) for s in shards]
        answers = []
        for shard, ref in zip(shards, pending):
            try:
                answers.append(self.ray.get(ref))
            except self.ray.exceptions.RayActorError as error:
                raise ShardError(f"shard {shard} ({self.paths[shard]}) is unavailable: "
                                 f"{error}") from error
            except self.ray.exceptions.RayTaskError as error:  # the shard's own exception
                raise error.cause from None
        return answers

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)


class _ShardActor:
    """A :class:`ShardServer` as a Ray actor. A shard that fails to load (a damaged
    file) raises its own error at every call, which reaches the router as it is."""

    def __init__(self, path: str, mmap: bool) -> None:
        try:
            self.server, self.error = ShardServer(path, mmap), None
        except Exception as error:  # noqa: BLE001 (kept and raised at every call)
            self.server, self.error = None, error

    def call(self, method: str, *args: Any) -> tuple[str, Any]:
        if self.error is not None:
            raise self.error
        return self.server.call(method, *args)


def import_ray():
    try:
        import ray
    except ImportError as error:
        raise ImportError("the Ray back end needs Ray: pip install 'genindex[ray]'") from error
    return ray
