"""Tables a search reads instead of recomputing them for every beam.

A frozen decoder computes some values that depend on a code alone, not on the
query. A search reads them from a table computed once per weights and
precision and kept on the decoder until the weights change:

* :func:`output_rows`: the output layer's (and codewords') rows of one level in
  the working precision, which the ragged step gathers for the allowed codes;
* :func:`after_first_code`: the first block's residual stream after its
  self-attention, and its key and value, for a beam whose prefix is one code.
  In the first block, self-attention comes before the cross-attention to the
  query's memory, so at that position it sees the start token and the code
  alone: there are L such values, whatever the queries. With one block and M =
  2 this is a third of the decoder's work at the last step.

Tables are kept for a frozen decoder only (no weight requires grad, as after
training), checked against the weights' versions, and replaced as a whole, so
a search racing a weight change reads either the old table or the new one
(``_kept``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

KV = tuple[torch.Tensor, torch.Tensor]

# read the first block's attention after the first code from its table (False: compute
# it for every beam, the plain path, which benchmarks/roofline.py times as "before")
FIRST_CODE_TABLE = True


class FirstCode(NamedTuple):
    """The first block after its self-attention at the position of each first code."""

    x: torch.Tensor  # (L, E) the residual stream after self-attention
    k: torch.Tensor  # (L, heads, 1, head_dim) the code position's key
    v: torch.Tensor  # (L, heads, 1, head_dim) and value
    start_k: torch.Tensor  # (1, heads, 1, head_dim) the start token's key
    start_v: torch.Tensor  # and value


def output_rows(decoder: nn.Module, level: int, dtype: torch.dtype) -> tuple[torch.Tensor, Any]:
    """The output layer's (and codewords') rows at ``level`` in ``dtype``: a copy
    kept until the weights change (float32: the weights)."""
    codewords = decoder.codewords
    tables = (decoder.head[level], None if codewords is None else codewords[level])
    if dtype == torch.float32:
        return tables
    return _kept(decoder, ("output rows", level, dtype),
                 _versions([decoder.head] + ([] if codewords is None else [codewords])),
                 lambda: tuple(None if t is None else t.detach().to(dtype) for t in tables))


def row_dots(a: torch.Tensor, rows: torch.Tensor, b: torch.Tensor,
             columns: torch.Tensor) -> torch.Tensor:
    """(T,) float32: the dot products of rows ``a[rows]`` and ``b[columns]`` (the
    fastest kernel on CPUs: a batched product in float32, ``vecdot`` below it)."""
    left, right = torch.index_select(a, 0, rows), torch.index_select(b, 0, columns)
    if a.dtype == torch.float32:
        return torch.bmm(left[:, None, :], right[:, :, None]).reshape(-1)
    return torch.linalg.vecdot(left, right).float()


def after_first_code(decoder: nn.Module, codes: torch.Tensor, dtype: torch.dtype,
                     cache: bool = True) -> tuple[torch.Tensor, KV | None]:
    """For beams whose prefix is the first code ``codes`` (Q, beams): the first
    block's residual stream after its self-attention (Q, beams, E) and, with
    ``cache``, its key/value cache of the start token and the code (in ``dtype``,
    the start step's cache's), as :meth:`Decoder.advance` computes them. Call it
    in the precision (autocast) the search runs in: the table is that one's."""
    block = decoder.blocks[0]
    modules = (decoder.wte, decoder.wpe, block.ln_1, block.attn)
    key = ("first code", working_dtype(codes.device), dtype)
    table = _kept(decoder, key, _versions([p for m in modules for p in m.parameters()]),
                  lambda: _first_code_table(decoder, dtype, codes.device))
    flat = codes.reshape(-1)
    x = table.x.index_select(0, flat).view(*codes.shape, -1)
    if not cache:
        return x, None
    rows = len(flat)
    return x, (torch.cat([table.start_k.expand(rows, -1, -1, -1),
                          table.k.index_select(0, flat)], dim=2),
               torch.cat([table.start_v.expand(rows, -1, -1, -1),
                          table.v.index_select(0, flat)], dim=2))


@torch.no_grad()
def _first_code_table(decoder: nn.Module, dtype: torch.dtype, device: torch.device) -> FirstCode:
    """:class:`FirstCode` of every level-1 code: the start token's step, then each
    code's, on the cached path a search takes (the same operations, one row per code)."""
    block, size = decoder.blocks[0], decoder.codebook_size
    heads, width = decoder.config.n_head, decoder.config.n_embd
    empty = torch.zeros(1, heads, 0, width // heads, dtype=dtype, device=device)
    start = decoder.wte.weight[:1] + decoder.wpe.weight[0]  # (1, E)
    _, (k0, v0) = block.attn(block.ln_1(start)[:, None], (empty, empty))
    x = decoder.wte.weight[1:1 + size] + decoder.wpe.weight[1]  # token 1 + code at level 1
    a, (k, v) = block.attn(block.ln_1(x)[:, None],
                           (k0.expand(size, -1, -1, -1), v0.expand(size, -1, -1, -1)))
    return FirstCode(x + a[:, 0], k[:, :, 1:], v[:, :, 1:], k0, v0)


def _kept(decoder: nn.Module, key: tuple, version: tuple, compute) -> Any:
    """``compute()``, kept on ``decoder`` under ``key`` while ``version`` holds. Only a
    frozen decoder's: an optimiser may write weights without bumping their versions
    (fused kernels), so while any weight trains, every call computes afresh."""
    if any(p.requires_grad for p in decoder.parameters()):
        return compute()
    cache = decoder.__dict__.setdefault("_search_tables", {})
    kept = cache.get(key)
    if kept is None or kept[0] != version:
        kept = cache[key] = (version, compute())
    return kept[1]


def _versions(tensors: list[torch.Tensor]) -> tuple:
    """What changes when any of ``tensors`` is written or replaced."""
    return tuple((t._version, t.data_ptr()) for t in tensors)


def working_dtype(device: torch.device) -> torch.dtype:
    """The precision matrix products run in here: autocast's, else float32."""
    return (torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type)
            else torch.float32)
