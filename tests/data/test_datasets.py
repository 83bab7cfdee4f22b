"""data.datasets: dataset specs, torchvision and ImageNet datasets, folder trees."""

import warnings

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import moejet  # noqa: F401  (registers the models)
from moejet.data import (
    DATASET_NAMES,
    SYNTHETIC_KEYS,
    build_dataset,
    find_unreadable,
    parse_dataset_spec,
)
from moejet.data.datasets import TORCHVISION
from moejet.errors import UserError

# --- specs ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, expected", [
    ("cifar100", ("cifar100", {})),
    (" CIFAR10 ", ("cifar10", {})),
    ("synthetic", ("synthetic-downstream", {})),
    ("synthetic-upstream:size=32,per_class=50", ("synthetic-upstream", {"size": 32, "per_class": 50})),
    ("synthetic-downstream:classes=10, val_per_class=5,seed=0", ("synthetic-downstream",
                                                                 {"classes": 10, "val_per_class": 5, "seed": 0})),
    ("folder:/data/my:set", ("folder", {"path": "/data/my:set"})),
])
def test_parse_dataset_spec(spec, expected):
    assert parse_dataset_spec(spec) == expected


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(UserError) as err:
        parse_dataset_spec("cifar1000")
    message = str(err.value)
    assert message.startswith("unknown dataset 'cifar1000': use one of ")
    assert all(name in message for name in DATASET_NAMES) and "\n" not in message


@pytest.mark.parametrize("spec, message", [
    ("synthetic:colour=3", "unknown option 'colour' for dataset 'synthetic': valid keys are "
                           + ", ".join(SYNTHETIC_KEYS)),
    ("synthetic-upstream:size=0", "option size='0' for dataset 'synthetic-upstream' is not a positive integer"),
    ("synthetic:size=big", "option size='big' for dataset 'synthetic' is not a positive integer"),
    ("synthetic:seed=-1", "option seed='-1' for dataset 'synthetic' is not an integer >= 0"),
    ("synthetic:size", "option size='' for dataset 'synthetic' is not a positive integer"),
    ("synthetic:size=8,size=16", "option 'size' given twice for dataset 'synthetic': give it once"),
    ("cifar10:size=32", "dataset 'cifar10' takes no options, got 'size=32': use just 'cifar10'"),
    ("folder:", "dataset 'folder' needs a path: use folder:PATH"),
])
def test_bad_spec_options(spec, message):
    with pytest.raises(UserError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        parse_dataset_spec(spec)


def test_bad_split():
    with pytest.raises(UserError, match="unknown split 'test': use 'train' or 'val'"):
        build_dataset("synthetic", "test")


# --- torchvision datasets, ImageNet ---------------------------------------------------------------------

@pytest.mark.parametrize("name", list(TORCHVISION))
def test_missing_torchvision_data_names_the_directory(name, tmp_path):
    folder = TORCHVISION[name][-1]
    with pytest.raises(UserError) as err:
        build_dataset(name, "val", root=tmp_path)
    assert str(err.value) == (f"{name} not found in {tmp_path} (looked for {tmp_path / folder}): pass --data-root "
                              f"DIR (moejet train: --set data.root=DIR) holding {folder}/, or enable downloading "
                              "with data.download=true")


def _fake_dtd(root, files_per_split):
    """``root/dtd/dtd/{images/<class>/*.jpg, labels/<split>1.txt}`` as torchvision's DTD reads it."""
    base = root / "dtd" / "dtd"
    (base / "labels").mkdir(parents=True)
    for split, n in files_per_split.items():
        names = [f"banded/{split}_{i}.jpg" for i in range(n)]
        for name in names:
            (base / "images" / name).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8)).save(base / "images" / name)
        (base / "labels" / f"{split}1.txt").write_text("".join(f"{name}\n" for name in names))


def test_dtd_trains_on_train_plus_val_and_evaluates_on_test(tmp_path):
    _fake_dtd(tmp_path, {"train": 3, "val": 2, "test": 4})
    train, val = build_dataset("dtd", "train", root=tmp_path), build_dataset("dtd", "val", root=tmp_path)
    assert (len(train), len(val)) == (3 + 2, 4)
    assert train.num_classes == val.num_classes == 47
    assert [p.name for part in train.datasets for p in part._image_files] == [
        *(f"train_{i}.jpg" for i in range(3)), *(f"val_{i}.jpg" for i in range(2))]
    image, label = train[4]
    assert image.size == (8, 8) and label == 0


def test_flowers_trains_on_train_plus_val_and_evaluates_on_test(tmp_path, monkeypatch):
    scipy_io = pytest.importorskip("scipy.io")
    base = tmp_path / "flowers-102"
    (base / "jpg").mkdir(parents=True)
    for i in range(1, 10):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(base / "jpg" / f"image_{i:05d}.jpg")
    scipy_io.savemat(base / "imagelabels.mat", {"labels": np.array([1, 2, 3, 1, 2, 3, 1, 2, 3])})
    scipy_io.savemat(base / "setid.mat", {"trnid": np.array([1, 2]), "valid": np.array([3, 4, 5]),
                                          "tstid": np.array([6, 7, 8, 9])})
    monkeypatch.setattr(torchvision.datasets.Flowers102, "_check_integrity", lambda self: True)  # fake files: no md5
    train, val = build_dataset("flowers102", "train", root=tmp_path), build_dataset("flowers102", "val", root=tmp_path)
    assert (len(train), len(val)) == (2 + 3, 4)
    assert [p.name for part in train.datasets for p in part._image_files] == [
        f"image_{i:05d}.jpg" for i in (1, 2, 3, 4, 5)]
    assert [train[i][1] for i in range(5)] == [0, 1, 2, 0, 1]


