"""The autoregressive decoder: a Transformer that writes an image identifier.

A standard decoder block (causal self-attention, cross-attention to the
encoder's memory tokens, MLP) stacked ``n_layer`` times (paper section 3.2).
The output at position ``t`` predicts code ``t`` of the identifier, so the
identifier ``(l_1, ..., l_M)`` is scored as prod_t p(l_t | x, l_<t) (eq. 5).

Training calls :meth:`Decoder.forward` on whole identifiers (teacher forcing).
Beam search calls :meth:`Decoder.start` once per batch of queries and then
:meth:`Decoder.step` once per code: a key/value cache keeps every earlier
position, and beams attend to their query's memory without copying it. After
the first code, the first block's self-attention depends on that code alone,
and is read from a table (:func:`genindex.tables.after_first_code`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import tables
from .backbones import Backbone
from .config import DecoderConfig

KV = tables.KV
# a cached step's self-attention over at most this many positions: by elementwise products
SHORT_ATTENTION = 16


class VectorMemory(nn.Module):
    """Turns a query vector (B, d) into ``n_memory`` memory tokens (B, n_memory, E)."""

    def __init__(self, input_dim: int, n_memory: int, n_embd: int,
                 input_dropout: float = 0.0, reader: nn.Module | None = None) -> None:
        """``reader``: a frozen module applied to the query first (its output has
        ``input_dim`` columns), e.g. the tokenizer's f_cls."""
        super().__init__()
        self.n_memory, self.n_embd = n_memory, n_embd
        self.reader = reader
        if reader is not None:
            reader.requires_grad_(False)
        self.drop_in = nn.Dropout(input_dropout)
        self.ln_in = nn.LayerNorm(input_dim)
        self.proj = nn.Linear(input_dim, n_memory * n_embd)
        self.ln_out = nn.LayerNorm(n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reader is not None:
            with torch.no_grad():
                x = self.reader.eval()(x).to(self.proj.weight.dtype)
        tokens = self.proj(self.ln_in(self.drop_in(x))).view(len(x), self.n_memory, self.n_embd)
        return self.ln_out(tokens)


class TokenMemory(nn.Module):
    """Runs a backbone on pixels and projects its spatial tokens: (B, T, E).

    This is the end-to-end mode of the paper: the decoder cross-attends to the
    encoder's tokens, and the encoder trains with it.
    """

    def __init__(self, backbone: Backbone, n_embd: int, input_dropout: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.drop_in = nn.Dropout(input_dropout)
        self.ln_in = nn.LayerNorm(backbone.token_dim)
        self.proj = nn.Linear(backbone.token_dim, n_embd)
        self.ln_out = nn.LayerNorm(n_embd)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        tokens = self.backbone(pixels).tokens.float()
        return self.ln_out(self.proj(self.ln_in(self.drop_in(tokens))))


class SelfAttention(nn.Module):
    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.n_head, self.dropout = config.n_head, config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor, past: KV | None = None) -> tuple[torch.Tensor, KV]:
        """Causal attention over ``x`` (B, T, E), after the cached ``past`` if given."""
        q, k, v = (_heads(t, self.n_head) for t in self.c_attn(x).chunk(3, dim=2))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        if past is not None and q.shape[2] == 1 and k.shape[2] <= SHORT_ATTENTION:
            y = _short_attention(q, k, v)  # one new position over a few cached ones
        else:  # with a cache, the new positions come last and may see everything
            causal = past is None and x.shape[1] > 1
            y = F.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                               dropout_p=self.dropout if self.training else 0.0)
        return self.c_proj(_merge(y)), (k, v)


