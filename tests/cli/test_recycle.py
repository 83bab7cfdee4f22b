"""``moejet recycle``: its flags, and bad input as one line with exit code 2."""

import errno
import json
import os

import pytest
import torch

import moejet  # noqa: F401  (registers the models)
from moejet.cli import build_parser
from moejet.cli.recycle import options_from_args
from moejet.io.weights import build_from_checkpoint
from moejet.options import RecycleOptions

from ..helpers.recycling import RECIPE, run_recycle


def test_every_recycle_option_is_a_flag_with_its_default_and_choices():
    """``moejet recycle``'s recycling flags are RecycleOptions' fields: the defaults give RecycleOptions(), each
    flag sets its field, and a value outside the field's choices or range is refused by argparse."""
    parser = build_parser()
    base = ["recycle", "--successor", "jetmoe", "--out", "out"]
    assert options_from_args(parser.parse_args(base)) == RecycleOptions()
    args = parser.parse_args([*base, "--strategy", "upcycle", "--drop-ratio", "0.25", "--router-init", "kmeans",
                              "--align-ridge", "0.5", "--query-norm", "fresh", "--seed", "3"])
    assert options_from_args(args) == RecycleOptions(strategy="upcycle", drop_ratio=0.25, router_init="kmeans",
                                                     align_ridge=0.5, query_norm="fresh", seed=3)
    for bad in (["--mixed", "both"], ["--drop-ratio", "1"], ["--graph-parts", "0"], ["--coact-percentile", "100"]):
        with pytest.raises(SystemExit):
            parser.parse_args([*base, *bad])


def test_cli_variant_flag_and_explicit_switch(recycle_files, tmp_path):
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
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(recycle_files, tmp_path, capsys, change, message):
    root = bad_files(recycle_files["root"])
    out = tmp_path / "out"
    extra = ["--dense-checkpoint", str(root / change["dense"])] if "dense" in change else []
    extra += change.get("extra", [])
    if "ckpt" in change:
        saved, recycle_files = recycle_files["vit_file"], dict(recycle_files, vit_file=root / change["ckpt"])
    succ = dict(RECIPE.succ_vit, **change["succ"]) if "succ" in change else None
    rc = run_recycle(recycle_files, out, strategy=change.get("strategy", "importance"), succ=succ, extra=extra)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("moejet recycle: error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()
    if "ckpt" in change:
        assert saved.exists()


@pytest.mark.parametrize("where", ["file", "under_file", "read_only"])
def test_an_unusable_out_is_refused_before_any_work(recycle_files, tmp_path, capsys, monkeypatch, where):
    import moejet.recycle.pipeline as pipeline

    (tmp_path / "taken").write_text("not a directory")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    if where == "read_only" and os.access(locked, os.W_OK):
        pytest.skip("this user writes into read-only directories (root)")
    out = {"file": tmp_path / "taken", "under_file": tmp_path / "taken" / "out", "read_only": locked / "out"}[where]
    monkeypatch.setattr(pipeline, "load_predecessor", lambda *a, **k: pytest.fail("work started before --out check"))
    assert run_recycle(recycle_files, out) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"moejet recycle: error: --out {out}") and err.count("\n") == 1, err
    assert {"file": "is a file", "under_file": "which is a file", "read_only": "is not writable"}[where] in err


def test_an_os_error_while_writing_is_one_line_and_leaves_nothing(recycle_files, tmp_path, capsys, monkeypatch):
    import moejet.recycle.output as output

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(output, "save_model", full_disk)
    out = tmp_path / "out"
    assert run_recycle(recycle_files, out, strategy="uniform", extra=["--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == (f"moejet recycle: error: cannot write the recycled model to --out {out} (No space left on "
                   "device); nothing was left there: free space or pass another directory\n")
    assert not out.exists()


@pytest.mark.parametrize("family", ["vit", "cnx"])
def test_one_head_rule_for_every_family(recycle_files, tmp_path, capsys, family):
    """Without num_classes the successor keeps the predecessor's head; another class count gets a fresh one, listed
    in fresh_keys; one summary line says which."""
    succ = dict(RECIPE.succ_vit if family == "vit" else RECIPE.succ_cnx)
    head = "head.weight" if family == "vit" else "head.fc.weight"
    pred = recycle_files["vit" if family == "vit" else "cnx"].state_dict()[head]
    for name, classes in (("kept", None), ("fresh", 7)):
        kwargs = {k: v for k, v in succ.items() if k != "num_classes"}
        if classes is not None:
            kwargs["num_classes"] = classes
        out = tmp_path / name
        assert run_recycle(recycle_files, out, family, "uniform", succ=kwargs) == 0
        lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  head ")]
        report = json.loads((out / "recycle.json").read_text())
        state = build_from_checkpoint(out / "model.safetensors")[0].state_dict()
        assert report["successor"]["kwargs"]["num_classes"] == (classes or 10)
        if classes is None:
            assert lines == ["  head          the predecessor's 10-class head, kept (num_classes: the predecessor's)"]
            assert head not in report["fresh_keys"]
            assert torch.equal(state[head], pred[:, torch.tensor(report["channel_indices"][-1])])
        else:
            assert lines == ["  head          fresh 7-class head (the predecessor has 10 classes; num_classes: given): "
                             "listed in fresh_keys"]
            assert head in report["fresh_keys"] and state[head].shape[0] == 7
