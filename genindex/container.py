"""The index file (format version 2): named arrays and a JSON body in one file.

The layout is safetensors': an 8-byte little-endian header length ``N``, a
JSON header of ``N`` bytes (padded with spaces to a multiple of 8) that gives
every array's dtype, shape and byte range, then the arrays' bytes, back to
back. The body is a JSON object kept in the header's ``__metadata__`` under
``"genindex"``, with the SHA-256 of every array's bytes under ``"sha256"``;
``"genindex_sha256"`` is the SHA-256 of the rest of the header. The checksums
catch damage; they are not keyed, so they prove nothing about who wrote it.
Any safetensors reader can open the file; nothing in it is code.

:func:`write` puts the file in place atomically: it writes a temporary file
beside the target (``.genindex-<random>.tmp``: short, so any name fits), syncs
it, and moves it over the target with one ``os.replace``. A reader sees the
old file or the new one, and any number of concurrent writers leave one
complete file: the last rename wins. A writer killed before its rename leaves
the target as it was and its temporary file behind (safe to delete).
:func:`check_target` refuses a target that is a folder, device, pipe or socket
(always), or an existing file that is not an index file unless told to
overwrite it; a link at the target is itself replaced, never what it names.

:func:`read` trusts nothing in the file. A link at ``path`` is resolved once
(a swapped ``current -> v42`` link loads ``v42``); the file is opened without
following links and without blocking, and must be a regular file. The header
must be at most :data:`HEADER_LIMIT` bytes, its arrays of known dtypes, their
byte ranges must tile the rest of the file exactly, each the size of its
shape: every size is checked before anything is allocated. Every array's
checksum is verified.

Arrays named in ``mmap`` are mapped copy-on-write from the file that was
checked (through its open descriptor, never by path again) as
:class:`MappedArray`, which remembers their checksum:

* a file *replaced* afterwards (what :func:`write` does) does not affect
  them: the mapping keeps the old inode alive;
* a file *rewritten in place* can change what they hold without notice;
  :func:`write` refuses to save such an array, since its bytes no longer
  match the checksum they were loaded with;
* a file *truncated in place* (``cp`` over it, ``truncate``) cannot be
  detected: reading a lost page raises SIGBUS, which no Python code can catch.
  :func:`read` turns on :mod:`faulthandler` when it maps, so such a death
  prints "Fatal Python error: Bus error" and the Python stack instead of
  dying silently. Replace index files (``mv``, ``os.replace``); never copy
  over or truncate one that a process has mapped.
"""

from __future__ import annotations

import errno
import faulthandler
import hashlib
import io
import json
import logging
import math
import os
import stat
import struct
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FORMAT_NAME = "genindex"
FORMAT_VERSION = 2
HEADER_LIMIT = 1 << 24  # bytes of JSON header; a header is a few kB
KEY = "genindex"
DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
          "I32": np.int32, "I16": np.int16, "I8": np.int8, "U64": np.uint64,
          "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_}
_NAMES = {np.dtype(v): k for k, v in DTYPES.items()}
_BLOCK = 1 << 22
_MAX_DIMS = 8


class IndexFormatError(ValueError):
    """A saved index is missing, damaged, tampered with or from a newer version."""


class MappedArray(np.memmap):
    """An array mapped from an index file; ``sha256``: its bytes' checksum when mapped."""

    sha256 = ""


def write(path: str | os.PathLike, body: dict[str, Any], arrays: dict[str, np.ndarray],
          overwrite: bool = False) -> None:
    """Write ``body`` and ``arrays`` to the file ``path``, atomically (module doc).

    ``overwrite``: replace a file at ``path`` that is not an index file too.
    """
    target = check_target(path, overwrite)
    order, head, arrays = _layout(body, arrays)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".genindex-{uuid.uuid4().hex[:16]}.tmp"  # fits any name
    try:
        with open(staging, "xb") as handle:
            _write_to(handle, order, head, arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)
    _sync_dir(target.parent)


