"""Today's checkpoints end to end: ``model.name: auto`` recycles a DINOv2 / SigLIP / EVA-02 / ConvNeXt-V2 checkpoint
into its jetmoe successor, then ``moejet train``, ``eval``, ``export`` and ``publish`` run on it, and the published
folder loads back with timm (``local-dir:``), features included."""

import json

import pytest
import timm
import torch
import yaml

import moejet  # noqa: F401  (registers the models)
from moejet.cli import main
from moejet.io.hub import load_published
from moejet.io.weights import build_from_checkpoint, save_model
from moejet.models import moe_modules

from ..helpers.runs import tiny_config_dict, write_config

VIT = dict(embed_dim=32, depth=4, num_heads=2, img_size=32)
CASES = {  # timm model, predecessor kwargs, model.kwargs (the MoE arguments)
    "dinov2-reg": ("vit_small_patch14_reg4_dinov2", dict(VIT, patch_size=8),
                   dict(moe_layers=[2, 3], core_experts=2, univ_experts=4)),
    "siglip": ("vit_base_patch16_siglip_224", dict(VIT, patch_size=8), dict(moe_layers=[3], core_experts=2,
                                                                            univ_experts=4)),
    "eva02": ("eva02_tiny_patch14_224", dict(VIT, patch_size=8), dict(moe_layers=[2, 3], core_experts=2,
                                                                      univ_experts=4)),
    "convnext-v2": ("convnextv2_atto", dict(depths=(1, 1, 2, 1), dims=(8, 16, 32, 64)),
                    dict(moe_layers=[3, 4], core_experts=[0, 0, 2, 2], univ_experts=[0, 0, 4, 4])),
}


@pytest.mark.parametrize("label", CASES)
def test_auto_successor_trains_evaluates_exports_and_publishes(label, tmp_path, capsys):
    model_name, pred_kwargs, moe_kwargs = CASES[label]
    torch.manual_seed(0)
    pred = tmp_path / "pred.safetensors"
    save_model(timm.create_model(model_name, **pred_kwargs), pred, model_name, pred_kwargs)
    raw = tiny_config_dict(
        model={"name": "auto", "init": "recycle", "kwargs": moe_kwargs},
        recycle={"predecessor_checkpoint": str(pred), "calib_data": "synthetic:size=32", "calib_images": 8,
                 "batch_size": 4, "workers": 0},
        schedule={"epochs": 1}, train={"max_steps_per_epoch": 2})
    config = write_config(tmp_path / "config.yaml", raw)
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(run), "--no-progress"]) == 0
    assert "into jetmoe" in capsys.readouterr().out
    report = json.loads((run / "recycle" / "recycle.json").read_text())
    assert report["successor"]["kwargs"]["base"] == model_name
    model, name, kwargs = build_from_checkpoint(run / "last.safetensors")
    assert name == "jetmoe" and len(moe_modules(model)) == len(moe_kwargs["moe_layers"])
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["name"] == "auto"

    assert main(["eval", "--run", str(run), "--device", "cpu"]) == 0
    assert 0.0 <= json.loads((run / "eval.json").read_text())["top1"] <= 100.0
    assert main(["export", str(run / "last.safetensors"), "--out", str(tmp_path / "model.pt2")]) == 0
    assert main(["publish", str(run), "--out", str(tmp_path / "hub"), "--no-macs"]) == 0

    published = load_published(str(tmp_path / "hub")).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(published(x), model.eval()(x))
        maps = timm.create_model(name, features_only=True, **kwargs).eval()(x)
    assert all(torch.isfinite(m).all() for m in maps)
