"""The backbone's 7 x 7 tokens as the decoder's memory, measured on a validation split.

    python benchmarks/studies/tokens.py --dataset emoji [--config FILE] [--seeds 1]

Issue 16's lever "the decoder cross-attending to the frozen backbone's
spatial tokens": the paper's decoder reads the encoder's patch tokens, while
genindex's decoder on cached features reads one pooled vector. On the data
set's validation split (emoji: Apple queries against Twitter + Facebook; the
reported queries are never read) one GenerativeIndex is built as ``run.py``
builds it, then a second decoder is trained for the same tokenizer and
identifiers, with the same config, seed and held-out rows, whose memory is
the pooled vector's tokens followed by EfficientNet-Lite0's 49 spatial tokens
(each layer-normed and projected, plus a learned position). Both decoders are
searched through the same trie, in the generative and the semantic order.
The tokens are extracted once and kept in ``--cache`` (float16, about 125 kB
an image).
"""

from __future__ import annotations

import hashlib
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import metrics  # noqa: E402
from benchmarks.common import prepare_validation, study_parser  # noqa: E402
from genindex import GenerativeIndex  # noqa: E402
from genindex.beam import beam_search, rank_by_metric, semantic_measure, top_items  # noqa: E402
from genindex.decoder import Decoder, VectorMemory  # noqa: E402
from genindex.inputs import image_refs, pixel_batches  # noqa: E402
from genindex.partners import Partners  # noqa: E402
from genindex.train import freeze, split_holdout, train_decoder  # noqa: E402

K = 100  # results per query: MAP@100, as the tables


