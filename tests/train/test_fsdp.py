"""train.strategy=fsdp (FSDP2): same trajectory as DDP, one full weights file, sharded optimizer state that resumes.

The multi-process tests launch ``torchrun`` with 2 gloo processes on the CPU (FSDP2 runs there in this torch).
"""

import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import moejet  # noqa: F401  (registers the models)
from moejet.cli import main
from moejet.errors import UserError
from moejet.io.weights import build_from_checkpoint
from moejet.train import train
from moejet.train.checkpointing import read_pointer, sync_last
from moejet.train.config import dump_config
from moejet.train.distributed import shard_units

from ..helpers.runs import TRAIN_VIT, tiny_config
from ..helpers.subprocesses import torchrun

HELPERS = Path(__file__).resolve().parents[1] / "helpers"
# 20 images, global batch 8 (2 processes x micro 2 x accumulation 2): 3 steps per epoch (8, 8, 4 images)
DATA = {"dataset": "synthetic-downstream:size=32,classes=4,per_class=5,val_per_class=3"}


@pytest.fixture(scope="module")
def sections():
    return dict(model={"kwargs": {**TRAIN_VIT, "noise_std": 0.0}}, optim={"clip_grad": 0.05},  # clipping every step
                data=DATA, train={"micro_batch_size": 2})


@pytest.fixture(scope="module")
def write_run_config(sections):
    """``write_run_config(path, **train_keys)``: the 2-process run as a config file."""

    def write(path, **train_keys):
        config = tiny_config(**{**sections, "train": {**sections["train"], **train_keys}})
        path.write_text(dump_config(config))
        return path

    return write


@pytest.fixture(scope="module")
def torchrun2():
    """``torchrun2(*args, nan_at_step=None)``: ``moejet *args`` on 2 processes, with the NaN fault of
    tests/helpers/nan_loss_at_step.py at that optimizer step when given."""

    def run(*args, nan_at_step=None):
        program = ("-m", "moejet") if nan_at_step is None else (HELPERS / "nan_loss_at_step.py", nan_at_step)
        return torchrun(*args, program=program)

    return run


@pytest.fixture(scope="module")
def runs(write_run_config, torchrun2, tmp_path_factory):
    """2-epoch runs with 2 processes: ddp, fsdp (a recovery point every step), and fsdp stopped by a NaN at
    optimizer step 5 (epoch 2, after its recovery point at step 4), then resumed."""
    tmp = tmp_path_factory.mktemp("fsdp")
    done = {}
    for name, keys in (("ddp", {}), ("fsdp", {"strategy": "fsdp", "recovery_every": 1})):
        proc = torchrun2("train", "--config", write_run_config(tmp / f"{name}.yaml", **keys), "--out", tmp / name)
        assert proc.returncode == 0, proc.stderr[-3000:]
        done[name] = tmp / name
    killed = tmp / "killed"
    proc = torchrun2("train", "--config", write_run_config(tmp / "killed.yaml", strategy="fsdp", recovery_every=1),
                    "--out", killed, nan_at_step=5)
    assert proc.returncode != 0 and "non-finite at epoch 2, step 2" in proc.stdout + proc.stderr
    pointer = read_pointer(killed)  # stopped inside epoch 2: epoch 1 + its first step are committed, sharded
    assert (pointer["epoch"], pointer["recovery"]["step_in_epoch"]) == (1, 1)
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == [
        "epoch-0001.dcp", "epoch-0001.safetensors", "epoch-0001.state.pt", "recovery-0001-00000004.dcp",
        "recovery-0001-00000004.safetensors", "recovery-0001-00000004.state.pt"]
    proc = torchrun2("train", "--resume", killed)  # the cause is gone
    assert proc.returncode == 0, proc.stderr[-3000:]
    done["killed"] = killed
    return done, tmp


