"""Frozen configuration dataclasses, saved with an index as JSON.

Build parameters live here; query parameters (``k``, ``beam_size``) are
arguments of :meth:`GenerativeIndex.search`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

# The presets, one line a part; the fields not named keep the defaults below.
PRESET_TABLE: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {  # the paper's settings (appendix A, section 4.3): IndexConfig.paper()
        # tokenizer: batch 128 for 200 epochs, lr 5e-4 after 20 warm-up epochs
        "tokenizer": dict(batch_size=128, epochs=200, lr=5e-4, warmup_epochs=20, min_steps=0,
                          patience=0),
        # decoder: 12 blocks of width 768, batch 64 for 200 epochs, lr 4e-5 after 20 warm-up
        "decoder": dict(n_layer=12, n_head=12, n_embd=768, batch_size=64, epochs=200,
                        lr=4e-5, warmup_epochs=20, min_steps=0, patience=0),
        # the encoder is fine-tuned with both parts, at 1/100 of their learning rate
        "index": dict(end_to_end=True, backbone_lr_scale=0.01)},
    # million-image sets (section 4.3): the paper's decoder, 24 blocks deep
    "paper-large": {"decoder": dict(n_layer=24)},
    # No labels and no config given (GenerativeIndex(d).train(x)), chosen on validation
    # splits for recall against exact search (docs/benchmarks.md): one code, L from the
    # number of items (unlabelled_codebook_size), a one-block decoder; searched in the
    # metric order over the items of the `nprobe` best codes, `k * k_factor` at most.
    "unlabelled": {
        "tokenizer": dict(num_codebooks=1),
        "decoder": dict(n_layer=1, n_head=4, n_embd=256, batch_size=256, epochs=10,
                        min_steps=600, warmup_epochs=1),
        "search": dict(nprobe=32, k_factor=200)},
}
PRESETS = ("default", "paper", "paper-large")  # names the command line takes (--config)
# Training's arithmetic: "auto", bfloat16 autocast where the hardware has it (CUDA; a CPU
# with AVX512-BF16 or AMX), float32 elsewhere; or always "float32" or "bfloat16".
PRECISIONS = ("auto", "float32", "bfloat16")


@dataclass(frozen=True)
class TokenizerConfig:
    """The semantic image tokenizer (paper section 3.1, eq. 1-4).

    ``num_codebooks`` is M (the ID length), ``codebook_size`` is L. A training
    set of fewer items than L trains no model: the index is flat, one
    identifier for every item and exact search (see :func:`genindex.train.flat_models`).
    """

    num_codebooks: int = 4
    codebook_size: int = 256
    dim: int = 128  # width of f_cls, the feature that is quantized
    head: str = "mlp"  # f_cls from the input: "mlp" (one hidden layer) or "linear"
    # What an item's identifier quantizes (with labels; without, always its own feature):
    # "feature", its own f_cls (the paper); "class", the mean f_cls of the training class
    # the tokenizer's classifier assigns it to, so a class's items share one identifier;
    # "class-first", the first code from the class centres (an item's nearest one), the
    # later codes its own f_cls's residual, so a class's items share a first code.
    identifiers: str = "feature"
    # With identifiers="class": the share of known-class items (held out, else trained
    # on) whose best class cosine sets the novelty threshold; an item added later whose
    # best class cosine is below it gets the identifier of its own f_cls, so the items
    # of a class the tokenizer never saw do not join another class's leaf. 0: never.
    novelty: float = 0.0
    lambda1: float = 1.0  # weight of the CE on every partial reconstruction
    lambda2: float = 1.0  # weight of the commitment term ||f_cls - sg[f^<=m]||^2
    scale: float = 8.0  # cosine classifier: logits are scale * cos
    margin: float = 0.2  # CosFace margin subtracted from the true class's cosine
    epochs: int = 150
    min_steps: int = 2000  # small data sets train for more epochs, up to this many steps
    batch_size: int = 256
    lr: float = 3e-3
    warmup_epochs: int = 5
    kmeans_iters: int = 20
    refit_every: int = 5  # epochs between k-means refits of the codebooks
    refit_iters: int = 5  # k-means iterations of a refit, started from the current codebooks
    # Stopping rule: end training once the class accuracy of held-out items' identifiers
    # (IndexConfig.holdout) has not improved for this many epochs; 0: train every epoch.
    patience: int = 20

    def __post_init__(self) -> None:
        _check_positive(self, "num_codebooks", "codebook_size", "dim", "epochs",
                        "batch_size", "kmeans_iters", "refit_every", "refit_iters")
        _check_nonnegative(self, "lambda1", "lambda2", "scale", "margin", "warmup_epochs", "lr",
                           "min_steps", "patience", "novelty")
        if self.novelty >= 1:
            raise ValueError(f"TokenizerConfig: novelty must be < 1, got {self.novelty!r}")
        if self.head not in ("mlp", "linear"):
            raise ValueError(f"TokenizerConfig: head must be 'mlp' or 'linear', got {self.head!r}")
        if self.identifiers not in ("feature", "class", "class-first"):
            raise ValueError("TokenizerConfig: identifiers must be 'feature', 'class' or "
                             f"'class-first', got {self.identifiers!r}")

    @classmethod
    def paper(cls, **overrides: Any) -> TokenizerConfig:
        """The paper's tokenizer training (appendix A)."""
        return cls(**{**PRESET_TABLE["paper"]["tokenizer"], **overrides})


