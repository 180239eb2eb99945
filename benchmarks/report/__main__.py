"""``python -m benchmarks.report SOURCE... --docs DIR``: see :mod:`benchmarks.report.pages`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.report.pages import render  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report",
                                     description="Render results pages from stored runs.")
    parser.add_argument("sources", nargs="+", type=Path,
                        help="folders holding a results.json (and its plots)")
    parser.add_argument("--docs", type=Path, default=Path("docs/results"),
                        help="where the pages go (default docs/results)")
    args = parser.parse_args(argv)
    for path in render(args.sources, args.docs):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
