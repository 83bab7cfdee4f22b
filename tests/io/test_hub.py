"""moejet.hub and `moejet publish`: timm / Hugging Face Hub folders that load back with identical outputs."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import yaml
from timm.models import save_for_hf

import moejet  # noqa: F401  (registers the models)
from moejet.cli import main
from moejet.io.weights import save_model


@pytest.fixture(scope="module")
def vit_kw(tiny_moe):
    return tiny_moe("vit", moe_layers=range(2, 4))  # a range, as a user may pass it


def make_run(tmp_path, kwargs, name="vjetmoe_tiny_patch16_224"):
    """A run directory as `moejet train` leaves it: weights at epoch 3, config, metrics (best at epoch 2)."""
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs)
    run = tmp_path / "run"
    save_model(model, run / "last.safetensors", name, kwargs, metadata={"moejet.epoch": "3", "moejet.step": "30"})
    config = {"variant": "paper", "data": {"dataset": "cifar100", "img_size": 32}, "schedule": {"epochs": 3},
              "optim": {"lr": 0.002, "layer_decay": 0.6}, "train": {"batch_size": 512}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    rows = [{"epoch": e, "val_top1": t1, "val_top5": t5} for e, t1, t5 in ((1, 40.0, 70.0), (2, 61.25, 88.5),
                                                                           (3, 60.5, 88.0))]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run, model.eval()


def test_models_built_with_a_range_export_with_timm(vit_kw, tmp_path):
    model = timm.create_model("vjetmoe_tiny_patch16_224", **vit_kw)  # timm raised ValueError on the range
    save_for_hf(model, tmp_path)
    args = json.loads((tmp_path / "config.json").read_text())["model_args"]
    assert args["moe_layers"] == [2, 3] and args["core_experts"] == 2


@pytest.mark.parametrize("name", ["vjetmoe_tiny_patch16_224", "cjetmoe_femto"])
def test_publish_out_round_trips_through_timm_local_dir(vit_kw, tiny_moe, tmp_path, capsys, name):
    kwargs = vit_kw if name.startswith("vjet") else tiny_moe("convnext")
    run, model = make_run(tmp_path, kwargs, name)
    out = tmp_path / "published"
    assert main(["publish", str(run), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    card = (out / "README.md").read_text()
    assert f"architecture: `{name}`" in card and "library_name: timm" in card
    assert "| published (last epoch) | 3 | 60.50 | 88.00 |" in card
    assert "| best epoch (selected on the val split; not published) | 2 | 61.25 | 88.50 |" in card
    assert "fine-tuned on: `cifar100` at 32 px, 3 epochs, global batch 512, lr 0.002" in card
    assert f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M" in card


def test_publish_a_recycled_file_names_its_source(vit_kw, tmp_path, capsys):
    model = timm.create_model("vjetmoe_tiny_patch16_224", **vit_kw)
    path = tmp_path / "model.safetensors"
    save_model(model, path, "vjetmoe_tiny_patch16_224", vit_kw, metadata={
        "moejet.recycle.predecessor": "vit_small_patch16_224", "moejet.recycle.strategy": "importance",
        "moejet.recycle.seed": "0"})
    assert main(["publish", str(path), "--out", str(tmp_path / "pub"), "--no-macs"]) == 0
    card = (tmp_path / "pub" / "README.md").read_text()
    assert "recycled from `vit_small_patch16_224` with strategy `importance` (seed 0)" in card
    assert "MACs" not in card and "## Results" not in card


def test_publish_repo_id_uploads_the_folder(vit_kw, tmp_path, capsys, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw["private"]))

        def upload_folder(self, repo_id, folder_path, **kw):
            from pathlib import Path

            files = sorted(p.name for p in Path(folder_path).iterdir())
            calls.append(("upload_folder", repo_id, files, (Path(folder_path) / "README.md").read_text()))
            return "https://huggingface.co/me/tiny/commit/abc"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    run, _ = make_run(tmp_path, vit_kw)
    assert main(["publish", str(run), "--repo-id", "me/tiny", "--private", "--token", "t0", "--no-macs"]) == 0
    assert calls[0] == ("token", "t0") and calls[1] == ("create_repo", "me/tiny", True)
    kind, repo, files, card = calls[2]
    assert (kind, repo, files) == ("upload_folder", "me/tiny", ["README.md", "config.json", "model.safetensors"])
    assert 'timm.create_model("hf-hub:me/tiny", pretrained=True)' in card
    assert "commit/abc" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["nowhere", "missing", "not_empty", "no_weights"])
def test_publish_bad_input_is_a_one_line_error(vit_kw, tmp_path, capsys, case):
    run, _ = make_run(tmp_path, vit_kw)
    out = tmp_path / "out"
    args = {
        "nowhere": ["publish", str(run)],
        "missing": ["publish", str(tmp_path / "nope"), "--out", str(out)],
        "not_empty": ["publish", str(run), "--out", str(run)],
        "no_weights": ["publish", str(tmp_path), "--out", str(out)],
    }[case]
    before = sorted(p.name for p in run.iterdir())
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moejet publish: error:") and len(err.splitlines()) == 1
    assert not out.exists() and sorted(p.name for p in run.iterdir()) == before
    expected = {"nowhere": "--repo-id", "missing": "does not exist", "not_empty": "not an empty directory",
                "no_weights": "has no last.safetensors"}[case]
    assert expected in err
