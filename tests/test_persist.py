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
    manifest.write_text(json.dumps({"body": [1], "sha256": _digest_json([1])}))
    with pytest.raises(IndexFormatError, match="not an object"):
        GenerativeIndex.load(path)
    manifest.write_text("[]")
    with pytest.raises(IndexFormatError, match="damaged"):
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


# ------------------------------------------------------------ kill during save
KILL_SCRIPT = r"""
import os, pathlib, signal, sys
import numpy as np, torch
torch.set_num_threads(1)
from genindex import GenerativeIndex
import genindex.persist as persist

path, point, xfile = sys.argv[1:]
index = GenerativeIndex.load(path, device="cpu")
index.remove_ids(np.arange(50))
index.add_with_ids(np.load(xfile), np.arange(1000, 1010))

def die():
    os.kill(os.getpid(), signal.SIGKILL)

write, replace, unlink = persist._write_synced, os.replace, pathlib.Path.unlink

def half_write(target, blob):  # dies in the middle of the first data file
    with open(target, "wb") as handle:
        handle.write(blob[: len(blob) // 2])
        handle.flush()
    die()

def replace_then(source, target):  # dies just before the manifest is swapped
    if str(target).endswith("manifest.json"):
        die()
    replace(source, target)

def unlink_then(self, missing_ok=False):  # dies while old files are removed
    die()

if point == "mid-file":
    persist._write_synced = half_write
elif point == "before-manifest":
    os.replace = replace_then
elif point == "after-manifest":
    pathlib.Path.unlink = unlink_then
index.save(path)
sys.exit(3)  # not reached
"""


def test_a_save_killed_at_any_point_leaves_a_loadable_index(trained, data, tmp_path):
    import os
    import shutil
    import signal
    import subprocess
    import sys
    from pathlib import Path

    path = saved(trained, tmp_path)
    old_ids = np.sort(trained.ids)
    new_ids = np.r_[np.arange(50, 200), np.arange(1000, 1010)]
    expected = trained.search(data[0][:20], 10)
    np.save(tmp_path / "x.npy", data[0][:10] + 0.05)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    points = {"mid-file": old_ids, "before-manifest": old_ids, "after-manifest": new_ids}
    runs = {}
    for point in points:  # in parallel, each on its own copy
        folder = tmp_path / point
        shutil.copytree(path, folder)
        runs[point] = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(folder), point,
                                        str(tmp_path / "x.npy")], cwd=root, env=env,
                                       stderr=subprocess.PIPE)
    for point, ids in points.items():
        _, stderr = runs[point].communicate(timeout=120)
        assert runs[point].returncode == -signal.SIGKILL, stderr.decode()[-2000:]
        folder = tmp_path / point
        if point == "mid-file":
            assert any(p.name.endswith(".tmp") for p in folder.iterdir())
        index = GenerativeIndex.load(folder, device="cpu")
        np.testing.assert_array_equal(np.sort(index.ids), ids)
        if ids is old_ids:
            result = index.search(data[0][:20], 10)
            np.testing.assert_array_equal(result.ids, expected.ids)
            np.testing.assert_array_equal(result.scores, expected.scores)
        index.save(folder)  # the next save clears what the killed one left behind
        manifest = json.loads((folder / MANIFEST).read_text())["body"]
        names = {p.name for p in folder.iterdir()}
        assert names == {MANIFEST} | {e["file"] for e in manifest["files"].values()}


# --------------------------------------------------- consistent but wrong files
def resign(path, arrays=None, body=None):
    """Replace arrays and body fields of a saved index and re-sign the manifest,
    as someone would who edits an index on purpose. ``arrays`` maps a name to a
    function of the stored array, or to the raw bytes of a new file."""
    import hashlib
    import io

    from genindex.persist import _digest_json

    manifest = json.loads((path / MANIFEST).read_text())
    files = manifest["body"]["files"]
    for name, edit in (arrays or {}).items():
        entry = files[f"{name}.npy"]
        blob = edit
        if callable(edit):
            buffer = io.BytesIO()
            np.save(buffer, edit(np.load(path / entry["file"], allow_pickle=False)),
                    allow_pickle=False)
            blob = buffer.getvalue()
        digest = hashlib.sha256(blob).hexdigest()
        stored = f"{name}.{digest[:16]}.npy"
        (path / stored).write_bytes(blob)
        files[f"{name}.npy"] = {"file": stored, "sha256": digest, "bytes": len(blob)}
    for key, edit in (body or {}).items():
        edit(manifest["body"]) if callable(edit) else manifest["body"].__setitem__(key, edit)
    manifest["sha256"] = _digest_json(manifest["body"])
    (path / MANIFEST).write_text(json.dumps(manifest))


