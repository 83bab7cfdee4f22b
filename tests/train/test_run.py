"""train.run and train.loop: whole runs, resume, torchrun, batch splitting, mixup draws, a NaN loss."""

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

import moejet  # noqa: F401  (registers the models)
from moejet.cli import main
from moejet.errors import UserError
from moejet.io.weights import build_from_checkpoint, read_metadata
from moejet.train import build, load_config, train
from moejet.train.evaluation import best_note
from moejet.train.state import Progress
from moejet.train.telemetry import routing_telemetry

from ..helpers.images import colour_folder
from ..helpers.runs import TRAIN_VIT, comparable, tiny_config, write_config
from ..helpers.subprocesses import torchrun

# ------------------------------------------------------------------------------------------- full runs


def test_two_epoch_run_learns_and_writes_every_artefact(tmp_path, capsys):
    data = colour_folder(tmp_path / "colours")
    config = tiny_config(data={"dataset": f"folder:{data}"}, optim={"lr": 3e-3}, train={"batch_size": 8})
    run = tmp_path / "run"
    metrics = train(config, run, progress=False)

    assert sorted(p.name for p in run.iterdir()) == [
        "best.safetensors", "checkpoint.json", "checkpoints", "classes.json", "config.yaml", "last.safetensors",
        "metrics.jsonl"]
    assert json.loads((run / "classes.json").read_text()) == {"dataset": "folder:colours", "label_names": [
        "c0", "c1", "c2"]}  # the folder's name, not its path
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows == json.loads(json.dumps(metrics))
    assert [r["epoch"] for r in rows] == [1, 2] and [r["step"] for r in rows] == [9, 18]
    for row in rows:
        assert {"train_loss", "val_top1", "val_top5", "lr", "images_per_s", "epoch_time_s", "wall_time_s"} <= set(row)
        assert set(row["temperatures"]) == {"blocks.2.mlp", "blocks.3.mlp"}
        assert set(row["temperatures"]["blocks.2.mlp"]) == {"dispatch", "combine"}
    assert rows[1]["wall_time_s"] > rows[0]["wall_time_s"]
    assert set(rows[-1]["routing"]) == {"blocks.2.mlp", "blocks.3.mlp"}  # telemetry on the 36 val images
    assert rows[-1]["val_top1"] > 60.0, rows  # chance is 33.3%
    assert rows[-1]["val_top5"] == 100.0  # 3 classes
    assert rows[-1]["lr"] == pytest.approx(3e-3 * 0.01)  # cosine ends at 1% of lr

    # the resolved config reloads to the same run
    assert load_config(run / "config.yaml") == config
    # last / best rebuild with the dataset's class count; their weights are the final model's
    model, name, kwargs = build_from_checkpoint(run / "last.safetensors")
    assert name == "vjetmoe_tiny_patch16_224" and kwargs["num_classes"] == 3 and kwargs["img_size"] == 32
    assert read_metadata(run / "last.safetensors")["moejet.epoch"] == "2"
    best_epoch = max(rows, key=lambda r: r["val_top1"])["epoch"]
    assert read_metadata(run / "best.safetensors")["moejet.epoch"] == str(best_epoch)
    assert {k: v.item() for k, v in model.state_dict().items() if k.endswith("temperature")} == pytest.approx(
        {f"{m}.{t}_temperature": v for m, temps in rows[-1]["temperatures"].items() for t, v in temps.items()})
    _, val_transform = build.build_transforms(config, model)
    val_images = [image for image, _ in build.build_dataset(config, "val", val_transform)]
    expected = routing_telemetry(model, [torch.stack(val_images[:20]), torch.stack(val_images[20:])])
    assert rows[-1]["routing"].keys() == expected.keys()
    for layer, stats in expected.items():
        assert rows[-1]["routing"][layer] == pytest.approx(stats, rel=1e-5), layer
    state = torch.load(run / "checkpoints" / "epoch-0002.state.pt", weights_only=True)
    assert state["epoch"] == 2 and state["step"] == 18
    assert {"optimizer", "scheduler", "scaler", "ema", "rng", "best_top1", "wall_time_s"} <= set(state)

    # moejet eval --run evaluates the last epoch by default and writes eval.json
    capsys.readouterr()
    assert main(["eval", "--run", str(run)]) == 0
    assert "top-1" in capsys.readouterr().out
    result = json.loads((run / "eval.json").read_text())
    assert result["top1"] == pytest.approx(rows[-1]["val_top1"]) and result["images"] == 36
    assert result["which"] == "last" and "note" not in result
    # the best epoch was chosen on the split it is scored on: its result names that split as it is
    note = "best epoch selected on the val split (the images of folder:colours/val): not a held-out result"
    assert best_note(f"folder:{data}") == note and "official test split" in best_note("cifar100")
    assert main(["eval", "--run", str(run), "--which", "best", "--out", str(tmp_path / "run_best.json")]) == 0
    assert capsys.readouterr().out.rstrip().endswith(f"[{note}]")
    assert json.loads((tmp_path / "run_best.json").read_text())["note"] == note
    # any checkpoint file on a config's dataset
    assert main(["eval", "--checkpoint", str(run / "best.safetensors"), "--config", str(run / "config.yaml"),
                 "--out", str(tmp_path / "best.json")]) == 0
    best = max(rows, key=lambda r: r["val_top1"])
    assert json.loads((tmp_path / "best.json").read_text())["top1"] == pytest.approx(best["val_top1"])