class PooledAndSpatial(nn.Module):
    """Memory from (B, 1 + T, token_dim): row 0 the pooled feature (read as the default
    decoder reads it), rows 1..T the spatial tokens, projected with a position each."""

    def __init__(self, dim: int, tokens: int, n_memory: int, n_embd: int,
                 input_dropout: float) -> None:
        super().__init__()
        self.pooled = VectorMemory(dim, n_memory, n_embd, input_dropout)
        self.drop_in = nn.Dropout(input_dropout)
        self.ln_in = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, n_embd)
        self.position = nn.Parameter(torch.zeros(tokens, n_embd))
        self.ln_out = nn.LayerNorm(n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        spatial = self.ln_out(self.proj(self.ln_in(self.drop_in(x[:, 1:]))) + self.position)
        return torch.cat([self.pooled(x[:, 0]), spatial], dim=1)


class _Tokens(nn.Module):
    def __init__(self, backbone) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.backbone(pixels).tokens.float()


def spatial_tokens(backbone, images, cache: Path, progress: bool) -> np.ndarray:
    """(n, T, token_dim) float16 spatial tokens of ``images``, kept in ``cache``."""
    refs = image_refs(images)
    key = hashlib.sha256("\n".join([backbone.cache_key()] + [r.key for r in refs]).encode())
    path = cache / f"tokens-{key.hexdigest()[:20]}.npy"
    if path.exists():
        return np.load(path)
    import onnxruntime as ort

    size = backbone.image_size
    module, buffer = _Tokens(backbone.eval()), cache / f"{path.stem}.onnx"
    cache.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on constants
        torch.onnx.export(module, (torch.zeros(2, 3, size, size, dtype=torch.uint8),),
                          str(buffer), input_names=["pixels"], output_names=["tokens"],
                          dynamic_axes={"pixels": {0: "batch"}}, dynamo=False)
    session = ort.InferenceSession(str(buffer), providers=["CPUExecutionProvider"])
    out = None
    for start, pixels in pixel_batches(refs, backbone.preprocess, 64, progress, "tokens"):
        batch = session.run(None, {"pixels": pixels.numpy()})[0]
        if out is None:
            out = np.empty((len(refs),) + batch.shape[1:], np.float16)
        out[start:start + len(batch)] = batch
    buffer.unlink()
    np.save(path, out)
    return out


def with_pooled(pooled: np.ndarray, tokens: np.ndarray) -> torch.Tensor:
    """(n, 1 + T, d) float16: the pooled feature as row 0, then the tokens."""
    return torch.from_numpy(np.concatenate([pooled[:, None].astype(np.float16), tokens], 1))


@torch.inference_mode()
def search(index: GenerativeIndex, decoder: Decoder, memory_inputs: torch.Tensor,
           vectors: np.ndarray, beam: int, order: str) -> np.ndarray:
    """The library's search path with ``decoder`` reading ``memory_inputs``: beam search,
    the items of the top leaves, and (semantic order) the f_cls cosine ranking."""
    snapshot = index._require_trained()
    out = []
    for start in range(0, len(vectors), 64):
        rows = slice(start, start + 64)
        q = torch.from_numpy(vectors[rows])
        beams = beam_search(decoder, memory_inputs[rows], snapshot.trie, beam)
        feature = snapshot.tokenizer.feature_vectors(q)
        distance = snapshot.vectors.distance(q.device, feature, exact=False)
        _, ids = top_items(snapshot.trie, beams, K, distance)
        if order == "semantic":
            _, ids = rank_by_metric(ids, semantic_measure(snapshot, feature), "semantic")
        out.append(ids.numpy())
    return np.concatenate(out)


def token_decoder(index: GenerativeIndex, config, db: np.ndarray, db_labels: np.ndarray,
                  db_in: torch.Tensor, progress: bool) -> Decoder:
    """A decoder reading ``db_in`` (pooled + spatial tokens), trained as ``fit`` trains
    the index's own: same identifiers, config, seed, held-out rows and partners."""
    dc, quantizer = config.decoder, index._require_trained().tokenizer.quantizer
    memory = PooledAndSpatial(db_in.shape[2], db_in.shape[1] - 1, dc.n_memory, dc.n_embd,
                              dc.input_dropout)
    decoder = Decoder(dc, quantizer.codebook_size, quantizer.num_codebooks, memory)
    codes = torch.from_numpy(index.identifiers(np.arange(len(db_in))))
    generator = torch.Generator().manual_seed(config.seed)
    held = split_holdout(len(db_in), config, generator, torch.device("cpu"))  # as fit's
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        classes = np.unique(db_labels, return_inverse=True)[1]  # partners: same class
        partners = Partners(torch.from_numpy(db), torch.from_numpy(classes), dc.neighbors)
        train_decoder(decoder, db_in, codes, partners, config, generator, progress, held)
    freeze(decoder)
    return decoder


def report(name: str, ids: np.ndarray, db_labels, q_labels, seconds: float) -> None:
    print(metrics.headline_row(name, ids, db_labels, q_labels, seconds), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(__doc__, "tokens")
    parser.add_argument("--beam-size", type=int, default=100)
    args = parser.parse_args(argv)
    setup, db_labels, q_labels = prepare_validation(args)
    data, progress = setup.data, not args.quiet
    started = time.perf_counter()
    db_in = with_pooled(setup.db, spatial_tokens(setup.backbone, data.db_images, args.cache,
                                                 progress))
    q_in = with_pooled(setup.queries, spatial_tokens(setup.backbone, data.query_images,
                                                     args.cache, progress))
    print(f"{args.dataset} val: {len(db_in)} items, {len(q_in)} queries, tokens "
          f"{tuple(db_in.shape[1:])} in {time.perf_counter() - started:.0f} s; config "
          f"{setup.config_name}\n\n| decoder memory, order | P@1 | P@3 | MAP@100 | train s |"
          f"\n|---|---|---|---|---|", flush=True)
    for seed in range(args.seeds):
        config = setup.config.replace(seed=setup.config.seed + seed)
        started = time.perf_counter()
        index = GenerativeIndex.fit(setup.db, db_labels, config, progress=progress)
        built = time.perf_counter() - started
        snapshot = index._require_trained()
        for order in ("generative", "semantic"):
            ids = search(index, snapshot.decoder, torch.from_numpy(setup.queries), setup.queries,
                         args.beam_size, order)
            report(f"pooled vector (seed {seed}), {order}", ids, db_labels, q_labels, built)
        started = time.perf_counter()
        decoder = token_decoder(index, config, setup.db, db_labels, db_in, progress)
        trained = time.perf_counter() - started
        for order in ("generative", "semantic"):
            ids = search(index, decoder, q_in, setup.queries, args.beam_size, order)
            report(f"pooled + 7 x 7 tokens (seed {seed}), {order}", ids, db_labels, q_labels,
                   trained)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
