"""The index file: verified on load, never unpickled, replaced atomically, mapped safely."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from genindex import GenerativeIndex, IndexFormatError, container

from .helpers import resign, resign_text

ROOT = Path(__file__).resolve().parents[1]


def saved(trained, tmp_path):
    path = tmp_path / "ix.gidx"
    trained.save(path)
    return path


def same(a, b) -> bool:
    return np.array_equal(a.ids, b.ids) and np.array_equal(a.scores, b.scores)


def test_one_file_that_any_safetensors_reader_opens(trained, data, tmp_path):
    from safetensors.numpy import load_file

    path = saved(trained, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["ix.gidx"]  # no staging file left
    arrays = load_file(path)
    np.testing.assert_array_equal(arrays["codes"], trained._state.trie.codes)
    assert {"ids", "vectors", "fresh_ids"} <= set(arrays)
    assert any(name.startswith("decoder.blocks.0.") for name in arrays)
    assert same(GenerativeIndex.load(path).search(data[0], 7), trained.search(data[0], 7))


def test_damage_anywhere_is_refused(trained, tmp_path):
    """First, middle and last bytes, a truncation, one byte more, an empty file."""
    path = saved(trained, tmp_path)
    original = path.read_bytes()
    damages = [original[: len(original) // 2], original + b"\0", b""]
    for position in (0, 9, len(original) // 2, len(original) - 1):
        damages.append(original[:position] + bytes([original[position] ^ 0x80])
                       + original[position + 1:])
    for damage in damages:
        path.write_bytes(damage)
        for mmap in (False, True):
            with pytest.raises(IndexFormatError):
                GenerativeIndex.load(path, mmap=mmap)
    path.write_bytes(original)
    GenerativeIndex.load(path)  # intact again


def test_other_versions_and_formats_are_refused(trained, tmp_path):
    path = saved(trained, tmp_path)
    original = path.read_bytes()
    for body, message in (({"format_version": 3}, "version 3; .* upgrade genindex"),
                          ({"format_version": 1}, "no valid format_version"),
                          ({"format_version": True}, "no valid format_version"),
                          ({"format": "other"}, "not a genindex index")):
        path.write_bytes(original)
        resign(path, body)
        with pytest.raises(IndexFormatError, match=message):
            GenerativeIndex.load(path)


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
    ({"ids": None}, None, "no ids array"),
    ({"vectors": lambda a: _set(a, (3, 3), np.nan)}, None, "NaN"),
    ({"vectors": lambda a: a[:, :-1]}, None, "vectors do not match"),
    ({"vector_ids": lambda a: a + 1}, None, "vectors do not match"),
    ({"fresh_ids": lambda a: np.array([12345])}, None, "fresh ids"),
    ({"decoder.blocks.0.attn.c_attn.weight": None}, None, "model sizes do not match"),
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
])
def test_consistently_signed_but_wrong_contents_are_refused(trained, tmp_path, arrays, body,
                                                           message):
    path = saved(trained, tmp_path)
    if arrays and "decoder.blocks.0.attn.c_attn.weight" in arrays:
        assert "decoder.blocks.0.attn.c_attn.weight" in container.read(path)[1]
    resign(path, body, arrays)
    with pytest.raises(IndexFormatError, match=message):
        GenerativeIndex.load(path)


@pytest.mark.parametrize("edit", [
    lambda text: text.replace('"next_id": 200', '"next_id": Infinity'),
    lambda text: text.replace('"refreshes": 0', '"refreshes": ' + "[" * 50_000 + "]" * 50_000),
    lambda text: text.replace('"d": 16', '"d": 1e999'),
])
def test_infinities_and_deep_nesting_in_a_body_are_format_errors(trained, tmp_path, edit):
    path = saved(trained, tmp_path)
    resign_text(path, lambda text: edit(text) if edit(text) != text else pytest.fail(text))
    with pytest.raises(IndexFormatError):
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
    for mmap in (False, True):
        loaded = GenerativeIndex.load(path, device="cpu", mmap=mmap)
        assert same(loaded.search(data[0], 5), trained.search(data[0], 5))
    loaded.save(tmp_path / "again.gidx")


@pytest.mark.parametrize("swap", ["symlink to /dev/zero", "fifo", "symlink loop"])
def test_pipes_devices_and_link_loops_are_refused(trained, tmp_path, swap):
    path = tmp_path / "swapped"
    {"symlink to /dev/zero": lambda: path.symlink_to("/dev/zero"),
     "fifo": lambda: os.mkfifo(path), "symlink loop": lambda: path.symlink_to(path)}[swap]()
    for mmap in (False, True):  # a FIFO would hang an open without O_NONBLOCK
        with pytest.raises(IndexFormatError, match="regular file|cannot be opened"):
            GenerativeIndex.load(path, mmap=mmap)


def test_a_swapped_link_loads_the_index_it_names(trained, data, tmp_path):
    """``current.gidx -> v42.gidx``, replaced atomically by a new link to v43."""
    trained.save(tmp_path / "v42.gidx")
    newer = copy.copy(trained)
    newer.remove_ids(np.arange(50))
    newer.save(tmp_path / "v43.gidx")
    current = tmp_path / "current.gidx"
    current.symlink_to("v42.gidx")
    for mmap in (False, True):
        assert same(GenerativeIndex.load(current, mmap=mmap).search(data[0], 5),
                    trained.search(data[0], 5))
    (tmp_path / "next.gidx").symlink_to("v43.gidx")
    os.replace(tmp_path / "next.gidx", current)
    assert GenerativeIndex.load(current).ntotal == newer.ntotal == 150


def test_fresh_ids_and_refresh_count_round_trip(trained, data, tmp_path):
    index = copy.copy(trained)
    index.add(data[0][:4])
    index.save(tmp_path / "a")
    loaded = GenerativeIndex.load(tmp_path / "a", device="cpu")
    np.testing.assert_array_equal(loaded.fresh_ids, [200, 201, 202, 203])
    loaded.refresh(steps=2)
    loaded.save(tmp_path / "b")
    again = GenerativeIndex.load(tmp_path / "b", device="cpu")
    assert len(again.fresh_ids) == 0 and again._refreshes == 1


# ------------------------------------------------------------------ mmap
def test_mmap_maps_the_tables_and_a_replaced_file_leaves_them_alone(trained, data, tmp_path):
    x = data[0]
    path = saved(trained, tmp_path)
    mapped = GenerativeIndex.load(path, device="cpu", mmap=True)
    assert isinstance(mapped._state.trie.codes, container.MappedArray)
    assert isinstance(mapped._state.vectors.vectors, container.MappedArray)
    before = mapped.search(x, 10)
    assert same(before, trained.search(x, 10))
    other = copy.copy(trained)
    other.remove_ids(np.arange(100))
    other.save(path)  # replaces the file under the mapping: the old inode lives on
    assert same(mapped.search(x, 10), before)
    mapped.remove_ids([0, 1])  # updates and a save over the path it was mapped from
    mapped.add(x[:2])
    mapped.save(path)
    again = GenerativeIndex.load(path, device="cpu", mmap=True)
    np.testing.assert_array_equal(np.sort(again.ids), np.arange(2, 202))
    assert same(again.search(x, 10), mapped.search(x, 10))


def test_a_file_rewritten_in_place_under_a_mapping_is_not_signed_again(trained, tmp_path):
    import json
    import struct

    path = saved(trained, tmp_path)
    mapped = GenerativeIndex.load(path, device="cpu", mmap=True)
    blob = path.read_bytes()
    (length,) = struct.unpack("<Q", blob[:8])
    begin = 8 + length + json.loads(blob[8:8 + length])["vectors"]["data_offsets"][0]
    with open(path, "r+b") as handle:  # someone edits the file in place
        handle.seek(begin)
        handle.write(bytes([blob[begin] ^ 0x40]))
    with pytest.raises(IndexFormatError, match="rewritten in place"):
        mapped.save(tmp_path / "copy.gidx")
    assert not (tmp_path / "copy.gidx").exists()
    with pytest.raises(IndexFormatError, match="fails its checksum"):
        GenerativeIndex.load(path, mmap=True)


TRUNCATE_SCRIPT = r"""
import os, sys
import numpy as np
from genindex import GenerativeIndex

index = GenerativeIndex.load(sys.argv[1], device="cpu", mmap=True)
os.truncate(sys.argv[1], 0)  # someone truncates the mapped file in place
print(float(np.asarray(index._state.vectors.vectors).sum()))  # touches the lost pages
"""


def test_a_truncated_mapped_file_does_not_kill_the_process_silently(trained, tmp_path):
    path = saved(trained, tmp_path)
    done = subprocess.run([sys.executable, "-c", TRUNCATE_SCRIPT, str(path)], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == -signal.SIGBUS and done.stdout == ""
    assert "Fatal Python error: Bus error" in done.stderr and 'File "<string>"' in done.stderr
