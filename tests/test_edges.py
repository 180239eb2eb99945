"""Edge states and inputs: every state an index reaches saves and loads, every edge
input is refused by name, and one call reads one snapshot."""

from __future__ import annotations

import copy
import os
import pickle
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from genindex import GenerativeIndex, IndexFormatError
from genindex.cli import main
from genindex.persistence import unpickle

from .helpers import TINY, resign

INT64_MAX = np.iinfo(np.int64).max
ROOT = Path(__file__).resolve().parents[1]


def round_trip(index, tmp_path, name="ix.gidx"):
    """The index saved, pickled and serialized: each loads back with the same items."""
    path = tmp_path / name
    index.save(path, overwrite=True)
    copies = [GenerativeIndex.load(path), pickle.loads(pickle.dumps(index)),
              copy.deepcopy(index)]
    for loaded in copies:
        np.testing.assert_array_equal(loaded.ids, index.ids)
        assert loaded._next_id == index._next_id and loaded.nprobe == index.nprobe
    return copies[0]


def state(index):
    return (index.ids.copy(), index._next_id, index.ntotal)


def assert_state(index, before):
    ids, next_id, ntotal = before
    np.testing.assert_array_equal(index.ids, ids)
    assert (index._next_id, index.ntotal) == (next_id, ntotal)


# ------------------------------------------------------------ every save loads
def test_the_largest_int64_id_saves_loads_and_ends_add(trained, data, tmp_path):
    x = data[0]
    index = copy.copy(trained)
    index.add_with_ids(x[:1], [INT64_MAX])
    loaded = round_trip(index, tmp_path)
    for one in (index, loaded):
        with pytest.raises(ValueError, match="no 1 consecutive int64 ids are left"):
            one.add(x[:1])
        one.add_with_ids(x[1:2], [300])  # given ids still go in
    np.testing.assert_array_equal(loaded.reconstruct(INT64_MAX), x[0])


def test_add_handing_out_the_last_id_saves_and_loads(trained, data, tmp_path):
    index = copy.copy(trained)
    index.add_with_ids(data[0][:1], [INT64_MAX - 2])
    index.add(data[0][1:3])  # ids INT64_MAX - 1 and INT64_MAX
    assert index.ids.max() == INT64_MAX and index._next_id == 2**63
    loaded = round_trip(index, tmp_path)
    with pytest.raises(ValueError, match="consecutive int64 ids"):
        loaded.add(data[0][:1])


@pytest.mark.parametrize("value", [2**31 + 1, 10**12, 2**63])
def test_an_nprobe_the_file_cannot_hold_is_refused_where_it_is_set(trained, tmp_path, value):
    index = copy.copy(trained)
    with pytest.raises(ValueError, match="nprobe must be at most 2\\*\\*31"):
        index.nprobe = value
    assert index.nprobe is None
    index.nprobe = 2**31  # the largest one is saved and loads
    assert round_trip(index, tmp_path).nprobe == 2**31


def test_a_state_that_would_not_load_is_never_written(trained, tmp_path):
    """The checks a load applies run before the file replaces anything."""
    path = tmp_path / "ix.gidx"
    trained.save(path)
    before = path.read_bytes()
    index = copy.copy(trained)
    index._next_id = 5  # not above every stored id: reachable only by hand
    for write in (lambda: index.save(path), lambda: pickle.dumps(index),
                  lambda: index._to_bytes()):
        with pytest.raises(ValueError, match="cannot be saved: the file would not load.*next_id"):
            write()
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["ix.gidx"]


# ------------------------------------------------------------ merge_from's add_id
@pytest.fixture
def pair(trained, data):
    """Two indexes of one model: ``a`` holds ids 0..199, ``b`` ids 1000..1002."""
    a, b = copy.copy(trained), copy.copy(trained)
    b.reset()
    b.add_with_ids(data[0][:3] + 0.01, [1000, 1001, 1002])
    return a, b


