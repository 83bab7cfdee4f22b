"""moejet.hub and `moejet publish`: timm / Hugging Face Hub folders that load back with identical outputs."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest
import timm
import torch
import yaml
from timm.models import save_for_hf

import moejet  # noqa: F401  (registers the models)
from moejet.cli import main
from moejet.data.config import data_settings
from moejet.io.weights import save_model
from moejet.train.config import load_config

from ..helpers.models import tiny_moe


@pytest.fixture(scope="module")
def vit_kw():
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
def test_publish_out_round_trips_through_timm_local_dir(vit_kw, tmp_path, capsys, name):
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


@pytest.mark.parametrize("header, origin", [
    ({"moejet.recycle.predecessor": "vit_small_patch16_224.augreg_in21k", "moejet.recycle.pretrained": "true",
      "moejet.recycle.dense_checkpoint": "false"},
     "the experts from timm's `vit_small_patch16_224.augreg_in21k`, downloaded from the Hugging Face Hub; the other "
     "layers cut from the same predecessor"),
    ({"moejet.recycle.predecessor": "vit_small_patch16_224.augreg_in21k", "moejet.recycle.pretrained": "false",
      "moejet.recycle.dense_checkpoint": "true"},
     "the experts from a local checkpoint (a `vit_small_patch16_224`); the other layers from a local checkpoint"),
    ({"moejet.recycle.predecessor": "vit_small_patch16_224"},  # a file written before the source was recorded
     "the experts from a `vit_small_patch16_224` (whether from the Hub or a local file is not recorded)"),
], ids=["hub", "local", "unrecorded"])
def test_publish_a_recycled_file_says_where_its_weights_came_from(vit_kw, tmp_path, capsys, header, origin):
    model = timm.create_model("vjetmoe_tiny_patch16_224", **vit_kw)
    path = tmp_path / "model.safetensors"
    save_model(model, path, "vjetmoe_tiny_patch16_224", vit_kw, metadata={
        "moejet.recycle.strategy": "importance", "moejet.recycle.seed": "0", **header})
    assert main(["publish", str(path), "--out", str(tmp_path / "pub"), "--no-macs"]) == 0
    card = (tmp_path / "pub" / "README.md").read_text()
    assert "- initial weights: recycled with strategy `importance` (seed 0): " + origin + "\n" in card
    assert "MACs" not in card and "## Results" not in card


def test_the_card_of_a_locally_recycled_run_names_no_hub_model_and_no_path(folder_run, tmp_path, capsys):
    """The issue's case: recycled from a local file named like timm's Hub model, fine-tuned on a folder."""
    out = tmp_path / "published"
    assert main(["publish", str(folder_run["run"]), "--out", str(out), "--no-macs"]) == 0
    card = (out / "README.md").read_text()
    assert "the experts from a local checkpoint (a `vit_small_patch16_224`)" in card
    assert "augreg" not in card and "Hugging Face Hub" not in card  # no Hub name: nothing was downloaded
    assert "fine-tuned on: `folder:my photos` at 32 px" in card
    for path in (folder_run["data"], folder_run["predecessor"], folder_run["run"], tmp_path, Path.home()):
        assert str(path) not in card
    assert not re.search(r"(?<![\w:/.])/[\w.-]+/", card), "an absolute path in the card"
    config = json.loads((out / "config.json").read_text())
    assert config["label_names"] == ["blue", "green", "red"]  # folder names, in label order (sorted)
    assert "- classes (3, `label_names` in config.json): `blue`, `green`, `red`" in card
    loaded = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert loaded.pretrained_cfg["label_names"] == ["blue", "green", "red"]
    run_config = load_config(folder_run["run"] / "config.yaml")
    settings = data_settings(run_config.data, loaded)  # the run's validation images'
    assert {k: loaded.pretrained_cfg[k] for k in settings} == {**settings, "input_size": (3, 32, 32)}


def test_published_files_are_shared_0644_and_0755_under_umask_022(vit_kw, tmp_path, capsys):
    run, _ = make_run(tmp_path, vit_kw)
    old = os.umask(0o022)
    try:
        assert main(["publish", str(run), "--out", str(tmp_path / "pub"), "--no-macs"]) == 0
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "pub", *(tmp_path / "pub").iterdir())}
    assert modes == {"pub": 0o755, "README.md": 0o644, "config.json": 0o644, "model.safetensors": 0o644}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pub", "run"]  # no temporary folder left


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