def test_default_root_comes_from_moejet_data(tmp_path, monkeypatch):
    monkeypatch.setenv("MOEJET_DATA", str(tmp_path))
    with pytest.raises(UserError, match=f"cifar10 not found in {tmp_path / 'cifar10'} "):
        build_dataset("cifar10", "train")
    with pytest.raises(UserError, match=f"no directory {tmp_path / 'imagenet' / 'val'} "):
        build_dataset("imagenet", "val")


def test_imagenet_cannot_be_downloaded(tmp_path):
    expected = (r"^ImageNet cannot be downloaded automatically: .* pass --data-root ROOT "
                r"\(moejet train: --set data.root=ROOT\)$")
    with pytest.raises(UserError, match=expected):
        build_dataset("imagenet", "train", root=tmp_path, download=True)


def test_torchvision_dataset_gets_num_classes(tmp_path, monkeypatch):
    import pickle

    from torchvision.datasets import CIFAR10

    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    files = {"test_batch": {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 3, 9, 3]},
             "batches.meta": {"label_names": [f"c{i}" for i in range(10)]}}
    for file, content in files.items():
        (base / file).write_bytes(pickle.dumps(content))
    # a tiny fake CIFAR-10: no train files and no md5 check
    monkeypatch.setattr(CIFAR10, "train_list", [])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", None]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": None})
    ds = build_dataset("cifar10", "val", root=tmp_path)
    assert ds.num_classes == 10 and len(ds) == 4
    image, label = ds[1]
    assert image.mode == "RGB" and image.size == (32, 32) and label == 3


# --- class-per-folder trees ------------------------------------------------------------------------------

def _write_tree(root, split, classes, per_class=2):
    for c in classes:
        (root / split / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            value = (len(c) * 40 + i * 10) % 256
            Image.new("RGB", (12, 10), (value, 0, 255 - value)).save(root / split / c / f"{i}.png")


def test_folder_dataset_reads_classes(tmp_path):
    _write_tree(tmp_path, "train", ["ant", "bee", "cat"])
    _write_tree(tmp_path, "val", ["bee", "cat"], per_class=1)  # val lacks a class: labels still follow train
    train, val = build_dataset(f"folder:{tmp_path}", "train"), build_dataset(f"folder:{tmp_path}", "val")
    assert train.num_classes == val.num_classes == 3 and val.classes == ["ant", "bee", "cat"]
    assert sorted(label for _, label in val) == [1, 2]
    image, label = train[0]
    assert image.mode == "RGB" and image.size == (12, 10) and label == 0


def test_folder_dataset_errors(tmp_path):
    with pytest.raises(UserError, match=f"no directory {tmp_path / 'train'} "):
        build_dataset(f"folder:{tmp_path}", "train")
    _write_tree(tmp_path, "train", ["ant"])
    _write_tree(tmp_path, "val", ["ant", "zebra"])
    with pytest.raises(UserError, match="has class folders missing from .*: zebra: train and val need the same"):
        build_dataset(f"folder:{tmp_path}", "val")
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(UserError, match="train data unusable in .*Found no valid file for the classes empty"):
        build_dataset(f"folder:{tmp_path}", "train")


def test_unreadable_images_are_skipped_counted_and_reported(tmp_path):
    _write_tree(tmp_path, "train", ["ant", "bee"], per_class=2)
    bad = tmp_path / "train" / "ant" / "1.png"
    bad.write_bytes(b"not an image")
    truncated = tmp_path / "train" / "bee" / "0.png"
    truncated.write_bytes(truncated.read_bytes()[:40])
    to_tensor = lambda im: torch.tensor(np.asarray(im, dtype=np.float32) / 255)
    ds = build_dataset(f"folder:{tmp_path}", "train", transform=to_tensor)
    assert len(ds) == 4
    with pytest.warns(RuntimeWarning) as caught:
        items = [ds[i] for i in range(len(ds))]
    assert [label for _, label in items] == [0, 1, 1, 1]  # each bad file replaced by the next readable one
    assert all(x.shape == (10, 12, 3) for x, _ in items)
    assert ds.unreadable == [str(bad), str(truncated)]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and messages[0].startswith(f"skipped unreadable image {bad} (UnidentifiedImageError")
    assert messages[1].endswith(f"2 unreadable so far in this process, first {bad}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known bad files are skipped silently afterwards
        assert ds[1][1] == 1
    assert find_unreadable(ds) == [str(bad), str(truncated)]
    # also inside DataLoader worker processes, with the default collate
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert [y.tolist() for _, y in loader] == [[0, 1], [1, 1]]
