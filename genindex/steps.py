"""One step of the constrained beam search: score the allowed codes, keep the best.

After the decoder has advanced every live beam by one position
(:meth:`genindex.decoder.Decoder.advance`), a step scores the codes the trie
allows after each beam's prefix, takes each beam's log-softmax over them, adds
the beam's score, and keeps the ``beam_size`` best of these continuations and
of the beams already finished. Two ways give the same beams:

* :func:`dense_step`: logits over all L codes of every beam (one matrix
  product), the codes not allowed masked to -inf;
* :func:`ragged_step`: logits for the allowed codes alone, listed node after
  node from the trie's CSR arrays (:meth:`genindex.trie.Trie.child_list`), the
  head rows of those codes gathered. Where prefixes allow a few codes of L
  (the last levels of a large codebook) this is a few dot products a beam
  instead of L, with no (beams, L) masks or log-softmax.

:func:`choose` picks between them by the share of allowed codes
(:data:`RAGGED_SHARE`). Both end in :func:`_pick`, so finishing and tie order
are one code path.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, NamedTuple

import torch

from . import fusion
from .decoder import Decoder
from .loop import training_dtype
from .trie import Trie

# the ragged step runs where the allowed codes are at most this share of beams x L
RAGGED_SHARE = 1 / 8


class Step(NamedTuple):
    """The outcome of selecting the best candidates of one step."""

    scores: torch.Tensor  # (Q, beam_size) best first
    nodes: torch.Tensor  # (Q, beam_size) node one level down, for live beams
    source: torch.Tensor  # (Q, beam_size) beam * L + code of each continuation
    live: torch.Tensor  # (Q, beam_size) bool: not finished, needs more decoding
    done_scores: torch.Tensor  # (Q, beam_size) finished beams' scores, -inf elsewhere
    done_leaves: torch.Tensor  # (Q, beam_size) their leaves, -1 elsewhere


class Beam(NamedTuple):
    """What a step reads of the search so far."""

    scores: torch.Tensor  # (Q, width) live beams' log-probabilities, -inf: padding
    nodes: torch.Tensor  # (Q, width) their nodes at this depth, -1: padding
    done_scores: torch.Tensor  # (Q, n) finished beams waiting in the pool
    done_leaves: torch.Tensor  # (Q, n) their leaves


def choose(trie: Trie, depth: int, nodes: torch.Tensor) -> bool:
    """Whether the ragged step is the cheaper one for these ``nodes`` (Q, width)."""
    allowed = int(trie.child_counts(depth, nodes.reshape(-1)).sum())
    return allowed <= RAGGED_SHARE * nodes.numel() * trie.codebook_size


def dense_step(decoder: Decoder, h: torch.Tensor, trie: Trie, depth: int, beam: Beam,
               beam_size: int, prior: torch.Tensor | None, dtype: Any = None,
               timings: dict[str, float] | None = None,
               bias: torch.Tensor | None = None) -> Step:
    """The step with logits over all L codes; ``h`` (Q, width, E) from ``advance``;
    ``dtype``: the head's precision; ``timings``: seconds of "head", "mask", "select";
    ``prior`` (Q, M, L): added to the log-probabilities (fusion), ``bias`` (Q, M, L):
    to the logits (``DecoderConfig.prior``)."""
    device = h.device
    with timed(timings, "head", device), precision_context(device, dtype):
        logits = decoder.level_logits(h, depth).float()  # (Q, width, L)
        if bias is not None:
            logits += bias[:, depth, None, :]
    with timed(timings, "mask", device):
        child = trie.children(depth, beam.nodes)  # (Q, width, L), -1: not allowed
        logits.masked_fill_(child < 0, float("-inf"))
    with timed(timings, "select", device):
        queries, width, size = logits.shape
        # a padding row, all -inf, gives NaN log-probabilities: -inf candidates
        candidates = beam.scores[..., None] + logits.log_softmax(dim=-1)
        if prior is not None:
            candidates += fusion.step_bias(trie, depth, child, prior)
        candidates = candidates.nan_to_num_(nan=-math.inf, neginf=-math.inf).reshape(
            queries, -1)
        source = torch.arange(width * size, device=device).expand(queries, -1)
        return _pick(trie, depth, candidates, source, child.reshape(queries, -1), beam,
                     beam_size)


def ragged_step(decoder: Decoder, h: torch.Tensor, trie: Trie, depth: int, beam: Beam,
                beam_size: int, prior: torch.Tensor | None, dtype: Any = None,
                timings: dict[str, float] | None = None,
                bias: torch.Tensor | None = None) -> Step:
    """:func:`dense_step`'s beams, from the logits of the allowed codes alone."""
    queries, width, _ = h.shape
    device = h.device
    with timed(timings, "mask", device):
        row, code, child = trie.child_list(depth, beam.nodes.reshape(-1))  # row: a beam
    with timed(timings, "head", device), precision_context(device, dtype):
        logits = decoder.code_logits(h.reshape(queries * width, -1), row, depth, code).float()
        if bias is not None:
            logits += bias[row // width, depth, code]
    with timed(timings, "select", device):
        return _ragged_pick(trie, depth, beam, beam_size, prior, row, code, child, logits,
                            (queries, width))


def _ragged_pick(trie: Trie, depth: int, beam: Beam, beam_size: int,
                 prior: torch.Tensor | None, row: torch.Tensor, code: torch.Tensor,
                 child: torch.Tensor, logits: torch.Tensor, shape: tuple[int, int]) -> Step:
    """:func:`_pick` on the ragged candidates ``(row, code, child)`` and their logits."""
    (queries, width), device = shape, logits.device
    # each beam's log-softmax over its allowed codes: a log-sum-exp per row
    top = torch.full((queries * width,), -math.inf, device=device)
    top = top.scatter_reduce(0, row, logits, "amax")
    total = torch.zeros_like(top).index_add_(0, row, (logits - top[row]).exp())
    values = beam.scores.reshape(-1)[row] + logits - (top + total.log())[row]
    query = row // width
    if prior is not None:
        values = values + fusion.candidate_bias(trie, depth, query, code, child, prior)
    # the candidates of one query are contiguous (rows are query-major): a grid
    count = torch.bincount(query, minlength=queries)
    rank = torch.arange(len(row), device=device) - (count.cumsum(0) - count)[query]
    columns = max(int(count.max()) if len(row) else 0, 1)
    grid = torch.full((queries, columns), -math.inf, device=device)
    source = torch.zeros((queries, columns), dtype=torch.long, device=device)
    nodes = torch.full((queries, columns), -1, dtype=torch.long, device=device)
    grid[query, rank] = values.nan_to_num(nan=-math.inf, neginf=-math.inf)
    source[query, rank] = (row % width) * trie.codebook_size + code
    nodes[query, rank] = child
    return _pick(trie, depth, grid, source, nodes, beam, beam_size)


def _pick(trie: Trie, depth: int, candidates: torch.Tensor, source: torch.Tensor,
          nodes: torch.Tensor, beam: Beam, beam_size: int) -> Step:
    """The best ``beam_size`` of the ``candidates`` (Q, C) (scores, with the ``source``
    and the child ``nodes`` of each) and of the finished beams."""
    queries, size = candidates.shape
    pool = torch.cat([candidates, beam.done_scores], dim=1)
    if pool.shape[1] < beam_size:  # pad so that every step keeps beam_size slots
        pool = torch.nn.functional.pad(pool, (0, beam_size - pool.shape[1]),
                                       value=float("-inf"))
    top = pool.topk(beam_size, dim=1)
    valid = ~torch.isinf(top.values)
    fresh = valid & (top.indices < size)  # a continuation of a live beam
    at = top.indices.clamp(max=size - 1)
    nodes = nodes.gather(1, at).masked_fill(~fresh, -1)
    done_leaves = beam.done_leaves
    kept = (top.indices - size).clamp(0, max(done_leaves.shape[1] - 1, 0))
    old_leaves = (done_leaves.gather(1, kept) if done_leaves.shape[1]
                  else torch.full_like(nodes, -1))
    if depth + 1 == trie.num_codebooks or not trie.num_nodes(depth + 1):
        leaves, live = nodes, torch.zeros_like(fresh)
    else:  # a node with one identifier below it is finished: its remaining codes are forced
        leaves, count = trie.leaf_range(depth + 1, nodes.clamp(min=0))
        live = fresh & (count > 1)
    done = valid & ~live
    leaves = torch.where(fresh, leaves, old_leaves).masked_fill(~done, -1)
    return Step(top.values, nodes, source.gather(1, at), live,
                top.values.masked_fill(~done, float("-inf")), leaves)


def live_grid(step: Step) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(scores, nodes, source)`` of the live beams, first in each row in score order,
    padded (score -inf, node -1) to the most live beams of any row."""
    width = int(step.live.sum(dim=1).max())
    order = torch.sort((~step.live).byte(), dim=1, stable=True).indices[:, :width]
    live = step.live.gather(1, order)
    return (step.scores.gather(1, order).masked_fill(~live, float("-inf")),
            step.nodes.gather(1, order).masked_fill(~live, -1),
            step.source.gather(1, order))


_PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def compute_dtype(dtype: Any) -> torch.dtype:
    """``dtype`` (None, a torch dtype or its name) as a decoder compute precision."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str) and dtype in _PRECISIONS:
        return _PRECISIONS[dtype]
    if isinstance(dtype, torch.dtype) and dtype in _PRECISIONS.values():
        return dtype
    raise ValueError(f"dtype must be None, 'float32', 'bfloat16' or 'float16' (or that "
                     f"torch dtype), got {dtype!r}")


def search_dtype(dtype: Any, device: torch.device, precision: str = "float32") -> torch.dtype:
    """A search's decoder precision: ``dtype`` if given, else the index config's
    ``precision`` (:func:`genindex.loop.training_dtype`): ``"auto"`` is bfloat16
    where ``device`` computes it natively (CUDA; a CPU with AVX512-BF16 or AMX),
    float32 elsewhere."""
    if dtype is not None:
        return compute_dtype(dtype)
    return training_dtype(device, precision) or torch.float32


def precision_context(device: torch.device, dtype: Any):
    """A context running the decoder in ``dtype`` (autocast), or doing nothing."""
    dtype = compute_dtype(dtype)
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@contextmanager
def timed(timings: dict[str, float] | None, part: str, device: torch.device) -> Iterator[None]:
    """Add the seconds the block takes to ``timings[part]`` (no-op without timings)."""
    if timings is None:
        yield
        return
    _synchronize(device)
    start = time.perf_counter()
    yield
    _synchronize(device)
    timings[part] = timings.get(part, 0.0) + time.perf_counter() - start


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
