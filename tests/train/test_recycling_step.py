"""train.recycling_step: model.init: recycle, the same as `moejet recycle` then model.init: checkpoint."""

import json

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file

import moejet  # noqa: F401  (registers the models)
from moejet.cli import main
from moejet.errors import UserError
from moejet.io.weights import save_model
from moejet.train import build, train
from moejet.train.config import config_from_dict

from ..helpers.runs import TRAIN_VIT, comparable, tiny_config, tiny_config_dict, write_config

# -------------------------------------------------------------------------------------- model.init: recycle

PRED_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 4, "num_heads": 2}  # twice tiny_config's width


@pytest.fixture
def successor():
    """The successor moejet train builds for tiny_config: TRAIN_VIT at 32 px, 4 classes, the config's variant."""
    return {**TRAIN_VIT, "img_size": 32, "num_classes": 4, "variant": "paper"}


@pytest.fixture
def predecessor_file(tmp_path):
    torch.manual_seed(0)
    dense = timm.create_model("vit_small_patch16_224", num_classes=10, **PRED_VIT)
    path = tmp_path / "pred" / "vit.safetensors"
    path.parent.mkdir()
    save_model(dense, path, "vit_small_patch16_224", {**PRED_VIT, "num_classes": 10})
    return path


def recycle_section(pred, **values):
    return {"predecessor": "vit_small_patch16_224", "predecessor_checkpoint": str(pred),
            "calib_data": "synthetic:size=32", "calib_images": 12, "batch_size": 6, "workers": 0, "seed": 3,
            **values}


def recycle_cli_argv(pred, out, successor):
    """The same recipe as recycle_section(pred) as a standalone `moejet recycle` command."""
    succ = []
    for k, v in successor.items():
        succ += ["--successor-arg", f"{k}={tuple(v) if isinstance(v, list) else v}"]
    return ["recycle", "--predecessor", "vit_small_patch16_224", "--predecessor-checkpoint", str(pred),
            "--successor", "vjetmoe_tiny_patch16_224", *succ, "--calib-data", "synthetic:size=32",
            "--calib-images", "12", "--batch-size", "6", "--workers", "0", "--seed", "3", "--device", "cpu",
            "--quiet", "--out", str(out)]


def test_init_recycle_equals_moejet_recycle_then_init_checkpoint(successor, tmp_path, predecessor_file, capsys):
    assert main(recycle_cli_argv(predecessor_file, tmp_path / "recycled", successor)) == 0
    steps = {"train": {"max_steps_per_epoch": 2}, "schedule": {"epochs": 1}}
    from_file = tiny_config(model={"init": "checkpoint",
                                   "init_checkpoint": str(tmp_path / "recycled" / "model.safetensors")}, **steps)
    one_command = tiny_config(model={"init": "recycle"}, recycle=recycle_section(predecessor_file), **steps)

    model_a, _, _ = build.build_model(from_file, num_classes=4)
    model_b, _, _ = build.build_model(one_command, num_classes=4, run_dir=tmp_path / "built")
    a, b = model_a.state_dict(), model_b.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    recycled = load_file(tmp_path / "recycled" / "model.safetensors")
    assert all(torch.equal(recycled[k], b[k]) for k in recycled)  # the head too: same class count

    # the whole run: the recycle step leaves the training RNG streams untouched, so both runs train identically
    rows_a = train(from_file, tmp_path / "run_a", progress=False, verbose=False)
    cfg = write_config(tmp_path / "c.yaml", yaml.safe_load(_dump(one_command)))
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run_b"), "--no-progress"]) == 0
    assert "recycling vit_small_patch16_224 into vjetmoe_tiny_patch16_224 (importance)" in capsys.readouterr().out
    rows_b = [json.loads(line) for line in (tmp_path / "run_b" / "metrics.jsonl").read_text().splitlines()]
    assert comparable(rows_a) == comparable(rows_b)
    last_a, last_b = (load_file(tmp_path / run / "last.safetensors") for run in ("run_a", "run_b"))
    assert all(torch.equal(last_a[k], last_b[k]) for k in last_a)

    run = tmp_path / "run_b"
    assert load_file(run / "recycle" / "model.safetensors").keys() == recycled.keys()
    report = json.loads((run / "recycle" / "recycle.json").read_text())
    expected = json.loads((tmp_path / "recycled" / "recycle.json").read_text())
    assert report["neuron_indices"] == expected["neuron_indices"]
    assert report["channel_indices"] == expected["channel_indices"]
    assert report["recipe"]["successor_kwargs"] == {**successor, "moe_layers": [2, 3]}
    assert report["recipe"]["recycle"]["predecessor_checkpoint"] == str(predecessor_file)
    from moejet.io.hub import describe

    assert describe(run / "last.safetensors", run)["recycle"] == {"predecessor": "vit_small_patch16_224",
                                                                 "strategy": "importance", "seed": "3",
                                                                 "from_hub": False, "dense_checkpoint": False}
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["init"] == "recycle" and saved["recycle"]["seed"] == 3
    assert "recycle" not in yaml.safe_load(_dump(from_file))  # other inits keep their config.yaml as before


