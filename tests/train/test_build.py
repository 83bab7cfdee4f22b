"""train.build: model init, optimizer groups and layer decay, transforms, variants, grad checkpointing."""

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import moejet  # noqa: F401  (registers the models)
from moejet.errors import UserError
from moejet.io.weights import save_model
from moejet.train import build

from ..helpers.models import tiny_moe
from ..helpers.runs import TRAIN_VIT, tiny_config

# ------------------------------------------------------------------------------------------ model init


def test_init_checkpoint_reinitialises_only_a_mismatched_head(tmp_path):
    source = timm.create_model("vjetmoe_tiny_patch16_224", img_size=32, num_classes=10, **TRAIN_VIT)
    save_model(source, tmp_path / "recycled.safetensors", "vjetmoe_tiny_patch16_224",
               {"img_size": 32, "num_classes": 10, **TRAIN_VIT})
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
    with pytest.raises(UserError, match=r"timm's pretrained weights for vjetmoe_tiny_patch16_224 .*: pass a local "
                                        r"weights file with --set model.init=checkpoint --set model.init_checkpoint="
                                        r"FILE$"):  # moejet's models have no hosted weights: no file to name
        build.build_model(pretrained, num_classes=4)


def release_table(model, depth, moe_layers, layer_decay, weight_decay):
    """``{name: (lr scale, weight decay)}`` by the release's get_layer_depth (num_layers = depth + 2; stem 0,
    blocks.i i + 1, rest and every 'experts' / router parameter top; scale decay ** (num_layers - id - 1)) and the
    recipe's no-decay list, with the MoE block's norm2 and router query norm in the top group (paper App. B;
    docs/training.md)."""
    num_layers = depth + 2
    moe_blocks = {f"blocks.{i}." for i in moe_layers}
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
    model = timm.create_model("vjetmoe_tiny_patch16_224", img_size=32, num_classes=4, **TRAIN_VIT)
    table = optimizer_table(build.build_optimizer(config, model), model)
    expected = release_table(model, TRAIN_VIT["depth"], TRAIN_VIT["moe_layers"], 0.5, 0.05)
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
    model = timm.create_model("vjetmoe_tiny_patch16_224", img_size=32, num_classes=4, **TRAIN_VIT)
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
    model = timm.create_model("vjetmoe_tiny_patch16_224", img_size=32, num_classes=4, **TRAIN_VIT)
    config = tiny_config(optim={"layer_decay": 0.5})
    optimizer = build.build_optimizer(config, model)
    scheduler = build.build_scheduler(config, optimizer, steps_per_epoch=4)
    scheduler.step_update(3)
    lrs = {g["lr_scale"]: g["lr"] for g in optimizer.param_groups}
    assert lrs[0.5 ** 5] == pytest.approx(lrs[1.0] * 0.5 ** 5)


def test_eval_transform_is_resize_256_centre_crop_224_and_global_pool_reaches_the_model():
    from torchvision import transforms as T

    config = tiny_config(data={"img_size": 224, "crop_pct": 0.875},
                         model={"kwargs": {**TRAIN_VIT, "patch_size": 16, "global_pool": "avg"}})
    name, kwargs = build.model_kwargs(config, 4)
    model = build.create_model(name, kwargs, pretrained=False)
    assert kwargs["global_pool"] == "avg" and model.global_pool == "avg"
    _, val = build.build_transforms(config, model)
    resize, crop = (next(t for t in val.transforms if isinstance(t, cls)) for cls in (T.Resize, T.CenterCrop))
    assert resize.size == 256 and tuple(crop.size) == (224, 224)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    assert val(image).shape == (3, 224, 224)


def test_config_variant_sets_the_moe_model_switches():
    expected = {"paper": (False, "softmax", False, False), "release": (True, "entmax15", True, True)}
    for variant, values in expected.items():
        name, kwargs = build.model_kwargs(tiny_config(variant=variant), 4)
        layer = next(b.mlp for b in build.create_model(name, kwargs, pretrained=False).blocks
                     if hasattr(b.mlp, "combine"))
        got = (layer.key_l2norm, layer.combine, layer.noise_after_temperature, layer.noise_in_eval)
        assert got == values, variant
    dense = tiny_config(variant="release", model={"name": "vit_tiny_patch16_224", "kwargs": {"depth": 2}})
    assert "variant" not in build.model_kwargs(dense, 4)[1]


# ------------------------------------------------------------------------------------------ grad checkpointing

QUIET = {"noise_std": 0.0, "expert_dropout": 0.0, "expert_drop_rate": 0.0, "drop_path_rate": 0.0}
NOISY = {"expert_dropout": 0.4, "expert_drop_rate": 0.3, "drop_path_rate": 0.2}  # router noise: the default


def _grads(model, images, labels, seed):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    nn_loss = torch.nn.functional.cross_entropy(model(images), labels)
    nn_loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("randomness", [QUIET, NOISY], ids=["deterministic", "noise-and-drops-replayed"])
@pytest.mark.parametrize(("name", "moe_block"), [
    ("vjetmoe_tiny_patch16_224", "blocks.3.mlp"),
    ("cjetmoe_femto", "stages.3.blocks.0.mlp"),
])
def test_grad_checkpointing_recomputes_moe_blocks_to_the_same_gradients(name, moe_block, randomness):
    kwargs = {**TRAIN_VIT, "img_size": 32} if name.startswith("vjet") else tiny_moe("convnext", num_classes=5)
    torch.manual_seed(0)
    model = timm.create_model(name, **{"num_classes": 5, **kwargs}, **randomness).train()
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
