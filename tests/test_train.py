import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

import moejet  # noqa: F401  (registers the models)
from moejet.io.weights import build_from_checkpoint, read_metadata, save_model
from moejet.cli import main
from moejet.errors import UserError
from moejet.train import build, load_config, train
from moejet.train.config import batch_plan, config_from_dict
from moejet.train.evaluation import BEST_NOTE
from moejet.train.telemetry import routing_telemetry

REPO = Path(__file__).resolve().parents[1]
TINY_VIT = {"patch_size": 8, "embed_dim": 32, "depth": 4, "num_heads": 2, "moe_layers": [2, 3], "core_experts": 4,
            "univ_experts": 8}
NO_AUGMENT = {"auto_augment": None, "mixup": 0.0, "cutmix": 0.0, "random_erasing": 0.0, "label_smoothing": 0.0,
              "scale": [1.0, 1.0], "hflip": 0.0, "color_jitter": 0.0}  # scale 1: the crop keeps the whole image
SYNTHETIC = "synthetic-downstream:size=32,classes=4,per_class=8,val_per_class=4"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: oversubscribed OpenMP threads make tiny ops 10x slower
    yield
    torch.set_num_threads(threads)


def tiny_config(**sections):
    raw = {
        "name": "tiny",
        "model": {"name": "vjetmoe_tiny_patch16_224", "kwargs": dict(TINY_VIT), "drop_path_rate": 0.0},
        "data": {"dataset": SYNTHETIC, "img_size": 32, "num_workers": 0},
        "augment": dict(NO_AUGMENT),
        "optim": {"lr": 2e-3, "layer_decay": 0.8},
        "schedule": {"epochs": 2, "warmup_epochs": 0},
        "train": {"batch_size": 8, "seed": 0, "deterministic": True},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    return config_from_dict(raw)


def write_config(path, config_dict):
    path.write_text(yaml.safe_dump(config_dict))
    return path


def colour_folder(root, per_class=24, val_per_class=12, size=32):
    """3 classes told apart by their dominant colour channel, under noise: learnable in a few steps."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c in range(3):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                pixels = rng.uniform(0, 120, (size, size, 3))
                pixels[..., c] += 120
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / f"c{c}" / f"{i}.png")
    return root


# ------------------------------------------------------------------------------------------- full runs


def test_two_epoch_run_learns_and_writes_every_artefact(tmp_path, capsys):
    data = colour_folder(tmp_path / "colours")
    config = tiny_config(data={"dataset": f"folder:{data}"}, optim={"lr": 3e-3}, train={"batch_size": 8})
    run = tmp_path / "run"
    metrics = train(config, run, progress=False)

    assert sorted(p.name for p in run.iterdir()) == [
        "best.safetensors", "checkpoint.json", "checkpoints", "config.yaml", "last.safetensors", "metrics.jsonl"]
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
    # the best epoch was chosen on the val (= official test) split: its result says so
    assert main(["eval", "--run", str(run), "--which", "best", "--out", str(tmp_path / "run_best.json")]) == 0
    assert capsys.readouterr().out.rstrip().endswith(f"[{BEST_NOTE}]")
    assert json.loads((tmp_path / "run_best.json").read_text())["note"] == BEST_NOTE
    # any checkpoint file on a config's dataset
    assert main(["eval", "--checkpoint", str(run / "best.safetensors"), "--config", str(run / "config.yaml"),
                 "--out", str(tmp_path / "best.json")]) == 0
    best = max(rows, key=lambda r: r["val_top1"])
    assert json.loads((tmp_path / "best.json").read_text())["top1"] == pytest.approx(best["val_top1"])


def comparable(rows):
    drop = {"images_per_s", "epoch_time_s", "wall_time_s"}
    return [{k: v for k, v in row.items() if k not in drop} for row in rows]


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


def test_torchrun_two_processes_keep_the_global_batch(tmp_path):
    # no per-process randomness left (no noise, dropout, mixup or crops), so 2 x 2 x accumulation 2 must
    # follow the same trajectory as 1 process x 8
    sections = dict(model={"kwargs": {**TINY_VIT, "noise_std": 0.0}},
                    data={"dataset": "synthetic-downstream:size=32,classes=4,per_class=5,val_per_class=3"},
                    schedule={"epochs": 1})  # 20 images: global batches of 8, 8 and 4
    single = train(tiny_config(**sections), tmp_path / "single", progress=False)
    raw = yaml.safe_load((tmp_path / "single" / "config.yaml").read_text())
    raw["train"]["micro_batch_size"] = 2
    cfg = write_config(tmp_path / "ddp.yaml", raw)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "moejet",
         "train", "--config", str(cfg), "--out", str(tmp_path / "ddp"), "--no-progress"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("global batch 8 = 2 x 2 x 2 accumulation") == 1  # only rank 0 prints
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
    sections = dict(model={"kwargs": {**TINY_VIT, "noise_std": 0.0}},
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
    from moejet.train.engine import apply_mix, draw_mix

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
    import moejet.train.engine as engine

    draws = []
    original = engine.draw_mix
    monkeypatch.setattr(engine, "draw_mix", lambda *a: draws.append(original(*a)) or draws[-1])
    augment = {"mixup": 0.8, "cutmix": 1.0, "mixup_prob": 1.0, "label_smoothing": 0.1}
    config = tiny_config(augment=augment, train={"batch_size": 8, "micro_batch_size": 2}, schedule={"epochs": 1})
    rows = train(config, tmp_path / "run", progress=False)
    assert len(draws) == rows[-1]["step"] == 4  # 32 images / 8, each step of 4 micro-batches


def test_nan_loss_stops_with_the_last_good_checkpoint(tmp_path):
    config = tiny_config(debug={"nan_at_step": 6})  # 4 steps per epoch: step 2 of epoch 2
    run = tmp_path / "run"
    with pytest.raises(UserError, match=r"non-finite at epoch 2, step 2 \(optimizer step 6\).*epoch 1"):
        train(config, run, progress=False)
    model, _, _ = build_from_checkpoint(run / "last.safetensors")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert read_metadata(run / "last.safetensors")["moejet.epoch"] == "1"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    # the run resumes once the cause is gone
    rows = train(run_dir=run, resume=True, overrides=["debug.nan_at_step=null"], progress=False)
    assert [r["epoch"] for r in rows] == [1, 2]


# ------------------------------------------------------------------------------------------ model init


def test_init_checkpoint_reinitialises_only_a_mismatched_head(tmp_path):
    source = timm.create_model("vjetmoe_tiny_patch16_224", img_size=32, num_classes=10, **TINY_VIT)
    save_model(source, tmp_path / "recycled.safetensors", "vjetmoe_tiny_patch16_224",
               {"img_size": 32, "num_classes": 10, **TINY_VIT})
    # header kwargs are the defaults: the config only names the file
    config = tiny_config(model={"kwargs": {}, "init": "checkpoint",
                                "init_checkpoint": str(tmp_path / "recycled.safetensors")})
    model, _, kwargs = build.build_model(config, num_classes=4)
    assert kwargs["moe_layers"] == [2, 3] and kwargs["num_classes"] == 4
    src, new = source.state_dict(), model.state_dict()
    assert new["head.weight"].shape == (4, 32)
    assert all(torch.equal(src[k], new[k]) for k in new if not k.startswith("head."))
    same, _, _ = build.build_model(config, num_classes=10)  # same classes: the head is kept too
    assert torch.equal(same.state_dict()["head.weight"], src["head.weight"])

    wrong = tiny_config(model={"name": "softmoe_vit_tiny_patch16_224", "kwargs": {}, "init": "checkpoint",
                               "init_checkpoint": str(tmp_path / "recycled.safetensors")})
    with pytest.raises(UserError, match="holds a 'vjetmoe_tiny_patch16_224' but model.name is"):
        build.build_model(wrong, num_classes=4)


def test_init_from_dense_timm_checkpoint_and_offline_pretrained(tmp_path):
    dense_kwargs = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
    dense = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=1000, **dense_kwargs)
    torch.save({"model": dense.state_dict()}, tmp_path / "dense.pth")
    config = tiny_config(model={"name": "vit_tiny_patch16_224", "kwargs": dense_kwargs, "init": "checkpoint",
                                "init_checkpoint": str(tmp_path / "dense.pth")})
    model, _, kwargs = build.build_model(config, num_classes=4)
    assert kwargs["img_size"] == 32  # position embeddings resampled from 8x8 to 4x4 patches by timm's filter
    assert torch.equal(model.state_dict()["blocks.1.mlp.fc1.weight"], dense.state_dict()["blocks.1.mlp.fc1.weight"])

    missing = tiny_config(model={"init": "checkpoint", "init_checkpoint": str(tmp_path / "nope.safetensors")})
    with pytest.raises(UserError, match="nope.safetensors does not exist"):
        build.build_model(missing, num_classes=4)
    pretrained = tiny_config(model={"init": "pretrained"})
    with pytest.raises(UserError, match="cannot load timm's pretrained weights for 'vjetmoe_tiny_patch16_224'"):
        build.build_model(pretrained, num_classes=4)


def release_table(model, depth, layer_decay, weight_decay):
    """``{name: (lr scale, weight decay)}`` by the release's get_layer_depth (num_layers = depth + 2; stem 0,
    blocks.i i + 1, rest and every 'experts' / router parameter top; scale decay ** (num_layers - id - 1)) and the
    recipe's no-decay list, with the MoE block's norm2 and router query norm in the top group (SPEC §4)."""
    num_layers = depth + 2
    moe_blocks = {f"blocks.{i}." for i in TINY_VIT["moe_layers"]}
    table = {}
    for name, param in model.named_parameters():
        if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
            layer = 0
        elif name.startswith("blocks."):
            layer = int(name.split(".")[1]) + 1
        else:
            layer = num_layers - 1
        if name.startswith(tuple(moe_blocks)) and (".mlp." in name or ".norm2." in name):
            layer = num_layers - 1
        no_decay = (param.ndim <= 1 or name.endswith(("bias", "queries", "temperature"))
                    or name in ("cls_token", "pos_embed"))
        table[name] = (layer_decay ** (num_layers - layer - 1), 0.0 if no_decay else weight_decay)
    return table


def optimizer_table(optimizer, model):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: (g.get("lr_scale", 1.0), g["weight_decay"]) for g in optimizer.param_groups
            for p in g["params"]}


def test_optimizer_groups_reproduce_the_release_per_parameter():
    config = tiny_config(optim={"layer_decay": 0.5, "weight_decay": 0.05})
    model = timm.create_model("vjetmoe_tiny_patch16_224", img_size=32, num_classes=4, **TINY_VIT)
    table = optimizer_table(build.build_optimizer(config, model), model)
    expected = release_table(model, TINY_VIT["depth"], 0.5, 0.05)
    assert table.keys() == expected.keys()
    for name, value in expected.items():
        assert table[name] == pytest.approx(value), name
    # spot checks of the rule itself
    assert table["blocks.3.mlp.core_experts.fc1_weight"] == (1.0, 0.05)
    assert table["blocks.2.mlp.core_experts.fc1_bias"] == (1.0, 0.0)  # 2-D expert bias: no decay
    assert table["blocks.2.norm2.weight"] == (1.0, 0.0) and table["blocks.1.norm2.weight"] == (0.5 ** 3, 0.0)
    assert table["norm.weight"] == (1.0, 0.0) and table["patch_embed.proj.weight"] == (0.5 ** 5, 0.05)
    # depth: MoE parameters scale with their block like the rest of it
    depth = optimizer_table(build.build_optimizer(
        tiny_config(optim={"layer_decay": 0.5, "weight_decay": 0.05, "moe_lr_scale": "depth"}), model), model)
    assert depth["blocks.2.mlp.queries"] == (0.5 ** 2, 0.0) and depth["blocks.3.mlp.univ_experts.fc2_weight"] == (
        0.5, 0.05)


def test_no_layer_decay_means_every_lr_scale_is_one_and_no_decay_groups_hold():
    model = timm.create_model("vjetmoe_tiny_patch16_224", img_size=32, num_classes=4, **TINY_VIT)
    optimizer = build.build_optimizer(tiny_config(optim={"layer_decay": None, "weight_decay": 0.05}), model)
    table = optimizer_table(optimizer, model)
    assert {scale for scale, _ in table.values()} == {1.0}
    assert all("lr_scale" not in g for g in optimizer.param_groups)
    for name in ("pos_embed", "cls_token", "blocks.3.mlp.queries", "blocks.3.mlp.dispatch_temperature",
                 "blocks.3.mlp.combine_temperature", "blocks.3.mlp.core_experts.fc1_bias",
                 "blocks.3.mlp.univ_experts.fc2_bias", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias"):
        assert table[name][1] == 0.0, name
    for name in ("blocks.0.attn.qkv.weight", "blocks.3.mlp.core_experts.fc1_weight", "head.weight"):
        assert table[name][1] == 0.05, name


def test_layer_decay_scales_the_scheduled_lr():
    model = timm.create_model("vjetmoe_tiny_patch16_224", img_size=32, num_classes=4, **TINY_VIT)
    config = tiny_config(optim={"layer_decay": 0.5})
    optimizer = build.build_optimizer(config, model)
    scheduler = build.build_scheduler(config, optimizer, steps_per_epoch=4)
    scheduler.step_update(3)
    lrs = {g["lr_scale"]: g["lr"] for g in optimizer.param_groups}
    assert lrs[0.5 ** 5] == pytest.approx(lrs[1.0] * 0.5 ** 5)


def test_eval_transform_is_resize_256_centre_crop_224_and_global_pool_reaches_the_model():
    from torchvision import transforms as T

    config = tiny_config(data={"img_size": 224, "crop_pct": 0.875},
                         model={"kwargs": {**TINY_VIT, "patch_size": 16, "global_pool": "avg"}})
    name, kwargs = build.model_kwargs(config, 4)
    model = build.create_model(name, kwargs, pretrained=False)
    assert kwargs["global_pool"] == "avg" and model.global_pool == "avg"
    _, val = build.build_transforms(config, model)
    resize, crop = (next(t for t in val.transforms if isinstance(t, cls)) for cls in (T.Resize, T.CenterCrop))
    assert resize.size == 256 and tuple(crop.size) == (224, 224)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    assert val(image).shape == (3, 224, 224)


def test_config_variant_sets_the_moe_model_switches():
    from moejet.variants import MODEL_SWITCHES

    for variant in ("paper", "release"):
        name, kwargs = build.model_kwargs(tiny_config(variant=variant), 4)
        layer = next(b.mlp for b in build.create_model(name, kwargs, pretrained=False).blocks
                     if hasattr(b.mlp, "combine"))
        for switch in MODEL_SWITCHES:
            if switch.name in ("key_l2norm", "combine", "noise_after_temperature", "noise_in_eval"):
                assert getattr(layer, switch.name) == getattr(switch, variant), (variant, switch.name)
    dense = tiny_config(variant="release", model={"name": "vit_tiny_patch16_224", "kwargs": {"depth": 2}})
    assert "variant" not in build.model_kwargs(dense, 4)[1]


# ---------------------------------------------------------------------------------------------- configs


def test_batch_plan_reaches_the_global_batch():
    config = tiny_config(train={"batch_size": 512, "micro_batch_size": 64})
    assert batch_plan(config, 1) == (64, 8) and batch_plan(config, 4) == (64, 2)
    assert batch_plan(tiny_config(train={"batch_size": 512}), 4) == (128, 1)
    with pytest.raises(UserError, match=r"batch_size = 512 is not divisible by train.micro_batch_size \(64\) x 3"):
        batch_plan(config, 3)
    assert config.lr == 2e-3 and tiny_config(optim={"lr": None}, train={"batch_size": 512}).lr == 4e-3 * 512 / 4096


CONFIG_FILES = sorted((REPO / "configs").rglob("*.yaml"))


def test_configs_exist_for_every_paper_table():
    names = {p.stem for p in CONFIG_FILES}
    assert len(names) >= 60
    for prefix in ("table1_", "table2_", "table3_", "table4_", "fig4_"):
        assert any(n.startswith(prefix) for n in names), prefix


@pytest.mark.parametrize("path", CONFIG_FILES, ids=[p.stem for p in CONFIG_FILES])
def test_every_config_validates_and_builds(path, tmp_path):
    config = load_config(path)
    assert config.name == path.stem
    name, kwargs = build.model_kwargs(build_config := _scratch(config), num_classes=10)
    with torch.device("meta"):
        model = build.create_model(name, kwargs, pretrained=False)
    assert model.num_classes == 10
    build.build_optimizer(config, model)
    train_tf, val_tf = build.build_transforms(config, model)
    assert train_tf is not None and val_tf is not None and build.build_loss(config) is not None
    micro, accum = batch_plan(config, world_size=1)
    assert micro * accum == config.train.batch_size
    if config.model.init == "recycle":  # the recipe's predecessor fits this successor (weights aside)
        from moejet.recycle.api import check_pair

        r = config.recycle
        with torch.device("meta"):
            predecessor = timm.create_model(r.predecessor, **r.predecessor_kwargs)
        pair = check_pair(predecessor, model, r.strategy, dense=r.dense_checkpoint is not None)
        assert pair.moe_blocks or config.model.name == "convnext_femto_d18"
    if config.data.dataset.startswith("synthetic"):
        assert build.build_dataset(build_config, "val", val_tf).num_classes > 1
    else:  # no data on disk: the documented error, naming where it looked
        empty = _with_root(config, tmp_path)
        with pytest.raises(UserError, match="not found"):
            build.build_dataset(empty, "val", val_tf)


def _scratch(config):
    from dataclasses import replace

    return replace(config, model=replace(config.model, init="scratch", init_checkpoint=None))


def _with_root(config, root):
    from dataclasses import replace

    return replace(config, data=replace(config.data, root=str(root)))


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(("override", "message"), [
    ("optim.lrr=1", "unknown config key optim.lrr: valid keys of optim are"),
    ("trian.seed=1", "unknown config key trian: valid keys of the config are"),
    ("train.batch_size=abc", "config key train.batch_size must be an integer, got 'abc'"),
    ("augment.mixup=[1]", "config key augment.mixup must be a number, got [1]"),
    ("train.deterministic=3", "config key train.deterministic must be true or false, got 3"),
    ("schedule.warmup_epochs=5", "config key schedule.warmup_epochs = 5 is invalid: must be in [0, schedule.epochs=2)"),
    ("train.amp=fp8", "config key train.amp = 'fp8' is invalid: use one of auto, none, bf16, fp16"),
    ("model.init=checkpoint", "config key model.init_checkpoint = None is invalid: model.init is 'checkpoint'"),
    ("train.micro_batch_size=3", "config key train.micro_batch_size = 3 is invalid: must divide train.batch_size=8"),
    ("optim", "override 'optim' is not of the form section.key=value"),
    ("model.kwargs.img_size=48", "config key model.kwargs.img_size = 48 differs from data.img_size = 32: set them "
                                 "equal (or drop model.kwargs.img_size)"),
])
def test_bad_config_is_a_one_line_error_naming_the_key(tmp_path, capsys, override, message):
    cfg = write_config(tmp_path / "c.yaml", yaml.safe_load(_tiny_yaml()))
    assert main(["train", "--config", str(cfg), "--set", override, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"moejet train: error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def _tiny_yaml():
    from moejet.train.config import dump_config

    return dump_config(tiny_config())


def test_missing_data_and_bad_runs_are_documented_errors(tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", yaml.safe_load(_tiny_yaml()))
    argv = ["train", "--config", str(cfg), "--out", str(tmp_path / "run"), "--set", "data.dataset=cifar100",
            "--set", f"data.root={tmp_path / 'nowhere'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"moejet train: error: cifar100 not found in {tmp_path / 'nowhere'}"), err
    assert not (tmp_path / "run").exists()
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "is not a resumable run directory" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file" in capsys.readouterr().err
    assert main(["train", "--config", str(cfg), "--print-config", "--set", "optim.lr=null"]) == 0
    assert "lr: 7.8125e-06" in capsys.readouterr().out  # 4e-3 * 8 / 4096, resolved into the config


# -------------------------------------------------------------------------------------- model.init: recycle

PRED_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 4, "num_heads": 2}  # twice TINY_VIT's width
# the successor moejet train builds for tiny_config on SYNTHETIC: TINY_VIT at 32 px, 4 classes, the config's variant
SUCCESSOR = {**TINY_VIT, "img_size": 32, "num_classes": 4, "variant": "paper"}


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


def recycle_cli_argv(pred, out):
    """The same recipe as recycle_section(pred) as a standalone `moejet recycle` command."""
    succ = []
    for k, v in SUCCESSOR.items():
        succ += ["--successor-arg", f"{k}={tuple(v) if isinstance(v, list) else v}"]
    return ["recycle", "--predecessor", "vit_small_patch16_224", "--predecessor-checkpoint", str(pred),
            "--successor", "vjetmoe_tiny_patch16_224", *succ, "--calib-data", "synthetic:size=32",
            "--calib-images", "12", "--batch-size", "6", "--workers", "0", "--seed", "3", "--device", "cpu",
            "--quiet", "--out", str(out)]


def test_init_recycle_equals_moejet_recycle_then_init_checkpoint(tmp_path, predecessor_file, capsys):
    assert main(recycle_cli_argv(predecessor_file, tmp_path / "recycled")) == 0
    steps = {"debug": {"max_steps_per_epoch": 2}, "schedule": {"epochs": 1}}
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
    assert report["recipe"]["successor_kwargs"] == {**SUCCESSOR, "moe_layers": [2, 3]}
    assert report["recipe"]["recycle"]["predecessor_checkpoint"] == str(predecessor_file)
    from moejet.io.hub import describe

    assert describe(run / "last.safetensors", run)["recycle"] == {"predecessor": "vit_small_patch16_224",
                                                                 "strategy": "importance", "seed": "3"}
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
                         debug={"max_steps_per_epoch": 2})
    straight = train(config, tmp_path / "straight", progress=False, verbose=False)
    train(config, tmp_path / "run", stop_after=1, progress=False, verbose=False)
    init_bytes = (tmp_path / "run" / "recycle" / "model.safetensors").read_bytes()
    predecessor_file.rename(tmp_path / "moved.safetensors")
    calls = []
    real = moejet.recycle.pipeline.recycle_sources
    monkeypatch.setattr(moejet.recycle.pipeline, "recycle_sources", lambda **kw: calls.append(kw) or real(**kw))

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
    ({"query_norm": "copy"}, "config key recycle.query_norm = 'copy' is invalid: use one of inherit, fresh or null"),
    ({"variant": "mine"}, "config key recycle.variant = 'mine' is invalid: use one of paper, release or null"),
    ({"seeds": 1}, "unknown config key recycle.seeds: valid keys of recycle are"),
    ({"predecessor_kwargs": 3}, "config key recycle.predecessor_kwargs must be a mapping"),
])
def test_bad_recycle_section_is_a_one_line_error(tmp_path, capsys, predecessor_file, recycle, message):
    raw = yaml.safe_load(_tiny_yaml())
    raw["model"]["init"] = "recycle"
    raw["recycle"] = recycle_section(predecessor_file, **recycle)
    cfg = write_config(tmp_path / "c.yaml", raw)
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"moejet train: error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_recycle_section_without_init_recycle_and_missing_files_are_errors(tmp_path, capsys, predecessor_file):
    raw = yaml.safe_load(_tiny_yaml())
    raw["recycle"] = recycle_section(predecessor_file)
    with pytest.raises(UserError, match="the recycle section is read only with model.init=recycle"):
        config_from_dict(raw)
    raw["model"]["init"] = "recycle"
    raw["recycle"]["dense_checkpoint"] = str(tmp_path / "nope.safetensors")
    cfg = write_config(tmp_path / "c.yaml", raw)
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moejet train: error: recycling (config section recycle): ") and "nope.safetensors" in err
    assert err.count("\n") == 1 and not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------ grad checkpointing

TINY_CNX = {"dims": (8, 16, 32, 64), "depths": (1, 1, 2, 1), "moe_layers": (3, 4), "core_experts": (0, 0, 2, 2),
            "univ_experts": (0, 0, 4, 4)}
QUIET = {"noise_std": 0.0, "expert_dropout": 0.0, "expert_drop_rate": 0.0, "drop_path_rate": 0.0}
NOISY = {"expert_dropout": 0.4, "expert_drop_rate": 0.3, "drop_path_rate": 0.2}  # router noise: the default


def _grads(model, images, labels, seed):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    nn_loss = torch.nn.functional.cross_entropy(model(images), labels)
    nn_loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("randomness", [QUIET, NOISY], ids=["deterministic", "noise-and-drops-replayed"])
@pytest.mark.parametrize(("name", "kwargs", "moe_block"), [
    ("vjetmoe_tiny_patch16_224", {**TINY_VIT, "img_size": 32}, "blocks.3.mlp"),
    ("cjetmoe_femto", TINY_CNX, "stages.3.blocks.0.mlp"),
])
def test_grad_checkpointing_recomputes_moe_blocks_to_the_same_gradients(name, kwargs, moe_block, randomness):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5, **kwargs, **randomness).train()
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    calls = []
    model.get_submodule(moe_block).register_forward_pre_hook(lambda *args: calls.append(1))

    plain = _grads(model, images, labels, seed=7)
    assert len(calls) == 1
    build.set_grad_checkpointing(model, True)
    checkpointed = _grads(model, images, labels, seed=7)
    assert len(calls) == 3  # forward, then the recomputation in the backward pass
    assert plain.keys() == checkpointed.keys() and len(plain) == len(list(model.parameters()))
    for key in plain:
        torch.testing.assert_close(checkpointed[key], plain[key], rtol=0, atol=1e-6, msg=key)


def test_grad_checkpointing_config_reaches_the_model(tmp_path, monkeypatch):
    seen = []
    real = build.set_grad_checkpointing
    monkeypatch.setattr(build, "set_grad_checkpointing", lambda model, on: seen.append(on) or real(model, on))
    config = tiny_config(train={"grad_checkpointing": True}, debug={"max_steps_per_epoch": 1},
                         schedule={"epochs": 1})
    train(config, tmp_path / "run", progress=False, verbose=False)
    assert seen == [True]
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["grad_checkpointing"] is True
    with pytest.raises(UserError, match="config key train.grad_checkpointing: Linear does not support"):
        build.set_grad_checkpointing(torch.nn.Linear(2, 2), True)
