"""Config variants of genindex on one data set's cached features: what moves quality.

    python benchmarks/studies/variants.py --dataset emoji VARIANTS.jsonl

Each line of VARIANTS.jsonl is a JSON object: ``name``, optional ``memory``
(what the decoder reads: ``"x"`` the backbone feature, as the index does, or
``"fcls"`` the tokenizer's f_cls) and any IndexConfig fields. Variants with
the same tokenizer config share one trained tokenizer. For each it prints
P@1, P@3 and MAP@100 of beam search (beam 100), the tokenizer's own
classifier accuracy on the queries, and the share of classes whose database
items all share one identifier ("pure").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import datasets, metrics  # noqa: E402
from benchmarks.common import features  # noqa: E402
from genindex import IndexConfig  # noqa: E402
from genindex.backbones import get_backbone  # noqa: E402
from genindex.beam import beam_search, top_items  # noqa: E402
from genindex.decoder import Decoder  # noqa: E402
from genindex.partners import Partners  # noqa: E402
from genindex.store import VectorStore  # noqa: E402
from genindex.train import freeze, train_decoder, train_tokenizer  # noqa: E402
from genindex.trie import Trie  # noqa: E402


def tokenizer_stats(tokenizer, x, y, queries, query_y):
    codes = tokenizer.encode(x)
    ids = [tuple(c) for c in codes.numpy()]
    pure = np.mean([len({ids[i] for i in np.flatnonzero(y == c)}) == 1 for c in np.unique(y)])
    with torch.inference_mode():
        guess = tokenizer.classifier(tokenizer.features(queries)).argmax(1).numpy()
    return codes, float(pure), float((guess == query_y).mean())


def run_variant(variant, tokenizers, x, y, queries, query_y, data):
    config = IndexConfig.from_dict({k: v for k, v in variant.items()
                                    if k not in ("name", "memory")})
    key = json.dumps(config.to_dict()["tokenizer"], sort_keys=True) + str(config.seed)
    if key not in tokenizers:
        generator = torch.Generator().manual_seed(config.seed)
        torch.manual_seed(config.seed)
        tokenizer, _ = train_tokenizer(x, y, config, generator, False, None)
        freeze(tokenizer)
        tokenizers[key] = (tokenizer, *tokenizer_stats(tokenizer, x, y, queries, query_y))
    tokenizer, codes, pure, accuracy = tokenizers[key]
    with torch.no_grad():
        inputs, query_inputs = ((x, queries) if variant.get("memory", "x") == "x"
                                else (tokenizer.features(x), tokenizer.features(queries)))
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    quantizer = tokenizer.quantizer
    decoder = Decoder.for_vectors(config.decoder, quantizer.codebook_size,
                                  quantizer.num_codebooks, inputs.shape[1])
    start = time.perf_counter()
    train_decoder(decoder, inputs, codes, Partners(x, y, config.decoder.neighbors),
                  config, generator, False)
    freeze(decoder)
    trie = Trie(codes.numpy(), np.arange(len(x)), quantizer.codebook_size)
    store = VectorStore(np.arange(len(x)), x.numpy())
    with torch.inference_mode():
        beams = beam_search(decoder, query_inputs, trie, 100)
        _, ids = top_items(trie, beams, 100, store.distance(torch.device("cpu"), queries))
    hits = metrics.relevance(ids.numpy(), data.db_labels, data.query_labels)
    relevant = metrics.relevant_counts(data.db_labels, data.query_labels)
    return {"name": variant.get("name"), "P@1": metrics.precision_at_k(hits, 1),
            "P@3": metrics.precision_at_k(hits, 3),
            "MAP@100": metrics.map_at_k(hits, 100, relevant), "pure": pure,
            "tokenizer_accuracy": accuracy, "decoder_s": time.perf_counter() - start}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", type=Path)
    parser.add_argument("--dataset", default="emoji")
    parser.add_argument("--data-root")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = datasets.load(args.dataset, args.data_root, args.limit)
    db, queries = features(data, get_backbone(args.backbone), args.backbone, progress=False)
    classes, y = np.unique(data.db_labels, return_inverse=True)
    query_y = np.searchsorted(classes, data.query_labels)
    tokenizers: dict = {}
    for line in args.variants.read_text().splitlines():
        if line.strip():
            result = run_variant(json.loads(line), tokenizers, torch.from_numpy(db),
                                 torch.from_numpy(y), torch.from_numpy(queries), query_y, data)
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
