"""The contract every registered moejet model keeps (as timm's tests/test_models.py checks timm's): it builds,
runs forward and backward, extracts features, and survives a save / load and an export round trip.

Each model is built tiny (32 px, 4 ViT blocks / 5 ConvNeXt blocks, a handful of experts) to keep this fast.
"""

import pytest
import timm
import torch

import moejet  # noqa: F401  (registers the models)
from moejet.io.export import export_checkpoint, run_export
from moejet.io.weights import build_from_checkpoint, save_model
from moejet.layers import SoftMoE, SpheroMoE
from moejet.models import MODEL_NAMES, moe_modules

from ..helpers.models import TINY_CONVNEXT, TINY_VIT, tiny_moe

IMAGES = (2, 3, 32, 32)


@pytest.fixture
def tiny_kwargs():
    """``tiny_kwargs(name)``: the kwargs that build ``name`` tiny, with MoE blocks where the model has them."""

    def kwargs(name):
        if name == "convnext_femto_d18":
            return dict(TINY_CONVNEXT)
        if name == "cjetmoe_femto":
            return tiny_moe("convnext")
        if name.startswith("softmoe"):
            return dict(TINY_VIT, moe_layers=(2, 3), num_experts=4)
        return tiny_moe("vit")

    return kwargs


def test_every_model_is_covered():
    assert set(MODEL_NAMES) == {"vjetmoe_tiny_patch16_224", "vjetmoe_small_patch16_224", "cjetmoe_femto",
                                "softmoe_vit_tiny_patch16_224", "softmoe_vit_small_patch16_224", "convnext_femto_d18",
                                "jetmoe"}
    assert all(timm.is_model(name) for name in MODEL_NAMES)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_and_backward(name, tiny_kwargs):
    torch.manual_seed(0)
    kwargs = tiny_kwargs(name)
    model = timm.create_model(name, **kwargs).train()
    layers = moe_modules(model)
    assert (len(layers) == 0) == (name == "convnext_femto_d18")
    for layer in layers.values():  # the tiny expert counts asked for, not the full-size defaults
        if isinstance(layer, SoftMoE):
            assert layer.num_experts == 4
        else:
            assert isinstance(layer, SpheroMoE) and (layer.num_core, layer.num_univ) in ((2, 4), (0, 0))
    out = model(torch.randn(*IMAGES))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.square().mean().backward()
    for param_name, p in model.named_parameters():
        assert p.grad is not None, f"{param_name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{param_name} got a non-finite gradient"
    grads = [p.grad.abs().sum() for p in model.parameters()]
    assert sum(g > 0 for g in grads) > 0.9 * len(grads)  # not all zero (expert drops may zero a few)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_features_only_gives_the_reported_feature_maps(name, tiny_kwargs):
    torch.manual_seed(0)
    features = timm.create_model(name, features_only=True, **tiny_kwargs(name)).eval()
    with torch.no_grad():
        maps = features(torch.randn(*IMAGES))
    info = features.feature_info
    assert len(maps) == len(info.channels()) > 0
    for fmap, channels, reduction in zip(maps, info.channels(), info.reduction(), strict=True):
        assert fmap.shape == (2, channels, 32 // reduction, 32 // reduction)
        assert torch.isfinite(fmap).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_save_load_and_export_round_trips(name, tiny_kwargs, tmp_path):
    torch.manual_seed(0)
    kwargs = tiny_kwargs(name)
    model = timm.create_model(name, **kwargs).eval()
    path = tmp_path / "model.safetensors"
    save_model(model, path, name, kwargs)
    loaded, loaded_name, _ = build_from_checkpoint(path)
    x = torch.randn(*IMAGES)
    with torch.no_grad():
        expected = model(x)
        assert loaded_name == name and torch.equal(loaded.eval()(x), expected)
    assert export_checkpoint(path, tmp_path / "model.pt2", fmt="export", img_size=32) <= 1e-4
    with torch.no_grad():
        torch.testing.assert_close(run_export(tmp_path / "model.pt2", x), expected, rtol=1e-4, atol=1e-4)