class CrossAttention(nn.Module):
    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.n_head, self.dropout = config.n_head, config.dropout
        self.q = nn.Linear(config.n_embd, config.n_embd)
        self.kv = nn.Linear(config.n_embd, 2 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)

    def memory_kv(self, memory: torch.Tensor) -> KV:
        k, v = self.kv(memory).chunk(2, dim=2)
        return _heads(k, self.n_head), _heads(v, self.n_head)

    def forward(self, x: torch.Tensor, memory_kv: KV) -> torch.Tensor:
        """Every position of ``x`` (B, T, E) attends to all of its row's memory."""
        if memory_kv[1].shape[2] == 1 and not self.training:
            # one memory token takes all the attention: the output is its value for
            # every position, (B, 1, E), broadcast by the caller (speed: no q, 1 row)
            return self.c_proj(_merge(memory_kv[1]))
        y = F.scaled_dot_product_attention(_heads(self.q(x), self.n_head), *memory_kv,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.c_proj(_merge(y))


class MLP(nn.Module):
    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = SelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.cross = CrossAttention(config)
        self.ln_3 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, memory_kv: KV,
                past: KV | None = None) -> tuple[torch.Tensor, KV]:
        """``x`` is (B, T, E); with ``past``, (Q, beams, E): one new position per beam."""
        h = self.ln_1(x)
        if past is None:
            a, present = self.attn(h)
        else:
            rows, beams, width = h.shape
            a, present = self.attn(h.reshape(rows * beams, 1, width), past)
            a = a.reshape(rows, beams, width)
        return self.finish(x + a, memory_kv), present

    def finish(self, x: torch.Tensor, memory_kv: KV) -> torch.Tensor:
        """The block after its self-attention: cross-attention, then the MLP."""
        x = x + self.cross(self.ln_2(x), memory_kv)
        return x + self.mlp(self.ln_3(x))


@dataclass
class DecodeState:
    """What :meth:`Decoder.step` keeps between steps for a (queries, beams) grid."""

    memory_kv: list[KV]  # per layer, (Q, heads, S, head_dim): shared by a query's beams
    past: list[KV]  # per layer, (Q * beams, heads, t, head_dim)
    beams: int = 1
    t: int = 0
    # inference: after the first code, block 0 reads its attention from a table
    # (genindex.tables.after_first_code), so its cache of the start token is not copied
    tabled: bool = False

    def reorder(self, source: torch.Tensor) -> None:
        """Keep beam ``source[q, j]`` of each query as its new beam ``j``."""
        queries, beams = source.shape
        flat = (source + self.beams * torch.arange(queries, device=source.device)[:, None])
        flat = flat.reshape(-1)
        skip = 1 if self.tabled and self.t == 1 else 0
        self.past = self.past[:skip] + [(k.index_select(0, flat), v.index_select(0, flat))
                                        for k, v in self.past[skip:]]
        self.beams = beams


