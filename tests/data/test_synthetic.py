"""data.synthetic: the synthetic shape datasets."""

import collections
import hashlib

import numpy as np
import pytest
from PIL import Image

import moejet  # noqa: F401  (registers the models)
from moejet.data import (
    build_dataset,
)
from moejet.data.synthetic import GLYPHS, PATTERNS, SHAPES, class_pool
from moejet.errors import UserError


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32) / 255


def digest(image: Image.Image) -> str:
    return hashlib.sha1(image.tobytes()).hexdigest()


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
