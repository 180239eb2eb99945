"""Small data and configs shared by the tests."""

from __future__ import annotations

import numpy as np

from genindex import DecoderConfig, IndexConfig, TokenizerConfig

TINY = IndexConfig(
    tokenizer=TokenizerConfig(num_codebooks=3, codebook_size=16, dim=16, epochs=30,
                              batch_size=32, kmeans_iters=5, refit_every=2),
    decoder=DecoderConfig(n_layer=1, n_head=2, n_embd=32, epochs=30, batch_size=32,
                          dropout=0.0),
)


def clustered(num_classes: int = 20, per_class: int = 10, d: int = 16, noise: float = 0.3,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian classes around random centres: (x float32 (n, d), labels int64 (n,))."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_classes, d))
    labels = np.repeat(np.arange(num_classes), per_class)
    x = centres[labels] + noise * rng.standard_normal((len(labels), d))
    return x.astype(np.float32), labels