class Decoder(nn.Module):
    """Transformer decoder over M-code identifiers (M = ``num_codebooks``) with codebooks
    of L = ``codebook_size`` codes; its embedding has a row for the start token and one
    for every (level, code) pair, 1 + M * L in all."""

    def __init__(self, config: DecoderConfig, codebook_size: int, num_codebooks: int,
                 memory: nn.Module, code_dim: int | None = None) -> None:
        """``memory`` maps the decoder's input to memory tokens (B, S, n_embd): a
        :class:`VectorMemory` for query vectors (:meth:`for_vectors`) or a
        :class:`TokenMemory` over a backbone's tokens. ``code_dim``: the codewords'
        width, for ``config.head == "codebook"`` (set them with :meth:`set_codewords`)."""
        super().__init__()
        self.config = config
        self.codebook_size, self.num_codebooks = codebook_size, num_codebooks
        E = config.n_embd
        self.memory = memory
        # token 0 is the start token; code l at level m is token 1 + m * L + l
        self.wte = nn.Embedding(1 + num_codebooks * codebook_size, E)
        self.wpe = nn.Embedding(num_codebooks, E)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(E)
        # one output layer per level: code l at level 1 and at level 2 are unrelated
        self.head = nn.Parameter(torch.empty(num_codebooks, codebook_size, E))
        kept = [b for b in self.modules() if isinstance(b, Backbone)]
        kept += [memory.reader] if getattr(memory, "reader", None) is not None else []
        pretrained = {id(m) for b in kept for m in b.modules()}
        for module in self.modules():
            if id(module) not in pretrained:  # a backbone or a reader keeps its weights
                self._init_weights(module)
        nn.init.normal_(self.head, std=0.02)
        codewords = None
        if config.head == "codebook":
            if code_dim is None:
                raise ValueError("a decoder with head='codebook' needs code_dim")
            codewords = torch.zeros(num_codebooks, codebook_size, code_dim)
            self.to_code = nn.Linear(E, code_dim, bias=False)
            nn.init.normal_(self.to_code.weight, std=E ** -0.5)
            self.code_scale = nn.Parameter(torch.full((1,), 16.0))
        self.codewords: torch.Tensor | None
        self.register_buffer("codewords", codewords)
        for name, p in self.blocks.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(3 * config.n_layer))

    @classmethod
    def for_vectors(cls, config: DecoderConfig, codebook_size: int, num_codebooks: int,
                    input_dim: int, code_dim: int | None = None,
                    reader: nn.Module | None = None) -> Decoder:
        """A decoder whose queries are vectors, ``input_dim`` wide once ``reader``
        (optional, frozen; see :class:`VectorMemory`) has read them."""
        memory = VectorMemory(input_dim, config.n_memory, config.n_embd, config.input_dropout,
                              reader)
        return cls(config, codebook_size, num_codebooks, memory, code_dim)

    @torch.no_grad()
    def set_codewords(self, codebooks: torch.Tensor) -> None:
        """The tokenizer's codebooks (M, L, D), which a ``"codebook"`` head scores by."""
        if self.codewords is not None:
            self.codewords.copy_(codebooks)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor, prefix: torch.Tensor,
                targets: torch.Tensor | None = None, allowed: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, t + 1, L) for the codes that follow each prefix of ``prefix`` (B, t).

        With ``targets`` (B, t + 1), also the mean cross-entropy; training passes
        ``prefix = targets[:, :-1]``. With ``allowed`` (B, t + 1, L) bool, the
        cross-entropy of each position is taken over its allowed codes only
        (:func:`masked_cross_entropy`), as beam search scores them. ``bias``
        (B, t + 1, L), if given, is added to the logits (beam search adds the same
        through its ``bias``: ``DecoderConfig.prior``).
        """
        memory = self.memory(x)
        memory_kv = [block.cross.memory_kv(memory) for block in self.blocks]
        h = self._embed(prefix)
        for block, kv in zip(self.blocks, memory_kv):
            h, _ = block(h, kv)
        logits = self._logits(self.ln_f(h), first_level=0)
        if bias is not None:
            logits = logits + bias
        loss = None
        smoothing = self.config.label_smoothing
        if targets is not None and allowed is not None:
            loss = masked_cross_entropy(logits, targets, allowed, smoothing)
        elif targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, self.codebook_size), targets.reshape(-1),
                                   label_smoothing=smoothing)
        return logits, loss

    def start(self, x: torch.Tensor) -> DecodeState:
        """A fresh decoding state for the queries ``x``: one beam each, empty prefix."""
        memory = self.memory(x)
        memory_kv = [block.cross.memory_kv(memory) for block in self.blocks]
        head_dim = self.config.n_embd // self.config.n_head
        empty = memory.new_zeros(len(x), self.config.n_head, 0, head_dim)
        return DecodeState(memory_kv, [(empty, empty)] * len(self.blocks),
                           tabled=tables.FIRST_CODE_TABLE and not (
                               self.training or torch.is_grad_enabled()))

    def step(self, state: DecodeState, codes: torch.Tensor | None) -> torch.Tensor:
        """Feed each beam's latest code (Q, beams), or at ``state.t == 0`` ``codes=None``
        (the start token); logits of the next code (Q, beams, L)."""
        level = state.t
        return self.level_logits(self.advance(state, codes), level)

    def level_logits(self, h: torch.Tensor, level: int) -> torch.Tensor:
        """The logits (Q, beams, L) of every code at ``level`` after :meth:`advance`'s
        hidden states ``h`` (Q, beams, E)."""
        return self._logits(h[:, :, None], first_level=level)[:, :, 0]

    def advance(self, state: DecodeState, codes: torch.Tensor | None) -> torch.Tensor:
        """:meth:`step` up to the output layer: each beam's final hidden state
        (Q, beams, E), which :meth:`code_logits` scores for chosen codes only."""
        queries, skip = len(state.memory_kv[0][0]), 0
        if state.t == 1 and state.tabled:
            # after the first code, block 0's self-attention is the code's alone: a table
            h, cache = tables.after_first_code(self, codes, state.past[0][0].dtype,
                                               cache=self.num_codebooks > 2)
            h, present, skip = self.blocks[0].finish(h, state.memory_kv[0]), [cache], 1
        else:
            tokens = (torch.zeros(queries, state.beams, dtype=torch.long,
                                  device=state.memory_kv[0][0].device) if state.t == 0
                      else 1 + (state.t - 1) * self.codebook_size + codes)
            h, present = self.drop(self.wte(tokens) + self.wpe.weight[state.t]), []
        for block, kv, past in zip(self.blocks[skip:], state.memory_kv[skip:],
                                   state.past[skip:]):
            h, cache = block(h, kv, past)
            present.append(cache)
        state.past = present
        state.t += 1
        return self.ln_f(h)

    def code_logits(self, h: torch.Tensor, rows: torch.Tensor, level: int,
                    codes: torch.Tensor) -> torch.Tensor:
        """The logits (T,) of ``codes`` (T,) at ``level`` after the beams ``rows`` (T,)
        of ``h`` (B, E), :meth:`advance`'s hidden states: :meth:`step`'s values at those
        codes, computed for them alone (a beam whose prefix allows a few of the L codes
        scores those few). Under autocast the output rows are gathered in its dtype."""
        dtype = tables.working_dtype(h.device)
        state = None if self.codewords is None else F.normalize(self.to_code(h), dim=-1)
        head, codewords = tables.output_rows(self, level, dtype)
        logits = tables.row_dots(h.to(dtype), rows, head, codes)
        if state is None:
            return logits
        return logits + self.code_scale * tables.row_dots(state.to(dtype), rows, codewords, codes)

    def _embed(self, prefix: torch.Tensor) -> torch.Tensor:
        """Start token followed by the level-specific embedding of each code."""
        level = torch.arange(prefix.shape[1], device=prefix.device)
        start = torch.zeros(len(prefix), 1, dtype=torch.long, device=prefix.device)
        tokens = torch.cat([start, 1 + level * self.codebook_size + prefix], dim=1)
        positions = torch.arange(tokens.shape[1], device=prefix.device)
        return self.drop(self.wte(tokens) + self.wpe(positions))

    def _logits(self, h: torch.Tensor, first_level: int) -> torch.Tensor:
        """Apply the output layer of level ``first_level + i`` to position ``i`` of h."""
        levels = slice(first_level, first_level + h.shape[-2])
        logits = torch.einsum("...te,tle->...tl", h, self.head[levels])
        if self.codewords is None:
            return logits
        state = F.normalize(self.to_code(h), dim=-1)
        codewords = self.codewords[levels].to(state.dtype)
        return logits + self.code_scale * torch.einsum("...td,tld->...tl", state, codewords)


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, allowed: torch.Tensor,
                         smoothing: float = 0.0) -> torch.Tensor:
    """Mean label-smoothed cross-entropy, each position's softmax over its allowed codes.

    ``logits`` (..., L), ``targets`` (...) and ``allowed`` (..., L) bool, which must
    mark every target. Smoothing spreads over the allowed codes, so a position
    with one allowed code (forced: beam search gives it log-probability 0)
    contributes exactly 0.
    """
    if not allowed.gather(-1, targets[..., None]).all():
        raise ValueError("allowed: a target code is not allowed")
    logp = logits.float().masked_fill(~allowed, float("-inf")).log_softmax(dim=-1)
    logp = logp.masked_fill(~allowed, 0.0)
    nll = -logp.gather(-1, targets[..., None])[..., 0]
    uniform = -logp.sum(dim=-1) / allowed.sum(dim=-1)
    return ((1 - smoothing) * nll + smoothing * uniform).mean()


def _short_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention of one query position (B, H, 1, D) over a few keys and values
    (B, H, t, D), by elementwise products: for t of a few, ``scaled_dot_product_attention``
    on a CPU spends far longer setting up each of the B x H tiny problems."""
    weights = (q.float() * k.float()).sum(dim=-1, keepdim=True).mul_(q.shape[-1] ** -0.5)
    return (weights.softmax(dim=2) * v.float()).sum(dim=2, keepdim=True).to(v.dtype)


def _heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """(B, T, E) -> (B, heads, T, E / heads)."""
    B, T, E = x.shape
    return x.view(B, T, n_head, E // n_head).transpose(1, 2)


def _merge(y: torch.Tensor) -> torch.Tensor:
    """(B, heads, T, head_dim) -> (B, T, E)."""
    B, H, T, D = y.shape
    return y.transpose(1, 2).reshape(B, T, H * D)