def test_routing_telemetry_leaves_training_untouched(tmp_path):
    config = tiny_config(variant="release", schedule={"epochs": 2, "warmup_epochs": 0})  # release: noise in eval
    off = train(tiny_config(variant="release", train={"telemetry_images": 0}), tmp_path / "off", progress=False)
    on = train(config, tmp_path / "on", progress=False)
    assert "routing" not in off[-1] and set(on[-1]["routing"]) == {"blocks.2.mlp", "blocks.3.mlp"}
    weights = [build_from_checkpoint(tmp_path / run / "last.safetensors")[0].state_dict() for run in ("off", "on")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_resume_continues_bit_exactly(tmp_path):
    # full recipe randomness: RandAugment, random erasing, mixup / cutmix, label smoothing, router noise, EMA
    config = tiny_config(
        augment={"auto_augment": "rand-m9-mstd0.5-inc1", "random_erasing": 0.25, "mixup": 0.8, "cutmix": 1.0,
                 "label_smoothing": 0.1, "scale": [0.5, 1.0], "hflip": 0.5},
        model={"drop_path_rate": 0.1}, train={"ema": True, "ema_decay": 0.9}, schedule={"warmup_epochs": 1},
    )
    straight = train(config, tmp_path / "straight", progress=False)
    first = train(config, tmp_path / "resumed", stop_after=1, progress=False)
    assert len(first) == 1 and read_metadata(tmp_path / "resumed" / "last.safetensors")["moejet.epoch"] == "1"
    resumed = train(run_dir=tmp_path / "resumed", resume=True, progress=False)

    assert comparable(resumed) == comparable(straight)
    assert {"val_top1_ema", "val_top5_ema"} <= set(straight[-1])
    a, b = load_file(tmp_path / "straight" / "last.safetensors"), load_file(tmp_path / "resumed" / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ema_a = torch.load(tmp_path / "straight" / "checkpoints" / "epoch-0002.state.pt", weights_only=True)["ema"]
    ema_b = torch.load(tmp_path / "resumed" / "checkpoints" / "epoch-0002.state.pt", weights_only=True)["ema"]
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    with pytest.raises(UserError, match="already holds a run: continue it with --resume"):
        train(config, tmp_path / "straight", progress=False)


# epoch 1 of 2 of tiny_config(model=SMALLEST_MODEL), written by `train(..., stop_after=1)` at commit 55bb35b, when
# a run's progress was a dict of counters: run directories written before `Progress` still resume
OLD_RUN = Path(__file__).parents[1] / "fixtures" / "run_before_progress"
SMALLEST_MODEL = {"name": "vjetmoe_tiny_patch16_224", "drop_path_rate": 0.0, "kwargs": {
    "patch_size": 8, "embed_dim": 16, "depth": 2, "num_heads": 2, "moe_layers": [1], "core_experts": 2,
    "univ_experts": 4}}


def test_a_run_directory_written_before_progress_resumes_as_a_straight_run(tmp_path):
    resumed = train(run_dir=shutil.copytree(OLD_RUN, tmp_path / "old"), resume=True, progress=False)
    straight = train(tiny_config(model=SMALLEST_MODEL), tmp_path / "straight", progress=False)

    # top-level numbers; the fixture's epoch came from another build, so floats may differ in their last bits
    timings = {"images_per_s", "epoch_time_s", "wall_time_s", "checkpoint_bytes"}
    numbers = lambda rows: [{k: v for k, v in row.items() if isinstance(v, (int, float)) and k not in timings}
                            for row in rows]
    assert [row["epoch"] for row in resumed] == [1, 2]
    assert numbers(resumed) == [pytest.approx(row, rel=1e-4) for row in numbers(straight)]
    assert read_metadata(tmp_path / "old" / "last.safetensors")["moejet.epoch"] == "2"
    # Progress is written as the same top-level keys the counters were
    state = lambda run, epoch: torch.load(run / "checkpoints" / f"epoch-{epoch:04d}.state.pt", weights_only=True)
    old, new = state(OLD_RUN, 1), state(tmp_path / "straight", 2)
    assert old.keys() == new.keys() and asdict(Progress()).keys() <= new.keys()
    assert Progress(**{k: new[k] for k in asdict(Progress())}) == Progress(epoch=2, step=8, best_top1=max(
        row["val_top1"] for row in straight), wall_time_s=new["wall_time_s"])


@pytest.mark.parametrize("processes", [2, 3])
def test_torchrun_processes_keep_the_global_batch(processes, tmp_path):
    # no per-process randomness left (no noise, dropout, mixup or crops), so 2 or 3 processes with micro-batches of
    # at most 2 must follow the same trajectory as 1 process x 8; on 3 processes the shares are unequal (3/3/2 in
    # the full steps, 2/1/1 in the last), weighted by their image counts
    sections = dict(model={"kwargs": {**TRAIN_VIT, "noise_std": 0.0}},
                    data={"dataset": "synthetic-downstream:size=32,classes=4,per_class=5,val_per_class=3"},
                    schedule={"epochs": 1})  # 20 images: global batches of 8, 8 and 4
    single = train(tiny_config(**sections), tmp_path / "single", progress=False)
    raw = yaml.safe_load((tmp_path / "single" / "config.yaml").read_text())
    raw["train"]["micro_batch_size"] = 2
    cfg = write_config(tmp_path / "ddp.yaml", raw)
    proc = torchrun("train", "--config", cfg, "--out", tmp_path / "ddp", nproc=processes)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = f"global batch 8 on {processes} process(es), micro-batches of up to 2 x 2 accumulation"
    assert proc.stdout.count(plan) == 1  # only rank 0 prints
    ddp = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["train_images"]) for r in ddp] == [(r["step"], r["train_images"]) for r in single] == [
        (3, 20)]
    assert ddp[0]["val_top1"] == pytest.approx(single[0]["val_top1"])
    assert ddp[0]["train_loss"] == pytest.approx(single[0]["train_loss"], rel=1e-5)
    a, b = load_file(tmp_path / "single" / "last.safetensors"), load_file(tmp_path / "ddp" / "last.safetensors")
    # Adam moves every weight by up to lr = 2e-3 per step; float summation order differs by ~1e-6
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


