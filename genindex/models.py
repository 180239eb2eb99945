"""Training the two models of an index, and rebuilding them from saved weights.

Three kinds of input, one pipeline:

* feature vectors (no backbone) and frozen-backbone images: the tokenizer and
  the decoder read global feature vectors (images are embedded once, cached);
* end-to-end images (the paper): pixels go through a backbone inside the
  tokenizer (fine-tuned with it) and through a copy inside the decoder, which
  cross-attends to its spatial tokens (fine-tuned with the decoder). The
  tokenizer's backbone is frozen after its stage, so identifiers of items added
  later come from the encoder the codebooks were fit on.
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple

import torch

from .backbones import Backbone, get_backbone
from .config import IndexConfig
from .decoder import Decoder, TokenMemory
from .tokenizer import SemanticTokenizer, chunk_size
from .train import PartnerSampler, TrainHistory, train_decoder, train_tokenizer


class Models(NamedTuple):
    tokenizer: SemanticTokenizer
    decoder: Decoder
    history: TrainHistory


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
        codes = tokenizer.encode(inputs)
        decoder = Decoder(config.decoder, tokenizer.quantizer.codebook_size,
                          tokenizer.quantizer.num_codebooks, _memory(tokenizer, config))
        decoder.to(inputs.device)
        partners = PartnerSampler(inputs, labels, config.decoder.neighbors)
        decoder_loss = train_decoder(decoder, inputs, codes, partners, config, generator,
                                     progress)
        freeze(decoder)
    return Models(tokenizer, decoder, TrainHistory(tokenizer_loss, decoder_loss))


def build_models(body: dict[str, Any], config: IndexConfig, d: int,
                 tensors: dict[str, torch.Tensor]) -> tuple[SemanticTokenizer, Decoder]:
    """The tokenizer and decoder of a saved index, with its weights loaded."""
    spec = body.get("backbone")
    end_to_end = spec is not None and config.end_to_end
    encoder = get_backbone(spec, weights=False) if end_to_end else None
    tokenizer = SemanticTokenizer(d, config.tokenizer, body["num_classes"],
                                  body["codebook_size"], encoder)
    decoder = Decoder(config.decoder, body["codebook_size"], config.tokenizer.num_codebooks,
                      _memory(tokenizer, config))
    for prefix, module in (("tokenizer.", tokenizer), ("decoder.", decoder)):
        module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items()
                                if k.startswith(prefix)}, strict=True)
        freeze(module)
    return tokenizer, decoder


def embed(tokenizer: SemanticTokenizer, inputs: torch.Tensor) -> torch.Tensor:
    """The global feature vectors of ``inputs`` (vectors pass through unchanged)."""
    if tokenizer.encoder is None:
        return inputs
    return torch.cat([tokenizer.embed(chunk) for chunk in inputs.split(chunk_size(inputs))])


def freeze(module: torch.nn.Module) -> None:
    module.eval()
    module.requires_grad_(False)


def _memory(tokenizer: SemanticTokenizer, config: IndexConfig) -> torch.nn.Module | int:
    """The decoder's memory: the query vector, or a copy of the encoder's tokens."""
    if tokenizer.encoder is None:
        return tokenizer.input_dim
    backbone = copy.deepcopy(tokenizer.encoder).train().requires_grad_(True)
    return TokenMemory(backbone, config.decoder.n_embd, config.decoder.input_dropout)
