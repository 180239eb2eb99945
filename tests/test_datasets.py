"""Benchmark data set loaders on tiny fake copies of the official layouts (written
under tmp_path; the loaders only list image files, so they are empty), and on
scikit-learn's digits, which ship with scikit-learn."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks import datasets
from benchmarks.datasets import DataUnavailable, fashion_mnist
from genindex.inputs import image_refs


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def relative(paths, root):
    return [Path(p).relative_to(root).as_posix() for p in paths]


def test_registry_lists_every_loader():
    assert {"cub200", "cars196", "inshop", "imagenet", "places365", "emoji",
            "fashion-mnist", "digits"} <= set(datasets.names())


@pytest.mark.parametrize("name", ["cub200", "cars196", "inshop", "imagenet", "places365"])
def test_missing_folder_says_where_data_comes_from(tmp_path, name):
    with pytest.raises(DataUnavailable) as error:
        datasets.load(name, str(tmp_path / "nowhere"))
    message = str(error.value)
    assert "http" in message and "Expected layout" in message and "nowhere" in message


# ---------------------------------------------------------------- CUB-200-2011

CUB = [  # (image id, class id, is_train)
    (1, 1, 1), (2, 1, 0), (3, 1, 1), (4, 2, 0), (5, 2, 1), (6, 3, 0), (7, 3, 0)]


def fake_cub(parent):
    root = parent / "CUB_200_2011"
    names = {i: f"{c:03d}.Bird_{c}/Bird_{c}_{i:04d}.jpg" for i, c, _ in CUB}
    write(root / "images.txt", "".join(f"{i} {names[i]}\n" for i, _, _ in CUB))
    write(root / "image_class_labels.txt", "".join(f"{i} {c}\n" for i, c, _ in CUB))
    write(root / "train_test_split.txt", "".join(f"{i} {t}\n" for i, _, t in CUB))
    for name in names.values():
        touch(root / "images" / name)
    return root, names


@pytest.mark.parametrize("point_at", ["parent", "folder"])
def test_cub200_official_split(tmp_path, point_at):
    root, names = fake_cub(tmp_path)
    data = datasets.load("cub200", str(tmp_path if point_at == "parent" else root))
    train = [(i, c) for i, c, t in CUB if t == 1]
    test = [(i, c) for i, c, t in CUB if t == 0]
    assert relative(data.db_images, root / "images") == [names[i] for i, _ in train]
    assert data.db_labels.tolist() == [c for _, c in train]
    assert relative(data.query_images, root / "images") == [names[i] for i, _ in test]
    assert data.query_labels.tolist() == [c for _, c in test]


def test_cub200_limit_and_missing_image(tmp_path):
    root, names = fake_cub(tmp_path)
    limited = datasets.load("cub200", str(tmp_path), limit=2)
    assert set(limited.db_labels) | set(limited.query_labels) == {1, 2}
    assert len(limited.db_images) == 3 and len(limited.query_images) == 2
    (root / "images" / names[4]).unlink()
    with pytest.raises(DataUnavailable, match="1 of 7 images are missing"):
        datasets.load("cub200", str(tmp_path))


def test_cub200_inconsistent_lists(tmp_path):
    root, _ = fake_cub(tmp_path)
    write(root / "train_test_split.txt", "1 1\n2 0\n")
    with pytest.raises(DataUnavailable, match="different image ids"):
        datasets.load("cub200", str(root))


# ---------------------------------------------------------------- Stanford Cars

def savemat_annotations(path, fields, rows):
    from scipy.io import savemat

    table = np.zeros((1, len(rows)), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        table[0, i] = row
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"annotations": table})


def test_cars196_torchvision_devkit_layout(tmp_path):
    pytest.importorskip("scipy")
    root = tmp_path / "stanford_cars"
    train = [("00001.jpg", 3), ("00002.jpg", 1), ("00003.jpg", 3)]
    test = [("00001.jpg", 1), ("00002.jpg", 196)]
    savemat_annotations(root / "devkit" / "cars_train_annos.mat", ("fname", "class"),
                        [(f, np.uint8(c)) for f, c in train])
    savemat_annotations(root / "cars_test_annos_withlabels.mat", ("fname", "class"),
                        [(f, np.uint8(c)) for f, c in test])
    for folder, rows in (("cars_train", train), ("cars_test", test)):
        for name, _ in rows:
            touch(root / folder / name)
    data = datasets.load("cars196", str(tmp_path))
    assert relative(data.db_images, root) == [f"cars_train/{f}" for f, _ in train]
    assert data.db_labels.tolist() == [c for _, c in train]
    assert relative(data.query_images, root) == [f"cars_test/{f}" for f, _ in test]
    assert data.query_labels.tolist() == [c for _, c in test]
    assert data.notes["layout"] == "devkit"


def test_cars196_all_in_one_layout(tmp_path):
    pytest.importorskip("scipy")
    rows = [("car_ims/000001.jpg", 1, 0), ("car_ims/000002.jpg", 2, 1),
            ("car_ims/000003.jpg", 2, 0), ("car_ims/000004.jpg", 1, 1)]
    savemat_annotations(tmp_path / "cars_annos.mat", ("relative_im_path", "class", "test"),
                        [(p, np.uint8(c), np.uint8(t)) for p, c, t in rows])
    for path, _, _ in rows:
        touch(tmp_path / path)
    data = datasets.load("cars196", str(tmp_path))
    assert relative(data.db_images, tmp_path) == ["car_ims/000001.jpg", "car_ims/000003.jpg"]
    assert data.db_labels.tolist() == [1, 2]
    assert relative(data.query_images, tmp_path) == ["car_ims/000002.jpg",
                                                     "car_ims/000004.jpg"]
    assert data.query_labels.tolist() == [2, 1]


def test_cars196_annotation_without_class(tmp_path):
    pytest.importorskip("scipy")
    savemat_annotations(tmp_path / "cars_annos.mat", ("relative_im_path", "test"),
                        [("car_ims/1.jpg", np.uint8(0))])
    with pytest.raises(DataUnavailable, match="class"):
        datasets.load("cars196", str(tmp_path))


# ---------------------------------------------------------------- In-shop

INSHOP = [("img/WOMEN/Dresses/id_00000001/01_1_front.jpg", "id_00000001", "train"),
          ("img/WOMEN/Dresses/id_00000001/01_2_side.jpg", "id_00000001", "train"),
          ("img/MEN/Shirts/id_00000007/01_1_front.jpg", "id_00000007", "gallery"),
          ("img/MEN/Shirts/id_00000007/02_1_front.jpg", "id_00000007", "query"),
          ("img/MEN/Shirts/id_00000008/01_1_front.jpg", "id_00000008", "query"),
          ("img/MEN/Shirts/id_00000008/01_2_side.jpg", "id_00000008", "gallery")]


def fake_inshop(root, rows=INSHOP, count=None, under=""):
    lines = [str(len(rows) if count is None else count), "image_name item_id evaluation_status"]
    write(root / "Eval" / "list_eval_partition.txt",
          "\n".join(lines + [" ".join(r) for r in rows]) + "\n")
    for name, _, _ in rows:
        touch(root / under / name)


@pytest.mark.parametrize("under", ["", "Img"])
def test_inshop_train_and_gallery_database(tmp_path, under):
    root = tmp_path / "In-shop Clothes Retrieval Benchmark"
    fake_inshop(root, under=under)
    data = datasets.load("inshop", str(tmp_path))
    expect_db = [r for r in INSHOP if r[2] in ("train", "gallery")]
    expect_query = [r for r in INSHOP if r[2] == "query"]
    assert relative(data.db_images, root / under) == [r[0] for r in expect_db]
    assert data.db_labels.tolist() == [r[1] for r in expect_db]
    assert relative(data.query_images, root / under) == [r[0] for r in expect_query]
    assert data.query_labels.tolist() == [r[1] for r in expect_query]
    assert data.notes["split_sizes"] == {"train": 2, "gallery": 2, "query": 2}
    gallery = datasets.load("inshop", str(root), database="gallery")
    assert gallery.db_labels.tolist() == ["id_00000007", "id_00000008"]


def test_inshop_bad_partition_files(tmp_path):
    fake_inshop(tmp_path, count=7)
    with pytest.raises(DataUnavailable, match="announces 7 images but lists 6"):
        datasets.load("inshop", str(tmp_path))
    fake_inshop(tmp_path, rows=INSHOP + [("img/x.jpg", "id_1", "test")])
    with pytest.raises(DataUnavailable, match="train|query|gallery"):
        datasets.load("inshop", str(tmp_path))
    with pytest.raises(ValueError, match="database"):
        datasets.load("inshop", str(tmp_path), database="train")


# ---------------------------------------------------------------- ImageNet

WNIDS = ["n01440764", "n01443537", "n01484850"]


def fake_imagenet_train(root, per_class=3):
    for w in WNIDS:
        for i in range(per_class):
            touch(root / "train" / w / f"{w}_{i}.JPEG")


def test_imagenet_class_folder_val(tmp_path):
    root = tmp_path / "imagenet"
    fake_imagenet_train(root)
    touch(root / "train" / WNIDS[0] / "notes.txt")  # not an image
    val = [(w, f"ILSVRC2012_val_{k:08d}.JPEG") for k, w in enumerate(WNIDS * 4, 1)]
    for w, name in val:
        touch(root / "val" / w / name)
    data = datasets.load("imagenet", str(tmp_path), num_queries=5, seed=3)
    assert len(data.db_images) == 9 and sorted(set(data.db_labels)) == WNIDS
    assert all(Path(p).parent.name == w for p, w in zip(data.db_images, data.db_labels))
    assert len(data.query_images) == 5 and len(set(data.query_images)) == 5
    assert all(Path(p).parent.name == w and Path(p).parent.parent.name == "val"
               for p, w in zip(data.query_images, data.query_labels))
    again = datasets.load("imagenet", str(root), num_queries=5, seed=3)
    assert again.query_images == data.query_images
    every = datasets.load("imagenet", str(root), num_queries=None)
    assert len(every.query_images) == 12
    with pytest.raises(ValueError, match="num_queries=13"):
        datasets.load("imagenet", str(root), num_queries=13)


def test_imagenet_kaggle_flat_val(tmp_path):
    root = tmp_path / "ILSVRC" / "Data" / "CLS-LOC"
    fake_imagenet_train(root)
    truth = {f"ILSVRC2012_val_{k:08d}": WNIDS[k % 3] for k in range(1, 10)}
    with open(tmp_path / "LOC_val_solution.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["ImageId", "PredictionString"])
        for image, wnid in reversed(truth.items()):
            writer.writerow([image, f"{wnid} 1 2 30 40 {wnid} 5 6 70 80"])
    for image in truth:
        touch(root / "val" / f"{image}.JPEG")
    data = datasets.load("imagenet", str(tmp_path), num_queries=4)
    assert data.notes["val_layout"] == "LOC_val_solution.csv"
    assert len(data.query_images) == 4
    assert [truth[Path(p).stem] for p in data.query_images] == data.query_labels.tolist()
    Path(data.query_images[0]).unlink()
    with pytest.raises(DataUnavailable, match="missing"):
        datasets.load("imagenet", str(tmp_path), num_queries=4)
    (tmp_path / "LOC_val_solution.csv").unlink()
    with pytest.raises(DataUnavailable, match="LOC_val_solution.csv"):
        datasets.load("imagenet", str(tmp_path), num_queries=4)


# ---------------------------------------------------------------- Places365

def test_places365_file_lists(tmp_path):
    root = tmp_path / "places365"
    train = [("/a/abbey/00000001.jpg", 0), ("/a/abbey/00000002.jpg", 0),
             ("/b/bakery/shop/00000001.jpg", 2)]
    val = [(f"Places365_val_{k:08d}.jpg", k % 3) for k in range(1, 7)]
    write(root / "places365_train_standard.txt", "".join(f"{p} {c}\n" for p, c in train))
    write(root / "places365_val.txt", "".join(f"{p} {c}\n" for p, c in val) + "\n")
    for path, _ in train:
        touch(root / "data_256" / path.lstrip("/"))
    for path, _ in val:
        touch(root / "val_256" / path)
    data = datasets.load("places365", str(tmp_path), num_queries=3)
    assert relative(data.db_images, root / "data_256") == [p.lstrip("/") for p, _ in train]
    assert data.db_labels.tolist() == [0, 0, 2]
    labels = dict(val)
    assert len(data.query_images) == 3
    assert [labels[Path(p).name] for p in data.query_images] == data.query_labels.tolist()
    write(root / "places365_val.txt", "Places365_val_00000001.jpg\n")
    with pytest.raises(DataUnavailable, match="places365_val.txt:1"):
        datasets.load("places365", str(root), num_queries=1)


def test_places365_easy_format_folders(tmp_path):
    root = tmp_path / "places365_standard"
    for split, count in (("train", 3), ("val", 2)):
        for cls in ("airfield", "apartment_building-outdoor", "zen_garden"):
            for i in range(count):
                touch(root / split / cls / f"{i:08d}.jpg")
    data = datasets.load("places365", str(tmp_path), num_queries=None)
    assert len(data.db_images) == 9 and len(data.query_images) == 6
    assert data.db_labels.tolist() == ["airfield"] * 3 + ["apartment_building-outdoor"] * 3 \
        + ["zen_garden"] * 3
    assert all(Path(p).parent.name == c for p, c in zip(data.query_images, data.query_labels))
    assert data.notes["unmatched_queries"] == 0


# ---------------------------------------------------------------- Fashion-MNIST

def idx_bytes(array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def fake_fashion(folder, n_train=6, n_test=4, compress=True):
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": np.arange(n_train) % 10,
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": (np.arange(n_test) * 3) % 10}
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        data = idx_bytes(array)
        if compress:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return {k: v.astype(np.uint8) for k, v in arrays.items()}


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_idx_files(tmp_path, compress):
    arrays = fake_fashion(tmp_path / "fashion-mnist", compress=compress)
    data = datasets.load("fashion-mnist", str(tmp_path))
    assert data.db_images.shape == (6, 28, 28, 3) and data.db_images.dtype == np.uint8
    for c in range(3):
        assert np.array_equal(data.db_images[..., c], arrays["train-images-idx3-ubyte"])
        assert np.array_equal(data.query_images[..., c], arrays["t10k-images-idx3-ubyte"])
    assert data.db_labels.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert data.query_labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert len(image_refs(data.query_images)) == 4  # genindex takes the array as it is


def test_fashion_mnist_bad_or_missing_files(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN", tmp_path / "no-debian-package")
    with pytest.raises(DataUnavailable, match="dataset-fashion-mnist"):
        datasets.load("fashion-mnist", str(tmp_path))
    fake_fashion(tmp_path, compress=False)
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-1])
    with pytest.raises(DataUnavailable, match="header announces shape"):
        datasets.load("fashion-mnist", str(tmp_path))
    labels.write_bytes(idx_bytes(np.zeros(3)))
    with pytest.raises(DataUnavailable, match="shape"):
        datasets.load("fashion-mnist", str(tmp_path))


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.lists(st.integers(0, 5), min_size=1, max_size=3), seed=st.integers(0, 99),
       compress=st.booleans())
def test_read_idx_round_trip(tmp_path, shape, seed, compress):
    array = np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)
    data = idx_bytes(array)
    path = tmp_path / "file.idx"
    path.write_bytes(gzip.compress(data) if compress else data)
    assert np.array_equal(fashion_mnist.read_idx(path), array)


# ---------------------------------------------------------------- digits

def test_digits_half_per_class_split():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    target = load_digits().target
    data = datasets.load("digits")
    assert data.db_images.shape[1:] == (8, 8, 3) and data.db_images.dtype == np.uint8
    assert len(data.db_images) + len(data.query_images) == len(target) == 1797
    for c in range(10):
        total = int((target == c).sum())
        assert int((data.query_labels == c).sum()) == total // 2
        assert int((data.db_labels == c).sum()) == total - total // 2
    scaled = np.round(load_digits().images * 255 / 16).astype(np.uint8)
    both = np.concatenate([data.db_images, data.query_images])[..., 0]
    assert sorted(x.tobytes() for x in both) == sorted(x.tobytes() for x in scaled)
    again = datasets.load("digits")
    assert np.array_equal(again.query_images, data.query_images)
    other = datasets.load("digits", seed=1)
    assert not np.array_equal(other.query_images, data.query_images)
    assert len(image_refs(data.db_images[:3])) == 3
    with pytest.raises(ValueError, match="query_fraction"):
        datasets.load("digits", query_fraction=1.0)


def test_fashion_mnist_validation_split_never_reads_the_test_set(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "VAL_QUERIES", 2)
    arrays = fake_fashion(tmp_path / "fashion-mnist", n_train=8)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / "fashion-mnist" / f"{name}.gz").write_bytes(b"not an idx file")
    with pytest.raises(DataUnavailable):
        datasets.load("fashion-mnist", str(tmp_path))
    data = datasets.load("fashion-mnist", str(tmp_path), split="val")
    assert data.notes["split"] == "val" and len(data.query_images) == 2
    train = arrays["train-images-idx3-ubyte"]
    rows = [next(i for i in range(len(train)) if np.array_equal(train[i], image[..., 0]))
            for image in np.concatenate([data.db_images, data.query_images])]
    assert sorted(rows) == list(range(8))  # the training set, split in two
    labels = arrays["train-labels-idx1-ubyte"]
    assert np.concatenate([data.db_labels, data.query_labels]).tolist() == labels[rows].tolist()


# ---------------------------------------------------------------- emoji (fake packages)

def fake_emoji(root, codes=("1f600", "1f601", "1f602")):
    from benchmarks.datasets.emoji import VENDORS

    entries = [{"unified": c.upper(), "image": f"{c}.png",
                **{f"has_img_{v}": True for v in VENDORS}} for c in codes]
    for vendor in VENDORS:
        write(root / "emoji" / vendor / "emoji.json", json.dumps(entries))
        for code in codes:
            touch(root / "emoji" / vendor / "img" / vendor / "64" / f"{code}.png")


@pytest.mark.parametrize("query_vendor,val_queries,val_db", [
    ("google", "apple", {"twitter", "facebook"}), ("apple", "google", {"twitter", "facebook"}),
    ("twitter", "apple", {"google", "facebook"})])
def test_emoji_validation_split_never_reads_the_query_vendor(tmp_path, query_vendor,
                                                             val_queries, val_db):
    fake_emoji(tmp_path)
    for image in (tmp_path / "emoji" / query_vendor).rglob("*.png"):
        image.unlink()  # the reported queries' images are gone: only val can load
    with pytest.raises(DataUnavailable, match="missing"):
        datasets.load("emoji", str(tmp_path), query_vendor=query_vendor)
    data = datasets.load("emoji", str(tmp_path), split="val", query_vendor=query_vendor)

    def vendors(paths):
        return {Path(p).parts[-3] for p in paths}  # <vendor>/img/<vendor>/64/x.png

    assert vendors(data.query_images) == {val_queries} and vendors(data.db_images) == val_db
    assert len(data.query_images) == 3 and len(data.db_images) == 6
    assert sorted(data.db_labels.tolist()) == sorted(2 * data.query_labels.tolist())
    assert data.notes["split"] == "val" and data.notes["query_vendor"] == val_queries


def test_generic_validation_split_holds_out_database_items(tmp_path):
    root, names = fake_cub(tmp_path)
    data = datasets.load("cub200", str(tmp_path), split="val")
    train = [(names[i], c) for i, c, t in CUB if t == 1]  # classes 1 (x2) and 2 (x1)
    got = list(zip(relative(data.db_images, root / "images"), data.db_labels.tolist())) + \
        list(zip(relative(data.query_images, root / "images"), data.query_labels.tolist()))
    assert sorted(got) == sorted(train)
    assert data.query_labels.tolist() == [1]  # the only class with two database items
    assert data.notes["split"] == "val"
    with pytest.raises(ValueError, match="split"):
        datasets.load("cub200", str(tmp_path), split="train")
