"""Stanford Cars (Cars196): 16,185 images of 196 car models, in the official split.

The database is the official training set (8,144 images), the queries the test
set (8,041). Labels are the class ids (1..196) of the annotation files, which
are MATLAB ``.mat`` files: reading them needs scipy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import Dataset, DataUnavailable, register
from ._common import candidates, check_files, find_root, pick, unavailable

SOURCE = ("the Stanford Cars data set, https://ai.stanford.edu/~jkrause/cars/car_dataset.html "
          "(cars_train.tgz, cars_test.tgz, car_devkit.tgz and cars_test_annos_withlabels.mat; "
          "the original host is offline, copies of the same files are mirrored elsewhere)")
LAYOUT = """either the devkit layout (also torchvision's <root>/stanford_cars):
  devkit/cars_train_annos.mat            (or at the top)
  cars_test_annos_withlabels.mat         (at the top or in devkit/)
  cars_train/<fname>.jpg   cars_test/<fname>.jpg
or the all-in-one release:
  cars_annos.mat    (fields relative_im_path, class, test)
  car_ims/<file>.jpg"""
TRAIN_MAT = ("devkit/cars_train_annos.mat", "cars_train_annos.mat")
TEST_MAT = ("cars_test_annos_withlabels.mat", "devkit/cars_test_annos_withlabels.mat")


@register("cars196")
def load_cars196(data_root: str | None = None) -> Dataset:
    looked = candidates(data_root, ["stanford_cars", "cars196", "StanfordCars", "cars"])
    root = find_root(looked, lambda p: _devkit(p) is not None or (p / "cars_annos.mat").is_file())
    if root is None:
        raise unavailable("cars196", looked, SOURCE, LAYOUT)
    devkit = _devkit(root)
    if devkit is not None:
        train_paths, train_labels = _split(devkit[0], root / "cars_train")
        test_paths, test_labels = _split(devkit[1], root / "cars_test")
        layout = "devkit"
    else:
        annotations = _annotations(root / "cars_annos.mat", ("relative_im_path", "test"))
        paths = [root / str(p) for p in annotations["relative_im_path"]]
        labels = _labels(annotations, root / "cars_annos.mat")
        test = np.array([int(t) for t in annotations["test"]]) == 1
        train_paths, train_labels = pick(paths, ~test), labels[~test]
        test_paths, test_labels = pick(paths, test), labels[test]
        layout = "cars_annos.mat"
    check_files(train_paths + test_paths, "cars196")
    return Dataset("cars196", train_paths, train_labels, test_paths, test_labels,
                   {"root": str(root), "layout": layout, "database": "train",
                    "queries": "test"})


def _devkit(root: Path) -> tuple[Path, Path] | None:
    train = next((root / f for f in TRAIN_MAT if (root / f).is_file()), None)
    test = next((root / f for f in TEST_MAT if (root / f).is_file()), None)
    if train is None or test is None:
        return None
    return train, test


def _split(mat: Path, images: Path) -> tuple[list[Path], np.ndarray]:
    annotations = _annotations(mat, ("fname",))
    return [images / str(f) for f in annotations["fname"]], _labels(annotations, mat)


def _annotations(mat: Path, fields: tuple[str, ...]) -> np.ndarray:
    """The ``annotations`` struct array of a Stanford Cars ``.mat`` file, one entry per
    image, with a ``class`` field and ``fields``."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise ImportError("reading the Stanford Cars annotations (.mat) needs scipy: "
                          "pip install scipy (or genindex[bench])") from None
    try:
        annotations = loadmat(mat, squeeze_me=True)["annotations"]
    except (KeyError, ValueError, OSError) as error:
        raise DataUnavailable(f"cannot read the annotations of {mat}: {error}") from None
    annotations = np.atleast_1d(annotations)
    missing = [f for f in ("class", *fields) if f not in (annotations.dtype.names or ())]
    if missing:
        raise DataUnavailable(f"{mat}: 'annotations' lacks the field(s) {', '.join(missing)}")
    return annotations


def _labels(annotations: np.ndarray, mat: Path) -> np.ndarray:
    labels = np.array([int(c) for c in annotations["class"]])
    if len(labels) and labels.min() < 1:
        raise DataUnavailable(f"{mat}: class ids must start at 1, got {labels.min()}")
    return labels
