"""Every bad input is refused by name, and a refused call changes nothing."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from genindex import DecoderConfig, GenerativeIndex, IndexConfig, IndexFormatError
from genindex.checks import NotTrainedError

from .helpers import TINY


@pytest.fixture
def index(trained, data):
    """A copy of the shared index with 3 fresh items (ids 200..202)."""
    ix = copy.copy(trained)
    ix.add(data[0][:3] + 0.01)
    return ix


def observe(ix: GenerativeIndex, x: np.ndarray) -> dict:
    """Everything a caller can see of an index."""
    seen = {"ntotal": ix.ntotal, "ids": np.sort(ix.ids), "fresh": ix.fresh_ids,
            "next_id": ix._next_id, "is_trained": ix.is_trained, "device": ix.device}
    if ix.is_trained:
        seen["search"] = ix.search(x[:20], 7)
        seen["decoder"] = [p.clone() for p in ix.decoder.state_dict().values()]
    return seen


def assert_same(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for key, value in before.items():
        if key == "search":
            np.testing.assert_array_equal(value.ids, after[key].ids)
            np.testing.assert_array_equal(value.scores, after[key].scores)
        elif key == "decoder":
            assert all(torch.equal(a, b) for a, b in zip(value, after[key]))
        else:
            np.testing.assert_array_equal(value, after[key])


BAD_X = [  # (x maker, error, message): each names x and what it expected
    (lambda x: x[:, :5], ValueError, r"x must have 16 columns"),
    (lambda x: x[0], ValueError, r"x must be a 2-D array of shape \(n, 16\)"),
    (lambda x: x[None], ValueError, r"x must be a 2-D array"),
    (lambda x: x[:0], ValueError, r"x is empty"),
    (lambda x: np.where(x > 1.5, np.nan, x), ValueError, r"x holds NaN or Inf"),
    (lambda x: np.where(x > 1.5, -np.inf, x), ValueError, r"x holds NaN or Inf"),
    (lambda x: x.astype(np.float64) * 1e300, ValueError, r"x holds NaN or Inf.*too large"),
    (lambda x: x.astype(str), TypeError, r"x must hold numbers"),
    (lambda x: x.astype(object), TypeError, r"x must hold numbers"),
    (lambda x: x.astype(np.complex64), TypeError, r"x must hold numbers"),
    (lambda x: None, TypeError, r"x must hold numbers"),
    (lambda x: [[1.0, 2.0], [3.0]], TypeError, r"x must be an array of numbers"),
]


@pytest.mark.parametrize("method", ["search", "add", "add_with_ids", "encode"])
@pytest.mark.parametrize("make, error, message", BAD_X)
def test_bad_x_is_refused_by_every_method(index, data, method, make, error, message):
    x = data[0]
    before = observe(index, x)
    bad = make(x)
    calls = {"search": lambda: index.search(bad, 3), "add": lambda: index.add(bad),
             "add_with_ids": lambda: index.add_with_ids(bad, np.arange(1000, 1000 + len(x))),
             "encode": lambda: index.encode(bad)}
    with pytest.raises(error, match=message):
        calls[method]()
    assert_same(before, observe(index, x))


@pytest.mark.parametrize("call, error, message", [
    # search
    (lambda ix, x: ix.search(x, 0), ValueError, r"k must be >= 1, got 0"),
    (lambda ix, x: ix.search(x, -3), ValueError, r"k must be >= 1"),
    (lambda ix, x: ix.search(x, 2.0), TypeError, r"k must be an integer, got float"),
    (lambda ix, x: ix.search(x, True), TypeError, r"k must be an integer, got bool"),
    (lambda ix, x: ix.search(x, None), TypeError, r"k must be an integer"),
    (lambda ix, x: ix.search(x, 2, beam_size=0), ValueError, r"beam_size must be >= 1"),
    (lambda ix, x: ix.search(x, 2, beam_size="8"), TypeError, r"beam_size must be an integer"),
    (lambda ix, x: ix.search(x, 2, filter=np.ones((2, 2), bool)), ValueError,
     r"filter must be a 1-D"),
    (lambda ix, x: ix.search(x, 2, filter=["a"]), TypeError, r"filter must hold numbers"),
    (lambda ix, x: ix.search(x, 2, filter=[1.5]), TypeError, r"filter must be integers"),
    # add_with_ids
    (lambda ix, x: ix.add_with_ids(x[:2], [7, 7]), ValueError, r"ids must be distinct"),
    (lambda ix, x: ix.add_with_ids(x[:2], [1, 100000]), ValueError,
     r"ids already in the index: \[1\]"),
    (lambda ix, x: ix.add_with_ids(x[:2], [100000]), ValueError,
     r"ids must have one entry per row of x \(2\), got 1"),
    (lambda ix, x: ix.add_with_ids(x[:1], [-1]), ValueError, r"ids must be >= 0"),
    (lambda ix, x: ix.add_with_ids(x[:1], [1.5]), TypeError, r"ids must be integers"),
    (lambda ix, x: ix.add_with_ids(x[:1], [True]), TypeError, r"ids must be integers, got bool"),
    (lambda ix, x: ix.add_with_ids(x[:1], [[5]]), ValueError, r"ids must be a 1-D array"),
    (lambda ix, x: ix.add_with_ids(x[:1], ["5"]), TypeError, r"ids must hold numbers"),
    (lambda ix, x: ix.add_with_ids(x[:1], np.array([2**64 - 1], np.uint64)), ValueError,
     r"ids must fit in int64"),
    (lambda ix, x: ix.add_with_ids(x[:1], [1e30]), ValueError, r"ids must fit in int64"),
    # remove_ids
    (lambda ix, x: ix.remove_ids([[1, 2]]), ValueError, r"ids must be a 1-D array"),
    (lambda ix, x: ix.remove_ids(["1"]), TypeError, r"ids must hold numbers"),
    (lambda ix, x: ix.remove_ids([0.5]), TypeError, r"ids must be integers"),
    # train
    (lambda ix, x: ix.train(x, np.zeros(len(x))), ValueError, r"labels must name at least 2"),
    (lambda ix, x: ix.train(x, np.arange(3)), ValueError,
     r"labels must have one entry per row of x \(200\), got 3"),
    (lambda ix, x: ix.train(x, np.zeros((len(x), 2))), ValueError, r"labels must be 1-D"),
    (lambda ix, x: ix.train(x, np.r_[np.nan, np.arange(len(x) - 1.0)]), ValueError,
     r"labels hold NaN"),
    (lambda ix, x: ix.train(x, [None] * len(x)), TypeError, r"labels hold None"),
    (lambda ix, x: ix.train(x, np.arange(len(x)) % 3), ValueError,
     r"the index holds 203 items.*call reset\(\) before train\(\)"),
    (lambda ix, x: ix.train(x[:, :3], np.arange(len(x)) % 3), ValueError, r"x must have 16"),
    # refresh
    (lambda ix, x: ix.refresh(steps=0), ValueError, r"steps must be >= 1"),
    (lambda ix, x: ix.refresh(steps=1.5), TypeError, r"steps must be an integer"),
    (lambda ix, x: ix.refresh(replay=-1), ValueError, r"replay must be a finite number >= 0"),
    (lambda ix, x: ix.refresh(replay=float("nan")), ValueError, r"replay must be a finite"),
    (lambda ix, x: ix.refresh(replay="1"), TypeError, r"replay must be a number"),
    (lambda ix, x: ix.refresh(np.zeros(5)), ValueError,
     r"labels must have one entry per id of ids \(203\), got 5"),
    (lambda ix, x: ix.refresh(np.zeros(2), ids=[200, 201]), ValueError,
     r"labels must cover every fresh item.*\[202\]"),
    (lambda ix, x: ix.refresh(np.zeros(4), ids=[200, 201, 202, 999]), ValueError,
     r"ids: not in the index: \[999\]"),
    (lambda ix, x: ix.refresh(ids=[200]), ValueError, r"pass labels too"),
    # device
    (lambda ix, x: ix.to("bogus"), ValueError, r"device='bogus' is not a torch device"),
    (lambda ix, x: ix.to(0.5), TypeError, r"device must be a string"),
])
def test_bad_argument_is_refused_by_name_and_changes_nothing(index, data, call, error,
                                                             message):
    x = data[0]
    before = observe(index, x)
    with pytest.raises(error, match=message):
        call(index, x)
    assert_same(before, observe(index, x))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_missing_cuda_device_is_refused_before_anything_moves(index, data):
    before = observe(index, data[0])
    with pytest.raises(ValueError, match="CUDA is not available"):
        index.to("cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        GenerativeIndex.fit(data[0], data[1], TINY, device="cuda", progress=False)
    assert_same(before, observe(index, data[0]))


def test_constructor_arguments_are_checked():
    with pytest.raises(ValueError, match="d must be a positive integer, got 0"):
        GenerativeIndex(0)
    with pytest.raises(ValueError, match="d must be a positive integer, got 2.5"):
        GenerativeIndex(2.5)
    with pytest.raises(TypeError, match="config must be an IndexConfig, got dict"):
        GenerativeIndex(4, {"seed": 1})
    with pytest.raises(TypeError, match=r"cache_dir must be a folder path or None.*cache=False"):
        GenerativeIndex(4, cache_dir=False)  # one type a parameter: cache= turns it off
    with pytest.raises(TypeError, match="cache must be True or False"):
        GenerativeIndex(4, cache=None)
    with pytest.raises(ValueError, match="x is empty"):
        GenerativeIndex.fit(np.ones((0, 4), np.float32), None, TINY, progress=False)
    few = TINY.replace(store_vectors=False)
    with pytest.raises(ValueError, match="too few to train on .*store_vectors=True"):
        GenerativeIndex.fit(np.ones((3, 4), np.float32), None, few, progress=False)


def test_an_untrained_index_says_so_as_faiss_does_and_by_value_error(data):
    x = data[0]
    ix = GenerativeIndex(16, TINY, id_map=True)
    calls = [lambda: ix.search(x, 1), lambda: ix.add(x), lambda: ix.add_with_ids(x[:1], [0]),
             lambda: ix.remove_ids([0]), lambda: ix.encode(x), lambda: ix.refresh(),
             lambda: ix.save("never-written")]
    for call in calls:
        with pytest.raises(NotTrainedError, match="not trained"):
            call()
    assert issubclass(NotTrainedError, RuntimeError) and issubclass(NotTrainedError, ValueError)
    assert ix.ntotal == 0 and not ix.is_trained
    ix.reset()  # nothing to remove: fine


def test_faiss_casts_are_accepted(index, data):
    """Numbers of any numeric dtype, torch tensors (bfloat16 too), read-only and
    non-contiguous arrays: cast to float32 as Faiss does, never modified."""
    x = data[0][:6]
    expected = index.search(x, 4)
    strided = np.repeat(x, 2, axis=1)[:, ::2]
    frozen = x.copy()
    frozen.flags.writeable = False
    for same in (x.astype(np.float64), strided, frozen, torch.from_numpy(x.copy()),
                 torch.from_numpy(x.copy()).requires_grad_(True)):
        np.testing.assert_array_equal(index.search(same, 4).ids, expected.ids)
    rounded = torch.from_numpy(x.copy()).to(torch.bfloat16)
    assert index.search(rounded, 4).ids.shape == (6, 4)
    ints = np.arange(32).reshape(2, 16)
    assert index.search(ints, 2).ids.shape == (2, 2)
    np.testing.assert_array_equal(ints, np.arange(32).reshape(2, 16))


def test_unknown_ids_are_not_an_error_and_removal_counts_what_was_there(index, data):
    before = observe(index, data[0])
    assert index.remove_ids([10**12, 999, 500]) == 0
    assert index.remove_ids([]) == 0
    assert_same(before, observe(index, data[0]))
    assert index.remove_ids(np.array([3, 3, 200, 10**12])) == 2
    assert index.ntotal == 201 and 200 not in index.fresh_ids


def test_k_beyond_ntotal_pads_every_row(index, data):
    index.remove_ids(np.arange(5, 203))
    D, I = index.search(data[0][:3], 9)
    assert (np.sort(I[:, :5], axis=1) == np.arange(5)).all()
    assert (I[:, 5:] == -1).all() and (D[:, 5:] == np.finfo(np.float32).max).all()


def test_huge_k_is_refused_before_any_work_and_huge_beams_are_cut(index, data):
    before = observe(index, data[0])
    with pytest.raises(ValueError, match=r"would take .* GiB, more than the .* GiB of free"):
        index.search(data[0][:5], 10**15)
    assert_same(before, observe(index, data[0]))
    leaves = index._state.trie.num_leaves
    want = index.search(data[0][:5], 7, beam_size=leaves)
    for beams in (leaves + 1, 10**9, 2**70):  # every identifier is found either way
        got = index.search(data[0][:5], 7, beam_size=beams)
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_array_equal(got.scores, want.scores)
    D, I = index.search(data[0][:2], 5000)  # k far beyond ntotal: padded, not allocated
    assert I.shape == (2, 5000) and (I[:, index.ntotal:] == -1).all()


def test_ids_run_out_only_with_a_clear_message(index, data):
    index.add_with_ids(data[0][:1], [np.iinfo(np.int64).max - 1])
    before = observe(index, data[0])
    with pytest.raises(ValueError, match="no 2 consecutive int64 ids are left"):
        index.add(data[0][:2])
    assert_same(before, observe(index, data[0]))
    index.add(data[0][:1])  # exactly one id was left
    assert np.iinfo(np.int64).max in index.ids


def test_loading_what_is_not_an_index_is_a_value_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not an index")
    for path, message in ((tmp_path / "nowhere", "missing or cannot be opened"),
                          (tmp_path / "notes.txt", "not a genindex index file"),
                          (tmp_path, "no manifest.json")):  # a folder: read as format 1
        with pytest.raises(IndexFormatError, match=message) as info:
            GenerativeIndex.load(path)
        assert isinstance(info.value, ValueError)


def test_saving_over_other_files_is_refused_and_touches_nothing(index, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    with pytest.raises(ValueError, match="not a genindex index file.*overwrite=True"):
        index.save(notes)
    assert notes.read_text() == "keep me"
    for target in (tmp_path, tmp_path / "sub"):
        target.mkdir(exist_ok=True)
        for overwrite in (False, True):  # a folder, never
            with pytest.raises(ValueError, match="is a folder"):
                index.save(target, overwrite=overwrite)
    with pytest.raises(ValueError, match=r"cannot create its folder, .*notes.txt is not a folder"):
        index.save(notes / "below")  # a ValueError naming it, not an OSError
    link = tmp_path / "link"
    link.symlink_to(notes)
    with pytest.raises(ValueError, match="not a genindex index file"):
        index.save(link)  # a link is not followed, nor taken for an index
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "notes.txt", "sub"]
    assert notes.read_text() == "keep me"
    index.save(link, overwrite=True)  # replaces the link itself, not what it points to
    assert notes.read_text() == "keep me" and not link.is_symlink()
    index.save(notes, overwrite=True)
    assert GenerativeIndex.load(notes).ntotal == index.ntotal


def test_resaving_replaces_the_file_and_nothing_else(index, tmp_path):
    path = tmp_path / "ix.gidx"
    index.save(path)
    mine = tmp_path / ".ix.gidx.0123456789abcdef0123456789abcdef.tmp"  # like a staging file
    mine.write_bytes(b"keep me")
    grown = copy.copy(index)
    grown.add(np.ones((1, index.d), np.float32))
    grown.save(path)  # an index file there is replaced without being asked
    assert sorted(p.name for p in tmp_path.iterdir()) == [mine.name, "ix.gidx"]
    assert mine.read_bytes() == b"keep me"
    assert GenerativeIndex.load(path).ntotal == index.ntotal + 1


def test_undecodable_images_are_named_and_change_nothing(tiny_vit, images, tmp_path):
    paths, labels = images
    ix = GenerativeIndex.fit(paths[:30], labels[:30], TINY, id_map=True, backbone=tiny_vit,
                             cache=False, progress=False)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    before = (ix.ntotal, ix.search(paths[30:], 3))
    for call in (lambda: ix.search([paths[30], bad], 3), lambda: ix.add([paths[31], bad]),
                 lambda: ix.add_with_ids([bad], [99])):
        with pytest.raises(ValueError, match="cannot decode image .*broken.png"):
            call()
    with pytest.raises(ValueError, match="missing.png"):
        ix.add([tmp_path / "missing.png"])
    after = ix.search(paths[30:], 3)
    assert ix.ntotal == before[0]
    np.testing.assert_array_equal(before[1].ids, after.ids)


def test_configs_refuse_bad_values():
    with pytest.raises(ValueError, match="label_smoothing must be < 1"):
        DecoderConfig(label_smoothing=1.0)
    with pytest.raises(ValueError, match="label_smoothing must be >= 0"):
        DecoderConfig(label_smoothing=-0.1)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        IndexConfig(seed=-1)
    with pytest.raises(ValueError, match="unknown fields"):
        IndexConfig.from_dict({"tokenizer": {"bogus": 1}})
