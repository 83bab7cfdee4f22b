"""train.strategy=fsdp (FSDP2): same trajectory as DDP, one full weights file, sharded optimizer state that resumes.

The multi-process tests launch ``torchrun`` with 2 gloo processes on the CPU (FSDP2 runs there in this torch).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

import moejet  # noqa: F401  (registers the models)
from moejet.train.config import dump_config
from test_train import TINY_VIT, tiny_config

REPO = Path(__file__).resolve().parents[1]
# 20 images, global batch 8 (2 processes x micro 2 x accumulation 2): 3 steps per epoch (8, 8, 4 images)
SECTIONS = dict(model={"kwargs": {**TINY_VIT, "noise_std": 0.0}},
                data={"dataset": "synthetic-downstream:size=32,classes=4,per_class=5,val_per_class=3"},
                train={"micro_batch_size": 2})


def write_run_config(path, **train_keys):
    config = tiny_config(**{**SECTIONS, "train": {**SECTIONS["train"], **train_keys}})
    path.write_text(dump_config(config))
    return path


def torchrun(*args):
    """``moejet *args`` under torchrun with 2 CPU processes; returns the finished process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "moejet",
         *map(str, args), "--no-progress"], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """2-epoch runs with 2 processes: ddp, fsdp (a recovery point every step), and fsdp stopped by a NaN at
    optimizer step 5 (epoch 2, after its recovery point at step 4), then resumed."""
    tmp = tmp_path_factory.mktemp("fsdp")
    done = {}
    for name, keys in (("ddp", {}), ("fsdp", {"strategy": "fsdp", "recovery_every": 1})):
        proc = torchrun("train", "--config", write_run_config(tmp / f"{name}.yaml", **keys), "--out", tmp / name)
        assert proc.returncode == 0, proc.stderr[-3000:]
        done[name] = tmp / name
    return done, tmp


def test_fsdp_follows_the_ddp_trajectory(runs):
    done, _ = runs
    ddp = [json.loads(line) for line in (done["ddp"] / "metrics.jsonl").read_text().splitlines()]
    fsdp = [json.loads(line) for line in (done["fsdp"] / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["train_images"]) for r in fsdp] == [(r["step"], r["train_images"]) for r in ddp] == [
        (3, 20), (6, 20)]
    assert [r["train_loss"] for r in fsdp] == pytest.approx([r["train_loss"] for r in ddp], rel=1e-5)
    assert [r["val_top1"] for r in fsdp] == pytest.approx([r["val_top1"] for r in ddp])
    a, b = load_file(done["ddp"] / "last.safetensors"), load_file(done["fsdp"] / "last.safetensors")
    assert sorted(a) == sorted(b)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
