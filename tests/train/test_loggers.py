"""moejet.train.loggers: TensorBoard / W&B receive each epoch's metrics row, flattened; missing packages warn."""

from __future__ import annotations

import json
import sys
import types

import pytest

from moejet.train import train
from moejet.train.loggers import scalars, wandb_run_id

from ..helpers.runs import tiny_config


def test_scalars_flatten_routing_and_temperatures():
    row = {"epoch": 3, "train_loss": 1.5, "train_images": 64, "routing": {"blocks.2.mlp": {"core_share": 0.25,
           "low_experts": 1}}, "temperatures": {"blocks.2.mlp": {"dispatch": 0.9}}}
    assert scalars(row) == {"train_loss": 1.5, "routing/blocks.2.mlp/core_share": 0.25,
                            "routing/blocks.2.mlp/low_experts": 1.0, "temperature/blocks.2.mlp/dispatch": 0.9}


class FakeWandb(types.ModuleType):
    """Records what moejet hands to ``wandb``."""

    def __init__(self):
        super().__init__("wandb")
        self.inits, self.logged, self.finished = [], [], 0

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return types.SimpleNamespace(log=lambda values, step: self.logged.append((step, values)),
                                     finish=self.finish)

    def finish(self):
        self.finished += 1


def test_wandb_gets_every_epoch_row_and_one_run_id_across_resumes(tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    config = tiny_config(train={"wandb": True, "wandb_project": "jetpack"})
    run = tmp_path / "run"
    train(config, run, progress=False, stop_after=1)
    train(config, run, resume=True, progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [step for step, _ in fake.logged] == [1, 2] and fake.finished == 2
    for (step, values), row in zip(fake.logged, rows):
        assert values == {**scalars(row), "epoch": step}
        assert "routing/blocks.3.mlp/combine_entropy" in values
    assert [i["id"] for i in fake.inits] == [wandb_run_id(run)] * 2
    assert fake.inits[0]["project"] == "jetpack" and fake.inits[0]["resume"] == "allow"
    assert fake.inits[0]["config"]["model"]["name"] == "vjetmoe_tiny_patch16_224"


@pytest.mark.parametrize(("key", "package"), [("wandb", "wandb"), ("tensorboard", "tensorboard")])
def test_a_missing_logger_package_warns_and_the_run_goes_on(key, package, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    rows = train(tiny_config(train={key: True}, schedule={"epochs": 1}), tmp_path / "run", progress=False)
    assert len(rows) == 1
    assert (f"moejet train: warning: train.{key} is on but {package} is not installed" in capsys.readouterr().out)


def test_step_lines_every_n_steps_average_the_window(tmp_path, capsys):
    config = tiny_config(train={"log_every": 2, "batch_size": 8}, schedule={"epochs": 1},
                         data={"dataset": "synthetic-downstream:size=32,classes=4,per_class=5,val_per_class=2"})
    rows = train(config, tmp_path / "run", progress=False)  # 20 images at batch 8: steps of 8, 8, 4 images
    lines = [line for line in capsys.readouterr().out.splitlines() if " step " in line]
    assert [line.split()[5] for line in lines] == ["2/3", "3/3"]  # every 2 steps, and the epoch's last step
    losses = [float(line.split("loss ")[1].split()[0]) for line in lines]
    # the two windows (16 and 4 images) average to the epoch's train loss
    assert (16 * losses[0] + 4 * losses[1]) / 20 == pytest.approx(rows[0]["train_loss"], abs=1e-4)
    assert all(" per process)  data " in line and "%  peak rss " in line and line.endswith(" MiB") for line in lines)
    capsys.readouterr()
    train(tiny_config(train={"log_every": 0}, schedule={"epochs": 1}), tmp_path / "quiet", progress=False)
    assert " step " not in capsys.readouterr().out