def dumps(body: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
    """The bytes :func:`write` would write (for pickling and ``serialize_index``)."""
    buffer = io.BytesIO()
    _write_to(buffer, *_layout(body, arrays))
    return buffer.getvalue()


def loads(blob: bytes | bytearray | memoryview) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(body, arrays)`` of the bytes :func:`dumps` gave, checked as :func:`read` checks."""
    blob = bytes(blob)
    return _read(io.BytesIO(blob), len(blob), "the serialized index", ())


def _layout(body: dict[str, Any], arrays: dict[str, np.ndarray]
            ) -> tuple[list[str], bytes, dict[str, np.ndarray]]:
    """The arrays' order, the header bytes and the arrays as written, every check done."""
    mapped = {name: a.sha256 for name, a in arrays.items() if isinstance(a, MappedArray)}
    arrays = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    for name, array in arrays.items():
        if array.dtype not in _NAMES or array.ndim > _MAX_DIMS:
            raise ValueError(f"array {name!r}: dtype {array.dtype} of {array.ndim} dimensions "
                             "cannot be stored")
    digests = {name: _digest(array) for name, array in arrays.items()}
    for name, expected in mapped.items():
        if expected and digests[name] != expected:
            raise IndexFormatError(f"array {name!r} is mapped from a file that was rewritten "
                                   "in place since it was loaded: its bytes no longer match "
                                   "their checksum, so they are not saved")
    order, head = _header_bytes({"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                                 **body, "sha256": digests}, arrays)
    return order, head, arrays


def _write_to(handle, order: list[str], head: bytes, arrays: dict[str, np.ndarray]) -> None:
    handle.write(head)
    for name in order:
        handle.write(_bytes(arrays[name]))


def check_target(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """``path`` as a Path once it is known that :func:`write` may put a file there (see
    the module doc) and that its folder is a folder or creatable. Creates nothing."""
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"path {target} is a folder: an index is saved as one file (a "
                         "folder saved by genindex 0.1 loads read-only: load it and save it "
                         "to a file path)")
    info = os.lstat(target) if os.path.lexists(target) else None
    if info is not None and not (stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode)):
        raise ValueError(f"path {target} is a device, pipe or socket, not a file: an index "
                         "is saved only over a regular file (overwrite=True too)")
    if info is not None and not overwrite and not is_index_file(target):
        raise ValueError(f"path {target} exists and is not a genindex index file: choose "
                         "another path, or pass overwrite=True (CLI: --force) to replace it")
    parent = target.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"path {target}: cannot create its folder, {parent} is not a folder")
    return target


def _header_bytes(body: dict[str, Any], arrays: dict[str, np.ndarray]
                  ) -> tuple[list[str], bytes]:
    """The arrays' order in the file and the file's first bytes (length and header)."""
    # widest items first: with an 8-byte aligned header every array stays aligned
    order = sorted(arrays, key=lambda name: (-arrays[name].dtype.itemsize, name))
    header, offset = {"__metadata__": {KEY: json.dumps(body, allow_nan=False)}}, 0
    for name in order:
        array = arrays[name]
        header[name] = {"dtype": _NAMES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    header["__metadata__"][KEY + "_sha256"] = _header_digest(header)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return order, struct.pack("<Q", len(text)) + text


def read(path: str | os.PathLike, mmap: Collection[str] = ()
         ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(body, arrays)`` of a file :func:`write` wrote, every byte checked (module doc);
    the arrays named in ``mmap`` are mapped from the file as :class:`MappedArray`."""
    with _open_regular(_resolved(path), f"the index file {path}") as handle:
        return _read(handle, os.fstat(handle.fileno()).st_size, path, mmap)


def _resolved(path: str | os.PathLike) -> Path:
    """``path`` with a symbolic link at it resolved once, to the file it names."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _read(handle, size: int, path, mmap: Collection[str]
          ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    body, layout, start = _header(handle, size, path)
    arrays = {}
    for name, (dtype, shape, begin, end) in layout.items():
        handle.seek(start + begin)
        expected = body["sha256"].get(name)
        if name in mmap and end > begin:
            _check_digest(handle, end - begin, expected, name, path)
            _report_bus_errors()
            arrays[name] = MappedArray(handle, dtype=dtype, mode="c", offset=start + begin,
                                       shape=shape)
            arrays[name].sha256 = expected
            continue
        data = bytearray(end - begin)
        if handle.readinto(data) != len(data):
            raise IndexFormatError(f"{path} is truncated: array {name!r} is cut short")
        if hashlib.sha256(data).hexdigest() != expected:
            raise IndexFormatError(f"{path} is damaged: array {name!r} fails its checksum")
        arrays[name] = np.frombuffer(data, dtype=dtype).reshape(shape)
    return body, arrays


def _report_bus_errors() -> None:
    """Turn on faulthandler (once), so a SIGBUS from a truncated mapping is not silent."""
    if not faulthandler.is_enabled():
        try:
            faulthandler.enable()
            log.info("faulthandler enabled: a mapped index file truncated in place kills "
                     "the process with SIGBUS; this makes it print why")
        except (RuntimeError, ValueError, AttributeError, OSError):  # no usable stderr
            log.warning("cannot enable faulthandler: a mapped index file truncated in place "
                        "would kill the process silently (SIGBUS)")


def is_index_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` (or the file a link there names) is a regular file whose header
    is a genindex index's."""
    try:
        with _open_regular(_resolved(path), str(path)) as handle:
            _header(handle, os.fstat(handle.fileno()).st_size, path)
        return True
    except IndexFormatError:
        return False


def names_genindex(path: str | os.PathLike) -> bool:
    """Whether ``path`` (or what a link there names) has a header naming a genindex
    body, valid or not (a newer version, a damaged array): not a file for Faiss."""
    try:
        with _open_regular(_resolved(path), str(path)) as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(min(length, HEADER_LIMIT)).decode("utf-8"))
        return KEY in header.get("__metadata__", {})
    except (IndexFormatError, OSError, ValueError, AttributeError, RecursionError,
            struct.error):
        return False


def is_index_bytes(blob: bytes | bytearray | memoryview) -> bool:
    """Whether ``blob`` starts as :func:`dumps` output does: a genindex index's header."""
    blob = bytes(blob)
    try:
        _header(io.BytesIO(blob), len(blob), "bytes")
        return True
    except IndexFormatError:
        return False


def _header(handle, size: int, path) -> tuple[dict[str, Any], dict[str, tuple], int]:
    """The body, each array's ``(dtype, shape, begin, end)`` and where the data starts."""
    if size < 8:
        raise IndexFormatError(f"{path} is not a genindex index file: {size} bytes")
    (length,) = struct.unpack("<Q", handle.read(8))
    if length > min(HEADER_LIMIT, size - 8):
        raise IndexFormatError(f"{path} is not a genindex index file, or is truncated: "
                               f"its header claims {length} bytes")
    try:
        header = json.loads(handle.read(length).decode("utf-8"))
        signed = header["__metadata__"].pop(KEY + "_sha256")
        damaged = signed != _header_digest(header)
        body = json.loads(header["__metadata__"][KEY])
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as error:
        raise IndexFormatError(f"{path} is not a genindex index file: {type(error).__name__}: "
                               f"{error}") from None
    if damaged:
        raise IndexFormatError(f"{path} is damaged: its header fails its checksum")
    if not isinstance(body, dict) or not isinstance(body.get("sha256"), dict):
        raise IndexFormatError(f"{path} is damaged: its body is not an object with checksums")
    _check_version(body, path)
    layout = {name: _entry(name, entry, path) for name, entry in header.items()
              if name != "__metadata__"}
    end = 0
    for name, (_, _, begin, stop) in sorted(layout.items(), key=lambda item: item[1][2]):
        if begin != end:
            raise IndexFormatError(f"{path} is damaged: array {name!r} does not start where "
                                   "the one before it ends")
        end = stop
    if end != size - 8 - length:
        raise IndexFormatError(f"{path} is truncated or damaged: its arrays take {end} bytes, "
                               f"the file holds {size - 8 - length}")
    if set(body["sha256"]) != set(layout):
        raise IndexFormatError(f"{path} is damaged: the checksums do not name its arrays")
    return body, layout, 8 + length


def _check_version(body: dict[str, Any], path) -> None:
    version = body.get("format_version")
    if body.get("format") != FORMAT_NAME:
        raise IndexFormatError(f"{path} holds format {body.get('format')!r}, not a genindex "
                               "index")
    if type(version) is int and version > FORMAT_VERSION:
        raise IndexFormatError(f"{path} was written in format version {version}; this "
                               f"genindex reads versions <= {FORMAT_VERSION}: upgrade genindex")
    if version != FORMAT_VERSION or type(version) is not int:
        raise IndexFormatError(f"{path} has no valid format_version: {version!r} (an index "
                               f"file is version {FORMAT_VERSION})")


def _entry(name: str, entry: Any, path) -> tuple[np.dtype, tuple[int, ...], int, int]:
    """One array's header entry, checked: known dtype, sane shape, consistent size."""
    try:
        dtype = np.dtype(DTYPES[entry["dtype"]])
        shape = tuple(entry["shape"])
        begin, end = entry["data_offsets"]
        numbers = (*shape, begin, end)
        if len(shape) > _MAX_DIMS or not all(type(v) is int and v >= 0 for v in numbers):
            raise ValueError("shape and offsets must be non-negative integers")
        if end - begin != math.prod(shape) * dtype.itemsize:
            raise ValueError(f"{end - begin} bytes for shape {shape} of {dtype}")
    except (KeyError, TypeError, ValueError) as error:
        raise IndexFormatError(f"{path} is damaged: array {name!r}: {error}") from None
    return dtype, shape, begin, end


def _check_digest(handle, nbytes: int, expected: Any, name: str, path) -> None:
    digest, left = hashlib.sha256(), nbytes
    while left:
        block = handle.read(min(_BLOCK, left))
        if not block:
            raise IndexFormatError(f"{path} is truncated: array {name!r} is cut short")
        digest.update(block)
        left -= len(block)
    if digest.hexdigest() != expected:
        raise IndexFormatError(f"{path} is damaged: array {name!r} fails its checksum")


def _header_digest(header: dict[str, Any]) -> str:
    """SHA-256 of the header (without its own digest), in one canonical spelling."""
    return hashlib.sha256(json.dumps(header, sort_keys=True, separators=(",", ":"))
                          .encode()).hexdigest()


def _bytes(array: np.ndarray) -> np.ndarray:
    """The bytes of a C-contiguous array, as a flat uint8 view (no copy)."""
    return array.reshape(-1).view(np.uint8)


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(_bytes(array)).hexdigest()


def _open_regular(path: Path, what: str, size: int | None = None, limit: int | None = None):
    """``path`` opened for reading if it is a regular file (not a link, folder, pipe or
    device: links are resolved by the caller, or refused) of ``size`` bytes (or at
    most ``limit``): checked on the open file itself."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(
            os, "O_NONBLOCK", 0))
    except OSError as error:
        why = " (a link loop, or a link in a folder: never followed)" * (
            error.errno == errno.ELOOP)
        raise IndexFormatError(f"{what} is missing or cannot be opened: {error.strerror}"
                               f"{why}") from None
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


def _sync_dir(folder: Path) -> None:
    if os.name == "posix":
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
