"""The one-file container: round trips, atomic replacement, and no trust in its bytes."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from genindex import container
from genindex.container import IndexFormatError

from .helpers import mutations

ARRAYS = {"ids": np.arange(7, dtype=np.int64) * 3,
          "codes": np.arange(21, dtype=np.uint8).reshape(7, 3),
          "vectors": np.linspace(-1, 1, 28, dtype=np.float32).reshape(7, 4),
          "empty": np.zeros((0, 4), np.float32), "flags": np.array([True, False])}
BODY = {"d": 4, "config": {"seed": 0}}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)


def test_round_trip_mapped_or_read_and_safetensors_can_open_it(tmp_path):
    path = tmp_path / "ix.genindex"
    container.write(path, BODY, ARRAYS)
    for mmap in ((), tuple(ARRAYS)):
        body, arrays = container.read(path, mmap=mmap)
        assert {k: v for k, v in body.items() if k != "sha256"} == {
            "format": "genindex", "format_version": 2, **BODY}
        assert same(arrays, ARRAYS)
    assert isinstance(container.read(path, mmap=("vectors",))[1]["vectors"], np.memmap)
    from safetensors.numpy import load_file

    assert same(load_file(path), ARRAYS)  # the layout is safetensors'
    assert [p.name for p in tmp_path.iterdir()] == ["ix.genindex"]  # no staging file left
    assert container.is_index_file(path) and not container.is_index_file(tmp_path)


def test_a_replaced_file_leaves_a_mapped_one_as_it_was(tmp_path):
    path = tmp_path / "ix"
    container.write(path, BODY, ARRAYS)
    _, mapped = container.read(path, mmap=("vectors",))
    container.write(path, BODY, {**ARRAYS, "vectors": ARRAYS["vectors"] + 5})
    np.testing.assert_array_equal(mapped["vectors"], ARRAYS["vectors"])  # the old inode
    np.testing.assert_array_equal(container.read(path)[1]["vectors"], ARRAYS["vectors"] + 5)


EDITS = [lambda h: h["ids"].update(shape=[10**18]),
         lambda h: h["ids"].update(data_offsets=[0, 10**18]),
         lambda h: h["codes"].update(dtype="F8"),
         lambda h: h["codes"].update(shape=[-1, 3]),
         lambda h: h["vectors"].update(shape="7x4"),
         lambda h: h.update(extra={"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}),
         lambda h: h["__metadata__"].update(genindex="[" * 50_000),
         lambda h: h["__metadata__"].update(genindex='{"sha256": 1e999}'),
         lambda h: h.pop("flags")]


def test_mutated_files_read_identically_or_raise_a_format_error(tmp_path):
    path = tmp_path / "ix"
    container.write(path, BODY, ARRAYS)
    blob = path.read_bytes()
    body = container.read(path)[0]
    rng = np.random.default_rng(0)
    target = tmp_path / "mutant"
    outcomes = {"identical": 0, "refused": 0}
    tracemalloc.start()
    for mutant in mutations(blob, rng, 2000, EDITS):
        target.write_bytes(mutant)
        for mmap in ((), ("vectors", "ids")):
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            try:
                got_body, got = container.read(target, mmap=mmap)
            except IndexFormatError:
                outcomes["refused"] += 1
                continue
            finally:  # nothing sized by the file's claims: at most twice its real size
                assert tracemalloc.get_traced_memory()[1] - base <= 2 * len(mutant) + 2**20
            assert got_body == body and same(got, ARRAYS)  # only harmless changes pass
            outcomes["identical"] += 1
    tracemalloc.stop()
    assert outcomes["refused"] > 3000, outcomes  # and no other exception escaped


@pytest.mark.parametrize("make", ["fifo", "link to a device", "link loop", "folder", "empty"])
def test_what_is_not_a_regular_index_file_is_refused_at_once(tmp_path, make):
    import os

    path = tmp_path / "ix"
    {"fifo": lambda: os.mkfifo(path), "link to a device": lambda: path.symlink_to("/dev/zero"),
     "link loop": lambda: path.symlink_to(path), "folder": path.mkdir,
     "empty": path.touch}[make]()
    with pytest.raises(IndexFormatError):
        container.read(path)
    assert not container.is_index_file(path) and not container.names_genindex(path)


def test_a_link_is_resolved_once_and_its_target_read(tmp_path):
    """The deploy pattern: ``current`` is a link swapped atomically between versions."""
    import os

    container.write(tmp_path / "v1", {**BODY, "version": 1}, ARRAYS)
    container.write(tmp_path / "v2", {**BODY, "version": 2}, ARRAYS)
    current = tmp_path / "current"
    current.symlink_to("v1")
    assert container.read(current)[0]["version"] == 1 and container.is_index_file(current)
    (tmp_path / "next").symlink_to("v2")
    os.replace(tmp_path / "next", current)
    assert container.read(current)[0]["version"] == 2
    (tmp_path / "chain").symlink_to(current)  # a link to a link: resolved to the end
    assert container.read(tmp_path / "chain")[0]["version"] == 2
