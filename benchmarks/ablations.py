"""The paper's ablations on one data set's features (section 4.2).

* ``ids`` (Table 3): the decoder trained on other identifiers of the same
  shape: random codes, and hierarchical k-means (HKM) of the features with
  100, 200 and 500 clusters per level, against the semantic tokenizer's.
* ``length`` (Table 4): the semantic tokenizer with T = 2, 4, 6, 8 codebooks.
* ``fresh`` (Table 6): see :mod:`benchmarks.fresh`.

Every variant returns the ids of its top ``k`` results per query; the runner
computes the metrics, as for the methods.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch

from genindex import GenerativeIndex, IndexConfig
from genindex.beam import beam_search, top_items
from genindex.decoder import Decoder
from genindex.kmeans import assign, kmeans
from genindex.partners import Partners
from genindex.store import VectorStore
from genindex.train import freeze, train_decoder
from genindex.trie import Trie

Search = Callable[[np.ndarray, int], np.ndarray]  # queries, k -> (n, k) ids


def random_ids(n: int, length: int, vocab: int, seed: int = 0) -> np.ndarray:
    """Uniform random identifiers, (n, length) int64."""
    return np.random.default_rng(seed).integers(0, vocab, size=(n, length), dtype=np.int64)


def hkm_ids(x: np.ndarray, clusters: int, seed: int = 0, iters: int = 20) -> np.ndarray:
    """Hierarchical k-means identifiers: one level per split, until each group is one item.

    The length T is the depth this takes (the paper's HKM_100 gives T = 4 on
    In-shop); identifiers shorter than T are padded with code 0.
    """
    generator = torch.Generator().manual_seed(seed)
    data = torch.from_numpy(np.ascontiguousarray(x, dtype="float32"))
    levels: list[np.ndarray] = []
    groups = [np.arange(len(x))]
    while any(len(g) > 1 for g in groups) and len(levels) < 16:
        codes = np.zeros(len(x), dtype=np.int64)
        next_groups = []
        for group in groups:
            if len(group) <= 1:
                next_groups.append(group)
                continue
            k = min(clusters, len(group))
            centroids = kmeans(data[group], k, iters, generator)
            label = assign(data[group], centroids)[0].numpy()
            if len(np.unique(label)) == 1:  # identical points: split them by rank
                label = np.arange(len(group)) % k
            codes[group] = label
            next_groups.extend(group[label == c] for c in np.unique(label))
        levels.append(codes)
        groups = next_groups
    return np.stack(levels, axis=1)


def decoder_on_ids(db: np.ndarray, labels: np.ndarray, ids: np.ndarray, vocab: int,
                   config: IndexConfig, progress: bool = True) -> Search:
    """Train the decoder to write ``ids`` (x1 -> id of a same-class x2); return its search."""
    x = torch.from_numpy(np.ascontiguousarray(db, dtype="float32"))
    codes = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64))
    y = torch.from_numpy(np.unique(labels, return_inverse=True)[1])
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    decoder = Decoder.for_vectors(config.decoder, vocab, ids.shape[1], x.shape[1])
    train_decoder(decoder, x, codes, Partners(x, y, config.decoder.neighbors), config,
                  generator, progress)
    freeze(decoder)
    trie = Trie(ids, np.arange(len(ids)), vocab)
    store = VectorStore(np.arange(len(ids)), db)

    def search(queries: np.ndarray, k: int) -> np.ndarray:
        q = torch.from_numpy(np.ascontiguousarray(queries, dtype="float32"))
        with torch.inference_mode():
            beams = beam_search(decoder, q, trie, max(k, 10))
            _, found = top_items(trie, beams, k, store.distance(torch.device("cpu"), q))
        return found.numpy()
    return search


def ids_variants(db: np.ndarray, labels: np.ndarray, config: IndexConfig,
                 progress: bool = True) -> dict[str, tuple[int, Search]]:
    """Table 3: ``{variant: (T, search)}`` for random, HKM_100/200/500 and ours."""
    tc = config.tokenizer
    variants: dict[str, tuple[int, Search]] = {}
    ids = random_ids(len(db), tc.num_codebooks, tc.codebook_size, config.seed)
    variants["random"] = (ids.shape[1], decoder_on_ids(db, labels, ids, tc.codebook_size,
                                                       config, progress))
    for clusters in (100, 200, 500):
        ids = hkm_ids(db, clusters, config.seed)
        variants[f"HKM_{clusters}"] = (ids.shape[1], decoder_on_ids(
            db, labels, ids, max(clusters, int(ids.max()) + 1), config, progress))
    index = GenerativeIndex.fit(db, labels, config, device="cpu", progress=progress)
    variants["ours"] = (tc.num_codebooks, lambda q, k: index.search(q, k, order="generative").ids)
    return variants


def length_variants(db: np.ndarray, labels: np.ndarray, config: IndexConfig,
                    lengths: tuple[int, ...] = (2, 4, 6, 8),
                    progress: bool = True) -> dict[str, tuple[int, Search]]:
    """Table 4: ``{"T=t": (t, search)}``, the semantic tokenizer with t codebooks."""
    variants: dict[str, tuple[int, Search]] = {}
    for t in lengths:
        c = config.replace(tokenizer=dataclasses.replace(config.tokenizer, num_codebooks=t))
        index = GenerativeIndex.fit(db, labels, c, device="cpu", progress=progress)
        variants[f"T={t}"] = (t, lambda q, k, index=index: index.search(
            q, k, order="generative").ids)
    return variants

