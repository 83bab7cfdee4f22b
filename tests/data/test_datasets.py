"""moejet.data: dataset specs, synthetic data, torchvision / folder loading errors, unreadable files, transforms."""

import collections
import hashlib
import warnings

import numpy as np
import pytest
import timm
import torch
import torchvision
from PIL import Image

import moejet  # noqa: F401  (registers the models)
from moejet.data import (
    DATASET_NAMES,
    SYNTHETIC_KEYS,
    build_dataset,
    build_transform,
    data_config_for,
    find_unreadable,
    parse_dataset_spec,
)
from moejet.data.datasets import TORCHVISION
from moejet.data.synthetic import GLYPHS, PATTERNS, SHAPES, class_pool
from moejet.errors import UserError


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32) / 255


def digest(image: Image.Image) -> str:
    return hashlib.sha1(image.tobytes()).hexdigest()


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


# --- synthetic data ---------------------------------------------------------------------------------------

def test_class_pools_are_disjoint_and_cover_every_combination():
    up, down = class_pool("upstream"), class_pool("downstream")
    assert len(up) == 240 and len(down) == 60 and not set(up) & set(down)
    assert set(up) | set(down) == {(s, p, g) for s in SHAPES for p in PATTERNS for g in GLYPHS}
    first = build_dataset("synthetic-upstream", "train").class_defs
    assert {s for s, _, _ in first} == set(SHAPES) and {p for _, p, _ in first} == set(PATTERNS)


def test_synthetic_defaults_sizes_and_labels():
    up = build_dataset("synthetic-upstream", "train")
    assert (up.num_classes, len(up), len(build_dataset("synthetic-upstream", "val"))) == (100, 15000, 2000)
    down = build_dataset("synthetic", "train")
    assert (down.num_classes, len(down), len(build_dataset("synthetic", "val"))) == (20, 500, 800)
    assert down.classes == ["/".join(c) for c in class_pool("downstream")[:20]]
    assert not set(up.classes) & set(down.classes)


def test_synthetic_options_labels_balanced_and_images():
    ds = build_dataset("synthetic-downstream:classes=7,per_class=3,val_per_class=2,size=24", "train")
    assert ds.num_classes == 7 and len(ds) == 21
    labels = [ds[i][1] for i in range(len(ds))]
    assert collections.Counter(labels) == {c: 3 for c in range(7)}
    image = ds[0][0]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (24, 24)
    assert len(build_dataset("synthetic-downstream:classes=7,val_per_class=2", "val")) == 14
    with pytest.raises(IndexError):
        ds[21]


def test_synthetic_is_deterministic_and_streams_differ():
    a, b = build_dataset("synthetic", "train"), build_dataset("synthetic", "train")
    assert [digest(a[i][0]) for i in range(5)] == [digest(b[i][0]) for i in range(5)]
    train = {digest(a[i][0]) for i in range(40)}
    assert len(train) == 40  # every index is a new image
    assert not train & {digest(build_dataset("synthetic", "val")[i][0]) for i in range(40)}
    assert not train & {digest(build_dataset("synthetic:seed=1", "train")[i][0]) for i in range(40)}
    assert not train & {digest(build_dataset("synthetic-upstream", "train")[i][0]) for i in range(40)}
    assert build_dataset("synthetic:seed=1", "train").classes == a.classes  # the seed changes images, not classes


def test_synthetic_images_are_not_constant_and_scale_with_size():
    ds = build_dataset("synthetic:size=64", "train")
    image = pixels(ds[3][0])
    assert image.shape == (64, 64, 3) and image.std() > 0.05
    small = pixels(build_dataset("synthetic:size=32", "train")[3][0])
    # same scene at another resolution: the 64 px image averaged down is close to the 32 px one (noise aside)
    assert np.abs(image.reshape(32, 2, 32, 2, 3).mean((1, 3)) - small).mean() < 0.08


def test_synthetic_rejects_impossible_options():
    with pytest.raises(UserError, match="synthetic-downstream has 60 classes, asked for 61: use classes=2..60"):
        build_dataset("synthetic:classes=61", "train")
    with pytest.raises(UserError, match="synthetic image size 4 is too small: use size >= 8"):
        build_dataset("synthetic:size=4", "train")


def _features(ds):
    images = np.stack([pixels(ds[i][0]) for i in range(len(ds))])
    return images, np.array([ds[i][1] for i in range(len(ds))])