def test_fsdp_follows_the_ddp_trajectory(runs):
    done, _ = runs
    ddp = [json.loads(line) for line in (done["ddp"] / "metrics.jsonl").read_text().splitlines()]
    fsdp = [json.loads(line) for line in (done["fsdp"] / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["train_images"]) for r in fsdp] == [(r["step"], r["train_images"]) for r in ddp] == [
        (3, 20), (6, 20)]
    assert [r["train_loss"] for r in fsdp] == pytest.approx([r["train_loss"] for r in ddp], rel=1e-5)
    assert [r["val_top1"] for r in fsdp] == pytest.approx([r["val_top1"] for r in ddp])
    for a, b in zip(fsdp, ddp):  # routing telemetry runs on the sharded model too (every rank, rank 0 records)
        assert a["routing"].keys() == b["routing"].keys() == {"blocks.2.mlp", "blocks.3.mlp"}
        for layer in a["routing"]:
            assert a["routing"][layer] == pytest.approx(b["routing"][layer], rel=1e-4, abs=1e-6)
    a, b = load_file(done["ddp"] / "last.safetensors"), load_file(done["fsdp"] / "last.safetensors")
    assert sorted(a) == sorted(b)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_interrupted_fsdp_run_resumes_to_the_uninterrupted_weights(runs):
    done, _ = runs
    a, b = load_file(done["fsdp"] / "last.safetensors"), load_file(done["killed"] / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    pointer = read_pointer(done["killed"])
    assert pointer["epoch"] == 2 and "recovery" not in pointer and pointer["sharded"] == "checkpoints/epoch-0002.dcp"
    assert sorted(p.name for p in (done["killed"] / "checkpoints").iterdir()) == [
        "epoch-0002.dcp", "epoch-0002.safetensors", "epoch-0002.state.pt"]  # earlier shards dropped once superseded
    state = torch.load(done["killed"] / pointer["state"], weights_only=True)
    assert state["optimizer"] is None  # it lives in the .dcp directory


def test_fsdp_weights_are_one_full_file_that_eval_and_build_load(runs, tmp_path):
    done, _ = runs
    run = done["fsdp"]
    reference = build_from_checkpoint(done["ddp"] / "last.safetensors")[0].state_dict()
    model, name, kwargs = build_from_checkpoint(run / "last.safetensors")
    assert name == "vjetmoe_tiny_patch16_224" and kwargs["embed_dim"] == 32
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in reference.items()}
    assert load_file(run / "best.safetensors").keys() == reference.keys()
    assert main(["eval", "--run", str(run), "--out", str(tmp_path / "eval.json")]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert (result["images"], result["top1"]) == (12, pytest.approx(last["val_top1"]))
    assert result["loss"] == pytest.approx(last["val_loss"], rel=1e-5)


def test_a_fsdp_run_does_not_resume_under_ddp(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs[0]["fsdp"], run)
    with pytest.raises(UserError, match=r"was trained with train.strategy=fsdp: resume it with --set "
                                        r"train.strategy=fsdp \(its optimizer state cannot be moved to ddp\)$"):
        train(resume=True, run_dir=run, overrides=["train.strategy=ddp"], progress=False, verbose=False)


def test_uncommitted_shard_directories_are_dropped_and_a_missing_one_is_named(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs[0]["fsdp"], run)
    for leftover in ("epoch-0003.dcp", ".epoch-0003.dcp.partial", "recovery-0002-00000007.dcp"):
        (run / "checkpoints" / leftover).mkdir()
        (run / "checkpoints" / leftover / "__0_0.distcp").write_bytes(b"shard")
    sync_last(run)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "epoch-0002.dcp", "epoch-0002.safetensors", "epoch-0002.state.pt"]
    (run / "checkpoints" / "epoch-0002.dcp" / ".metadata").unlink()
    with pytest.raises(UserError, match=r"epoch-0002.dcp \(named by .*checkpoint.json\) is missing or incomplete: "
                                        r"restore it to resume the run$"):
        read_pointer(run)


def test_fsdp_needs_several_processes(sections, tmp_path):
    config = tiny_config(**{**sections, "train": {**sections["train"], "strategy": "fsdp"}})
    with pytest.raises(UserError, match=r"^train.strategy=fsdp shards the model over processes: launch with torchrun "
                                        r"--nproc_per_node N \(N > 1\), or use train.strategy=ddp for one process$"):
        train(config, tmp_path / "run", progress=False, verbose=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("keys", "what"), [
    ({"strategy": "zero"}, "use one of ddp, fsdp"),
    ({"strategy": "fsdp", "ema": True}, "fsdp does not keep an EMA of sharded weights"),
    ({"strategy": "fsdp", "amp": "fp16"}, "fsdp has no sharded fp16 grad scaler here"),
])
def test_unsupported_fsdp_combinations_are_config_errors(keys, what):
    with pytest.raises(UserError, match=rf"^config key train.strategy = '{keys['strategy']}' is invalid: {what}"):
        tiny_config(train=keys)


def test_the_shard_units_are_the_transformer_blocks_or_the_convnext_stages():
    with torch.device("meta"):
        vit = timm.create_model("vjetmoe_tiny_patch16_224", **TRAIN_VIT)
        convnext = timm.create_model("convnext_atto")
        mlp = torch.nn.Sequential(torch.nn.Linear(2, 2))
    assert shard_units(vit) == list(vit.blocks) and len(shard_units(vit)) == 4
    assert shard_units(convnext) == list(convnext.stages) and len(shard_units(convnext)) == 4
    assert shard_units(mlp) == []  # only the root is sharded


def test_fsdp_shards_convnext_stages_like_ddp(sections, torchrun2, tmp_path):
    kwargs = dict(dims=(8, 16, 24, 32), depths=(1, 1, 2, 2), moe_layers=(2, 3, 4, 5), core_experts=(0, 0, 2, 2),
                  univ_experts=(0, 0, 4, 4))
    weights = {}
    for strategy in ("ddp", "fsdp"):
        config = tiny_config(**{**sections, "model": {"name": "cjetmoe_femto", "kwargs": kwargs},
                                "train": {**sections["train"], "strategy": strategy}})
        (tmp_path / f"{strategy}.yaml").write_text(dump_config(config))
        proc = torchrun2("train", "--config", tmp_path / f"{strategy}.yaml", "--out", tmp_path / strategy)
        assert proc.returncode == 0, proc.stderr[-3000:]
        weights[strategy] = load_file(tmp_path / strategy / "last.safetensors")
    a, b = weights["ddp"], weights["fsdp"]
    assert sorted(a) == sorted(b)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
