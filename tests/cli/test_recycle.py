"""``moejet recycle``: its flags, and bad input as one line with exit code 2."""

import json

import pytest
import torch

import moejet  # noqa: F401  (registers the models)
from moejet.io.weights import build_from_checkpoint


def test_cli_variant_flag_and_explicit_switch(recycle_files, run_recycle, tmp_path):
    extra = ["--variant", "release", "--univ-mode", "draw", "--quiet"]
    assert run_recycle(recycle_files, tmp_path / "out", extra=extra) == 0
    report = json.loads((tmp_path / "out" / "recycle.json").read_text())
    assert report["variant"] == "release" and report["switches"] == {
        "importance_metric": "l2", "expert_channels": "per_expert", "uniform_rule": "linspace",
        "query_norm": "fresh", "univ_mode": "draw", "final_norm": "fresh"}
    model, _, _ = build_from_checkpoint(tmp_path / "out" / "model.safetensors")
    fresh = model.state_dict()["blocks.2.mlp.query_norm.weight"]
    assert "blocks.2.mlp.query_norm.weight" in report["fresh_keys"] and torch.equal(fresh, torch.ones_like(fresh))


def bad_files(root):
    (root / "trunc.safetensors").write_bytes((root / "vit.safetensors").read_bytes()[:500])
    (root / "trunc.pth").write_bytes((root / "cnx.pth").read_bytes()[:500])
    return root


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(succ=dict(embed_dim=128)), "successor width 128 is larger than the predecessor's 64"),
        (dict(succ=dict(depth=6, moe_layers=(4, 5))), "successor MoE block 4 (blocks.4) is beyond the "
                                                                 "predecessor's depth (4 blocks)"),
        (dict(succ=dict(univ_factor=3.0)), "block 2's univ experts need 384 hidden neurons but the "
                                                     "predecessor's MLP has 256"),
        (dict(strategy="upcycle"), "upcycle copies whole MLPs, so it needs the same width"),
        (dict(strategy="upcycle", succ=dict(embed_dim=64, mlp_ratio=2.0)),
         "upcycle makes every core expert a full copy of the dense MLP (256 neurons) but block 2's core experts "
         "have 128"),
        (dict(strategy="magic"), "argument --strategy: invalid choice: 'magic' (choose from 'importance', 'graph', "
                                 "'uniform', 'random', 'upcycle'); see moejet recycle --help"),
        (dict(ckpt="missing.safetensors"), "does not exist: check the path"),
        (dict(ckpt="trunc.safetensors"), "it may be truncated: re-create or re-download it"),
        (dict(ckpt="trunc.pth"), "it may be truncated or not a weights file"),
        (dict(ckpt="cnx.pth"), "does not match the model architecture"),
        (dict(dense="cnx.pth"), "does not match the model architecture"),
        (dict(extra=["--expert-channels", "mixed"]), "argument --expert-channels: invalid choice: 'mixed' (choose "
                                                     "from 'shared', 'per_expert'); see moejet recycle --help"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(recycle_files, recipe, run_recycle, tmp_path, capsys, change,
                                                        message):
    root = bad_files(recycle_files["root"])
    out = tmp_path / "out"
    extra = ["--dense-checkpoint", str(root / change["dense"])] if "dense" in change else []
    extra += change.get("extra", [])
    if "ckpt" in change:
        saved, recycle_files = recycle_files["vit_file"], dict(recycle_files, vit_file=root / change["ckpt"])
    succ = dict(recipe.succ_vit, **change["succ"]) if "succ" in change else None
    rc = run_recycle(recycle_files, out, strategy=change.get("strategy", "importance"), succ=succ, extra=extra)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("moejet recycle: error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()
    if "ckpt" in change:
        assert saved.exists()
