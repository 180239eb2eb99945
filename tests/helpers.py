"""Small data and configs shared by the tests."""

from __future__ import annotations

import numpy as np

from genindex import DecoderConfig, IndexConfig, TokenizerConfig

TINY = IndexConfig(
    tokenizer=TokenizerConfig(num_codebooks=3, codebook_size=16, dim=16, epochs=30,
                              min_steps=0, batch_size=32, kmeans_iters=5, refit_every=2,
                              patience=0),
    decoder=DecoderConfig(n_layer=1, n_head=2, n_embd=32, epochs=30, min_steps=0,
                          batch_size=32, dropout=0.0, patience=0),
    precision="float32",  # the same arithmetic on every host (tests/test_precision.py: bf16)
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


def resign(path, body=None, arrays=None) -> None:
    """Edit a saved index file and sign it again, as someone would who edits one on
    purpose (the checksums are not keyed). ``body`` maps a key to a new value or to a
    function that edits the body in place; ``arrays`` maps a name to a function of the
    stored array, or to None to remove it."""
    from genindex import container

    stored, named = container.read(path)
    stored.pop("sha256")
    for key, edit in (body or {}).items():
        edit(stored) if callable(edit) else stored.__setitem__(key, edit)
    for name, edit in (arrays or {}).items():
        if edit is None:
            named.pop(name)
        else:
            named[name] = edit(named[name])
    container.write(path, stored, named)


def resign_text(path, edit) -> None:
    """Rewrite the JSON text of a saved index file's body with ``edit(text) -> text``
    and sign the header again: for bodies no JSON encoder writes (Infinity, nesting)."""
    from genindex import container

    blob = open(path, "rb").read()
    header, data = _split(blob)
    metadata = header["__metadata__"]
    metadata[container.KEY] = edit(metadata[container.KEY])
    with open(path, "wb") as handle:
        handle.write(_signed(header, data))


def mutations(blob: bytes, rng: np.random.Generator, count: int, edits: list):
    """``count`` damaged copies of an index file's bytes, in turn: a truncation, 1-3 bit
    flips, 8 random bytes, and a header edited by one of ``edits`` (functions that edit
    the parsed header in place) and signed again, as a deliberate forger would."""
    import json

    header, data = _split(blob)
    for i in range(count):
        kind = i % 4
        if kind == 0:
            yield blob[:int(rng.integers(0, len(blob)))]
        elif kind == 1:
            mutant = bytearray(blob)
            for position in rng.integers(0, len(blob), int(rng.integers(1, 4))):
                mutant[position] ^= 1 << int(rng.integers(0, 8))
            yield bytes(mutant)
        elif kind == 2:
            mutant = bytearray(blob)
            start = int(rng.integers(0, len(blob)))
            mutant[start:start + 8] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
            yield bytes(mutant)
        else:
            edited = json.loads(json.dumps(header))
            edits[i // 4 % len(edits)](edited)
            yield _signed(edited, data)


def _split(blob: bytes) -> tuple[dict, bytes]:
    """An index file's parsed header and the array bytes after it."""
    import json
    import struct

    (length,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + length]), blob[8 + length:]


def _signed(header: dict, data: bytes) -> bytes:
    """An index file of ``header``, its checksum made anew, and the array bytes ``data``."""
    import json
    import struct

    from genindex import container

    metadata = header["__metadata__"]
    metadata.pop(container.KEY + "_sha256", None)
    metadata[container.KEY + "_sha256"] = container._header_digest(header)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data
