"""A Parquet cache of backbone features, so each image is embedded once.

Features are stored per backbone (its name, weights and preprocessing: the
backbone's ``cache_key``) in a folder of Parquet shards with two columns,
``key`` (the image's identity: path, size and modification time, or a hash of
its pixels) and ``feature``. Every shard is written to a temporary file and
renamed, so an interrupted extraction keeps what it finished and the next run
resumes from there.

The cache lives in ``$GENINDEX_CACHE``, else ``$XDG_CACHE_HOME/genindex``,
else ``~/.cache/genindex``; pass ``cache_dir`` to put it elsewhere.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import uuid
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

def default_cache_dir() -> Path:
    if os.environ.get("GENINDEX_CACHE"):
        return Path(os.environ["GENINDEX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "genindex"


class FeatureCache:
    """Features of images under one backbone key, read once per process."""

    def __init__(self, backbone_key: str, root: str | os.PathLike | None = None) -> None:
        digest = hashlib.sha256(backbone_key.encode()).hexdigest()[:20]
        self.folder = Path(root) if root is not None else default_cache_dir()
        self.folder = self.folder / "features" / digest
        self.backbone_key = backbone_key
        self._index: dict[str, np.ndarray] | None = None
        self._lock = threading.Lock()

    def get(self, keys: list[str]) -> list[np.ndarray | None]:
        """The cached feature of each key, or None."""
        with self._lock:
            index = self._load()
            return [index.get(key) for key in keys]

    def put(self, keys: list[str], features: np.ndarray) -> None:
        """Store one shard (atomically) and remember it."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        features = np.ascontiguousarray(features, dtype=np.float32)
        column = pa.FixedSizeListArray.from_arrays(pa.array(features.reshape(-1)),
                                                   features.shape[1])
        table = pa.table({"key": pa.array(keys, pa.string()), "feature": column})
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / "backbone.json").write_text(self.backbone_key)
            name = f"{uuid.uuid4().hex}.parquet"
            staging = self.folder / f".{name}.tmp"
            pq.write_table(table, staging)
            os.replace(staging, self.folder / name)
            index = self._load()
            index.update(zip(keys, features))

    def _load(self) -> dict[str, np.ndarray]:
        if self._index is None:
            self._index = {}
            for shard in sorted(self.folder.glob("*.parquet")):
                self._index.update(_read_shard(shard))
        return self._index


def _read_shard(path: Path) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
        keys = table.column("key").to_pylist()
        column = table.column("feature").combine_chunks()
        features = column.flatten().to_numpy().reshape(len(keys), column.type.list_size)
    except Exception as error:  # noqa: BLE001 - a damaged shard is skipped, not fatal
        log.warning("skipping unreadable cache shard %s: %s", path, error)
        return {}
    return dict(zip(keys, features.astype(np.float32)))