def test_every_image_every_epoch_and_a_partial_last_step_matches_one_big_batch(tmp_path):
    # 20 images at global batch 8: steps of 8, 8 and 4 images; micro 2 accumulates 4, 4 and 2 micro-batches
    sections = dict(model={"kwargs": {**TRAIN_VIT, "noise_std": 0.0}},
                    data={"dataset": "synthetic-downstream:size=32,classes=4,per_class=5,val_per_class=2"},
                    schedule={"epochs": 1})
    whole = train(tiny_config(**sections), tmp_path / "whole", progress=False)
    split = train(tiny_config(**sections, train={"batch_size": 8, "micro_batch_size": 2}), tmp_path / "split",
                  progress=False)
    for rows in (whole, split):
        assert [(r["step"], r["train_images"]) for r in rows] == [(3, 20)]
    assert split[0]["train_loss"] == pytest.approx(whole[0]["train_loss"], rel=1e-5)
    a, b = load_file(tmp_path / "whole" / "last.safetensors"), load_file(tmp_path / "split" / "last.safetensors")
    # gradients agree to ~1e-8, but Adam divides by sqrt(v) + 1e-8, so a weight whose gradient is ~1e-8 moves by a
    # visible fraction of lr = 2e-3 when the summation order changes (as in the DDP test above)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