def _ncm_accuracy(train_x, train_y, val_x, val_y, num_classes):
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mu) / sd, (val_x - mu) / sd
    means = np.stack([a[train_y == c].mean(0) for c in range(num_classes)])
    return float((((b[:, None] - means[None]) ** 2).sum(-1).argmin(1) == val_y).mean())


def _spectrum(images):
    """Translation-invariant features: log |FFT| of each standardised grey image."""
    grey = images.mean(-1)
    grey = (grey - grey.mean((1, 2), keepdims=True)) / (grey.std((1, 2), keepdims=True) + 1e-6)
    return np.log1p(np.abs(np.fft.rfft2(grey))).reshape(len(images), -1)


def test_downstream_task_is_learnable_but_not_trivial():
    train, val = build_dataset("synthetic", "train"), build_dataset("synthetic", "val")
    (xt, yt), (xv, yv) = _features(train), _features(val)
    chance = 1 / train.num_classes  # 0.05; measured: raw-pixel NCM 0.052, spectrum NCM 0.338
    raw = _ncm_accuracy(xt.reshape(len(xt), -1), yt, xv.reshape(len(xv), -1), yv, train.num_classes)
    spectrum = _ncm_accuracy(_spectrum(xt), yt, _spectrum(xv), yv, train.num_classes)
    assert raw < 3 * chance  # colour, position and rotation vary: raw pixels carry (almost) no label
    assert 3 * chance < spectrum < 0.8  # but the structure is there, and a linear classifier does not solve it
    # no single pixel gives the label away: between-class share of each pixel's variance (measured max 0.10)
    flat = xt.reshape(len(xt), -1)
    means = np.stack([flat[yt == c].mean(0) for c in range(train.num_classes)])
    between = ((means - flat.mean(0)) ** 2).mean(0)  # balanced classes
    assert (between / (flat.var(0) + 1e-12)).max() < 0.3


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
    ds = build_dataset(f"folder:{tmp_path}", "train", transform=lambda im: torch.tensor(pixels(im)))
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


# --- transforms -----------------------------------------------------------------------------------------

def test_build_transform_on_synthetic_images():
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, num_classes=5)
    config = data_config_for(model, crop_pct=1.0)
    assert config["input_size"] == (3, 32, 32) and config["mean"] == (0.5, 0.5, 0.5)
    train_tf = build_transform(config, train=True, scale=(0.5, 1.0))
    eval_tf = build_transform(config, train=False)
    ds = build_dataset("synthetic:size=40", "train", transform=eval_tf)
    x, _ = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    torch.manual_seed(0)
    assert train_tf(ds.image(0)).shape == (3, 32, 32)
    names = [type(t).__name__ for t in train_tf.transforms]
    assert names[:3] == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "RandAugment"]
    assert names[-1] == "RandomErasing" and train_tf.transforms[0].scale == (0.5, 1.0)
    resized = data_config_for(model, img_size=48)["input_size"]
    assert resized == (3, 48, 48)


def test_seeded_samples_draw_from_seed_epoch_and_index_only_and_leave_the_callers_rng_alone():
    import random

    from moejet.data import SeededSamples

    class Draws(torch.utils.data.Dataset):  # one draw from each RNG a transform may use
        def __len__(self):
            return 6

        def __getitem__(self, index):
            return torch.rand(1).item(), float(np.random.rand()), random.random()

    samples = SeededSamples(Draws(), seed=3)
    first = [samples[i] for i in range(6)]
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    assert [samples[i] for i in reversed(range(6))] == first[::-1]  # order and earlier draws change nothing
    assert samples.__getitems__([4, 1]) == [first[4], first[1]]
    after = (torch.get_rng_state(), np.random.get_state()[1], random.getstate())
    assert torch.equal(before[0], after[0]) and np.array_equal(before[1], after[1]) and before[2] == after[2]
    assert len({x for sample in first for x in sample}) == 18  # every sample and RNG its own stream
    samples.set_epoch(1)
    assert all(samples[i] != first[i] for i in range(6))
    assert SeededSamples(Draws(), seed=4)[0] != first[0]
    loader = torch.utils.data.DataLoader(SeededSamples(Draws(), seed=3), batch_size=4, num_workers=2)
    assert [tuple(x.item() for x in draw) for batch in loader for draw in zip(*batch)] == first
