"""recycle.load: predecessors and dense checkpoints from files, moejet headers naming their model."""

import json

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import moejet  # noqa: F401  (registers the models)
from moejet.cli import main
from moejet.io.weights import build_from_checkpoint, save_model

from ..helpers.recycling import RECIPE, args_of, check_experts, make_predecessor, run_recycle


def test_dense_checkpoint_supplies_the_non_moe_weights(recycle_files, tmp_path):
    assert run_recycle(recycle_files, tmp_path / "out",
                       extra=["--dense-checkpoint", str(recycle_files["dense_file"]), "--quiet"]) == 0
    model, _, _ = build_from_checkpoint(tmp_path / "out" / "model.safetensors")
    report = json.loads((tmp_path / "out" / "recycle.json").read_text())
    dense = load_file(str(recycle_files["dense_file"]))
    for key, value in model.state_dict().items():
        if not key.startswith(("blocks.2.mlp.", "blocks.3.mlp.")):
            assert torch.equal(value, dense[key]), key
    check_experts(model, recycle_files["vit"], report)


def test_vjetmoe_s_experts_from_the_larger_predecessor(recycle_files, tmp_path):
    """V-JetMoE-S ratios at tiny scale: experts from a B-like predecessor (64 ch, 4 heads, hidden 256), dense part
    from an S-like checkpoint (32 ch, 2 heads): channels 64 -> 32, hidden 256 -> core 128 / universal 32."""
    b_like = dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4)
    s_like = dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, num_classes=10)
    succ = dict(s_like, moe_layers=(2, 3), core_experts=3, univ_experts=6)
    torch.manual_seed(2)
    save_file(make_predecessor("vit_base_patch16_224", dict(b_like, num_classes=10)).state_dict(),
              str(tmp_path / "b.safetensors"))
    save_file(timm.create_model("vit_small_patch16_224", **s_like).state_dict(), str(tmp_path / "s.safetensors"))
    argv = ["recycle", "--predecessor", "vit_base_patch16_224",
            "--predecessor-checkpoint", str(tmp_path / "b.safetensors"), *args_of(b_like, "--predecessor-arg"),
            "--dense-checkpoint", str(tmp_path / "s.safetensors"),
            "--successor", "vjetmoe_small_patch16_224", *args_of(succ), "--calib-data", "synthetic:size=32",
            "--calib-images", "12", "--batch-size", "6", "--workers", "0", "--device", "cpu", "--quiet",
            "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    model, name, _ = build_from_checkpoint(tmp_path / "out" / "model.safetensors")
    report = json.loads((tmp_path / "out" / "recycle.json").read_text())
    assert name == "vjetmoe_small_patch16_224" and report["predecessor"]["dims"] == [64]
    assert report["moe_blocks"]["2"]["experts"] == {"core": [3, 128], "univ": [6, 32]}
    assert report["channel_indices"][0] == RECIPE.hot_channels
    dense = load_file(str(tmp_path / "s.safetensors"))
    for key, value in model.state_dict().items():
        if not key.startswith(("blocks.2.mlp.", "blocks.3.mlp.")):
            assert torch.equal(value, dense[key]), key
    pred = timm.create_model("vit_base_patch16_224", **dict(b_like, num_classes=10))
    pred.load_state_dict(load_file(str(tmp_path / "b.safetensors")))
    check_experts(model, pred, report)


@pytest.fixture
def header_cli():
    """``header_cli(out, pred_args)``: ``moejet recycle`` into the tiny successor with only ``pred_args`` naming the
    predecessor."""

    def run(out, pred_args):
        return main(["recycle", *pred_args, "--successor", "vjetmoe_tiny_patch16_224", *args_of(RECIPE.succ_vit),
                     "--calib-data", "synthetic:size=32", "--calib-images", "12", "--batch-size", "6", "--workers",
                     "0", "--device", "cpu", "--quiet", "--out", str(out)])

    return run


def test_moejet_files_name_their_model(header_cli, recycle_files, tmp_path, capsys):
    """A moejet safetensors predecessor needs no --predecessor / --predecessor-arg; explicit args win; a moejet
    dense checkpoint is rebuilt from its header."""
    pred_kwargs = dict(RECIPE.pred_vit, drop_path_rate=0.0)
    save_model(recycle_files["vit"], tmp_path / "pred.safetensors", "vit_small_patch16_224", pred_kwargs)
    torch.manual_seed(1)
    dense = timm.create_model("vit_small_patch16_224", **dict(RECIPE.pred_vit, embed_dim=32, num_classes=7))
    save_model(dense, tmp_path / "dense.safetensors", "vit_small_patch16_224",
               dict(RECIPE.pred_vit, embed_dim=32, num_classes=7))
    assert run_recycle(recycle_files, tmp_path / "plain", extra=["--quiet"]) == 0
    pred = ["--predecessor-checkpoint", str(tmp_path / "pred.safetensors")]
    assert header_cli(tmp_path / "header", pred + ["--predecessor-arg", "drop_path_rate=0.1"]) == 0
    report = json.loads((tmp_path / "header" / "recycle.json").read_text())
    assert report["predecessor"]["name"] == "vit_small_patch16_224"
    assert report["predecessor"]["kwargs"] == dict(pred_kwargs, drop_path_rate=0.1)
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("plain", "header"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert header_cli(tmp_path / "dense", pred + ["--dense-checkpoint", str(tmp_path / "dense.safetensors")]) == 0
    model, _, _ = build_from_checkpoint(tmp_path / "dense" / "model.safetensors")
    ref = dense.state_dict()
    for key, value in model.state_dict().items():
        if not key.startswith(("blocks.2.mlp.", "blocks.3.mlp.", "head.")):
            assert torch.equal(value, ref[key]), key
    report = json.loads((tmp_path / "dense" / "recycle.json").read_text())
    assert {"head.weight", "head.bias"} <= set(report["fresh_keys"])  # 7 classes there, 10 here
    capsys.readouterr()
    cases = [
        (["--predecessor", "convnext_tiny", *pred], "--predecessor convnext_tiny contradicts checkpoint"),
        (["--predecessor-checkpoint", str(recycle_files["vit_file"])],
         "name the predecessor: pass --predecessor MODEL"),
        ([*pred, "--dense-checkpoint", str(tmp_path / "pred.safetensors")],
         "the dense checkpoint lacks or mis-shapes"),
    ]
    for i, (args, message) in enumerate(cases):
        assert header_cli(tmp_path / f"bad{i}", args) == 2
        err = capsys.readouterr().err
        assert err.startswith("moejet recycle: error: ") and err.count("\n") == 1 and message in err, err
        assert not (tmp_path / f"bad{i}").exists()


def test_more_calibration_images_than_the_data_has_is_one_warning_line_recorded_in_the_report(
        recycle_files, tmp_path, capsys):
    data = "synthetic:size=32,classes=3,per_class=4"  # 12 training images
    assert run_recycle(recycle_files, tmp_path / "out", extra=["--calib-data", data, "--calib-images", "20",
                                                               "--quiet"]) == 0
    warning = f"20 calibration images asked for, {data!r} has 12 training images: calibrated on all 12"
    assert capsys.readouterr().err.splitlines() == [f"moejet: warning: {warning}"]
    calibration = json.loads((tmp_path / "out" / "recycle.json").read_text())["calibration"]
    assert (calibration["requested_images"], calibration["images"], calibration["warning"]) == (20, 12, warning)
