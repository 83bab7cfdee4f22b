"""Any global batch on any number of processes: a 3-process run follows the 1-process run."""

import json
import subprocess
import sys

import pytest
import yaml
from safetensors.torch import load_file

from moejet.train import train


def test_three_processes_follow_one_process_with_unequal_shares(train_vit, tiny_config, write_config, moejet_env,
                                                                tmp_path):
    # 20 images at global batch 8: steps of 8, 8 and 4 images; on 3 processes the shares are 3/3/2 and 2/1/1, with
    # at most 2 images per micro-batch. No per-process randomness is left (no noise, dropout, mixup or crops).
    sections = dict(model={"kwargs": {**train_vit, "noise_std": 0.0}},
                    data={"dataset": "synthetic-downstream:size=32,classes=4,per_class=5,val_per_class=3"},
                    schedule={"epochs": 1}, train={"telemetry_images": 0})
    single = train(tiny_config(**sections), tmp_path / "single", progress=False, verbose=False)
    raw = yaml.safe_load((tmp_path / "single" / "config.yaml").read_text())
    raw["train"]["micro_batch_size"] = 2
    cfg = write_config(tmp_path / "three.yaml", raw)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "3", "-m", "moejet",
         "train", "--config", str(cfg), "--out", str(tmp_path / "three"), "--no-progress"],
        env=moejet_env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "global batch 8 on 3 process(es), micro-batches of up to 2 x 2 accumulation" in proc.stdout
    three = [json.loads(line) for line in (tmp_path / "three" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["train_images"]) for r in three] == [(r["step"], r["train_images"]) for r in single] == [
        (3, 20)]
    assert three[0]["train_loss"] == pytest.approx(single[0]["train_loss"], rel=1e-5)
    assert three[0]["val_top1"] == pytest.approx(single[0]["val_top1"])
    a, b = load_file(tmp_path / "single" / "last.safetensors"), load_file(tmp_path / "three" / "last.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