def _set(array, index, value):
    array = array.copy()
    array[index] = value
    return array


@pytest.mark.parametrize("arrays, body, message", [
    ({"codes": lambda a: _set(a, (0, 0), 200)}, None, "codes must lie in"),
    ({"codes": lambda a: a[:, :-1]}, None, "code table has shape"),
    ({"codes": lambda a: a.astype(np.float32)}, None, "the codes array"),
    ({"ids": lambda a: _set(a, 1, a[0])}, None, "unique"),
    ({"ids": lambda a: _set(a, 0, -5)}, None, "negative"),
    ({"ids": lambda a: a[:-1]}, None, "code table has shape"),
    ({"vectors": lambda a: _set(a, (3, 3), np.nan)}, None, "NaN"),
    ({"vectors": lambda a: a[:, :-1]}, None, "vectors do not match"),
    ({"vector_ids": lambda a: a + 1}, None, "vectors do not match"),
    ({"fresh_ids": lambda a: np.array([12345])}, None, "fresh ids"),
    (None, {"next_id": 5}, "next_id"),
    (None, {"next_id": "200"}, "next_id"),
    (None, {"d": 3}, "model sizes do not match the tensors"),
    (None, {"d": 10**7}, "model sizes do not match the tensors"),  # before any allocation
    (None, {"codebook_size": 8}, "model sizes do not match the tensors"),
    (None, {"codebook_size": 10**9}, "model sizes do not match the tensors"),
    (None, {"config": lambda b: b["config"]["decoder"].update(n_layer=10**5)},
     "decoder has 100000 blocks but the file holds weights for 1"),
    (None, {"config": lambda b: b["config"]["decoder"].update(n_embd=2**20, n_head=1)},
     "model sizes do not match the tensors"),
    (None, {"num_classes": "many"}, "num_classes='many' is not a positive integer"),
    (None, {"config": {"bogus": 1}}, "consistent index"),
    (None, {"format_version": 0}, "no valid format_version"),
    (None, {"format_version": True}, "no valid format_version"),
    (None, {"files": lambda b: b["files"]["ids.npy"].update(file="../../ids.npy")},
     "invalid file entry"),
    (None, {"files": lambda b: b["files"].pop("weights.safetensors")},
     "the file holds weights for 0"),
])
def test_consistently_signed_but_wrong_contents_are_refused(trained, tmp_path, arrays, body,
                                                           message):
    path = saved(trained, tmp_path)
    resign(path, arrays, body)
    with pytest.raises(IndexFormatError, match=message):
        GenerativeIndex.load(path)


def test_an_object_array_is_refused_without_being_unpickled(trained, tmp_path, monkeypatch):
    import io
    import pickle

    path = saved(trained, tmp_path)
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    resign(path, {"ids": buffer.getvalue()})  # a signed .npy that holds a pickle

    def forbidden(*args, **kwargs):
        raise AssertionError("load unpickled something")

    monkeypatch.setattr(pickle, "load", forbidden)
    with pytest.raises(IndexFormatError, match="cannot be read.*allow_pickle"):
        GenerativeIndex.load(path)


def test_nothing_is_ever_unpickled(trained, data, tmp_path, monkeypatch):
    import pickle

    import torch

    path = saved(trained, tmp_path)

    def forbidden(*args, **kwargs):
        raise AssertionError("load unpickled something")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    loaded = GenerativeIndex.load(path, device="cpu")
    np.testing.assert_array_equal(loaded.search(data[0], 5).ids, trained.search(data[0], 5).ids)


