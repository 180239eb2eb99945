"""Training an index's two models: the tokenizer first (eq. 3-4), then the decoder (eq. 5).

Three kinds of input, one pipeline (:func:`train_models`):

* feature vectors (no backbone) and frozen-backbone images: the tokenizer and
  the decoder read global feature vectors (images are embedded once, cached);
* end-to-end images (the paper): pixels go through a backbone inside the
  tokenizer (fine-tuned with it) and through a copy inside the decoder, which
  cross-attends to its spatial tokens (fine-tuned with the decoder). The
  tokenizer's backbone is frozen after its stage, so identifiers of items added
  later come from the encoder the codebooks were fit on.

Both models train through :func:`genindex.loop.train_loop`. Randomness comes
from one seeded generator and a forked global RNG (for dropout), so the same
data, config and seed give the same weights on CPU, and the caller's RNG state
is left alone.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import distributed, fusion
from .backbones import Backbone
from .config import IndexConfig, TokenizerConfig
from .decoder import Decoder, TokenMemory
from .loop import (
    BatchLoss,
    Objective,
    Stopping,
    batches,
    epoch_plan,
    num_epochs,
    train_loop,
    training_dtype,
)
from .partners import Partners
from .tokenizer import SemanticTokenizer, chunk_size
from .trie import Trie

log = logging.getLogger(__name__)


@dataclass
class TrainHistory:
    """Mean training loss of every epoch and, under a stopping rule, its held-out score
    (the tokenizer's: class accuracy of the identifiers; the decoder's: the share of
    greedily decoded identifiers that are a partner's)."""

    tokenizer_loss: list[float] = field(default_factory=list)
    decoder_loss: list[float] = field(default_factory=list)
    tokenizer_score: list[float] = field(default_factory=list)
    decoder_score: list[float] = field(default_factory=list)
    tokenizer_s: float | None = None  # wall-clock seconds of each stage
    decoder_s: float | None = None


class Models(NamedTuple):
    """What training gives: both models, and what it computed of the training items."""

    tokenizer: SemanticTokenizer
    decoder: Decoder
    history: TrainHistory
    codes: torch.Tensor  # (n, M) the identifier of every training item
    vectors: torch.Tensor  # (n, d) their global feature vectors


def train_models(inputs: torch.Tensor, labels: torch.Tensor | None, config: IndexConfig,
                 backbone: Backbone | None, progress: bool) -> Models:
    """Tokenizer first, then decoder; ``inputs`` are vectors, or pixels end to end."""
    end_to_end = config.end_to_end and backbone is not None
    check_end_to_end(labels, end_to_end)
    generator = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        encoder = copy.deepcopy(backbone).train() if end_to_end else None
        held = split_holdout(len(inputs), config, generator, inputs.device)
        started = time.perf_counter()
        tokenizer, tokenizer_stop = train_tokenizer(inputs, labels, config, generator,
                                                    progress, encoder, held)
        freeze(tokenizer)
        vectors = tokenizer.feature_vectors(inputs)
        codes = tokenizer.encode_vectors(vectors)
        if tokenizer.novelty_cosine is not None:  # for items added from now on
            tokenizer.set_novelty(vectors if held is None else vectors[held])
        tokenized = time.perf_counter()
        decoder = new_decoder(tokenizer, config).to(inputs.device)
        partners = decoder_partners(inputs, vectors, labels, tokenizer, config, progress)
        decoder_stop = train_decoder(decoder, inputs, codes, partners, config, generator,
                                     progress, held, f_cls_teacher(tokenizer, vectors, config))
        freeze(decoder)
    history = TrainHistory(tokenizer_stop.losses, decoder_stop.losses, tokenizer_stop.scores,
                           decoder_stop.scores, tokenized - started,
                           time.perf_counter() - tokenized)
    log.info("tokenizer trained in %.1f s (%d epochs), decoder in %.1f s (%d epochs)",
             history.tokenizer_s, len(history.tokenizer_loss), history.decoder_s,
             len(history.decoder_loss))
    return Models(tokenizer, decoder, history, codes, vectors)


def check_end_to_end(labels: torch.Tensor | None, end_to_end: bool) -> None:
    if end_to_end and labels is None:
        raise ValueError("labels are required in end-to-end mode: the backbone is fine-tuned "
                         "by the classification loss (or set end_to_end=False)")


class Trained(NamedTuple):
    """A stage's mean loss per epoch and held-out score per epoch (empty: no rule)."""

    losses: list[float]
    scores: list[float]


def split_holdout(n: int, config: IndexConfig, generator: torch.Generator,
                  device: torch.device) -> torch.Tensor | None:
    """The held-out rows: ``config.holdout`` of the rows (at most 2,000, at least 1)
    when a stopping rule is set, else None. Each stage trains on the others."""
    wanted = config.tokenizer.patience or config.decoder.patience
    size = min(int(round(config.holdout * n)), 2000)
    if not wanted or size < 1 or n - size < 2:
        return None
    return torch.randperm(n, generator=generator)[:size].sort().values.to(device)


def train_tokenizer(x: torch.Tensor, labels: torch.Tensor | None, config: IndexConfig,
                    generator: torch.Generator, progress: bool = True,
                    encoder: Backbone | None = None, held: torch.Tensor | None = None
                    ) -> tuple[SemanticTokenizer, Trained]:
    """Fit a tokenizer on features ``x`` (n, d) and integer ``labels`` (n,) or None.

    With an ``encoder`` (end-to-end mode) ``x`` holds pixels and the encoder is
    fine-tuned too, at ``config.backbone_lr_scale`` times the learning rate.
    L is shrunk to ``n`` when the training set has fewer than L items: k-means
    cannot place more centroids than there are points. ``held``: rows the head
    never trains on, scored by the stopping rule (``TokenizerConfig.patience``).
    """
    tc = config.tokenizer
    tokenizer = _new_tokenizer(x, labels, tc, encoder)
    if labels is None:  # plain residual quantization of the input
        tokenizer.quantizer.fit(x, tc.kmeans_iters, generator)
        distributed.sync_buffers(tokenizer)  # GPU k-means sums in no fixed order
        return tokenizer, Trained([], [])
    train = _complement(len(x), held, x.device)
    epochs = num_epochs(tc.epochs, tc.min_steps, len(train), tc.batch_size)
    # the refits' distance products in the training precision, as the loss's own encoding
    # under autocast; the final fit below, which sets the identifiers, is float32
    refit_dtype = training_dtype(x.device, config.precision)

    def passes() -> Iterator[Iterator[torch.Tensor]]:
        for epoch in range(epochs):
            # Alternating optimisation (paper 3.1): the codebooks are refit by
            # k-means on the current features (from scratch first, then started
            # from the current codebooks), and the head is trained against them.
            # A refit rather than an EMA update: the features of the whole
            # training set are cheap to recompute, the refit is deterministic,
            # has no decay rate to tune and leaves no dead codes.
            if epoch % tc.refit_every == 0:
                tokenizer.quantizer.fit(_f_cls(tokenizer, x), tc.refit_iters if epoch else
                                        tc.kmeans_iters, generator, warm=epoch > 0,
                                        dtype=refit_dtype)
            yield (train[rows] for rows in batches(len(train), tc.batch_size, generator,
                                                   x.device))

    stopping = None if held is None or not tc.patience else Stopping(
        lambda: identifier_accuracy(tokenizer, x[held], labels[held]), tc.patience)
    objective = Objective(tokenizer, lambda t, x, y: t.loss(x, y, tc.lambda1, tc.lambda2))
    history = train_loop(objective, lambda model, rows: model(x[rows], labels[rows]), passes(),
                         epoch_plan(tc.lr, epochs, tc.warmup_epochs, len(train), tc.batch_size),
                         config, "train tokenizer", progress, stopping)
    features = _f_cls(tokenizer, x)
    # class-first identifiers: the first codebook holds the class centres, so an item's
    # first code is its nearest class centre's (nearest class mean) and the others its own
    first = (tokenizer.class_centres(features, labels)[torch.unique(labels)]
             if tc.identifiers == "class-first" else None)
    tokenizer.quantizer.fit(features, tc.kmeans_iters, generator, first=first)
    if tokenizer.class_codes is not None:  # codebooks fit on the items, as the paper
        tokenizer.set_class_codes(tokenizer.class_centres(features, labels))
    distributed.sync_buffers(tokenizer)  # every rank encodes with rank 0's codebooks
    return tokenizer, Trained(history, [] if stopping is None else stopping.scores)


def _new_tokenizer(x: torch.Tensor, labels: torch.Tensor | None, tc: TokenizerConfig,
                   encoder: Backbone | None) -> SemanticTokenizer:
    """An untrained tokenizer for ``x``, L shrunk to ``len(x)`` where it has fewer items."""
    size = min(tc.codebook_size, len(x))
    if size < tc.codebook_size:
        log.warning("only %d training items: codebook size L shrunk from %d to %d",
                    len(x), tc.codebook_size, size)
    num_classes = None if labels is None else int(labels.max()) + 1
    input_dim = x.shape[1] if encoder is None else encoder.feature_dim
    return SemanticTokenizer(input_dim, tc, num_classes, size, encoder).to(x.device)


@torch.no_grad()
def identifier_accuracy(tokenizer: SemanticTokenizer, x: torch.Tensor,
                        labels: torch.Tensor) -> float:
    """The tokenizer's held-out score: the share of items whose identifier names their
    class (class identifiers: the class assigned; feature identifiers: the class of
    the reconstruction f^<=M)."""
    f = _f_cls(tokenizer, x)
    if tokenizer.class_codes is None:
        f = tokenizer.decode(tokenizer.quantizer.encode(f))
    return float((tokenizer.classifier(f).argmax(dim=1) == labels).float().mean())


@torch.no_grad()
def decoder_partners(inputs: torch.Tensor, vectors: torch.Tensor, labels: torch.Tensor | None,
                     tokenizer: SemanticTokenizer, config: IndexConfig,
                     progress: bool = False) -> Partners:
    """Who the decoder writes for each of ``inputs`` (``vectors``: their global features),
    as ``config.decoder.targets`` says."""
    dc = config.decoder
    ranking = tokenizer.f_cls(vectors) if dc.targets == "f_cls" else None
    return Partners(inputs, labels, dc.neighbors, progress, ranking, dc.temperature)


def train_decoder(decoder: Decoder, x: torch.Tensor, codes: torch.Tensor, partners: Partners,
                  config: IndexConfig, generator: torch.Generator,
                  progress: bool = True, held: torch.Tensor | None = None,
                  teacher: Teacher | None = None) -> Trained:
    """Teach ``decoder`` to write ``codes[j]`` for input ``x[i]``, j a partner of i
    (and, with a ``teacher``, its first code's odds toward the teacher's).

    Each epoch ``partners`` draws one partner per item. ``held``: rows never read
    as inputs (they remain targets), scored by the stopping rule
    (``DecoderConfig.patience``).
    """
    dc = config.decoder
    train = _complement(len(x), held, x.device)
    epochs = num_epochs(dc.epochs, dc.min_steps, len(train), dc.batch_size)
    trie = (Trie(codes.cpu().numpy(), np.arange(len(codes)), decoder.codebook_size)
            if dc.constrained_loss else None)

    def passes() -> Iterator[Iterator[torch.Tensor]]:
        for _ in range(epochs):
            partner = partners.sample(generator)
            yield (torch.stack([train[rows], partner[train[rows]]], dim=1)
                   for rows in batches(len(train), dc.batch_size, generator, x.device))

    stopping = None if held is None or not dc.patience else Stopping(
        lambda: partner_accuracy(decoder, x, codes, partners, held), dc.patience)
    history = train_loop(decoder, decoder_loss(x, codes, trie, teacher), passes(),
                         epoch_plan(dc.lr, epochs, dc.warmup_epochs, len(train), dc.batch_size),
                         config, "train decoder", progress, stopping)
    distributed.sync_buffers(decoder)
    return Trained(history, [] if stopping is None else stopping.scores)


@torch.no_grad()
def partner_accuracy(decoder: Decoder, x: torch.Tensor, codes: torch.Tensor,
                     partners: Partners, rows: torch.Tensor) -> float:
    """The decoder's held-out score: the share of ``rows`` whose greedily decoded
    identifier is that of one of their possible partners (or their own)."""
    decoder.eval()
    hits = []
    for chunk in rows.split(1024):
        state, step, decoded = decoder.start(x[chunk]), None, []
        for _ in range(codes.shape[1]):
            step = decoder.step(state, step).argmax(dim=-1)  # (Q, 1): one beam a query
            decoded.append(step[:, 0])
        hits.append(partners.is_partner_code(chunk, torch.stack(decoded, dim=1), codes))
    return float(torch.cat(hits).float().mean())


def _complement(n: int, held: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """The rows 0..n-1 not in ``held``."""
    keep = torch.ones(n, dtype=torch.bool, device=device)
    if held is not None:
        keep[held] = False
    return torch.nonzero(keep).flatten()


class Teacher(NamedTuple):
    """What the tokenizer's f_cls teaches the decoder: the first code's odds
    (``DecoderConfig.distill``: softmax over the first-level codewords of
    cosine(f_cls, codeword) / temperature) and the prior added to its logits
    (``DecoderConfig.prior``)."""

    f_cls: torch.Tensor  # (n, D) L2-normalised f_cls of every input row
    codewords: torch.Tensor  # (L, D) L2-normalised first-level codewords
    temperature: float
    weight: float  # of the first code's cross-entropy beside the partner's; 0: none
    prior: fusion.CodewordScores | None = None  # of every input row

    def loss(self, rows: torch.Tensor, logits: torch.Tensor,
             allowed: torch.Tensor | None) -> torch.Tensor:
        """Mean cross-entropy of the first-code ``logits`` (B, L) of ``rows`` toward the
        teacher's odds, both over the ``allowed`` (B, L) codes when given."""
        teacher = self.f_cls[rows] @ self.codewords.T / self.temperature
        student = logits.float()
        if allowed is not None:
            teacher = teacher.masked_fill(~allowed, -math.inf)
            student = student.masked_fill(~allowed, -math.inf)
        odds, log_q = teacher.softmax(dim=-1), student.log_softmax(dim=-1)
        return -torch.where(odds > 0, odds * log_q, 0.0).sum(dim=-1).mean()


@torch.no_grad()
def f_cls_teacher(tokenizer: SemanticTokenizer, vectors: torch.Tensor,
                  config: IndexConfig) -> Teacher | None:
    """The decoder's teacher for inputs of global features ``vectors``, or None when
    ``config.decoder.distill`` and ``config.decoder.prior`` are 0."""
    dc = config.decoder
    if not (dc.distill or dc.prior):
        return None
    scores = fusion.CodewordScores.of(tokenizer, vectors, dc.prior)
    codewords = F.normalize(scores.codebooks[0], dim=-1).to(scores.queries.device)
    return Teacher(scores.queries, codewords, dc.temperature, dc.distill,
                   scores if dc.prior else None)


def decoder_loss(x: torch.Tensor, codes: torch.Tensor, trie: Trie | None,
                 teacher: Teacher | None = None) -> BatchLoss:
    """The loss of a batch of ``(input row, target row)`` pairs (B, 2): the decoder reads
    ``x`` of the input and writes the identifier ``codes`` of the target.

    With a ``trie`` (``DecoderConfig.constrained_loss``) each code's softmax is over
    the codes the trie allows after its prefix, as beam search scores it. With a
    ``teacher``, its prior is added to the logits and its weight times the first
    code's cross-entropy toward it to the loss.
    """
    def loss(model: nn.Module, pairs: torch.Tensor) -> torch.Tensor:
        pairs = pairs.to(x.device)
        target = codes[pairs[:, 1]]
        allowed = None if trie is None else trie.allowed(target)
        prior = None if teacher is None or teacher.prior is None else teacher.prior.rows(
            pairs[:, 0])
        logits, partner_loss = model(x[pairs[:, 0]], target[:, :-1], target, allowed, prior)
        if teacher is None or not teacher.weight:
            return partner_loss
        first = None if allowed is None else allowed[:, 0]
        return partner_loss + teacher.weight * teacher.loss(pairs[:, 0], logits[:, 0], first)

    return loss


def new_decoder(tokenizer: SemanticTokenizer, config: IndexConfig) -> Decoder:
    """An untrained decoder for ``tokenizer``'s identifiers, reading the query vector,
    or (end to end) a trainable copy of the tokenizer's encoder's tokens."""
    quantizer = tokenizer.quantizer
    shape = (config.decoder, quantizer.codebook_size, quantizer.num_codebooks)
    code_dim = quantizer.codebooks.shape[-1]
    if tokenizer.encoder is None:
        width, reader = decoder_input(tokenizer, config)
        decoder = Decoder.for_vectors(*shape, width, code_dim, reader)
    else:
        backbone = copy.deepcopy(tokenizer.encoder).train().requires_grad_(True)
        decoder = Decoder(*shape, TokenMemory(backbone, config.decoder.n_embd,
                                              config.decoder.input_dropout), code_dim)
    decoder.set_codewords(quantizer.codebooks)
    return decoder


def decoder_input(tokenizer: SemanticTokenizer, config: IndexConfig
                  ) -> tuple[int, nn.Module | None]:
    """(width, reader) of what a vector decoder reads (``config.decoder.input``)."""
    if config.decoder.input == "f_cls":
        return tokenizer.quantizer.codebooks.shape[-1], tokenizer.frozen_f_cls()
    return tokenizer.input_dim, None


def freeze(module: nn.Module) -> None:
    module.eval()
    module.requires_grad_(False)


@torch.no_grad()
def _f_cls(tokenizer: SemanticTokenizer, x: torch.Tensor) -> torch.Tensor:
    """f_cls of every row of ``x``, in evaluation mode and float32 (what the codebooks
    are fit on; items are encoded the same way)."""
    tokenizer.eval()
    return torch.cat([tokenizer.features(chunk).float() for chunk in x.split(chunk_size(x))])
