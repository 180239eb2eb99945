"""A flat index: too few training items for models, so every item shares one identifier.

Below :func:`min_training_items` (L: k-means cannot place L codewords) no model is
trained: the tokenizer has one codeword a level, every item gets the identifier
(0, ..., 0) and a search ranks all stored items by their exact distance, as
``faiss.IndexFlat`` does. ``GenerativeIndex.train`` on enough items later trains
the models and gives the held items identifiers.
"""

from __future__ import annotations

import logging

import torch

from .backbones import Backbone
from .config import IndexConfig
from .tokenizer import SemanticTokenizer
from .train import Models, TrainHistory, check_end_to_end, freeze, new_decoder, train_models

log = logging.getLogger(__name__)


def min_training_items(config: IndexConfig) -> int:
    """Items needed to train the models: L (k-means places L codewords), at least 2."""
    return max(config.tokenizer.codebook_size, 2)


def flat_models(inputs: torch.Tensor, config: IndexConfig) -> Models:
    """Untrained models for fewer than :func:`min_training_items` items: a tokenizer of
    one codeword a level (L = 1: every item has the same identifier), so that a search
    ranks every stored item by its exact distance, as ``faiss.IndexFlat`` does."""
    if config.end_to_end or not config.store_vectors:
        raise ValueError(f"x: {len(inputs)} items are too few to train on (at least "
                         f"{min_training_items(config)}, the codebook size L); below that "
                         "an index searches its stored vectors exactly, which needs "
                         "store_vectors=True and end_to_end=False")
    log.warning("only %d training items, fewer than L = %d: the models are not trained; "
                "the index gives every item one identifier and searches exactly until "
                "trained on at least %d items", len(inputs), config.tokenizer.codebook_size,
                min_training_items(config))
    generator = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        tokenizer = SemanticTokenizer(inputs.shape[1], config.tokenizer, None, 1).to(
            inputs.device)
        tokenizer.quantizer.fit(inputs, 1, generator)
        decoder = new_decoder(tokenizer, config).to(inputs.device)
    freeze(tokenizer)
    freeze(decoder)
    codes = tokenizer.encode_vectors(inputs)
    return Models(tokenizer, decoder, TrainHistory(tokenizer_s=0.0, decoder_s=0.0), codes,
                  inputs)


def models_for(inputs: torch.Tensor, labels: torch.Tensor | None, config: IndexConfig,
               backbone: Backbone | None, progress: bool) -> Models:
    """A flat index's models below :func:`min_training_items`, else trained ones
    (:func:`genindex.train.train_models`)."""
    check_end_to_end(labels, config.end_to_end and backbone is not None)
    if len(inputs) < min_training_items(config):
        return flat_models(inputs, config)
    return train_models(inputs, labels, config, backbone, progress)
