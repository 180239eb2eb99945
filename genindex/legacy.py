"""Format version 1, read only: a folder with a JSON manifest, safetensors and ``.npy`` files.

genindex 0.1 saved an index as a folder; :func:`read_folder` still reads one,
so indexes saved then keep working. Saving always writes the one-file format
(:mod:`genindex.container`): load a folder and save it to a file path.

Nothing is unpickled: tensors are read with safetensors and arrays with
``np.load(allow_pickle=False)``. The manifest records the SHA-256 of every
file and of itself; every file is opened without following links and checked
to be a regular file of the size the manifest gives before it is read. With
``mmap``, the named ``.npy`` arrays are mapped copy-on-write after their
checksum has been verified by streaming the file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_tensors

from .container import FORMAT_NAME, IndexFormatError, _open_regular

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_LOGICAL = re.compile(r"[a-z][a-z0-9_]*\.(npy|safetensors)")
_STORED = re.compile(r"[a-z][a-z0-9_]*\.[0-9a-f]{16}\.(npy|safetensors)")
_HASH_BLOCK = 1 << 22
_MANIFEST_LIMIT = 1 << 24  # bytes; a manifest is a few kB


def read_folder(path: str | os.PathLike, mmap: Collection[str] = ()
                ) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """``(body, tensors, arrays)`` of a folder genindex 0.1 saved, every file verified;
    the arrays named in ``mmap`` are memory-mapped copy-on-write, not read."""
    folder = Path(path)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise IndexFormatError(f"{folder} is not a saved genindex index: no {MANIFEST}")
    with _open_regular(manifest_path, MANIFEST, limit=_MANIFEST_LIMIT) as handle:
        text = handle.read(_MANIFEST_LIMIT + 1)
    try:
        manifest = json.loads(text)
        body, digest = manifest["body"], manifest["sha256"]
        edited = _digest_json(body) != digest
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        raise IndexFormatError(f"{manifest_path} is damaged: {type(error).__name__}: "
                               f"{error}") from None
    if edited:
        raise IndexFormatError(f"{manifest_path} is damaged or was edited: checksum mismatch")
    if not isinstance(body, dict):
        raise IndexFormatError(f"{manifest_path} is damaged: its body is not an object")
    if body.get("format") != FORMAT_NAME:
        raise IndexFormatError(f"{folder} holds format {body.get('format')!r}, "
                               "not a genindex index")
    version = body.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise IndexFormatError(f"{manifest_path} has no valid format_version: {version!r}")
    if version != FORMAT_VERSION:
        raise IndexFormatError(f"{manifest_path} claims format version {version}, but only "
                               f"version {FORMAT_VERSION} was saved as a folder")
    tensors, arrays = {}, {}
    for logical, entry in _file_entries(body, manifest_path):
        name = logical.rsplit(".", 1)[0]
        try:
            if logical.endswith(".npy") and name in mmap:
                _verify_stream(folder, logical, entry)
                arrays[name] = np.load(folder / entry["file"], mmap_mode="c", allow_pickle=False)
                continue
            blob = _read_verified(folder, logical, entry)
            if logical.endswith(".safetensors"):
                tensors = load_tensors(blob)
            else:
                arrays[name] = np.load(io.BytesIO(blob), allow_pickle=False)
        except IndexFormatError:
            raise
        except Exception as error:  # noqa: BLE001 - any parser failure means a bad file
            raise IndexFormatError(f"{folder / entry['file']} cannot be read: {error}") from None
    return body, tensors, arrays


def _file_entries(body: dict[str, Any], manifest_path: Path) -> list[tuple[str, dict]]:
    """The manifest's file table, with every name checked: no path leaves the folder."""
    files = body.get("files")
    if not isinstance(files, dict):
        raise IndexFormatError(f"{manifest_path} has no file table")
    for logical, entry in files.items():
        if (not _LOGICAL.fullmatch(logical) or not isinstance(entry, dict)
                or not _STORED.fullmatch(str(entry.get("file")))
                or not isinstance(entry.get("bytes"), int)
                or not isinstance(entry.get("sha256"), str)):
            raise IndexFormatError(f"{manifest_path} has an invalid file entry {logical!r}")
    return list(files.items())


def _verify_stream(folder: Path, logical: str, entry: dict[str, Any]) -> None:
    """Check a file's size and checksum without holding it in memory."""
    target = folder / entry["file"]
    digest, size = hashlib.sha256(), 0
    with _open_regular(target, f"{logical} of the index at {folder}", entry["bytes"]) as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
            size += len(block)
    if size != entry["bytes"] or digest.hexdigest() != entry["sha256"]:
        raise IndexFormatError(f"{target} is truncated or damaged: checksum mismatch")


def _read_verified(folder: Path, logical: str, entry: dict[str, Any]) -> bytes:
    target = folder / str(entry.get("file"))
    with _open_regular(target, f"{logical} of the index at {folder}", entry["bytes"]) as handle:
        blob = handle.read(entry["bytes"] + 1)
    if len(blob) != entry.get("bytes") or hashlib.sha256(blob).hexdigest() != entry.get("sha256"):
        raise IndexFormatError(f"{target} is truncated or damaged: checksum mismatch")
    return blob


def _digest_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
