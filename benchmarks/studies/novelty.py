"""How well a score tells an unseen class's item from a new item of a seen class.

    python benchmarks/studies/novelty.py --dataset emoji --quiet [--new-classes 0.2]

The split is ``benchmarks/fresh.py``'s with ``--new-classes`` (default 0.2):
the class-identifier tokenizer of the dataset's config is trained on the old
part, and every held-out item is scored. A novelty rule (``TokenizerConfig.
novelty``) can only work as well as its score separates the two groups, so
this prints, per score, the AUROC (1.0: perfect, 0.5: chance) and the share of
unseen-class items that fall below the q-quantile of the seen classes' new
items (the share that would get identifiers of their own at a false-new rate
q on seen classes; the quantile is taken on those items themselves, so it is
the best threshold any calibration could find).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.common import prepare  # noqa: E402
from benchmarks.fresh import parse_args, split  # noqa: E402
from benchmarks.labelled import NCM  # noqa: E402
from benchmarks.methods import _prepare  # noqa: E402
from genindex import IndexConfig  # noqa: E402
from genindex.train import freeze, split_holdout, train_tokenizer  # noqa: E402

QUANTILES = (0.05, 0.1, 0.2, 0.3, 0.5)


def auroc(scores: np.ndarray, novel: np.ndarray) -> float:
    """The probability that a novel item scores lower than a known one (ties: half)."""
    ranks = np.empty(len(scores))
    ranks[np.argsort(-scores, kind="stable")] = np.arange(1, len(scores) + 1)
    n1, n0 = novel.sum(), (~novel).sum()
    return float((ranks[novel].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def novelty_scores(db: np.ndarray, labels: np.ndarray, old: np.ndarray, new: np.ndarray,
                   config: IndexConfig) -> dict[str, np.ndarray]:
    """Scores (high: known) of the ``new`` rows, from a tokenizer trained on ``old``."""
    _, y = np.unique(labels[old], return_inverse=True)
    x = torch.from_numpy(np.ascontiguousarray(db[old], dtype=np.float32))
    x_new = torch.from_numpy(np.ascontiguousarray(db[new], dtype=np.float32))
    generator = torch.Generator().manual_seed(config.seed)
    held = split_holdout(len(x), config, generator, x.device)
    with torch.random.fork_rng(devices=[]):  # the head's initial weights, as train_models
        torch.manual_seed(config.seed)
        tokenizer, _ = train_tokenizer(x, torch.as_tensor(y), config, generator, False, None,
                                       held)
    freeze(tokenizer)
    with torch.no_grad():
        f_old, f_new = tokenizer.features(x), tokenizer.features(x_new)
        top2 = (tokenizer.classifier(f_new) / tokenizer.classifier.scale).topk(2, dim=1).values
        nearest_item = (f_new @ f_old.T).max(dim=1).values
    ncm = NCM("cosine")  # the ncm baseline's rule: its class scores are cosine - 1
    ncm.fit(db[old], labels[old])
    nearest_mean = 1.0 + ncm.class_scores(_prepare(db[new], "cosine")).max(axis=1)
    return {"best class cosine (the novelty rule's)": top2[:, 0].numpy(),
            "margin, best - second class cosine": (top2[:, 0] - top2[:, 1]).numpy(),
            "cosine to the nearest trained f_cls": nearest_item.numpy(),
            "input cosine to the nearest class mean": nearest_mean}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv if "--new-classes" in argv else argv + ["--new-classes", "0.2"])
    setup = prepare(args)
    labels = np.asarray(setup.data.db_labels)
    old, new = split(labels, args.seed, args.new_classes)
    novel = ~np.isin(labels[new], labels[old])
    if not novel.any() or novel.all():
        raise SystemExit("novelty.py: the split needs both unseen and seen classes' items")
    config = setup.config or IndexConfig()
    print(f"{len(old)} items trained on, {len(new)} held out: {novel.sum()} of unseen classes")
    print("| score | AUROC | " + " | ".join(f"own ids at q {q}" for q in QUANTILES) + " |")
    print("|---" * (len(QUANTILES) + 2) + "|")
    for name, score in novelty_scores(setup.db, labels, old, new, config).items():
        shares = [float((score[novel] < np.quantile(score[~novel], q)).mean()) for q in QUANTILES]
        print(f"| {name} | {auroc(score, novel):.3f} | "
              + " | ".join(f"{100 * s:.1f} %" for s in shares) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
