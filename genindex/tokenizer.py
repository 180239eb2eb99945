"""The semantic image tokenizer: a feature becomes a short sequence of codes.

A head maps the backbone's global feature to ``f_cls``; residual quantization
with M codebooks of L entries turns ``f_cls`` into M codes (paper eq. 1-2):
``l_m = argmin_l ||r_{m-1} - c_{m,l}||``, ``r_m = r_{m-1} - c_{m,l_m}``. The
partial reconstructions ``f^<=m = sum_{i<=m} c_{i,l_i}`` are trained to be
classified like ``f_cls`` (eq. 3-4), so every prefix of an identifier carries
meaning. :meth:`SemanticTokenizer.encode` and :meth:`SemanticTokenizer.decode`
are inverse to each other up to the quantization error.

Choices the paper leaves open, made here:

* The head is a two-layer MLP and ``f_cls`` is L2-normalised; the classifier
  is a cosine classifier with a CosFace margin. The margin keeps pulling the
  features of a class together after they are separable, so the items of a
  class share identifier prefixes, which is what makes precision@K high.
* Codebooks are refit by k-means on the current features (see
  :func:`genindex.train.train_tokenizer` for why not an EMA).
* Optionally (``TokenizerConfig(identifiers="class")``) an item's identifier
  is not the code of its own f_cls but that of its class centre: the
  normalised mean f_cls of the training items of the class the classifier
  assigns it to. Every class then has exactly one identifier (the limit the
  classification losses pull towards), which with few images per class
  makes the decoder's targets consistent (docs/benchmarks.md).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Backbone
from .config import TokenizerConfig
from .kmeans import assign, kmeans


def chunk_size(x: torch.Tensor) -> int:
    """Rows processed at a time: many vectors, or a batch of images."""
    return 64 if x.dim() > 2 else 1 << 16


class ResidualQuantizer(nn.Module):
    """M codebooks of L entries in dimension D, applied one residual at a time."""

    def __init__(self, num_codebooks: int, codebook_size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("codebooks", torch.zeros(num_codebooks, codebook_size, dim))

    @property
    def num_codebooks(self) -> int:
        return self.codebooks.shape[0]

    @property
    def codebook_size(self) -> int:
        return self.codebooks.shape[1]

    @torch.no_grad()
    def fit(self, f: torch.Tensor, iters: int, generator: torch.Generator,
            warm: bool = False, dtype: torch.dtype | None = None,
            first: torch.Tensor | None = None) -> None:
        """Set codebook m by k-means on the residuals left by codebooks < m, started from
        the current codebooks when ``warm``; ``dtype``: that of the distance products
        (None: float32; see :func:`genindex.kmeans.assign`). ``first`` (C, D): the
        first codebook's codewords, given instead of fit (class-first identifiers):
        all C of them when C <= L (the spare rows repeat them and are never chosen),
        else their k-means."""
        residual = f.detach().float()
        for m in range(self.num_codebooks):
            if m == 0 and first is not None:
                self.codebooks[0] = _first_codebook(first.float(), self.codebook_size,
                                                    iters, generator)
                codes, _ = assign(residual, self.codebooks[0])
                residual = residual - self.codebooks[0][codes]
                continue
            if residual.abs().max() <= 1e-6 * f.abs().max():
                # nothing left to quantize (e.g. one codeword per point above): a zero
                # codebook gives every item code 0 here instead of codes picked by rounding
                self.codebooks[m:] = 0
                return
            init = self.codebooks[m] if warm and self.codebooks[m].any() else None
            self.codebooks[m] = kmeans(residual, self.codebook_size, iters, generator, init,
                                       dtype)
            codes, _ = assign(residual, self.codebooks[m], dtype)
            residual = residual - self.codebooks[m][codes]

    @torch.no_grad()
    def encode(self, f: torch.Tensor) -> torch.Tensor:
        """Codes (n, M) int64: greedy nearest codeword of each residual (eq. 1-2)."""
        codes = torch.empty(len(f), self.num_codebooks, dtype=torch.long, device=f.device)
        for start in range(0, len(f), chunk_size(f)):
            residual = f[start:start + chunk_size(f)].detach().float()
            for m in range(self.num_codebooks):
                level, _ = assign(residual, self.codebooks[m])
                codes[start:start + len(level), m] = level
                residual = residual - self.codebooks[m][level]
        return codes

    def partial(self, codes: torch.Tensor) -> torch.Tensor:
        """Partial reconstructions f^<=m for m = 1..M, shape (n, M, D)."""
        m = torch.arange(self.num_codebooks, device=codes.device)
        return self.codebooks[m, codes].cumsum(dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """The reconstruction sum_m c_{m, l_m}, shape (n, D)."""
        m = torch.arange(self.num_codebooks, device=codes.device)
        return self.codebooks[m, codes].sum(dim=1)


def _first_codebook(centres: torch.Tensor, size: int, iters: int,
                    generator: torch.Generator) -> torch.Tensor:
    """``size`` codewords from ``centres``: each one, then repeats (an exact repeat never
    wins the nearest-codeword argmin, which takes the first), or their k-means."""
    if len(centres) > size:
        return kmeans(centres, size, iters, generator)
    return centres[torch.arange(size, device=centres.device) % len(centres)]


class CosineClassifier(nn.Module):
    """Softmax over scaled cosine similarities to one learned proxy per class.

    Training subtracts a margin from the true class's cosine (CosFace), which
    keeps pulling a class's features together after they are separable.
    """

    def __init__(self, dim: int, num_classes: int, scale: float, margin: float) -> None:
        super().__init__()
        self.scale, self.margin = scale, margin
        self.weight = nn.Parameter(torch.randn(num_classes, dim) * dim ** -0.5)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(f, dim=-1) @ F.normalize(self.weight, dim=-1).T

    def loss(self, f: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self(f)
        target = labels[:, None]
        logits = logits.scatter(1, target, logits.gather(1, target) - self.scale * self.margin)
        return F.cross_entropy(logits, labels)


class SemanticTokenizer(nn.Module):
    """(Encoder +) head + residual quantizer (+ the classifier that trains them).

    With ``num_classes=None`` there is nothing to classify: the head is the
    identity and the tokenizer is plain residual quantization of the input.
    With an ``encoder`` (end-to-end mode) the inputs are pixels and the
    encoder's global feature feeds the head.
    """

    def __init__(self, input_dim: int, config: TokenizerConfig, num_classes: int | None,
                 codebook_size: int | None = None, encoder: Backbone | None = None) -> None:
        """``codebook_size`` overrides ``config.codebook_size`` (see train_tokenizer)."""
        super().__init__()
        if encoder is not None and num_classes is None:
            raise ValueError("end-to-end training needs labels: the encoder learns from the "
                             "classification loss")
        self.input_dim, self.num_classes = input_dim, num_classes
        self.encoder = encoder
        dim = config.dim
        if num_classes is None:
            self.head: nn.Module = nn.Identity()
            self.classifier: CosineClassifier | None = None
            dim = input_dim
        else:
            self.head = _head(input_dim, dim, config.head)
            self.classifier = CosineClassifier(dim, num_classes, config.scale, config.margin)
        self.quantizer = ResidualQuantizer(config.num_codebooks,
                                           codebook_size or config.codebook_size, dim)
        # with identifiers="class": the identifier of every class's centre (set_class_codes)
        class_codes = None
        if num_classes is not None and config.identifiers == "class":
            class_codes = torch.zeros(num_classes, config.num_codebooks, dtype=torch.long)
        self.class_codes: torch.Tensor | None
        self.register_buffer("class_codes", class_codes)
        # with class identifiers and config.novelty: the best-class cosine below which an
        # item gets its own identifier (set_novelty; -inf until then)
        novelty = None
        if class_codes is not None and config.novelty > 0:
            novelty = torch.full((1,), float("-inf"))
        self.novelty_quantile = config.novelty
        self.novelty_cosine: torch.Tensor | None
        self.register_buffer("novelty_cosine", novelty)

    @property
    def supervised(self) -> bool:
        return self.classifier is not None

    def global_feature(self, x: torch.Tensor) -> torch.Tensor:
        """The global feature (B, input_dim) the head reads: ``x``, or the encoder's."""
        return x if self.encoder is None else self.encoder(x).global_feature.float()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """f_cls for a batch of inputs: features (n, input_dim), or pixels with an encoder."""
        return self.f_cls(self.global_feature(x))

    @torch.no_grad()
    def feature_vectors(self, x: torch.Tensor) -> torch.Tensor:
        """The global features (n, input_dim) of all inputs ``x``, as an index stores them."""
        if self.encoder is None:
            return x
        return torch.cat([self.global_feature(chunk) for chunk in x.split(chunk_size(x))])

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(n, M) int64 codes of the inputs ``x`` (features, or pixels with an encoder)."""
        return self.encode_vectors(self.feature_vectors(x))

    @torch.no_grad()
    def encode_vectors(self, v: torch.Tensor) -> torch.Tensor:
        """(n, M) int64 codes of global feature vectors ``v`` (n, input_dim)."""
        if not len(v):
            return torch.zeros(0, self.quantizer.num_codebooks, dtype=torch.long,
                               device=v.device)
        return torch.cat([self._encode_features(self.f_cls(chunk))
                          for chunk in v.split(chunk_size(v))])

    def f_cls(self, v: torch.Tensor) -> torch.Tensor:
        """f_cls (n, dim) of global feature vectors ``v`` (n, input_dim): the head's output,
        L2-normalised when the tokenizer is supervised."""
        f = self.head(v)
        return f if self.classifier is None else F.normalize(f, dim=-1)

    def frozen_f_cls(self) -> nn.Module:
        """A frozen copy of :meth:`f_cls` (vectors in, f_cls out), for a decoder to read."""
        return FrozenFcls(copy.deepcopy(self.head), normalize=self.classifier is not None)

    def _encode_features(self, f: torch.Tensor) -> torch.Tensor:
        if self.class_codes is None:
            return self.quantizer.encode(f)
        cosine, best = self.classifier(f).max(dim=1)
        codes = self.class_codes[best]
        if self.novelty_cosine is not None:
            novel = cosine / self.classifier.scale < self.novelty_cosine
            codes[novel] = self.quantizer.encode(f[novel])
        return codes

    @torch.no_grad()
    def set_novelty(self, v: torch.Tensor) -> None:
        """Set the novelty threshold from the global features ``v`` of known-class
        items: the ``novelty`` quantile of their best class cosines."""
        if self.novelty_cosine is None:
            raise RuntimeError("set_novelty needs identifiers='class' and novelty > 0")
        cosine = self.classifier(self.f_cls(v)).max(dim=1).values / self.classifier.scale
        self.novelty_cosine.fill_(float(torch.quantile(cosine.float(), self.novelty_quantile)))

    @torch.no_grad()
    def class_centres(self, f: torch.Tensor, labels: torch.Tensor,
                      num_classes: int | None = None) -> torch.Tensor:
        """(C, D): every class's normalised mean of the features ``f`` (n, D) of its items;
        C is ``num_classes`` (default: the tokenizer's classes)."""
        classes = int(self.num_classes if num_classes is None else num_classes)
        sums = f.new_zeros(classes, f.shape[1]).index_add_(0, labels, f.float())
        return F.normalize(sums, dim=1)

    @torch.no_grad()
    def set_class_codes(self, centres: torch.Tensor) -> None:
        """Give every class the code of its centre (see :meth:`class_centres`)."""
        if self.class_codes is None:
            raise RuntimeError("set_class_codes needs TokenizerConfig(identifiers='class') "
                               "and labels")
        self.class_codes.copy_(self.quantizer.encode(centres))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """The reconstruction of f_cls from its codes, (n, D)."""
        return self.quantizer.decode(codes)

    def loss(self, x: torch.Tensor, labels: torch.Tensor,
             lambda1: float, lambda2: float) -> torch.Tensor:
        """Eq. 3-4: CE(f) + lambda1 * sum_m CE(f^<=m) + lambda2 * sum_m ||f - sg[f^<=m]||^2."""
        if self.classifier is None:
            raise RuntimeError("an unsupervised tokenizer has no loss: fit its quantizer only")
        f = self.features(x)
        partial = self.quantizer.partial(self.quantizer.encode(f)).detach()  # (n, M, D)
        # straight-through: the value of f^<=m, the gradient of f (paper 3.1)
        straight = f[:, None] + (partial - f[:, None]).detach()
        loss = self.classifier.loss(f, labels)
        m = partial.shape[1]
        partial_ce = self.classifier.loss(straight.reshape(-1, straight.shape[-1]),
                                          labels.repeat_interleave(m))
        commitment = (f[:, None] - partial).square().sum(dim=2).mean(dim=0).sum()
        return loss + lambda1 * m * partial_ce + lambda2 * commitment


class FrozenFcls(nn.Module):
    """A tokenizer's f_cls on its own: its head, then L2 normalisation if supervised."""

    def __init__(self, head: nn.Module, normalize: bool) -> None:
        super().__init__()
        self.head, self.normalize = head.requires_grad_(False), normalize

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        f = self.head(v)
        return F.normalize(f, dim=-1) if self.normalize else f


def _head(input_dim: int, dim: int, kind: str) -> nn.Module:
    """f_cls from the input feature: LayerNorm, then linear or one hidden layer."""
    if kind == "linear":
        return nn.Sequential(nn.LayerNorm(input_dim), nn.Linear(input_dim, dim))
    return nn.Sequential(nn.LayerNorm(input_dim), nn.Linear(input_dim, 4 * dim), nn.GELU(),
                         nn.Linear(4 * dim, dim))
