"""One genindex build on a data set's validation split: phase times, the stopping rules'
held-out score after every epoch, and quality in both orders.

    python benchmarks/studies/curves.py --dataset emoji [--set tokenizer.patience=1000 ...]

The config is the data set's (as ``run.py``), changed by ``--set section.field=value``
(JSON values; ``section`` is ``tokenizer``, ``decoder`` or ``index``). The
reported queries are never read (``--split val``). Used to choose the stopping
rules' defaults and the emoji decoder (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import run  # noqa: E402
from benchmarks.common import prepare, prepare_arguments  # noqa: E402
from genindex import GenerativeIndex, IndexConfig  # noqa: E402


def changed(config: IndexConfig, settings: list[str]) -> IndexConfig:
    """``config`` with each ``section.field=value`` applied."""
    parts: dict[str, dict] = {"tokenizer": {}, "decoder": {}, "index": {}}
    for setting in settings:
        name, _, value = setting.partition("=")
        section, _, field = name.partition(".")
        if section not in parts or not field or not value:
            raise SystemExit(f"curves.py: error: --set {setting!r}: expected "
                             "tokenizer|decoder|index.FIELD=VALUE")
        parts[section][field] = json.loads(value)
    return config.replace(tokenizer=dataclasses.replace(config.tokenizer, **parts["tokenizer"]),
                          decoder=dataclasses.replace(config.decoder, **parts["decoder"]),
                          **parts["index"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    prepare_arguments(parser, "as run.py's --config (one file)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    args = parser.parse_args(argv)
    args.split, args.quiet = "val", True
    setup = prepare(args)
    config = changed(setup.config or IndexConfig(), args.set)
    data = setup.data
    start = time.perf_counter()
    index = GenerativeIndex.fit(setup.db, data.db_labels, config, device=args.device,
                                progress=False)
    history = index.history
    print(f"build {time.perf_counter() - start:.1f} s: tokenizer {history.tokenizer_s:.1f} s "
          f"({len(history.tokenizer_loss)} epochs), decoder {history.decoder_s:.1f} s "
          f"({len(history.decoder_loss)} epochs)")
    print("tokenizer held-out scores", [round(s, 3) for s in history.tokenizer_score])
    print("decoder held-out scores", [round(s, 3) for s in history.decoder_score])
    for order in ("generative", "metric"):
        ids = index.search(setup.queries, run.MAP_K, order=order).ids
        quality = run.evaluate(ids, data, (1, 3, 10))
        print(f"{order}: P@1 {quality.precision[1]:.4f} P@3 {quality.precision[3]:.4f} "
              f"MAP@100 {quality.map[run.MAP_K]:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
