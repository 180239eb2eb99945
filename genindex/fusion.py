"""Score fusion: the query's cosine to each codeword, added to the beam's log-probabilities.

Residual quantization is additive: an item's f_cls is about the sum of its
identifier's codewords, so for a query whose f_cls is ``q``,
``q . f_cls(item) ~ sum_m q . c_{m, l_m}``. One (L x dim) product per level
gives every code's share (:func:`codeword_scores`); beam search adds
``weight`` times it to each code's log-probability, so an identifier's score
becomes ``log p(identifier | query) + weight * q . (c_{1,l_1} + ... + c_{M,l_M})``:
the decoder's order and the tokenizer's embedding in one beam. A prefix the
decoder ranks low but whose codewords lie near the query survives the beam.
The decoder itself knows nothing of it: the scores come in through
:func:`genindex.beam.beam_search`'s ``prior``, as the trie's constraints do.

The same scores can also sit inside the decoder's softmax, trained with it
(``DecoderConfig.prior``): :class:`CodewordScores` gives them for a batch of
training inputs (the decoder's ``forward(bias=)``) and beam search adds them to
each code's logit (its ``bias``), so the decoder learns what the embedding misses.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .tokenizer import SemanticTokenizer
from .trie import Trie


class CodewordScores(NamedTuple):
    """The cosine shares of every codeword for a set of queries, computed by rows."""

    queries: torch.Tensor  # (Q, D) the queries' normalised f_cls
    codebooks: torch.Tensor  # (M, L, D) float32
    weight: float

    @classmethod
    @torch.no_grad()
    def of(cls, tokenizer: SemanticTokenizer, vectors: torch.Tensor,
           weight: float) -> CodewordScores:
        """For the queries' global features ``vectors`` (Q, d)."""
        queries = torch.cat([F.normalize(tokenizer.f_cls(chunk).float(), dim=-1)
                             for chunk in vectors.split(1 << 14)])
        return cls(queries, tokenizer.quantizer.codebooks.detach().float(), weight)

    def rows(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(B, M, L): ``weight`` times the scores of the queries ``rows`` (all: None)."""
        queries = self.queries if rows is None else self.queries[rows]
        return self.weight * torch.einsum("qd,mld->qml", queries, self.codebooks)


def codeword_scores(tokenizer: SemanticTokenizer, vectors: torch.Tensor,
                    weight: float) -> torch.Tensor:
    """(Q, M, L) float32: ``weight`` times the cosine share of every codeword, for the
    queries' global feature ``vectors`` (Q, d): their normalised f_cls dotted with it."""
    return CodewordScores.of(tokenizer, vectors, weight).rows()


def step_bias(trie: Trie, depth: int, child: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """(Q, width, L): what fusion adds to each candidate of step ``depth``; ``child``
    (Q, width, L) holds the node each code leads to (-1: not allowed), ``prior`` is
    :func:`codeword_scores` (see :func:`candidate_bias`)."""
    bias = prior[:, depth, None, :].expand(child.shape).clone()
    query, beam, code = (child >= 0).nonzero(as_tuple=True)
    bias[query, beam, code] = candidate_bias(trie, depth, query, code,
                                             child[query, beam, code].long(), prior)
    return bias


def candidate_bias(trie: Trie, depth: int, query: torch.Tensor, code: torch.Tensor,
                   node: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """(T,): what fusion adds to the candidates ``code`` (T,) of the queries ``query``
    (T,) at step ``depth``, leading to ``node`` (T,) one level down.

    A candidate gets its code's score at this level and, where its node has a
    single identifier below it (the beam then finishes, its later codes forced),
    the scores of those later codes, so that a finished identifier's score is
    complete when it competes.
    """
    bias = prior[query, depth, code].clone()
    if depth + 1 == trie.num_codebooks or not len(node):
        return bias
    first, count = trie.leaf_range(depth + 1, node)
    single = torch.nonzero(count == 1, as_tuple=True)[0]
    if not len(single):
        return bias
    rows = trie.tables(node.device).leaf_ptr[first[single]].long().cpu().numpy()
    later = torch.from_numpy(trie.codes[rows, depth + 1:].astype(np.int64)).to(node.device)
    levels = torch.arange(depth + 1, trie.num_codebooks, device=node.device)
    bias[single] += prior[query[single, None], levels, later].sum(dim=1)
    return bias
