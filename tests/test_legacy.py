"""Folders saved by genindex 0.1 (format version 1) still load, read only, and are checked.

``tests/data/format_v1`` was written by ``tests/data/make_format_v1.py`` at commit
63b2a71 (the last to save folders), with the search results it gave then.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from genindex import GenerativeIndex, IndexFormatError
from genindex.legacy import MANIFEST, _digest_json

DATA = Path(__file__).parent / "data"


@pytest.fixture
def folder(tmp_path) -> Path:
    return Path(shutil.copytree(DATA / "format_v1", tmp_path / "v1"))


def test_a_saved_folder_gives_the_results_it_gave_when_saved(folder, tmp_path):
    expected = np.load(DATA / "format_v1_expected.npz")
    for mmap in (False, True):
        index = GenerativeIndex.load(folder, device="cpu", mmap=mmap)
        # 0.1's order, in float32 as 0.1 searched (precision "auto" may search in bfloat16)
        result = index.search(expected["queries"], 5, order="generative", dtype="float32")
        np.testing.assert_array_equal(result.ids, expected["ids"])
        np.testing.assert_allclose(result.scores, expected["scores"], rtol=1e-5, atol=1e-6)
    assert index.ntotal == 198 and list(index.fresh_ids) == [200, 201, 202]
    with pytest.raises(ValueError, match="is a folder"):
        index.save(folder)  # read only: saving writes a file
    index.save(tmp_path / "v2.gidx")
    again = GenerativeIndex.load(tmp_path / "v2.gidx")
    np.testing.assert_array_equal(again.search(expected["queries"], 5, order="generative",
                                               dtype="float32").ids, expected["ids"])
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        p.name for p in (DATA / "format_v1").iterdir())  # untouched


def test_every_file_of_a_folder_is_checked(folder):
    for target in sorted(folder.iterdir()):
        original = target.read_bytes()
        for damage in (original[: len(original) // 2], b"",
                       original[:-1] + bytes([original[-1] ^ 1])):
            target.write_bytes(damage)
            with pytest.raises(IndexFormatError):
                GenerativeIndex.load(folder)
        target.write_bytes(original)
    GenerativeIndex.load(folder)


def _resign(folder: Path, edit) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    edit(manifest["body"])
    manifest["sha256"] = _digest_json(manifest["body"])
    (folder / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("edit, message", [
    (lambda b: b["files"]["ids.npy"].update(file="../../ids.npy"), "invalid file entry"),
    (lambda b: b.update(format_version=2), "only version 1 was saved as a folder"),
    (lambda b: b.update(format="other"), "not a genindex index"),
    (lambda b: b.update(d=10**7), "model sizes do not match the tensors"),
    (lambda b: b["files"].pop("weights.safetensors"), "the file holds weights for 0"),
])
def test_a_re_signed_manifest_is_still_checked(folder, edit, message):
    _resign(folder, edit)
    with pytest.raises(IndexFormatError, match=message):
        GenerativeIndex.load(folder)


def test_an_object_array_in_a_folder_is_refused_without_being_unpickled(folder, monkeypatch):
    import io
    import pickle

    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    blob = buffer.getvalue()  # a signed .npy that holds a pickle
    digest = hashlib.sha256(blob).hexdigest()
    (folder / f"ids.{digest[:16]}.npy").write_bytes(blob)
    _resign(folder, lambda b: b["files"].update({"ids.npy": {
        "file": f"ids.{digest[:16]}.npy", "sha256": digest, "bytes": len(blob)}}))

    def forbidden(*args, **kwargs):
        raise AssertionError("load unpickled something")

    monkeypatch.setattr(pickle, "load", forbidden)
    with pytest.raises(IndexFormatError, match="cannot be read.*allow_pickle"):
        GenerativeIndex.load(folder)


@pytest.mark.parametrize("swap", ["symlink to /dev/zero", "fifo", "manifest link"])
def test_links_and_pipes_in_a_folder_are_refused_not_followed(folder, tmp_path, swap):
    victim = next(p for p in folder.iterdir() if p.name.startswith("vectors."))
    if swap == "manifest link":
        victim = folder / MANIFEST
        (tmp_path / "elsewhere.json").write_bytes(victim.read_bytes())
        victim.unlink()
        victim.symlink_to(tmp_path / "elsewhere.json")
    else:
        victim.unlink()
        victim.symlink_to("/dev/zero") if swap != "fifo" else os.mkfifo(victim)
    for mmap in (False, True):
        with pytest.raises(IndexFormatError, match="regular file|never followed"):
            GenerativeIndex.load(folder, mmap=mmap)
