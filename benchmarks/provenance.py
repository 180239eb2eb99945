"""Where a stored result comes from: the command, the commit, the machine, the day.

Every measuring script of the harness stores a :class:`benchmarks.rows.Provenance`
beside its numbers, and the results pages print it, so that each page says what
to type to measure it again and on what it was measured.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from .rows import Provenance

ROOT = Path(__file__).resolve().parent.parent


def here(argv: list[str] | None = None, threads: int | None = None) -> Provenance:
    """The provenance of this process: ``python <script> <argv>`` (``argv``: the
    script's arguments, default ``sys.argv[1:]``), the checkout's commit, the machine
    and today's date. ``threads``: the compute threads the run used."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(ROOT) if script.is_relative_to(ROOT) else Path(script.name)
    arguments = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python", shlex.quote(shown.as_posix())]
                       + [shlex.quote(a) for a in arguments])
    return Provenance(command=command, commit=commit(), machine=machine(threads),
                      date=time.strftime("%Y-%m-%d"))


def commit() -> str:
    """The short commit of the checkout, ``+changes`` when tracked files differ from it,
    or ``unknown`` outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True,
                              text=True, check=True).stdout.strip()

    try:
        head = git("rev-parse", "--short=10", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if changed else "")


def machine(threads: int | None = None) -> str:
    """CPU model, cores, memory, and the versions that set the speed of the run."""
    import numpy as np
    import torch

    parts = [f"{_cpu_model()}, {os.cpu_count()} cores"]
    memory = _memory_gib()
    if memory:
        parts.append(f"{memory:.0f} GiB RAM")
    if torch.cuda.is_available():
        parts.append(torch.cuda.get_device_name(0))
    versions = [f"Python {platform.python_version()}", f"torch {torch.__version__}",
                f"numpy {np.__version__}"]
    try:
        import faiss

        versions.append(f"faiss {faiss.__version__}")
    except ImportError:
        pass
    if threads is not None:
        versions.append(f"{threads} threads")
    return "; ".join([", ".join(parts), ", ".join(versions)])


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    except (ValueError, OSError, AttributeError):
        return None
