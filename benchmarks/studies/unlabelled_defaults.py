"""Where the no-label defaults were chosen: a sweep on a validation split, one seed.

    python benchmarks/studies/unlabelled_defaults.py --dataset emoji|fashion-mnist|synthetic
        [--configs benchmarks/configs/unlabelled/defaults-sweep.jsonl]
        [--grid 16:100,32:100] [--queries 1000]

Validation data only: the data set's val split (``synthetic``: ``scale.make_data``
with seed 1, 25,000 items in 64 dimensions around 400 centres). Each line of
``--configs`` is an ``IndexConfig`` (JSON) built without labels; each
``nprobe:k_factor`` pair of ``--grid`` is one search of the first ``--queries``
queries. Printed: build seconds, recall@10 against exact L2 search and
queries/s; beside each build, the ablation without the decoder: the same cells
(the tokenizer's codebook) ranked by the distance to their codeword, a Faiss
IVF-Flat over that codebook, at 1 to 32 cells.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.common import prepare, validation_split  # noqa: E402
from genindex import GenerativeIndex, IndexConfig  # noqa: E402

SWEEP = Path(__file__).resolve().parents[1] / "configs" / "unlabelled" / "defaults-sweep.jsonl"


def validation_vectors(dataset: str):
    """(database, queries) of the validation split."""
    if dataset == "synthetic":
        from benchmarks.scale import make_data

        db, _, queries, _ = make_data(25_000, 400, 64, seed=1)
        return db, queries
    args = argparse.Namespace(dataset=dataset, data_root=None, limit=None,
                              backbone="efficientnet-lite0", config=None, device="cpu",
                              threads=None, quiet=True, split="val")
    db, _, queries, _ = validation_split(prepare(args), "val")
    return db, queries


def recall(ids: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a[:10]) & set(b[:10])) / 10 for a, b in zip(ids, exact)]))


def codeword_cells(index: GenerativeIndex, db: np.ndarray, queries: np.ndarray, exact) -> None:
    """The ablation: the same cells ranked by codeword distance (IVF-Flat on the codebook)."""
    import faiss

    codebook = index.tokenizer.quantizer.codebooks[0].float().numpy()
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(db.shape[1]), db.shape[1], len(codebook))
    ivf.quantizer.add(codebook)
    ivf.is_trained = True
    ivf.add(db)
    for nprobe in (1, 2, 4, 8, 16, 32):
        ivf.nprobe = nprobe
        print(f"   no decoder (cells by codeword distance), {nprobe} cells: recall "
              f"{recall(ivf.search(queries, 10)[1], exact):.3f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--configs", type=Path, default=SWEEP)
    parser.add_argument("--grid", default="16:100,32:100")
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args(argv)
    import faiss

    db, queries = validation_vectors(args.dataset)
    queries = queries[:args.queries]
    flat = faiss.IndexFlatL2(db.shape[1])
    flat.add(db)
    exact = flat.search(queries, 10)[1]
    print(f"{args.dataset} val: {len(db)} items, {len(queries)} queries", flush=True)
    for line in args.configs.read_text().splitlines():
        if not line.strip():
            continue
        config = IndexConfig.from_dict(json.loads(line))
        start = time.perf_counter()
        index = GenerativeIndex.fit(db, None, config, device="cpu", progress=False)
        print(f"{line}: built in {time.perf_counter() - start:.1f} s", flush=True)
        codeword_cells(index, db, queries, exact)
        for setting in args.grid.split(","):
            nprobe, k_factor = setting.split(":")
            start = time.perf_counter()
            ids = index.search(queries, 10, beam_size=int(nprobe), k_factor=float(k_factor)).ids
            qps = len(queries) / (time.perf_counter() - start)
            print(f"   nprobe {nprobe}, k_factor {k_factor}: recall {recall(ids, exact):.3f} "
                  f"at {qps:.0f} queries/s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
