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
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from . import distributed
from .backbones import Backbone
from .config import IndexConfig
from .decoder import Decoder, TokenMemory
from .loop import BatchLoss, Objective, autocast, batches, epoch_plan, num_epochs, train_loop
from .partners import Partners
from .tokenizer import SemanticTokenizer, chunk_size
from .trie import Trie

log = logging.getLogger(__name__)


@dataclass
class TrainHistory:
    """Mean training loss of every epoch."""

    tokenizer_loss: list[float] = field(default_factory=list)
    decoder_loss: list[float] = field(default_factory=list)


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
    if end_to_end and labels is None:
        raise ValueError("labels are required in end-to-end mode: the backbone is fine-tuned "
                         "by the classification loss (or set end_to_end=False)")
    generator = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        encoder = copy.deepcopy(backbone).train() if end_to_end else None
        tokenizer, tokenizer_loss = train_tokenizer(inputs, labels, config, generator,
                                                    progress, encoder)
        freeze(tokenizer)
        vectors = tokenizer.feature_vectors(inputs)
        codes = tokenizer.encode_vectors(vectors)
        decoder = new_decoder(tokenizer, config).to(inputs.device)
        partners = Partners(inputs, labels, config.decoder.neighbors)
        decoder_loss = train_decoder(decoder, inputs, codes, partners, config, generator,
                                     progress)
        freeze(decoder)
    return Models(tokenizer, decoder, TrainHistory(tokenizer_loss, decoder_loss), codes, vectors)


def train_tokenizer(x: torch.Tensor, labels: torch.Tensor | None, config: IndexConfig,
                    generator: torch.Generator, progress: bool = True,
                    encoder: Backbone | None = None) -> tuple[SemanticTokenizer, list[float]]:
    """Fit a tokenizer on features ``x`` (n, d) and integer ``labels`` (n,) or None.

    With an ``encoder`` (end-to-end mode) ``x`` holds pixels and the encoder is
    fine-tuned too, at ``config.backbone_lr_scale`` times the learning rate.
    L is shrunk to ``n`` when the training set has fewer than L items: k-means
    cannot place more centroids than there are points.
    """
    tc = config.tokenizer
    size = min(tc.codebook_size, len(x))
    if size < tc.codebook_size:
        log.warning("only %d training items: codebook size L shrunk from %d to %d",
                    len(x), tc.codebook_size, size)
    num_classes = None if labels is None else int(labels.max()) + 1
    input_dim = x.shape[1] if encoder is None else encoder.feature_dim
    tokenizer = SemanticTokenizer(input_dim, tc, num_classes, size, encoder).to(x.device)
    if labels is None:  # plain residual quantization of the input
        tokenizer.quantizer.fit(x, tc.kmeans_iters, generator)
        distributed.sync_buffers(tokenizer)  # GPU k-means sums in no fixed order
        return tokenizer, []
    epochs = num_epochs(tc.epochs, tc.min_steps, len(x), tc.batch_size)

    def passes() -> Iterator[Iterator[torch.Tensor]]:
        for epoch in range(epochs):
            # Alternating optimisation (paper 3.1): the codebooks are refit by
            # k-means on the current features, then the head is trained against
            # them. A full refit rather than an EMA update: the features of the
            # whole training set are cheap to recompute, the refit is exact and
            # deterministic, has no decay rate to tune and leaves no dead codes.
            if epoch % tc.refit_every == 0:
                tokenizer.quantizer.fit(_f_cls(tokenizer, x), tc.kmeans_iters, generator)
            yield batches(len(x), tc.batch_size, generator, x.device)

    objective = Objective(tokenizer, lambda t, x, y: t.loss(x, y, tc.lambda1, tc.lambda2))
    history = train_loop(objective, lambda model, rows: model(x[rows], labels[rows]), passes(),
                         epoch_plan(tc.lr, epochs, tc.warmup_epochs, len(x), tc.batch_size),
                         config, "train tokenizer", progress)
    features = _f_cls(tokenizer, x)
    tokenizer.quantizer.fit(features, tc.kmeans_iters, generator)
    if tokenizer.class_codes is not None:  # codebooks fit on the items, as the paper
        tokenizer.set_class_codes(tokenizer.class_centres(features, labels))
    distributed.sync_buffers(tokenizer)  # every rank encodes with rank 0's codebooks
    return tokenizer, history


def train_decoder(decoder: Decoder, x: torch.Tensor, codes: torch.Tensor, partners: Partners,
                  config: IndexConfig, generator: torch.Generator,
                  progress: bool = True) -> list[float]:
    """Teach ``decoder`` to write ``codes[j]`` for input ``x[i]``, j a partner of i.

    Each epoch ``partners`` draws one partner per item.
    """
    dc = config.decoder
    epochs = num_epochs(dc.epochs, dc.min_steps, len(x), dc.batch_size)
    trie = (Trie(codes.cpu().numpy(), np.arange(len(codes)), decoder.codebook_size)
            if dc.constrained_loss else None)

    def passes() -> Iterator[Iterator[torch.Tensor]]:
        for _ in range(epochs):
            partner = partners.sample(generator)
            yield (torch.stack([rows, partner[rows]], dim=1)
                   for rows in batches(len(x), dc.batch_size, generator, x.device))

    history = train_loop(decoder, decoder_loss(x, codes, trie), passes(),
                         epoch_plan(dc.lr, epochs, dc.warmup_epochs, len(x), dc.batch_size),
                         config, "train decoder", progress)
    distributed.sync_buffers(decoder)
    return history


def decoder_loss(x: torch.Tensor, codes: torch.Tensor, trie: Trie | None) -> BatchLoss:
    """The loss of a batch of ``(input row, target row)`` pairs (B, 2): the decoder reads
    ``x`` of the input and writes the identifier ``codes`` of the target.

    With a ``trie`` (``DecoderConfig.constrained_loss``) each code's softmax is over
    the codes the trie allows after its prefix, as beam search scores it.
    """
    def loss(model: nn.Module, pairs: torch.Tensor) -> torch.Tensor:
        pairs = pairs.to(x.device)
        target = codes[pairs[:, 1]]
        allowed = None if trie is None else trie.allowed(target)
        return model(x[pairs[:, 0]], target[:, :-1], target, allowed)[1]

    return loss


def new_decoder(tokenizer: SemanticTokenizer, config: IndexConfig) -> Decoder:
    """An untrained decoder for ``tokenizer``'s identifiers, reading the query vector,
    or (end to end) a trainable copy of the tokenizer's encoder's tokens."""
    quantizer = tokenizer.quantizer
    shape = (config.decoder, quantizer.codebook_size, quantizer.num_codebooks)
    if tokenizer.encoder is None:
        return Decoder.for_vectors(*shape, tokenizer.input_dim)
    backbone = copy.deepcopy(tokenizer.encoder).train().requires_grad_(True)
    return Decoder(*shape, TokenMemory(backbone, config.decoder.n_embd,
                                       config.decoder.input_dropout))


def freeze(module: nn.Module) -> None:
    module.eval()
    module.requires_grad_(False)


@torch.no_grad()
def _f_cls(tokenizer: SemanticTokenizer, x: torch.Tensor) -> torch.Tensor:
    """f_cls of every row of ``x``, in evaluation mode (what the codebooks are fit on)."""
    tokenizer.eval()
    with autocast(x.device):
        return torch.cat([tokenizer.features(chunk).float() for chunk in x.split(chunk_size(x))])