def _dump(config):
    from moejet.train.config import dump_config

    return dump_config(config)


def test_init_recycle_runs_once_resume_needs_no_predecessor(tmp_path, predecessor_file, monkeypatch):
    import moejet.recycle.pipeline
    from moejet.train.recycling_step import recycle_into_run

    config = tiny_config(model={"init": "recycle"}, recycle=recycle_section(predecessor_file),
                         train={"max_steps_per_epoch": 2})
    straight = train(config, tmp_path / "straight", progress=False, verbose=False)
    train(config, tmp_path / "run", stop_after=1, progress=False, verbose=False)
    init_bytes = (tmp_path / "run" / "recycle" / "model.safetensors").read_bytes()
    predecessor_file.rename(tmp_path / "moved.safetensors")
    calls = []
    real = moejet.recycle.pipeline.recycle_sources
    for module in (moejet.recycle.pipeline, moejet.recycle):  # its home, and the package that re-exports it
        monkeypatch.setattr(module, "recycle_sources", lambda **kw: calls.append(kw) or real(**kw))

    resumed = train(run_dir=tmp_path / "run", resume=True, progress=False, verbose=False)
    assert calls == []
    assert comparable(resumed) == comparable(straight)
    assert (tmp_path / "run" / "recycle" / "model.safetensors").read_bytes() == init_bytes

    # a start killed before its first checkpoint is started again: the same recipe reuses RUN/recycle/
    name, kwargs = build.model_kwargs(config, 4)
    init = recycle_into_run(config, tmp_path / "run", name, kwargs)
    assert init == tmp_path / "run" / "recycle" / "model.safetensors"
    assert calls == []
    # ... a changed recipe recycles again (here: fails, the predecessor is gone, and nothing is overwritten)
    other = tiny_config(model={"init": "recycle"}, recycle=recycle_section(predecessor_file, seed=4))
    with pytest.raises(UserError, match=r"^recycling \(config section recycle\): checkpoint .* does not exist"):
        recycle_into_run(other, tmp_path / "run", name, kwargs)
    assert len(calls) == 1 and (tmp_path / "run" / "recycle" / "model.safetensors").read_bytes() == init_bytes


@pytest.mark.parametrize(("recycle", "message"), [
    ({"predecessor": None, "predecessor_checkpoint": None},
     "config key recycle.predecessor = None is invalid: model.init is 'recycle': name the dense predecessor"),
    ({"pretrained": True}, "config key recycle.pretrained = True is invalid: the predecessor needs weights from "
                           "exactly one source"),
    ({"strategy": "best"}, "config key recycle.strategy = 'best' is invalid: use one of importance, graph, uniform, "
                           "random, upcycle"),
    ({"calib_images": 0}, "config key recycle.calib_images = 0 is invalid: strategy importance needs calibration"),
    ({"query_norm": "copy"}, "config key recycle.query_norm = 'copy' is invalid: use one of inherit, fresh"),
    ({"variant": "mine"}, "config key recycle.variant = 'mine' is invalid: use one of paper, release"),
    ({"seeds": 1}, "unknown config key recycle.seeds: valid keys of recycle are"),
    ({"predecessor_kwargs": 3}, "config key recycle.predecessor_kwargs must be a mapping"),
])
def test_bad_recycle_section_is_a_one_line_error(tmp_path, capsys, predecessor_file, recycle, message):
    raw = tiny_config_dict()
    raw["model"]["init"] = "recycle"
    raw["recycle"] = recycle_section(predecessor_file, **recycle)
    cfg = write_config(tmp_path / "c.yaml", raw)
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"moejet train: error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_recycle_section_without_init_recycle_and_missing_files_are_errors(tmp_path, capsys, predecessor_file):
    raw = tiny_config_dict()
    raw["recycle"] = recycle_section(predecessor_file)
    with pytest.raises(UserError, match="the recycle section is read only with model.init=recycle"):
        config_from_dict(raw)
    raw["model"]["init"] = "recycle"
    raw["recycle"]["dense_checkpoint"] = str(tmp_path / "nope.safetensors")
    cfg = write_config(tmp_path / "c.yaml", raw)
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"moejet train: error: config key recycle.dense_checkpoint = "
                          f"'{tmp_path / 'nope.safetensors'}' is invalid: the file does not exist; check the path"), err
    assert err.count("\n") == 1 and not (tmp_path / "run").exists()
