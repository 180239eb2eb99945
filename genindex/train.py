"""Training: the tokenizer first (eq. 3-4), then the decoder on pairs (eq. 5).

Both use AdamW with betas (0.9, 0.96) and weight decay 0.05 and a cosine
learning-rate schedule after a linear warm-up (paper appendix A). Randomness
comes from one seeded generator and a forked global RNG (for dropout), so the
same data, config and seed give the same weights on CPU, and the caller's RNG
state is left alone.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .backbones import Backbone
from .config import DecoderConfig, IndexConfig, TokenizerConfig
from .decoder import Decoder
from .tokenizer import SemanticTokenizer, chunk_size
from .trie import Trie

log = logging.getLogger(__name__)
_DISTANCE_BLOCK = 1 << 25  # distances per block in the neighbour search (128 MiB)


@dataclass
class TrainHistory:
    """Mean training loss of every epoch."""

    tokenizer_loss: list[float] = field(default_factory=list)
    decoder_loss: list[float] = field(default_factory=list)


def train_tokenizer(x: torch.Tensor, labels: torch.Tensor | None, config: IndexConfig,
                    generator: torch.Generator, progress: bool = True,
                    encoder: Backbone | None = None) -> tuple[SemanticTokenizer, list[float]]:
    """Fit a tokenizer on features ``x`` (n, d) and integer ``labels`` (n,) or None.

    With an ``encoder`` (end-to-end mode) ``x`` holds pixels and the encoder is
    fine-tuned too, at ``config.backbone_lr_scale`` times the learning rate.
    L is shrunk to ``n`` when the training set has fewer than L items: k-means
    cannot place more centroids than there are points.
    """
    tc: TokenizerConfig = config.tokenizer
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
    optimizer, schedule = make_optimizer(tokenizer, tc.lr, config, len(x), tc.batch_size,
                                         epochs, tc.warmup_epochs)
    history: list[float] = []
    model = distributed.wrap(_TokenizerLoss(tokenizer, tc.lambda1, tc.lambda2))
    bar = epoch_bar(epochs, "tokenizer", progress)
    for epoch in bar:
        # Alternating optimisation (paper 3.1): the codebooks are refit by
        # k-means on the current features, then the head is trained against
        # them. A full refit rather than an EMA update: the features of the
        # whole training set are cheap to recompute, the refit is exact and
        # deterministic, has no decay rate to tune and leaves no dead codes.
        if epoch % tc.refit_every == 0:
            tokenizer.quantizer.fit(_features(tokenizer, x), tc.kmeans_iters, generator)
        tokenizer.train()
        losses = []
        for batch in batches(len(x), tc.batch_size, generator, x.device):
            idx, weight = distributed.shard(batch)  # all of it on one process
            with autocast(x.device):
                loss = model(x[idx], labels[idx])
            losses.append(step(weighted(loss, weight), optimizer, schedule))
        history.append(distributed.mean(sum(losses) / len(losses), x.device))
        bar.set_postfix(loss=f"{history[-1]:.4f}")
    features = _features(tokenizer, x)
    tokenizer.quantizer.fit(features, tc.kmeans_iters, generator)
    tokenizer.eval()
    if tokenizer.class_codes is not None:  # codebooks fit on the items, as the paper
        tokenizer.set_class_codes(tokenizer.class_centres(features, labels))
    distributed.sync_buffers(tokenizer)  # every rank encodes with rank 0's codebooks
    return tokenizer, history


def train_decoder(decoder: Decoder, x: torch.Tensor, codes: torch.Tensor,
                  partners: PartnerSampler, config: IndexConfig,
                  generator: torch.Generator, progress: bool = True) -> list[float]:
    """Teach ``decoder`` to write ``codes[j]`` for input ``x[i]``, j a partner of i.

    Each epoch ``partners`` draws one partner per item.
    """
    dc: DecoderConfig = config.decoder
    epochs = num_epochs(dc.epochs, dc.min_steps, len(x), dc.batch_size)
    optimizer, schedule = make_optimizer(decoder, dc.lr, config, len(x), dc.batch_size,
                                         epochs, dc.warmup_epochs)
    history: list[float] = []
    model = distributed.wrap(decoder)
    allowed = allowed_codes(codes, decoder.vocab_size, dc.constrained_loss)
    bar = epoch_bar(epochs, "decoder", progress)
    for _ in bar:
        decoder.train()
        target = codes[partners.sample(generator)]
        losses = []
        for batch in batches(len(x), dc.batch_size, generator, x.device):
            idx, weight = distributed.shard(batch)  # all of it on one process
            with autocast(x.device):
                _, loss = model(x[idx], target[idx, :-1], target[idx], allowed(target[idx]))
            losses.append(step(weighted(loss, weight), optimizer, schedule))
        history.append(distributed.mean(sum(losses) / len(losses), x.device))
        bar.set_postfix(loss=f"{history[-1]:.4f}")
    distributed.sync_buffers(decoder)
    decoder.eval()
    return history


def allowed_codes(codes: torch.Tensor, vocab_size: int,
                  constrained: bool) -> Callable[[torch.Tensor], torch.Tensor | None]:
    """For a batch of targets drawn from ``codes`` (n, M), the codes the loss ranges over.

    Constrained: at every level, the codes that follow the target's prefix among
    the identifiers ``codes`` (what beam search chooses among); else None (all L).
    """
    if not constrained:
        return lambda targets: None
    trie = Trie(codes.cpu().numpy(), np.arange(len(codes)), vocab_size)
    return trie.allowed


class PartnerSampler:
    """Draws, for every training item, the item whose identifier it should produce.

    With labels: a random other item of the same class (the item itself only
    when it is alone in its class), as in the paper. Without labels: one of the
    item's ``neighbors`` nearest neighbours by L2 distance in feature space.
    """

    def __init__(self, x: torch.Tensor, labels: torch.Tensor | None, neighbors: int) -> None:
        self.device = x.device
        if labels is None:
            self.knn = _nearest_neighbors(x, min(neighbors, max(len(x) - 1, 1)))
            return
        self.knn = None
        order = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels)
        starts = counts.cumsum(0) - counts
        self.order = order
        self.start = starts[labels]
        self.count = counts[labels]
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(order), device=self.device)
        self.position = rank - self.start  # place of each item inside its class

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        if self.knn is not None:
            pick = torch.randint(self.knn.shape[1], (len(self.knn),), generator=generator)
            return self.knn[torch.arange(len(self.knn)), pick.to(self.device)]
        others = (self.count - 1).clamp(min=1)
        r = (torch.rand(len(self.count), generator=generator).to(self.device) * others).long()
        r = r + ((r >= self.position) & (self.count > 1)).long()  # skip the item itself
        return self.order[self.start + r]


def _nearest_neighbors(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (n, k) of each row's k nearest other rows (exact, blockwise)."""
    norms = (x * x).sum(1)
    rows = max(1, _DISTANCE_BLOCK // len(x))  # a block holds rows * n distances
    out = []
    for start in range(0, len(x), rows):
        block = x[start:start + rows]
        d = (block * block).sum(1, keepdim=True) - 2 * block @ x.T + norms
        d[torch.arange(len(block)), torch.arange(start, start + len(block))] = float("inf")
        out.append(d.topk(k, dim=1, largest=False).indices)
    return torch.cat(out)


@torch.no_grad()
def _features(tokenizer: SemanticTokenizer, x: torch.Tensor) -> torch.Tensor:
    tokenizer.eval()
    with autocast(x.device):
        return torch.cat([tokenizer.features(chunk).float() for chunk in x.split(chunk_size(x))])


def num_epochs(epochs: int, min_steps: int, n: int, batch_size: int) -> int:
    """``epochs``, or more where that is fewer than ``min_steps`` optimizer steps."""
    return max(epochs, math.ceil(min_steps / math.ceil(n / batch_size)))


class OptimizerSettings(Protocol):
    weight_decay: float
    betas: tuple[float, float]
    backbone_lr_scale: float


def make_optimizer(model: nn.Module, lr: float, config: OptimizerSettings, n: int,
                   batch_size: int, epochs: int, warmup_epochs: int):
    """AdamW (decay on matrices only, as nanoGPT) with warm-up + cosine decay per step.

    A backbone inside ``model`` (end-to-end mode) learns at
    ``config.backbone_lr_scale`` times ``lr`` (paper appendix A: 1/100).
    """
    in_backbone = {id(p) for m in model.modules() if isinstance(m, Backbone)
                   for p in m.parameters()}
    groups = []
    for scale in (1.0, config.backbone_lr_scale):
        params = [p for p in model.parameters() if p.requires_grad
                  and (id(p) in in_backbone) == (scale != 1.0)]
        groups += [{"params": [p for p in params if p.dim() >= 2], "lr": lr * scale,
                    "weight_decay": config.weight_decay},
                   {"params": [p for p in params if p.dim() < 2], "lr": lr * scale,
                    "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr,
                                  betas=config.betas)
    steps_per_epoch = math.ceil(n / batch_size)
    total, warmup = epochs * steps_per_epoch, warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def autocast(device: torch.device):
    """bfloat16 mixed precision on CUDA; full precision elsewhere."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=device.type == "cuda")


def step(loss: torch.Tensor, optimizer, schedule) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    schedule.step()
    return float(loss.detach())


def batches(n: int, batch_size: int, generator: torch.Generator,
             device: torch.device) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=generator).to(device)
    yield from order.split(batch_size)


def weighted(loss: torch.Tensor, weight: float) -> torch.Tensor:
    """A rank's mean loss scaled so that DDP's gradient mean is the global batch's."""
    return loss if weight == 1.0 else loss * weight


class _TokenizerLoss(nn.Module):
    """The tokenizer's training loss as ``forward``, which is what DDP wraps."""

    def __init__(self, tokenizer: SemanticTokenizer, lambda1: float, lambda2: float) -> None:
        super().__init__()
        self.tokenizer, self.lambda1, self.lambda2 = tokenizer, lambda1, lambda2

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.loss(x, labels, self.lambda1, self.lambda2)


def epoch_bar(epochs: int, name: str, progress: bool):
    """A progress bar over epochs, shown on rank 0 only."""
    return tqdm(range(epochs), desc=f"train {name}", unit="epoch",
                disable=not (progress and distributed.is_main()), leave=False)
