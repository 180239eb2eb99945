"""Trie-constrained beam search, batched over queries and beams.

At every step the decoder gives the logits of the next code for each beam; the
trie says which codes are allowed after each beam's prefix; the log-softmax is
taken over the allowed codes only, so an identifier's score is its
log-probability among the identifiers present in the index. The decoder keeps a
key/value cache, so each step feeds one new token per beam.

:func:`top_items` then turns the best leaves into the best items: a leaf holds
every item that shares its identifier, in the leaf's score order, and items of
one leaf are ordered by a distance to the query where one is given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from .decoder import Decoder
from .trie import Trie


class Beams(NamedTuple):
    """The surviving identifiers of a beam search, best first."""

    scores: torch.Tensor  # (Q, beams) float32 log-probabilities, -inf for no beam
    leaves: torch.Tensor  # (Q, beams) int64 leaf indices into the trie, -1 for no beam


def beam_search(decoder: Decoder, x: torch.Tensor, trie: Trie, beam_size: int) -> Beams:
    """The ``beam_size`` most likely valid identifiers for each query in ``x``."""
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    state = decoder.start(x)
    queries, vocab = len(x), trie.vocab_size
    scores = x.new_zeros(queries, 1, dtype=torch.float32)
    nodes = torch.zeros(queries, 1, dtype=torch.long, device=x.device)
    codes = None
    for depth in range(trie.num_levels):
        logits = decoder.step(state, codes).float()  # (Q, b, L)
        child = trie.children(depth, nodes.clamp(min=0))  # (Q, b, L), -1 = not allowed
        allowed = (child >= 0) & (nodes >= 0)[..., None]
        logp = logits.masked_fill(~allowed, float("-inf")).log_softmax(dim=-1)
        candidates = (scores[..., None] + logp).masked_fill(~allowed, float("-inf"))
        top = candidates.reshape(queries, -1).topk(min(beam_size, candidates[0].numel()), dim=1)
        scores = top.values
        nodes = child.reshape(queries, -1).gather(1, top.indices)
        nodes = nodes.masked_fill(torch.isinf(scores), -1)
        if depth + 1 < trie.num_levels:
            state.reorder(top.indices // vocab)
            codes = top.indices % vocab
    return Beams(scores, nodes)


def top_items(trie: Trie, beams: Beams, k: int,
              distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best items per query: ``(scores, ids)``, each (Q, k).

    Items inherit their leaf's score. ``distance(query_index, ids)`` ranks the
    items of one leaf (smaller first); without it they keep id order. Rows with
    fewer than ``k`` items are padded with id ``-1`` and score ``-inf``.
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
        # sort by (query, beam rank, distance): a stable sort by the minor key first
        order = torch.argsort(distance(query, item_ids), stable=True)
        order = order[torch.argsort(beam[order], stable=True)]
        beam, query, item_ids = beam[order], query[order], item_ids[order]
    per_query = torch.bincount(query, minlength=queries)
    rank = torch.arange(total, device=device) - (per_query.cumsum(0) - per_query)[query]
    keep = rank < k
    scores[query[keep], rank[keep]] = beams.scores.reshape(-1)[beam[keep]]
    ids[query[keep], rank[keep]] = item_ids[keep]
    return scores, ids
