"""data.transforms: timm's eval / train transforms for the data config."""

import timm
import torch

import moejet  # noqa: F401  (registers the models)
from moejet.data import (
    build_dataset,
    build_transform,
    data_config_for,
)

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