def test_every_byte_position_class_is_checked(trained, tmp_path):
    """First, middle and last bytes of every file, one extra byte, an empty file."""
    path = saved(trained, tmp_path)
    for target in sorted(path.iterdir()):
        original = target.read_bytes()
        damages = [original + b"\0", b""]
        for position in (0, len(original) // 2, len(original) - 1):
            damages.append(original[:position] + bytes([original[position] ^ 0x80])
                           + original[position + 1:])
        for damage in damages:
            target.write_bytes(damage)
            with pytest.raises(IndexFormatError):
                GenerativeIndex.load(path)
        target.write_bytes(original)
    GenerativeIndex.load(path)


def test_mmap_load_maps_the_tables_and_gives_identical_results(trained, data, tmp_path):
    x = data[0]
    path = saved(trained, tmp_path)
    mapped = GenerativeIndex.load(path, device="cpu", mmap=True)
    state = mapped._state
    assert isinstance(state.trie.codes, np.memmap)
    assert isinstance(state.vectors.vectors, np.memmap)
    a, b = trained.search(x, 10), mapped.search(x, 10)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.scores, b.scores)
    # updates and a save over the very files that are mapped
    mapped.remove_ids([0, 1])
    mapped.add(x[:2])
    mapped.save(path)
    again = GenerativeIndex.load(path, device="cpu", mmap=True)
    np.testing.assert_array_equal(np.sort(again.ids), np.r_[np.arange(2, 202)])
    np.testing.assert_array_equal(again.search(x, 10).ids, mapped.search(x, 10).ids)
    np.testing.assert_array_equal(again.fresh_ids, [200, 201])
    # a damaged mapped file is caught by the streamed checksum
    codes = next(path.glob("codes.*.npy"))
    codes.write_bytes(codes.read_bytes()[:-1] + b"\1")
    with pytest.raises(IndexFormatError, match="truncated or damaged"):
        GenerativeIndex.load(path, mmap=True)


def test_fresh_ids_and_refresh_count_round_trip(trained, data, tmp_path):
    import copy

    index = copy.copy(trained)
    index.add(data[0][:4])
    index.save(tmp_path / "a")
    loaded = GenerativeIndex.load(tmp_path / "a", device="cpu")
    np.testing.assert_array_equal(loaded.fresh_ids, [200, 201, 202, 203])
    loaded.refresh(steps=2)
    loaded.save(tmp_path / "b")
    again = GenerativeIndex.load(tmp_path / "b", device="cpu")
    assert len(again.fresh_ids) == 0 and again._refreshes == 1


def test_saving_into_an_index_folder_keeps_other_files(trained, tmp_path):
    path = saved(trained, tmp_path)
    (path / "README.txt").write_text("notes")
    (path / "features.npy").write_bytes(b"not ours")
    trained.save(path)
    assert (path / "README.txt").read_text() == "notes"
    assert (path / "features.npy").read_bytes() == b"not ours"
    GenerativeIndex.load(path)


@pytest.mark.parametrize("swap", ["symlink to /dev/zero", "fifo", "folder", "manifest link"])
def test_links_pipes_and_devices_in_an_index_are_refused_not_followed(trained, tmp_path, swap):
    import os

    path = saved(trained, tmp_path)
    victim = next(p for p in path.iterdir() if p.name.startswith("vectors."))
    if swap == "manifest link":
        victim = path / MANIFEST
        (tmp_path / "elsewhere.json").write_bytes(victim.read_bytes())
        victim.unlink()
        victim.symlink_to(tmp_path / "elsewhere.json")
    else:
        victim.unlink()
        {"symlink to /dev/zero": lambda: victim.symlink_to("/dev/zero"),
         "fifo": lambda: os.mkfifo(victim), "folder": victim.mkdir}[swap]()
    for mmap in (False, True):  # a FIFO would hang an open without O_NONBLOCK
        with pytest.raises(IndexFormatError, match="regular file|link is never followed"):
            GenerativeIndex.load(path, mmap=mmap)


@pytest.mark.parametrize("text", [
    "[" * 100_000 + "]" * 100_000,  # json's recursion limit
    '{"body": ' * 50_000 + "1" + "}" * 50_000,
    None,  # a body with Infinity in it, consistently signed
])
def test_deep_nesting_and_infinities_in_a_manifest_are_format_errors(trained, tmp_path, text):
    path = saved(trained, tmp_path)
    if text is None:
        resign(path, None, {"refreshes": float("inf"), "next_id": float("inf")})
    else:
        (path / MANIFEST).write_text(text)
    with pytest.raises(IndexFormatError):
        GenerativeIndex.load(path)