@pytest.mark.parametrize("add_id, error, message", [
    (-1500, ValueError, "outside \\[0, 2\\*\\*63 - 1\\]"),
    (-1001, ValueError, "from -1 to 1"),  # would make a real item with id -1
    (INT64_MAX, ValueError, "outside"),  # would wrap around int64
    (2**64, ValueError, "outside"),
    (0.5, TypeError, "add_id must be an integer"),
    (True, TypeError, "add_id must be an integer"),
    ("7", TypeError, "add_id must be an integer"),
])
def test_merge_from_checks_add_id_and_changes_nothing_when_refused(pair, add_id, error,
                                                                   message):
    a, b = pair
    before = state(a), state(b)
    with pytest.raises(error, match=message):
        a.merge_from(b, add_id=add_id)
    assert_state(a, before[0])
    assert_state(b, before[1])


def test_merge_from_with_a_valid_add_id_saves_and_loads(pair, data, tmp_path):
    a, b = pair
    a.merge_from(b, add_id=-800)  # 1000..1002 -> 200..202
    assert b.ntotal == 0 and a.ntotal == 203 and a.ids.max() == 202
    loaded = round_trip(a, tmp_path)
    np.testing.assert_array_equal(loaded.reconstruct_batch([200, 201, 202]),
                                  data[0][:3] + 0.01)


def test_opposite_merges_in_two_threads_never_deadlock(pair, data):
    a, b = pair
    b.reset()
    errors = []

    def merge(into, other, rounds):
        for _ in range(rounds):
            try:
                into.merge_from(other)  # ids kept: moves whatever the other holds
            except ValueError as error:  # ids present in both: refused, nothing moved
                errors.append(str(error))

    threads = [threading.Thread(target=merge, args=(a, b, 200)),
               threading.Thread(target=merge, args=(b, a, 200))]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        sys.setswitchinterval(switch)
    assert not any(thread.is_alive() for thread in threads), "the two merges deadlocked"
    assert a.ntotal + b.ntotal == 200 and not errors
    np.testing.assert_array_equal(np.sort(np.concatenate([a.ids, b.ids])), np.arange(200))


# ------------------------------------------------------------ one lock, one snapshot
@pytest.mark.parametrize("store_vectors", [True, False])
def test_an_add_during_train_is_kept_not_lost(trained, data, monkeypatch, store_vectors):
    """``add`` waits for the training under way and goes into the new models (without
    stored vectors no item could be encoded again: it would be lost)."""
    import genindex.index as module

    x, labels = data
    index = copy.copy(trained) if store_vectors else GenerativeIndex.fit(
        x, labels, TINY.replace(store_vectors=False), device="cpu", progress=False)
    index.reset()
    started, real = threading.Event(), module.models_for

    def slow_models_for(*args, **kwargs):
        started.set()
        threading.Event().wait(0.3)  # the add below runs into the lock meanwhile
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "models_for", slow_models_for)
    trainer = threading.Thread(target=index.train, args=(x, labels), kwargs={"progress": False})
    trainer.start()
    assert started.wait(60)
    index.add(x[:10])
    trainer.join(120)
    assert index.ntotal == 10 and index.history is not None
    assert index.tokenizer is not trained.tokenizer
    np.testing.assert_array_equal(index.identifiers(np.arange(10)), index.encode(x[:10]))


