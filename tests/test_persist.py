"""The on-disk format: verified on load, never unpickled, replaced atomically."""

from __future__ import annotations

import json

import numpy as np
import pytest

from genindex import GenerativeIndex, IndexFormatError
from genindex.persist import MANIFEST


def saved(trained, tmp_path):
    path = tmp_path / "ix"
    trained.save(path)
    return path


def test_every_file_is_checksummed(trained, tmp_path):
    path = saved(trained, tmp_path)
    files = sorted(p for p in path.iterdir() if p.name != MANIFEST)
    assert {p.suffix for p in files} == {".npy", ".safetensors"}
    for target in files:
        original = target.read_bytes()
        for damage in (original[: len(original) // 2],  # truncated
                       original[:100] + bytes([original[100] ^ 1]) + original[101:]):  # flipped
            target.write_bytes(damage)
            with pytest.raises(IndexFormatError, match="truncated or damaged"):
                GenerativeIndex.load(path)
        target.write_bytes(original)
    GenerativeIndex.load(path)  # intact again


def test_manifest_damage_and_newer_versions_are_refused(trained, tmp_path):
    path = saved(trained, tmp_path)
    manifest = path / MANIFEST
    text = manifest.read_text()
    manifest.write_text(text.replace('"next_id": 200', '"next_id": 201'))
    with pytest.raises(IndexFormatError, match="checksum mismatch"):
        GenerativeIndex.load(path)
    manifest.write_text(text[:-20])
    with pytest.raises(IndexFormatError, match="damaged"):
        GenerativeIndex.load(path)
    # a consistent manifest of a newer format version
    from genindex.persist import _digest_json

    data = json.loads(text)
    data["body"]["format_version"] += 1
    data["sha256"] = _digest_json(data["body"])
    manifest.write_text(json.dumps(data))
    with pytest.raises(IndexFormatError, match="upgrade genindex"):
        GenerativeIndex.load(path)
    with pytest.raises(IndexFormatError, match="no manifest.json"):
        GenerativeIndex.load(tmp_path / "nowhere")


def test_arrays_are_plain_npy_without_pickles(trained, tmp_path):
    path = saved(trained, tmp_path)
    for target in path.glob("*.npy"):
        np.load(target, allow_pickle=False)  # raises if an object array were stored


def test_resaving_leaves_only_the_new_files(trained, data, tmp_path):
    path = saved(trained, tmp_path)
    index = GenerativeIndex.load(path)
    index.add(data[0][:3])
    index.save(path)
    names = {p.name for p in path.iterdir()}
    manifest = json.loads((path / MANIFEST).read_text())["body"]
    assert names == {MANIFEST} | {entry["file"] for entry in manifest["files"].values()}
    assert GenerativeIndex.load(path).ntotal == trained.ntotal + 3
