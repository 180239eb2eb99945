"""Shard files built from a trained index and a folder of vector slices (resumable)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from genindex import shard_build
from genindex.shard_build import build_shards
from genindex.shards import ShardedIndex


def slices(x: np.ndarray, folder, parts: int = 4, ids: bool = False):
    """``x`` cut into ``parts`` .npy files in ``folder`` (ids files too, if ``ids``)."""
    folder.mkdir()
    for s, rows in enumerate(np.array_split(np.arange(len(x)), parts)):
        np.save(folder / f"part-{s}.npy", x[rows])
        if ids:
            np.save(folder / f"part-{s}.ids.npy", 1000 + rows)
    return folder


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory):
    path = tmp_path_factory.mktemp("trained") / "trained.gidx"
    trained.save(path)
    return path


def contents(paths) -> list[bytes]:
    return [p.read_bytes() for p in paths]


def test_an_interrupted_build_resumes_to_the_same_files(data, saved, tmp_path, monkeypatch):
    x, _ = data
    vectors = slices(x, tmp_path / "slices")
    whole = build_shards(saved, vectors, tmp_path / "whole", progress=False)
    assert [p.name for p in whole] == [f"part-{s}.gidx" for s in range(4)]
    real, calls = shard_build.build_shard, []

    def crash_after_two(*args):
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the process were stopped here
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(shard_build, "build_shard", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        build_shards(saved, vectors, tmp_path / "resumed", progress=False)
    assert sorted(p.name for p in (tmp_path / "resumed").glob("*.gidx")) == [
        "part-0.gidx", "part-1.gidx"]
    kept = (tmp_path / "resumed" / "part-0.gidx").stat()
    monkeypatch.setattr(shard_build, "build_shard", real)
    resumed = build_shards(saved, vectors, tmp_path / "resumed", progress=False)
    assert contents(resumed) == contents(whole)
    assert (tmp_path / "resumed" / "part-0.gidx").stat().st_mtime_ns == kept.st_mtime_ns
    # the shards are the trained model holding the slices under their positions
    with ShardedIndex(resumed) as sharded:
        assert sharded.ntotal == len(x)
        D, I = sharded.search(x, 1, beam_size=200, k_factor=40)
        np.testing.assert_array_equal(I[:, 0], np.arange(len(x)))


def test_a_build_on_ray_gives_the_serial_files_and_resumes(data, saved, tmp_path, local_ray):
    x, _ = data
    vectors = slices(x, tmp_path / "slices", ids=True)
    serial = build_shards(saved, vectors, tmp_path / "serial", progress=False)
    parallel = build_shards(saved, vectors, tmp_path / "ray", ray=True, progress=False)
    assert contents(parallel) == contents(serial)
    for path in parallel[1:3]:  # as if the build had stopped before these two
        path.unlink()
    untouched = parallel[0].stat().st_mtime_ns
    again = build_shards(saved, vectors, tmp_path / "ray", ray=True, progress=False)
    assert contents(again) == contents(serial) and parallel[0].stat().st_mtime_ns == untouched
    with ShardedIndex(again, backend="ray") as sharded:
        D, I = sharded.search(x[:10], 1, beam_size=200, k_factor=40)
        np.testing.assert_array_equal(I[:, 0], 1000 + np.arange(10))


def test_a_folder_of_another_build_or_bad_slices_is_refused(data, saved, trained, tmp_path):
    x, _ = data
    vectors = slices(x, tmp_path / "slices")
    build_shards(saved, vectors, tmp_path / "out", progress=False)
    np.save(vectors / "part-9.npy", x[:3])
    with pytest.raises(ValueError, match="another model or other slices"):
        build_shards(saved, vectors, tmp_path / "out", progress=False)
    np.save(vectors / "part-9.npy", x[:3, :4])
    with pytest.raises(ValueError, match=r"shape \(n, 16\)"):
        build_shards(saved, vectors, tmp_path / "other", progress=False)
    with pytest.raises(FileNotFoundError, match="no .npy"):
        build_shards(saved, tmp_path / "other", tmp_path / "third", progress=False)
    positions = trained.__copy__()
    positions.id_map = False
    positions.save(tmp_path / "positions.gidx")
    with pytest.raises(ValueError, match="id_map=True"):
        build_shards(tmp_path / "positions.gidx", vectors, tmp_path / "fourth", progress=False)


def test_the_shard_build_command_builds_and_resumes(data, saved, tmp_path, capsys):
    from genindex.cli import main

    x, _ = data
    vectors = slices(x, tmp_path / "slices", parts=3)
    argv = ["shard-build", str(saved), "--vectors", str(vectors), "--out",
            str(tmp_path / "out"), "--json", "-q"]
    assert main(argv) == 0
    built = sorted((tmp_path / "out").glob("*.gidx"))
    assert [p.name for p in built] == ["part-0.gidx", "part-1.gidx", "part-2.gidx"]
    assert len(json.loads(capsys.readouterr().out)["shards"]) == 3
    assert main(argv) == 0 and sorted((tmp_path / "out").glob("*.gidx")) == built
    capsys.readouterr()
    assert main(argv[:-2] + ["--address", "auto", "-q"]) == 1
    assert "--address needs --ray" in capsys.readouterr().err