@pytest.mark.parametrize("update", ["remove_ids", "add_with_ids"])
def test_search_and_reconstruct_reads_one_snapshot(trained, data, monkeypatch, update):
    """An update forced at every point after the call's first read of the index (any
    later read of it, the search's start), as a thread switch could: the search and R
    both come from the index as it was, R holds the vectors of the ids, |q - R|^2 = D."""
    x = data[0]
    for index in (copy.copy(trained), GenerativeIndex.fit(x, data[1], TINY, device="cpu",
                                                          progress=False)):
        done, reads, expected = [], [], copy.copy(index)

        def update_once(index=index, done=done):
            if not done:
                done.append(True)
                if update == "remove_ids":
                    index.remove_ids(np.arange(0, 200, 2))
                elif index.id_map:
                    index.add_with_ids(x[:5] + 3.0, np.arange(9000, 9005))
                else:
                    index.add(x[:5] + 3.0)

        def read(real=index._require_trained, reads=reads):
            if reads:
                update_once()
            reads.append(True)
            return real()

        def search(*args, real=index._search, **kwargs):
            update_once()
            return real(*args, **kwargs)

        monkeypatch.setattr(index, "_require_trained", read)
        monkeypatch.setattr(index, "_search", search)
        D, I, R = index.search_and_reconstruct(x[:20], 8)
        assert done and index.ntotal != expected.ntotal  # the update did happen
        assert (I >= 0).all() and np.isin(I, expected.ids).all()
        np.testing.assert_array_equal(R, expected.reconstruct_batch(I.ravel()).reshape(R.shape))
        np.testing.assert_allclose(((x[:20, None] - R) ** 2).sum(-1), D, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------ files
def special_files(tmp_path):
    """A character device (made with mknod where allowed), a FIFO and a socket."""
    made = {}
    device = tmp_path / "device"
    try:
        os.mknod(device, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # what /dev/null is
        made["device"] = device
    except (PermissionError, OSError):
        pass
    made["fifo"] = tmp_path / "fifo"
    os.mkfifo(made["fifo"])
    made["socket"] = tmp_path / "socket"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(made["socket"]))
    server.close()
    return made


def test_overwrite_never_replaces_a_device_pipe_or_socket(trained, tmp_path, capsys):
    faiss = pytest.importorskip("faiss")
    from genindex import faiss_compat

    made = special_files(tmp_path)
    assert "fifo" in made and "socket" in made
    faiss_compat.install()
    try:
        for path in made.values():
            kind = os.lstat(path).st_mode
            for write in (lambda p=path: trained.save(p, overwrite=True),
                          lambda p=path: trained.save(p),
                          lambda p=path: faiss.write_index(trained, str(p))):
                with pytest.raises(ValueError, match="is a device, pipe or socket"):
                    write()
            assert os.lstat(path).st_mode == kind  # still what it was
    finally:
        faiss_compat.uninstall()
    np.save(tmp_path / "x.npy", np.zeros((3, trained.d), np.float32))
    for path in made.values():  # the CLI's --force: one line, and the node stays
        code = main(["build", "--vectors", str(tmp_path / "x.npy"), "--out", str(path),
                     "--force", "-q"])
        assert code != 0 and "device, pipe or socket" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == sorted([*[p.name for p in made.values()], "x.npy"])


def test_a_name_as_long_as_the_folder_allows_saves(trained, tmp_path):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    path = tmp_path / ("i" * (limit - 5) + ".gidx")
    trained.save(path)
    assert GenerativeIndex.load(path).ntotal == trained.ntotal
    assert os.listdir(tmp_path) == [path.name]


def test_faiss_read_index_keeps_genindex_errors(trained, tmp_path):
    faiss = pytest.importorskip("faiss")
    from genindex import faiss_compat

    newer, damaged, link = tmp_path / "newer.gidx", tmp_path / "damaged.gidx", tmp_path / "l"
    trained.save(newer)
    resign(newer, {"format_version": 3})
    trained.save(damaged)
    blob = bytearray(damaged.read_bytes())
    blob[-1] ^= 0xFF
    damaged.write_bytes(bytes(blob))
    link.symlink_to(newer)
    faiss_compat.install()
    try:
        for path, message in ((newer, "upgrade genindex"), (link, "upgrade genindex"),
                              (damaged, "damaged")):
            with pytest.raises(IndexFormatError, match=message):
                faiss.read_index(str(path))
        legacy = faiss.read_index(str(ROOT / "tests" / "data" / "format_v1"))
        assert isinstance(legacy, GenerativeIndex) and legacy.ntotal > 0
        with pytest.raises(IndexFormatError):
            faiss.read_index(str(tmp_path))  # a folder, not an index: genindex's error
        plain = faiss.IndexFlatL2(4)
        faiss.write_index(plain, str(tmp_path / "faiss.index"))  # Faiss's files: Faiss's
        assert isinstance(faiss.read_index(str(tmp_path / "faiss.index")), faiss.IndexFlatL2)
    finally:
        faiss_compat.uninstall()


# ------------------------------------------------------------ edge inputs
def test_the_cli_refuses_npz_text_and_reads_a_pipe(trained, tmp_path, capsys):
    path = tmp_path / "ix.gidx"
    trained.save(path)
    q = np.random.default_rng(0).standard_normal((4, trained.d)).astype(np.float32)
    np.savez(tmp_path / "q.npz", q=q)
    np.savetxt(tmp_path / "q.txt", q)
    for name, message in (("q.npz", "an .npz archive"), ("q.txt", "not a .npy file")):
        code = main(["search", str(path), "--vectors", str(tmp_path / name), "--json"])
        out, err = capsys.readouterr()
        assert code != 0 and message in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1 and "allow_pickle" not in err
    np.save(tmp_path / "q.npy", q)
    script = (f"cat {tmp_path / 'q.npy'} | {sys.executable} -m genindex search {path} "
              "--vectors /dev/stdin -k 3 --json")
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    import json

    np.testing.assert_array_equal(json.loads(done.stdout)["ids"], trained.search(q, 3).ids)


@pytest.mark.parametrize("scale", [5e19, 1e20, 3e38])
def test_vectors_whose_distances_overflow_float32_are_refused(trained, data, scale):
    index = copy.copy(trained)
    x = data[0][:3].copy()
    x[1] = x[1] / np.linalg.norm(x[1]) * scale
    for call in (lambda: index.add_with_ids(x, [500, 501, 502]), lambda: index.search(x, 3)):
        with pytest.raises(ValueError, match="row 1 has a squared norm .* overflow float32"):
            call()
    assert index.ntotal == trained.ntotal
    x[1] = x[1] / scale * 1e18  # large but safe: an exhaustive search finds it, as Faiss's
    index.add_with_ids(x, [500, 501, 502])
    D, I = index.search(x[1:2], 1, beam_size=10**6, k_factor=1000)
    assert I[0, 0] == 501 and D[0, 0] == 0


@pytest.mark.parametrize("beam_size, error", [(0, ValueError), (-5, ValueError),
                                              (1.5, TypeError), (True, TypeError)])
def test_range_search_checks_beam_size_as_search_does(trained, data, beam_size, error):
    with pytest.raises(error, match="beam_size"):
        trained.range_search(data[0][:2], 1.0, beam_size=beam_size)
    with pytest.raises(error, match="beam_size"):
        trained.search(data[0][:2], 3, beam_size=beam_size)


def test_reconstruct_batch_takes_repeated_ids_as_faiss_does(trained, data):
    faiss = pytest.importorskip("faiss")
    flat = faiss.IndexFlatL2(trained.d)
    flat.add(data[0])
    keys = np.array([1, 1, 7, 1])
    np.testing.assert_array_equal(trained.reconstruct_batch(keys), flat.reconstruct_batch(keys))


def test_the_meta_device_and_a_crafted_pickle_are_refused(trained, tmp_path):
    path = tmp_path / "ix.gidx"
    trained.save(path)
    with pytest.raises(ValueError, match="'meta' holds no data"):
        GenerativeIndex.load(path, device="meta")
    with pytest.raises(ValueError, match="'meta' holds no data"):
        copy.copy(trained).to("meta")
    for blob in (10**12, 2**62, "text", None):
        with pytest.raises(TypeError, match="the bytes of an index file"):
            unpickle(GenerativeIndex, blob, "cpu", None, True, False)
    with pytest.raises(TypeError, match="the bytes of an index file"):
        unpickle(dict, trained._to_bytes(), "cpu", None, True, False)  # not an index class
    with pytest.raises(IndexFormatError):
        unpickle(GenerativeIndex, b"\0" * 64, "cpu", None, True, False)
    from genindex.index import _unpickle  # the hook pickles of earlier versions name

    with pytest.raises(TypeError, match="the bytes of an index file"):
        _unpickle(10**12, "cpu", None, True, False)
    assert _unpickle(trained._to_bytes(), "cpu", None, True, False).ntotal == trained.ntotal


def test_padding_is_faiss_s_and_the_cli_writes_it_as_the_docs_say(trained, data, capsys,
                                                                  tmp_path):
    path = tmp_path / "ix.gidx"
    trained.save(path)
    flt_max = float(np.finfo(np.float32).max)
    np.save(tmp_path / "q.npy", data[0][:2])
    D, I = trained.search(data[0][:2], 205)
    assert (I[:, 200:] == -1).all() and (D[:, 200:] == flt_max).all()
    for order, expected in (("metric", flt_max), ("generative", None)):
        code = main(["search", str(path), "--vectors", str(tmp_path / "q.npy"), "-k", "205",
                     "--order", order, "--json"])
        import json

        result = json.loads(capsys.readouterr().out)
        assert code == 0 and result["ids"][0][-1] == -1 and result["scores"][0][-1] == expected
    docs = (ROOT / "docs" / "reliability.md").read_text()
    assert "FLT_MAX" in docs and "null" in docs