def _timm_mixup(**kwargs):
    from timm.data import Mixup

    return Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, label_smoothing=0.1, num_classes=5,
                 **kwargs)


@pytest.mark.parametrize("seed", range(4))  # both mixup and cutmix draws
def test_one_mix_draw_per_step_reproduces_timm_on_the_whole_batch(seed):
    from moejet.data.mixup import apply_mix, draw_mix

    images, labels = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 4, 0])
    mixup = _timm_mixup()
    np.random.seed(seed)
    expected_images, expected_targets = mixup(images.clone(), labels)
    np.random.seed(seed)
    mix = draw_mix(mixup, images.shape)
    got_images, got_targets = apply_mix(images, labels, mixup, *mix)
    torch.testing.assert_close(got_images, expected_images)
    torch.testing.assert_close(got_targets, expected_targets)
    # an odd micro-batch: the middle image pairs with itself, so it stays as it is with its own smoothed target
    odd_images, odd_targets = apply_mix(images[:5], labels[:5], mixup, *mix)
    torch.testing.assert_close(odd_images[2], images[2])
    assert odd_targets[2].argmax() == 2 and odd_targets[2].sum().item() == pytest.approx(1.0)
    assert odd_targets[2].max().item() == pytest.approx(0.9 + 0.1 / 5)


def test_mix_is_drawn_once_per_optimizer_step(tmp_path, monkeypatch):
    import moejet.train.loop as loop

    draws = []
    original = loop.draw_mix
    monkeypatch.setattr(loop, "draw_mix", lambda *a: draws.append(original(*a)) or draws[-1])
    augment = {"mixup": 0.8, "cutmix": 1.0, "mixup_prob": 1.0, "label_smoothing": 0.1}
    config = tiny_config(augment=augment, train={"batch_size": 8, "micro_batch_size": 2}, schedule={"epochs": 1})
    rows = train(config, tmp_path / "run", progress=False)
    assert len(draws) == rows[-1]["step"] == 4  # 32 images / 8, each step of 4 micro-batches


def test_nan_loss_stops_with_the_last_good_checkpoint(nan_loss_at_step, tmp_path, monkeypatch):
    config = tiny_config()
    run = tmp_path / "run"
    nan_loss_at_step(6)  # 4 steps per epoch: step 2 of epoch 2
    with pytest.raises(UserError, match=r"non-finite at epoch 2, step 2 \(optimizer step 6\).*epoch 1"):
        train(config, run, progress=False)
    model, _, _ = build_from_checkpoint(run / "last.safetensors")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert read_metadata(run / "last.safetensors")["moejet.epoch"] == "1"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    # the run resumes once the cause is gone
    monkeypatch.undo()
    rows = train(run_dir=run, resume=True, progress=False)
    assert [r["epoch"] for r in rows] == [1, 2]


def test_grad_checkpointing_config_reaches_the_model(tmp_path, monkeypatch):
    seen = []
    real = build.set_grad_checkpointing
    monkeypatch.setattr(build, "set_grad_checkpointing", lambda model, on: seen.append(on) or real(model, on))
    config = tiny_config(train={"grad_checkpointing": True, "max_steps_per_epoch": 1}, schedule={"epochs": 1})
    train(config, tmp_path / "run", progress=False, verbose=False)
    assert seen == [True]
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["grad_checkpointing"] is True
    with pytest.raises(UserError, match="config key train.grad_checkpointing: Linear does not support"):
        build.set_grad_checkpointing(torch.nn.Linear(2, 2), True)