@dataclass(frozen=True)
class DecoderConfig:
    """The autoregressive decoder (section 3.2) and how it is trained.

    The default is small enough to train on a laptop CPU in minutes;
    :meth:`paper` is the 12-layer, 768-wide decoder of the paper.
    """

    n_layer: int = 3
    n_head: int = 4
    n_embd: int = 256
    n_memory: int = 1  # tokens a query vector is projected into
    dropout: float = 0.1
    # Dropout on the query vector while training. With few items per class the
    # decoder otherwise memorises its training inputs; on the synthetic
    # benchmark 0.3 lifts held-out precision@1 from 0.79 to 0.87 (docs/benchmarks.md).
    input_dropout: float = 0.3
    # Label smoothing of the cross-entropy on every code: on emoji it lifts
    # precision@1 by about 4 points (docs/benchmarks.md).
    label_smoothing: float = 0.1
    # Train each code's softmax over the codes the index allows after its prefix,
    # as beam search scores it, instead of over all L (docs/benchmarks.md).
    constrained_loss: bool = False
    # The output layer: "free", a learned row per (level, code); "codebook", that plus
    # a scaled cosine between a projection of the state and the code's codeword (the
    # tokenizer's, frozen), so a code seen in few targets still scores by its geometry.
    head: str = "free"
    # What the decoder reads: "vector", the query vector; "f_cls", the tokenizer's f_cls
    # of it (a frozen copy of the head), the embedding the identifiers quantize.
    input: str = "vector"
    epochs: int = 40
    min_steps: int = 1200  # small data sets train for more epochs, up to this many steps
    batch_size: int = 128
    lr: float = 2e-3
    warmup_epochs: int = 3
    neighbors: int = 10  # without labels: x2 is drawn from x1's nearest neighbours
    # The decoder's targets: "partner", the identifier of a random other item of x1's
    # class (the paper), or without labels of one of its `neighbors` nearest; "f_cls",
    # of one of its `neighbors` nearest by the tokenizer's f_cls, drawn with odds
    # softmax(cosine / temperature): the embedding's ranking distilled (docs/benchmarks.md).
    targets: str = "partner"
    temperature: float = 0.05
    # Distillation: plus this weight times the cross-entropy of the first code toward
    # softmax(cosine(f_cls of the input, first-level codeword) / temperature), the odds
    # the tokenizer's own embedding gives; 0: off (docs/benchmarks.md).
    distill: float = 0.0
    # A trained prior: plus this weight times the cosine of the input's f_cls with each
    # code's codeword (genindex.fusion.codeword_scores) inside every code's logit, in
    # training and in search, so the decoder learns what the tokenizer's embedding
    # misses; 0: off. Dropped on emoji and Fashion-MNIST val (docs/api.md).
    prior: float = 0.0
    # Stopping rule: end training once the share of held-out items (IndexConfig.holdout)
    # whose greedily decoded identifier is a partner's has not improved for this many
    # epochs; 0 (the default): train every epoch. On the emoji validation split the
    # score still rose at the last epoch and stopping early cost precision
    # (docs/benchmarks.md), so the decoder runs its whole schedule unless asked.
    patience: int = 0

    def __post_init__(self) -> None:
        _check_positive(self, "n_layer", "n_head", "n_embd", "n_memory", "epochs",
                        "batch_size", "neighbors")
        _check_nonnegative(self, "dropout", "input_dropout", "label_smoothing", "lr", "distill",
                           "prior", "warmup_epochs", "min_steps", "patience")
        if not (self.dropout < 1 and self.input_dropout < 1 and self.label_smoothing < 1):
            raise ValueError("DecoderConfig: dropout, input_dropout and label_smoothing "
                             "must be < 1")
        if not isinstance(self.constrained_loss, bool):
            raise TypeError(f"DecoderConfig: constrained_loss must be a bool, "
                            f"got {self.constrained_loss!r}")
        if self.head not in ("free", "codebook"):
            raise ValueError(f"DecoderConfig: head must be 'free' or 'codebook', "
                             f"got {self.head!r}")
        if self.input not in ("vector", "f_cls"):
            raise ValueError(f"DecoderConfig: input must be 'vector' or 'f_cls', "
                             f"got {self.input!r}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not self.temperature > 0:
            raise ValueError(f"DecoderConfig: temperature must be > 0, got {self.temperature!r}")
        if self.targets not in ("partner", "f_cls"):
            raise ValueError(f"DecoderConfig: targets must be 'partner' or 'f_cls', "
                             f"got {self.targets!r}")
        if self.prior and self.patience:
            raise ValueError("DecoderConfig: the stopping rule (patience) scores greedy "
                             "decoding without the prior; use prior=0 or patience=0")
        if self.n_embd % self.n_head:
            raise ValueError(f"DecoderConfig: n_embd={self.n_embd} must be divisible "
                             f"by n_head={self.n_head}")

    @classmethod
    def paper(cls, **overrides: Any) -> DecoderConfig:
        """The paper's decoder and its training (appendix A): 12 blocks of width 768."""
        return cls(**{**PRESET_TABLE["paper"]["decoder"], **overrides})

    @classmethod
    def paper_large(cls, **overrides: Any) -> DecoderConfig:
        """The paper's decoder for million-image sets (section 4.3): 24 blocks of width 768."""
        return cls.paper(**{**PRESET_TABLE["paper-large"]["decoder"], **overrides})


@dataclass(frozen=True)
class IndexConfig:
    """Everything that defines a :class:`GenerativeIndex` apart from its data."""

    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    # Keep the added vectors so that items sharing an ID are ranked by their
    # distance to the query. Costs 4 * d bytes per item.
    store_vectors: bool = True
    # Images only. End to end (the paper): the backbone is fine-tuned with the
    # tokenizer and with the decoder, which cross-attends to its spatial tokens.
    # Otherwise the backbone is frozen and its cached global features are the input.
    end_to_end: bool = False
    backbone_lr_scale: float = 0.01  # the backbone's learning rate / the heads' (app. A)
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.96)
    seed: int = 0
    # Share of the training items (at most 2,000) held out from both models' training
    # to score the stopping rules; only when a patience is set.
    holdout: float = 0.05
    precision: str = "auto"  # training's autocast, one of PRECISIONS (search: its dtype=)

    def __post_init__(self) -> None:
        if not isinstance(self.tokenizer, TokenizerConfig):
            raise TypeError("IndexConfig: tokenizer must be a TokenizerConfig "
                            "(use IndexConfig.from_dict for plain dicts)")
        if not isinstance(self.decoder, DecoderConfig):
            raise TypeError("IndexConfig: decoder must be a DecoderConfig "
                            "(use IndexConfig.from_dict for plain dicts)")
        betas = self.betas
        if (not isinstance(betas, (list, tuple)) or len(betas) != 2 or not all(
                isinstance(b, (int, float)) and not isinstance(b, bool) and 0.0 <= b < 1.0
                for b in betas)):
            raise ValueError(f"IndexConfig: betas must be two numbers in [0, 1), got {betas!r}")
        object.__setattr__(self, "betas", tuple(float(b) for b in betas))
        _check_nonnegative(self, "weight_decay", "backbone_lr_scale", "seed")
        if self.precision not in PRECISIONS:
            raise ValueError(f"IndexConfig: precision must be one of {PRECISIONS}, "
                             f"got {self.precision!r}")
        if not (isinstance(self.holdout, (int, float)) and not isinstance(self.holdout, bool)
                and 0 <= self.holdout < 0.5):
            raise ValueError(f"IndexConfig: holdout must be in [0, 0.5), got {self.holdout!r}")
        if self.end_to_end and self.decoder.input != "vector":
            raise ValueError("IndexConfig: end_to_end decoders read the encoder's tokens; "
                             "decoder.input must be 'vector'")

    @classmethod
    def paper(cls, large: bool = False) -> IndexConfig:
        """The paper's setup (appendix A); ``large``: the decoder of section 4.3."""
        decoder = DecoderConfig.paper_large() if large else DecoderConfig.paper()
        return cls(tokenizer=TokenizerConfig.paper(), decoder=decoder,
                   **PRESET_TABLE["paper"]["index"])

    @classmethod
    def unlabelled(cls, n: int, **overrides: Any) -> IndexConfig:
        """The config an index without a given config trains with on ``n`` unlabelled
        items: :data:`PRESET_TABLE`'s ``"unlabelled"``, L from ``n``."""
        parts = PRESET_TABLE["unlabelled"]
        tokenizer = TokenizerConfig(**parts["tokenizer"],
                                    codebook_size=unlabelled_codebook_size(n))
        return cls(tokenizer=tokenizer, decoder=DecoderConfig(**parts["decoder"]), **overrides)

    @classmethod
    def preset(cls, name: str) -> IndexConfig:
        """The preset called ``name``, one of :data:`PRESETS`."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
        return cls() if name == "default" else cls.paper(large=name == "paper-large")

    def replace(self, **changes: Any) -> IndexConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> IndexConfig:
        """Build from a (possibly partial) dict; missing fields take their defaults."""
        _check_fields(cls, values)
        values = dict(values)
        for name, part in (("tokenizer", TokenizerConfig), ("decoder", DecoderConfig)):
            if isinstance(values.get(name), dict):
                _check_fields(part, values[name])
                values[name] = part(**values[name])
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> IndexConfig:
        return cls.from_dict(json.loads(text))


def unlabelled_codebook_size(n: int) -> int:
    """L of the unlabelled preset: the power of two nearest sqrt(n) (Faiss's rule of
    thumb for IVF lists), at least 256 (fewer items than that: an exact flat index)."""
    return max(256, 2 ** round(math.log2(max(n, 1)) / 2))


def _check_fields(cls: type, values: dict[str, Any]) -> None:
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown fields {unknown}")


def _check_positive(config: object, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{type(config).__name__}: {name} must be a positive "
                             f"integer, got {value!r}")


def _check_nonnegative(config: object, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"{type(config).__name__}: {name} must be >= 0, got {value!r}")
