"""Trie-constrained beam search, batched over queries and beams.

At every step the decoder gives the logits of the next code for each beam; the
trie says which codes are allowed after each beam's prefix; the log-softmax is
taken over the allowed codes only, so an identifier's score is its
log-probability among the identifiers present in the index. The decoder keeps a
key/value cache, so each step feeds one new token per beam.

A beam whose prefix leads to a single identifier is finished: every later code
is forced, with log-probability exactly 0, so its score is final and the
decoder need not run for it again. Finished beams wait in a pool and compete
with the live ones at every step; the decoder runs on the live beams only (a
``(queries, width)`` grid, ``width`` the most live beams of any query). The
result is the one of the plain algorithm, with less work.

The work per query is bounded by ``beam_size * M`` decoder rows whatever the
number of items: the trie answers each step with array operations over the
beams (see :meth:`genindex.trie.Trie.children`), never a scan of the items.

:func:`top_items` then turns the best leaves into the best items: a leaf holds
every item that shares its identifier, in the leaf's score order, and items of
one leaf are ordered by a distance to the query where one is given.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import fusion as fusion_scores
from . import steps
from .decoder import Decoder
from .snapshot import Snapshot
from .steps import compute_dtype, precision_context, search_dtype, timed  # noqa: F401 (API)
from .trie import Trie

# Parts of a search that ``timings`` accumulates (seconds), in the paper's Fig. 5 terms:
# "encoder" (the queries' memory and feature vectors), "decoder" (decoder blocks),
# "head" (the output layer's logits), "mask" (the trie's allowed codes: the validity
# check), "select" (softmax, top-k, cache reordering), "items" (leaves expanded into
# items, ranked by distance).
TIMED_PARTS = ("encoder", "decoder", "head", "mask", "select", "items")
# Beams decoded at once by :func:`search`: the key/value cache takes about
# n_layer * 2 * M * n_embd * 4 bytes a beam (0.56 MiB for the 24-layer decoder).
BEAMS_IN_FLIGHT = 8192
# on a CPU, fewer: a batch's activations then stay in cache (emoji main job, 2 cores,
# bfloat16: 649 queries/s at 2,048 beams, 445 at 8,192; benchmarks/roofline.py)
CPU_BEAMS_IN_FLIGHT = 2048
# (query, item) pairs ranked at once: bounds memory where leaves are large (a flat index)
PAIRS_IN_FLIGHT = 1 << 22


class Beams(NamedTuple):
    """The surviving identifiers of a beam search, best first."""

    scores: torch.Tensor  # (Q, beams) float32 log-probabilities, -inf for no beam
    leaves: torch.Tensor  # (Q, beams) int64 leaf indices into the trie, -1 for no beam


# What a search returns where a query has no more results: Faiss's values per order
PADDING = {None: -math.inf, "l2": float(np.finfo(np.float32).max),
           "ip": -float(np.finfo(np.float32).max), "semantic": -float(np.finfo(np.float32).max)}


def search(snapshot: Snapshot, queries: torch.Tensor, k: int, beam_size: int, *,
           metric: str | None = None, k_factor: float = 1.0, fusion: float = 0.0,
           trie: Trie | None = None, dtype: torch.dtype | str | None = None,
           timings: dict[str, float] | None = None,
           progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, ids)``, each (n, k): the ``k`` best items of ``snapshot`` for each query.

    The whole search pipeline: :func:`beam_search` over ``trie`` (default: the
    snapshot's; a filtered one restricts the results), then :func:`top_items`,
    items sharing a leaf ranked by their L2 distance to the query (by inner
    product, largest first, for ``metric="ip"``) where the snapshot stores
    vectors. ``metric`` None: that generative order, scores the identifiers'
    log-probabilities. ``"l2"`` / ``"ip"``: the generative
    top ``k * k_factor`` items (the candidates) ranked by their exact squared
    L2 distance (ascending) or inner product (descending) to the query, which
    are the scores; ``"semantic"``: ranked by the cosine of their f_cls to the
    query's (descending; see :func:`semantic_measure`). Both need stored
    vectors. ``fusion`` > 0 adds that weight times the query's cosine to each
    identifier's codewords to its log-probability inside the beam
    (:mod:`genindex.fusion`). Queries go in batches of at most :data:`BEAMS_IN_FLIGHT` beams
    (:data:`CPU_BEAMS_IN_FLIGHT` on a CPU)
    and :data:`PAIRS_IN_FLIGHT` items ranked, which bounds memory for any number of them.
    ``beam_size`` is cut to the number of identifiers, and only the first
    ``min(k, items)`` columns are searched for: the others are padding (id -1,
    score :data:`PADDING`), however large ``k``.
    """
    trie = snapshot.trie if trie is None else trie
    scores = np.full((len(queries), k), PADDING[metric], np.float32)
    ids = np.full((len(queries), k), -1, np.int64)
    width = min(k, len(trie))  # columns that can hold an item; the rest stay padding
    if not width:
        return scores, ids
    pool = width if metric is None else min(len(trie), max(width, math.ceil(k * k_factor)))
    beam_size = min(beam_size, trie.num_leaves)  # more beams than identifiers find no more
    # items read a query: the pool and the rest of the last leaf (all of a flat index's)
    read = min(len(trie), pool + int(np.diff(trie.leaf_ptr).max())) if (
        snapshot.vectors is not None) else pool
    beams = BEAMS_IN_FLIGHT if queries.device.type != "cpu" else min(BEAMS_IN_FLIGHT,
                                                                     CPU_BEAMS_IN_FLIGHT)
    size = max(1, min(beams // beam_size, PAIRS_IN_FLIGHT // read))
    with torch.inference_mode():
        for start in tqdm(range(0, len(queries), size), desc="search", unit="batch",
                          disable=not progress, leave=False):
            batch = queries[start:start + size]
            s, i = _search_batch(snapshot, trie, batch, beam_size, pool, metric, fusion, dtype,
                                 timings)
            scores[start:start + len(batch), :width] = s[:, :width].cpu().numpy()
            ids[start:start + len(batch), :width] = i[:, :width].cpu().numpy()
    return scores, ids


def _search_batch(snapshot: Snapshot, trie: Trie, batch: torch.Tensor, beam_size: int,
                  pool: int, metric: str | None, fusion: float, dtype: Any,
                  timings: dict[str, float] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores, ids)`` (Q, pool) of one batch of queries, best first (see search)."""
    distance = vectors = prior = bias = None
    trained = snapshot.decoder.config.prior
    if snapshot.vectors is not None or fusion or trained:
        with timed(timings, "encoder", batch.device):
            vectors = snapshot.tokenizer.feature_vectors(batch)
            if fusion or trained:  # one f_cls pass and one product for both
                cosines = fusion_scores.codeword_scores(snapshot.tokenizer, vectors, 1.0)
                prior = fusion * cosines if fusion else None
                bias = trained * cosines if trained else None
    beams = beam_search(snapshot.decoder, batch, trie, beam_size, prior=prior, bias=bias,
                        dtype=dtype, timings=timings)
    if snapshot.vectors is not None:  # a leaf's items in the metric's order (else by L2)
        within = snapshot.vectors.distance(batch.device, vectors, "ip" if metric == "ip"
                                           else "l2", exact=False)
        distance = within if metric != "ip" else lambda query, ids: -within(query, ids)
    with timed(timings, "items", batch.device):
        scores, ids = top_items(trie, beams, pool, distance)
        if metric is not None:  # the values returned as D: each pair computed exactly
            measure = (semantic_measure(snapshot, vectors) if metric == "semantic" else
                       snapshot.vectors.distance(batch.device, vectors, metric))
            scores, ids = rank_by_metric(ids, measure, metric)
    return scores, ids


def semantic_measure(snapshot: Snapshot, vectors: torch.Tensor
                     ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(query_index, ids) -> cosine`` of each pair's f_cls: the tokenizer's head
    (the space its identifiers quantize) applied to the query's global feature
    ``vectors`` and to the item's stored vector."""
    tokenizer = snapshot.tokenizer
    queries = F.normalize(tokenizer.f_cls(vectors).float(), dim=-1)

    def measure(query_index: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        items, where = torch.unique(ids, return_inverse=True)
        stored = snapshot.vectors.lookup(queries.device, items)
        found = F.normalize(tokenizer.f_cls(stored).float(), dim=-1)
        return (queries[query_index] * found[where]).sum(dim=1)

    return measure


def rank_by_metric(ids: torch.Tensor, measure: Callable[[torch.Tensor, torch.Tensor],
                                                         torch.Tensor],
                   metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The candidate ``ids`` (Q, C) (-1: none) ordered by ``measure(query_index, ids)``:
    ascending for ``"l2"``, descending for ``"ip"`` and ``"semantic"``;
    ``(values, ids)``, padded with :data:`PADDING` and -1. Ties keep the generative order."""
    valid = ids >= 0
    values = torch.full(ids.shape, PADDING[metric], device=ids.device)
    query = torch.arange(len(ids), device=ids.device)[:, None].expand_as(ids)
    if valid.any():
        values[valid] = measure(query[valid], ids[valid]).float()
    key = values if metric == "l2" else -values
    order = torch.argsort(key.masked_fill(~valid, math.inf), dim=1, stable=True)
    return values.gather(1, order), ids.gather(1, order)


def beam_search(decoder: Decoder, x: torch.Tensor, trie: Trie, beam_size: int, *,
                prior: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                dtype: torch.dtype | str | None = None,
                timings: dict[str, float] | None = None) -> Beams:
    """The ``beam_size`` most likely valid identifiers for each query in ``x``.

    ``dtype``: the decoder's compute precision (see :func:`compute_dtype`):
    float32 (None, exact), or bfloat16 / float16 through autocast, about twice
    as fast where the hardware has it (GPUs; CPUs with AVX512-BF16 or AMX),
    with scores off by about 1e-2. Scores and beam selection stay float32.
    ``prior`` (Q, M, L), if given, is added to each code's log-probability at
    its level, a finished beam's forced codes included (score fusion:
    :func:`genindex.fusion.codeword_scores`). ``bias`` (Q, M, L) is added to each
    code's logit, before its softmax: a decoder trained with ``DecoderConfig.prior``
    needs it (the same scores at that weight), any other takes none.
    ``timings``, if given, accumulates the seconds spent in each of
    :data:`TIMED_PARTS` (synchronising the device around each part).
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if (bias is None) != (not decoder.config.prior):
        raise ValueError(f"beam_search: a decoder trained with prior="
                         f"{decoder.config.prior} needs bias= of that weight, any other "
                         f"takes none (genindex.fusion.codeword_scores)")
    queries, device = len(x), x.device
    precision = precision_context(device, dtype)
    with torch.inference_mode():
        with timed(timings, "encoder", device), precision:
            state = decoder.start(x)
        scores = torch.zeros(queries, 1, device=device)
        nodes = torch.zeros(queries, 1, dtype=torch.long, device=device)
        done_scores = torch.full((queries, 0), float("-inf"), device=device)
        done_leaves = torch.full((queries, 0), -1, dtype=torch.long, device=device)
        codes = None
        for depth in range(trie.num_codebooks):
            beam = steps.Beam(scores, nodes, done_scores, done_leaves)
            with timed(timings, "decoder", device), precision:
                h = decoder.advance(state, codes)  # (Q, width, E)
            ragged = steps.choose(trie, depth, nodes)
            step = (steps.ragged_step if ragged else steps.dense_step)(
                decoder, h, trie, depth, beam, beam_size, prior, dtype, timings, bias)
            done_scores, done_leaves = step.done_scores, step.done_leaves
            if not step.live.any():
                break
            with timed(timings, "select", device):
                scores, nodes, source = steps.live_grid(step)
                state.reorder(source // trie.codebook_size)
                codes = source % trie.codebook_size
        best, order = done_scores.sort(dim=1, descending=True, stable=True)
        return Beams(best, done_leaves.gather(1, order))


def top_items(trie: Trie, beams: Beams, k: int,
              distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best items per query: ``(scores, ids)``, each (Q, k).

    Items inherit their leaf's score. ``distance(query_index, ids)`` ranks the
    items of one leaf (smaller first); without it they keep id order. Rows with
    fewer than ``k`` items are padded with id ``-1`` and score ``-inf``. Only
    the items of the leaves that can reach the top k are read, never the rest.
    """
    queries, width = beams.leaves.shape
    device = beams.leaves.device
    scores = torch.full((queries, k), float("-inf"), device=device)
    ids = torch.full((queries, k), -1, dtype=torch.long, device=device)
    valid = beams.leaves >= 0
    if not valid.any():
        return scores, ids
    start, count = trie.leaf_items(beams.leaves.clamp(min=0))
    count = count.masked_fill(~valid, 0)
    # leaves whose items can still make the top k; without a distance, only
    # as many items of the last of them as fill the k slots are needed
    before = count.cumsum(dim=1) - count
    take = torch.where(before < k, count, torch.zeros_like(count))
    if distance is None:
        take = torch.minimum(take, (k - before).clamp(min=0))
    take = take.reshape(-1)
    total = int(take.sum())
    beam = torch.repeat_interleave(torch.arange(queries * width, device=device), take)
    offset = torch.arange(total, device=device) - torch.repeat_interleave(
        take.cumsum(0) - take, take)
    item_ids = trie.tables(device).ids[start.reshape(-1)[beam] + offset]
    query = beam // width
    if distance is not None:
        order = _first_k(query, _beam_then(beam, distance(query, item_ids)), queries, k)
        beam, query, item_ids = beam[order], query[order], item_ids[order]
    # at most k items per query are left (``take`` above, or _first_k): each one's rank
    per_query = torch.bincount(query, minlength=queries)
    rank = torch.arange(len(query), device=device) - (per_query.cumsum(0) - per_query)[query]
    scores[query, rank] = beams.scores.reshape(-1)[beam]
    ids[query, rank] = item_ids
    return scores, ids


def _first_k(query: torch.Tensor, key: torch.Tensor, queries: int, k: int) -> torch.Tensor:
    """Indices of each query's ``k`` smallest ``key`` values (ties: the earlier first),
    query after query, each in key order; ``query`` (sorted) owns each key. Where a
    query has many more keys than ``k`` (a large leaf) a partial selection per query
    replaces the full sort."""
    per_query = torch.bincount(query, minlength=queries)
    start, widest = per_query.cumsum(0) - per_query, int(per_query.max())
    if widest <= 2 * k or queries * widest > 4 * len(key):  # few keys each, or uneven
        order = torch.argsort(key, stable=True)
        return order[torch.arange(len(key), device=key.device) - start[query[order]] < k]
    grid = key.new_full((queries, widest), math.inf)
    grid[query, torch.arange(len(key), device=key.device) - start[query]] = key
    # the k smallest, widened to every key equal to the k-th so that ties keep the
    # first ones, then put in (key, position) order
    kth = grid.kthvalue(k, dim=1, keepdim=True).values
    below, tied = grid < kth, (grid == kth) & (grid < math.inf)  # inf: padding
    chosen = below | (tied & (below.sum(dim=1, keepdim=True) + tied.cumsum(dim=1) <= k))
    rows, columns = chosen.nonzero(as_tuple=True)
    flat = start[rows] + columns
    return flat[torch.argsort(key[flat], stable=True)]


def _beam_then(beam: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """One float64 sort key per item: its beam (query, then beam rank) first, then its
    ``value`` scaled into [0, 1/2] (one sort instead of two stable ones)."""
    value = value.double()
    low, span = value.min(), value.max() - value.min()
    return beam.double() + 0.5 * (value - low) / (span if span > 0 else 1.0)
