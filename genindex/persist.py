"""The on-disk format: a folder with a JSON manifest, safetensors and ``.npy`` files.

Nothing is ever unpickled: tensors are read with safetensors and arrays with
``np.load(allow_pickle=False)``. The manifest records the format version and
the SHA-256 of every file and of itself, so a truncated, corrupted or edited
index is refused with :class:`IndexFormatError`.

Saving is atomic with one rename: data files are written under names that
carry their checksum, synced, and only then does a new ``manifest.json``
replace the old one (``os.replace``). A crash at any moment leaves either the
old manifest with its files or the new one with its files; files that no
manifest names are removed after the swap.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

FORMAT_NAME = "genindex"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class IndexFormatError(ValueError):
    """A saved index is missing, damaged, tampered with or from a newer version."""


def write_folder(path: str | os.PathLike, body: dict[str, Any],
                 tensors: dict[str, torch.Tensor], arrays: dict[str, np.ndarray]) -> None:
    """Write ``tensors`` (one safetensors file) and ``arrays`` (one .npy each) atomically."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    blobs = {"weights.safetensors": save_tensors({k: v.detach().cpu().contiguous()
                                                  for k, v in tensors.items()})}
    for name, array in arrays.items():
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
        blobs[f"{name}.npy"] = buffer.getvalue()
    files = {}
    for logical, blob in blobs.items():
        digest = hashlib.sha256(blob).hexdigest()
        stem, ext = logical.rsplit(".", 1)
        stored = f"{stem}.{digest[:16]}.{ext}"
        # the old manifest may name a file of this very name: replace, never rewrite
        staging = folder / f".{stored}.{uuid.uuid4().hex}.tmp"
        _write_synced(staging, blob)
        os.replace(staging, folder / stored)
        files[logical] = {"file": stored, "sha256": digest, "bytes": len(blob)}
    body = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **body, "files": files}
    manifest = json.dumps({"body": body, "sha256": _digest_json(body)}, indent=2)
    staging = folder / f".{MANIFEST}.{uuid.uuid4().hex}.tmp"
    _write_synced(staging, manifest.encode())
    os.replace(staging, folder / MANIFEST)
    _sync_dir(folder)
    keep = {entry["file"] for entry in files.values()} | {MANIFEST}
    for stale in folder.iterdir():
        if stale.name not in keep and _is_ours(stale.name):
            stale.unlink(missing_ok=True)


def read_folder(path: str | os.PathLike
                ) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """Read and verify a folder written by :func:`write_folder`."""
    folder = Path(path)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise IndexFormatError(f"{folder} is not a saved genindex index: no {MANIFEST}")
    try:
        manifest = json.loads(manifest_path.read_bytes())
        body, digest = manifest["body"], manifest["sha256"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise IndexFormatError(f"{manifest_path} is damaged: {error}") from None
    if _digest_json(body) != digest:
        raise IndexFormatError(f"{manifest_path} is damaged or was edited: checksum mismatch")
    if body.get("format") != FORMAT_NAME:
        raise IndexFormatError(f"{folder} holds format {body.get('format')!r}, "
                               "not a genindex index")
    version = body.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise IndexFormatError(f"{folder} was written in format version {version}; this "
                               f"genindex reads versions <= {FORMAT_VERSION}: upgrade genindex")
    tensors, arrays = {}, {}
    for logical, entry in body["files"].items():
        blob = _read_verified(folder, logical, entry)
        try:
            if logical.endswith(".safetensors"):
                tensors = load_tensors(blob)
            else:
                arrays[logical[:-len(".npy")]] = np.load(io.BytesIO(blob), allow_pickle=False)
        except Exception as error:  # noqa: BLE001 - any parser failure means a bad file
            raise IndexFormatError(f"{folder / entry['file']} cannot be read: {error}") from None
    return body, tensors, arrays


def _read_verified(folder: Path, logical: str, entry: dict[str, Any]) -> bytes:
    target = folder / str(entry.get("file"))
    try:
        blob = target.read_bytes()
    except OSError as error:
        raise IndexFormatError(f"{logical} of the index at {folder} is missing: {error}") from None
    if len(blob) != entry.get("bytes") or hashlib.sha256(blob).hexdigest() != entry.get("sha256"):
        raise IndexFormatError(f"{target} is truncated or damaged: checksum mismatch")
    return blob


def _digest_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _is_ours(name: str) -> bool:
    return name.endswith((".npy", ".safetensors")) or (name.startswith(".")
                                                       and name.endswith(".tmp"))


def _write_synced(path: Path, blob: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(blob)
        handle.flush()
        os.fsync(handle.fileno())


def _sync_dir(folder: Path) -> None:
    if os.name == "posix":
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
