"""The on-disk format: a folder with a JSON manifest, safetensors and ``.npy`` files.

Nothing is ever unpickled: tensors are read with safetensors and arrays with
``np.load(allow_pickle=False)``. The manifest records the format version and
the SHA-256 of every file and of itself, so a truncated, corrupted or edited
index is refused with :class:`IndexFormatError`.

Saving is atomic with one rename: data files are written under names that
carry their checksum, synced, and only then does a new ``manifest.json``
replace the old one (``os.replace``). A crash at any moment leaves either the
old manifest with its files or the new one with its files; files that no
manifest names are removed after the swap. (Writing a whole new folder and
renaming it over the old one would not be atomic: POSIX cannot rename a
folder over a non-empty one, so the old folder would first have to move away.)

Saving into a folder that holds other files but no index, or a ``manifest.json``
that is not a genindex index's, is refused. A save removes only regular files
that the replaced manifest named, staging files, and data files under this
index's own names (``codes.<hash>.npy``: what a killed save left). Two
processes must not save into the same folder at the same time.

``read_folder(..., mmap=names)`` memory-maps the named ``.npy`` arrays
(copy-on-write: the file is never written) after verifying their checksum by
streaming the file, so a large code table is not read into memory. A file
changed after that check is not detected.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

FORMAT_NAME = "genindex"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_LOGICAL = re.compile(r"[a-z][a-z0-9_]*\.(npy|safetensors)")
_STORED = re.compile(r"[a-z][a-z0-9_]*\.[0-9a-f]{16}\.(npy|safetensors)")
_STAGING = re.compile(r"\.[a-z][a-z0-9_.]*\.[0-9a-f]{32}\.tmp")
_HASH_BLOCK = 1 << 22
_MANIFEST_LIMIT = 1 << 24  # bytes; a manifest is a few kB


class IndexFormatError(ValueError):
    """A saved index is missing, damaged, tampered with or from a newer version."""


def write_folder(path: str | os.PathLike, body: dict[str, Any],
                 tensors: dict[str, torch.Tensor], arrays: dict[str, np.ndarray]) -> None:
    """Write ``tensors`` (one safetensors file) and ``arrays`` (one .npy each) atomically."""
    folder, previous = _target_folder(Path(path))  # previous: the replaced index's files
    blobs = {"weights.safetensors": save_tensors({k: v.detach().cpu().contiguous()
                                                  for k, v in tensors.items()})}
    for name, array in arrays.items():
        if not _LOGICAL.fullmatch(f"{name}.npy"):
            raise ValueError(f"array name {name!r} must be lower case letters, digits and _")
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
    _sync_dir(folder)  # the data files' names are durable before the manifest names them
    body = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **body, "files": files}
    manifest = json.dumps({"body": body, "sha256": _digest_json(body)}, indent=2)
    staging = folder / f".{MANIFEST}.{uuid.uuid4().hex}.tmp"
    _write_synced(staging, manifest.encode())
    os.replace(staging, folder / MANIFEST)
    _sync_dir(folder)
    keep = {entry["file"] for entry in files.values()} | {MANIFEST}
    ours = {logical.rsplit(".", 1)[0] for logical in files}
    for stale in folder.iterdir():  # the old index's files, a killed save's, no other
        if stale.name not in keep and stale.is_file() and not stale.is_symlink() and (
                stale.name in previous or _STAGING.fullmatch(stale.name)
                or (_STORED.fullmatch(stale.name) and stale.name.split(".")[0] in ours)):
            stale.unlink(missing_ok=True)


def read_folder(path: str | os.PathLike, mmap: Collection[str] = ()
                ) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """Read and verify a folder written by :func:`write_folder`.

    The arrays named in ``mmap`` are memory-mapped read-only, not read.
    """
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
    if version > FORMAT_VERSION:
        raise IndexFormatError(f"{folder} was written in format version {version}; this "
                               f"genindex reads versions <= {FORMAT_VERSION}: upgrade genindex")
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


def check_target(path: str | os.PathLike) -> set[str]:
    """Refuse, naming the path, a save target that is not a folder, holds files but no
    index, or cannot be created (a file in the way); nothing is created here. Returns
    the data files of the index already there (none for a new or empty folder)."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"path {folder} exists and is not a folder")
    previous = _saved_files(folder)
    if (folder / MANIFEST).exists() and previous is None:
        raise ValueError(f"path {folder} holds a {MANIFEST} that is not a genindex index's: "
                         "save into an empty or new folder, or one that holds a saved index")
    if folder.is_dir() and previous is None:
        foreign = [p.name for p in folder.iterdir()
                   if not (_STORED.fullmatch(p.name) or _STAGING.fullmatch(p.name))]
        if foreign:
            raise ValueError(f"path {folder} holds files that are not a saved index "
                             f"({', '.join(sorted(foreign)[:3])}): save into an empty or new "
                             "folder, or one that holds a saved index")
    parent = folder.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"path {folder}: cannot create the folder, {parent} is not a folder")
    return previous or set()


def _saved_files(folder: Path) -> set[str] | None:
    """The data files the genindex manifest in ``folder`` names; None where there is
    no such manifest (none, or someone else's: a link, not JSON, another format)."""
    try:
        with _open_regular(folder / MANIFEST, MANIFEST, limit=_MANIFEST_LIMIT) as handle:
            body = json.loads(handle.read(_MANIFEST_LIMIT + 1))["body"]
        if body["format"] != FORMAT_NAME:
            return None
        return {str(entry["file"]) for entry in body["files"].values()
                if _STORED.fullmatch(str(entry["file"]))}
    except (IndexFormatError, ValueError, KeyError, TypeError, AttributeError,
            RecursionError):
        return None


def _target_folder(folder: Path) -> tuple[Path, set[str]]:
    """``folder``, created if needed, after :func:`check_target`, and what it returned."""
    previous = check_target(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"path {folder}: cannot create the folder: {error.strerror}") from None
    return folder, previous


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


def _open_regular(path: Path, what: str, size: int | None = None, limit: int | None = None):
    """``path`` opened for reading if it is a regular file (not a link, folder, pipe or
    device) of ``size`` bytes (or at most ``limit``): checked on the open file itself."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(
            os, "O_NONBLOCK", 0))
    except OSError as error:
        raise IndexFormatError(f"{what} is missing or cannot be opened: {error.strerror} "
                               "(a link is never followed)") from None
    info = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = f"{path} is not a regular file (a folder, pipe or device)"
    elif size is not None and info.st_size != size:
        problem = (f"{path} is truncated or damaged: {info.st_size} bytes where the manifest "
                   f"says {size}")
    elif limit is not None and info.st_size > limit:
        problem = f"{path} is {info.st_size} bytes, more than the {limit} a manifest may have"
    if problem:
        os.close(fd)
        raise IndexFormatError(problem)
    return os.fdopen(fd, "rb")


def _digest_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


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
