"""Small data and configs shared by the tests."""

from __future__ import annotations

import numpy as np

from genindex import DecoderConfig, IndexConfig, TokenizerConfig

TINY = IndexConfig(
    tokenizer=TokenizerConfig(num_codebooks=3, codebook_size=16, dim=16, epochs=30,
                              min_steps=0, batch_size=32, kmeans_iters=5, refit_every=2),
    decoder=DecoderConfig(n_layer=1, n_head=2, n_embd=32, epochs=30, min_steps=0,
                          batch_size=32, dropout=0.0),
)


def clustered(num_classes: int = 20, per_class: int = 10, d: int = 16, noise: float = 0.3,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian classes around random centres: (x float32 (n, d), labels int64 (n,))."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_classes, d))
    labels = np.repeat(np.arange(num_classes), per_class)
    x = centres[labels] + noise * rng.standard_normal((len(labels), d))
    return x.astype(np.float32), labels


TINY_VIT = "genindex-test-tiny-vit"
TINY_VIT_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32,
                   "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 32, "heads": 2,
                 "layers": 1},
}


def write_images(folder, num_classes: int = 5, per_class: int = 10, size: int = 40,
                 seed: int = 0) -> tuple[list, np.ndarray]:
    """PNG files of coloured shapes, one colour and shape per class; every other
    image is RGBA with a transparent background. Returns (paths, labels)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (num_classes, 3))
    paths, labels = [], []
    for c in range(num_classes):
        for i in range(per_class):
            image = Image.new("RGBA", (size, size), (255, 255, 255, 0 if i % 2 else 255))
            draw = ImageDraw.Draw(image)
            x0, y0 = rng.integers(0, size // 3, 2)
            box = (int(x0), int(y0), int(x0) + size // 2, int(y0) + size // 2)
            jitter = rng.integers(-20, 21, 3)
            fill = tuple(int(v) for v in np.clip(colours[c] + jitter, 0, 255)) + (255,)
            (draw.ellipse if c % 2 else draw.rectangle)(box, fill=fill)
            path = folder / f"class{c}_{i}.png"
            (image if i % 2 else image.convert("RGB")).save(path)
            paths.append(path)
            labels.append(c)
    return paths, np.array(labels)
