"""The approximate baselines: the paper's Faiss IVF-PQ, ScaNN and DiskANN (standing in for
SPANN), and Faiss HNSW.

Same interface as :mod:`benchmarks.methods`: build parameters in the
constructor, query parameters through ``set_query_arguments``, ids out.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from .methods import Method, _faiss, _prepare

METRICS = ("l2", "cosine")
PAPER_NLIST = {"inshop": 300, "cub200": 100, "cars196": 200}  # IVF-PQ lists, Section 4.1
# Faiss's k-means asks for at least 39 training points per centroid; with fewer, each
# centroid is fitted to a handful of points and the lists come out unbalanced.
MIN_POINTS_PER_LIST = 39
# Both partition-based methods scan this share of their lists / leaves per query, so they
# see the same fraction of the database. Faiss's default of one list lets the coarse
# step decide recall; on 2,000 clustered points IVF-PQ's recall@10 stops rising at 6%
# of the lists (0.63 with one list, 0.67 from 3 of 51), so 10% leaves the paper's 4-byte
# codes, not the partition, as what limits it. ScaNN's README searches 5% of its leaves.
PROBE_SHARE = 0.1


def ivfpq_nlist(dataset_name: str | None, n: int) -> int:
    """Coarse clusters for IVF-PQ on ``n`` database items: the paper's 300 / 100 / 200
    for inshop / cub200 / cars196, otherwise Faiss's usual 4*sqrt(n); in both cases at
    most n // 39, so every list's centroid has 39 training points (binds below about
    24,000 items for 4*sqrt(n), and on ``--limit`` subsets of the paper's data sets)."""
    if n < 1:
        raise ValueError(f"n must be a positive number of database items, got {n}")
    wanted = PAPER_NLIST.get(dataset_name or "", round(4 * np.sqrt(n)))
    return int(max(1, min(wanted, n // MIN_POINTS_PER_LIST)))


def default_nprobe(nlist: int) -> int:
    """Lists (or leaves) searched per query: ``PROBE_SHARE`` of them, at least one."""
    return int(max(1, np.ceil(PROBE_SHARE * nlist)))


def scann_leaves(n: int, min_leaf: int = 50) -> int:
    """ScaNN tree leaves for ``n`` items: about sqrt(n) (its README: 2,000 leaves for
    1.2M points, the same order), at most n // ``min_leaf`` (ScaNN's smallest default
    partition) so each leaf's centre has data; 0 (no tree) below two leaves."""
    leaves = min(round(np.sqrt(n)), n // min_leaf)
    return int(leaves) if leaves >= 2 else 0


def _optional(module: str, install: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise RuntimeError(f"this method needs {module}: {install}") from None


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return metric


def _matrix(x, name: str, metric: str, dim: int | None = None) -> np.ndarray:
    """``x`` checked, as C-contiguous float32 (n, d), rows made unit for cosine; the
    caller's array is never changed."""
    a = np.asarray(x)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (n, d), got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise TypeError(f"{name} must hold numbers, got dtype {a.dtype}")
    if dim is not None and a.shape[1] != dim:
        raise ValueError(f"{name} must have {dim} columns like the database, got {a.shape[1]}")
    a = _prepare(a, metric)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return a


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return int(k)


def _pad_columns(x: np.ndarray, multiple: int) -> np.ndarray:
    """Zero columns up to a multiple of ``multiple`` (L2 and inner products unchanged)."""
    extra = -x.shape[1] % multiple
    return np.pad(x, ((0, 0), (0, extra))) if extra else x


def _clean_ids(ids: np.ndarray, valid: np.ndarray, n: int, k: int) -> np.ndarray:
    """(rows, k) int64: the ``valid`` ids in their order, then -1. Ids outside [0, n)
    and repeats of an id in its row are dropped; missing columns become -1."""
    ids = np.asarray(ids).astype(np.int64)
    valid = np.asarray(valid, dtype=bool) & (ids >= 0) & (ids < n)
    ids = np.where(valid, ids, -1)
    order = np.argsort(ids, axis=1, kind="stable")  # equal ids keep their order
    ranked = np.take_along_axis(ids, order, axis=1)
    repeat = np.zeros_like(valid)
    np.put_along_axis(repeat, order[:, 1:], ranked[:, 1:] == ranked[:, :-1], axis=1)
    valid &= ~repeat
    first = np.argsort(~valid, axis=1, kind="stable")
    out = np.take_along_axis(np.where(valid, ids, -1), first, axis=1)[:, :k]
    return np.pad(out, ((0, 0), (0, k - out.shape[1])), constant_values=-1)


def _folder_bytes(folder) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


class _Approximate(Method):
    """Input checks shared by the approximate baselines; ``n`` and ``d`` are set only
    once a fit succeeded, so a refused or failed fit leaves the method as it was."""

    n: int | None = None
    d: int | None = None

    def _query_input(self, queries, k) -> tuple[np.ndarray, int]:
        if self.n is None:
            raise RuntimeError(f"{self.name}: call fit before search")
        return _matrix(queries, "queries", self.metric, self.d), _check_k(k)


class IVFPQ(_Approximate):
    """Faiss IVF-PQ as in the paper: ``nlist`` coarse clusters (None: ``ivfpq_nlist``
    of ``dataset`` and the database size), ``m`` = 4 sub-spaces of 2**``nbits`` = 256
    centroids, ranking by the codes (no re-ranking). Features whose width is not a
    multiple of ``m`` get zero columns. Below 256 items the PQ has 2**floor(log2 n)
    centroids, as k-means needs a point per centroid. Query parameter: ``nprobe``
    (None: ``default_nprobe``).
    """

    name = "ivfpq"

    def __init__(self, metric: str = "l2", nlist: int | None = None, dataset: str | None = None,
                 m: int = 4, nbits: int = 8) -> None:
        self.metric = _check_metric(metric)
        self.nlist, self.dataset, self.m, self.nbits = nlist, dataset, m, nbits
        self.set_query_arguments()

    def set_query_arguments(self, nprobe: int | None = None) -> None:
        self.nprobe = nprobe

    def fit(self, db, labels, images=None):
        faiss = _faiss()
        x = _matrix(db, "db", self.metric)
        n, d = x.shape
        x = _pad_columns(x, self.m)
        if n < 2:
            raise ValueError("db: IVF-PQ needs at least 2 items to train its quantizers")
        nlist, nbits = self.nlist or ivfpq_nlist(self.dataset, n), min(self.nbits, int(np.log2(n)))
        cosine = self.metric == "cosine"
        coarse = (faiss.IndexFlatIP if cosine else faiss.IndexFlatL2)(x.shape[1])
        # Built directly: index_factory("IVF..,PQ..") also trains polysemous codes, which
        # plain search never uses and which take most of the build time.
        index = faiss.IndexIVFPQ(coarse, x.shape[1], nlist, self.m, nbits,
                                 faiss.METRIC_INNER_PRODUCT if cosine else faiss.METRIC_L2)
        index.train(x)
        index.add(x)
        self.index, self.nlist_used, self.nbits_used = index, nlist, nbits
        self.n, self.d = n, d

    def search(self, queries, k, images=None):
        x, k = self._query_input(queries, k)
        self.index.nprobe = self.nprobe or default_nprobe(self.nlist_used)
        return self.index.search(_pad_columns(x, self.m), k)[1].astype(np.int64)

    def nbytes(self):
        return int(_faiss().serialize_index(self.index).nbytes)


class HNSW(_Approximate):
    """Faiss ``IndexHNSWFlat``: the graph index most users would pick, ``m`` = 32 links
    per node, ``ef_construction`` = 40 (Faiss's default). Query parameter:
    ``ef_search`` (None: Faiss's 16). Faiss searches with max(efSearch, k), so at the
    tables' k = 100 only values above 100 change anything; ``rows`` sweeps two."""

    name = "hnsw"
    rows = {"hnsw, efSearch 128": {"ef_search": 128}, "hnsw, efSearch 512": {"ef_search": 512}}

    def __init__(self, metric: str = "l2", m: int = 32, ef_construction: int = 40) -> None:
        self.metric = _check_metric(metric)
        self.m, self.ef_construction = m, ef_construction
        self.set_query_arguments()

    def set_query_arguments(self, ef_search: int | None = None) -> None:
        self.ef_search = ef_search

    def fit(self, db, labels, images=None):
        faiss = _faiss()
        x = _matrix(db, "db", self.metric)
        index = faiss.IndexHNSWFlat(x.shape[1], self.m, faiss.METRIC_INNER_PRODUCT
                                    if self.metric == "cosine" else faiss.METRIC_L2)
        index.hnsw.efConstruction = self.ef_construction
        index.add(x)
        self.index = index
        self.n, self.d = x.shape

    def search(self, queries, k, images=None):
        x, k = self._query_input(queries, k)
        self.index.hnsw.efSearch = self.ef_search or 16
        return self.index.search(x, k)[1].astype(np.int64)

    def nbytes(self):
        return int(_faiss().serialize_index(self.index).nbytes)


class ScaNN(_Approximate):
    """ScaNN with its README's recipe: a k-means tree (``num_leaves``, None:
    ``scann_leaves``, about sqrt(n)), asymmetric hashing of 2 dimensions per block with
    anisotropic threshold 0.2, exact re-ordering of the best ``reorder`` = 100. Query
    parameters: ``leaves_to_search`` (None: ``default_nprobe`` of the leaves, as IVF-PQ)
    and ``reorder`` (candidates re-ordered; None: the build's ``reorder``). Small data:
    no tree below 100 items (``scann_leaves``), and exact scores instead of hashing below
    ``min_hash_items``, too few to train 16 centres per block.
    """

    name = "scann"

    def __init__(self, metric: str = "l2", num_leaves: int | None = None,
                 dims_per_block: int = 2, anisotropic_threshold: float = 0.2,
                 reorder: int = 100, min_hash_items: int = 256) -> None:
        self.metric = _check_metric(metric)
        self.num_leaves = num_leaves
        self.dims_per_block, self.anisotropic_threshold = dims_per_block, anisotropic_threshold
        self.reorder, self.min_hash_items = reorder, min_hash_items
        self.set_query_arguments()

    def set_query_arguments(self, leaves_to_search: int | None = None,
                            reorder: int | None = None) -> None:
        self.leaves_to_search = leaves_to_search
        self.query_reorder = self.reorder if reorder is None else reorder

    def fit(self, db, labels, images=None):
        scann = _optional("scann", "pip install 'genindex[bench]'")
        x = _matrix(db, "db", self.metric)
        n = len(x)
        leaves = scann_leaves(n) if self.num_leaves is None else self.num_leaves
        builder = scann.scann_ops_pybind.builder(
            x, 10, "dot_product" if self.metric == "cosine" else "squared_l2")
        if leaves:
            # k-means++ seeding: ScaNN's default random seeding draws a new seed per
            # build (recall@10 moved between 0.85 and 0.95 on one data set), this does not.
            builder = builder.tree(num_leaves=leaves, num_leaves_to_search=default_nprobe(leaves),
                                   training_sample_size=n, random_init=False)
        if n >= self.min_hash_items:
            builder = builder.score_ah(
                self.dims_per_block, anisotropic_quantization_threshold=self.anisotropic_threshold,
                training_sample_size=n)
        else:
            builder = builder.score_brute_force()
        self.searcher, self.leaves_used = builder.reorder(self.reorder).build(), leaves
        self.n, self.d = x.shape

    def search(self, queries, k, images=None):
        x, k = self._query_input(queries, k)
        leaves = self.leaves_to_search or (default_nprobe(self.leaves_used)
                                           if self.leaves_used else None)
        ids, distances = self.searcher.search_batched_parallel(
            x, final_num_neighbors=k, pre_reorder_num_neighbors=max(self.query_reorder, k),
            leaves_to_search=leaves)
        return _clean_ids(ids, np.isfinite(distances), self.n, k)  # ScaNN pads with NaN

    def nbytes(self):
        with tempfile.TemporaryDirectory() as folder:
            self.searcher.serialize(folder)
            return _folder_bytes(folder)


@contextlib.contextmanager
def _native_output_to(path):
    """Send what native code prints on file descriptors 1 and 2 to ``path`` (DiskANN
    logs every step of a build); its errors still arrive as Python exceptions."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(path, "ab") as log:
            for fd in (1, 2):
                os.dup2(log.fileno(), fd)
            try:
                yield
            finally:
                ctypes.CDLL(None).fflush(None)  # C stdio buffers still hold the log's tail
                for fd, original in zip((1, 2), saved):
                    os.dup2(original, fd)
    finally:
        for fd in saved:
            os.close(fd)


class DiskANN(_Approximate):
    """Disk-based graph index (DiskANN, diskannpy) standing in for SPANN, whose PyPI
    package does not import on Python 3.11.

    A Vamana graph of degree ``graph_degree`` (build list ``build_complexity``) with the
    full vectors on disk, ``pq_bytes``-byte PQ codes in memory, in a temporary folder this
    object owns (removed by ``close``, ``with`` or garbage collection); ``nbytes`` is the
    folder's size. Cosine is L2 on unit vectors (same ranking; the disk index has no
    cosine). Query parameters: ``complexity`` (search list, at least k; default 100) and
    ``beam_width`` (default 2). ``threads`` (None: all cores) is at least 2: diskannpy 0.7.0
    deadlocks loading a disk index with 1 thread (microsoft/DiskANN#462) or 0 (#432).
    """

    name = "diskann"
    note = "disk-based graph index (DiskANN) standing in for SPANN"
    min_items = 32  # diskannpy 0.7.0 builds but cannot load a disk index of <= 16 items

    def __init__(self, metric: str = "l2", graph_degree: int = 64, build_complexity: int = 100,
                 pq_bytes: int = 32, cache_nodes: int = 0, build_memory_gb: float = 4.0,
                 threads: int | None = None) -> None:
        self.metric = _check_metric(metric)
        self.graph_degree, self.build_complexity = graph_degree, build_complexity
        self.pq_bytes, self.cache_nodes = pq_bytes, cache_nodes
        self.build_memory_gb = build_memory_gb
        self.threads = max(2, threads or len(os.sched_getaffinity(0)))
        self.index, self._folder = None, None
        self.set_query_arguments()

    def set_query_arguments(self, complexity: int = 100, beam_width: int = 2) -> None:
        self.complexity, self.beam_width = complexity, beam_width

    def fit(self, db, labels, images=None):
        dap = _optional("diskannpy", "pip install --no-deps diskannpy==0.7.0")
        x = _matrix(db, "db", self.metric)
        if len(x) < self.min_items:
            raise ValueError(f"db: the DiskANN stand-in needs at least {self.min_items} items, "
                             f"got {len(x)}")
        self.close()
        self._folder = tempfile.TemporaryDirectory(prefix="genindex-diskann-")
        self.folder = Path(self._folder.name) / "index"
        self.folder.mkdir()
        budget_gb = len(x) * (self.pq_bytes + 0.5) / 2**30  # PQ bytes = floor(budget / n)
        try:
            with _native_output_to(self.folder.parent / "diskann.log"):
                dap.build_disk_index(
                    x, "l2", str(self.folder), complexity=self.build_complexity,
                    graph_degree=self.graph_degree, search_memory_maximum=budget_gb,
                    build_memory_maximum=self.build_memory_gb, num_threads=self.threads,
                    pq_disk_bytes=0)
                # Build leftovers, copies of the input that search never reads (same
                # results without them): not part of the index's size.
                for leftover in ("ann_vectors.bin", "ann_mem.index.data"):
                    (self.folder / leftover).unlink()
                self.index = dap.StaticDiskIndex(str(self.folder), num_threads=self.threads,
                                                 num_nodes_to_cache=self.cache_nodes)
        except BaseException:
            self.close()
            raise
        self.n, self.d = x.shape

    def search(self, queries, k, images=None):
        x, k = self._query_input(queries, k)
        found = min(k, self.n)  # diskannpy fills columns past n with garbage
        result = self.index.batch_search(x, found, complexity=max(self.complexity, found),
                                         num_threads=self.threads, beam_width=self.beam_width)
        return _clean_ids(result.identifiers, np.isfinite(result.distances), self.n, k)

    def nbytes(self):
        return _folder_bytes(self.folder)

    def close(self) -> None:
        """Drop the index and remove its folder; fit again to search."""
        if self._folder is not None:
            with _native_output_to(self.folder.parent / "diskann.log"):
                self.index = None
            self._folder.cleanup()
        self.n, self.d, self.index, self._folder = None, None, None, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: TemporaryDirectory's finaliser cleans up
            pass
