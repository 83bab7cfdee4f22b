"""models: parameter counts, defaults, checkpoint compatibility, features, variants, bad kwargs."""

import json

import pytest
import timm
import torch

import moejet  # noqa: F401  (registers the models)
from moejet.analysis.cost import count_macs, count_params, meta_param_count, model_cost
from moejet.layers import SoftMoE, SpheroMoE
from moejet.models import MODEL_NAMES, moe_modules

from ..helpers.models import TINY_CONVNEXT, TINY_VIT, tiny_moe


@pytest.mark.parametrize(
    ("name", "kwargs", "paper_millions"),
    [
        ("vjetmoe_tiny_patch16_224", {}, 265),
        ("vjetmoe_small_patch16_224", {}, 1058),
        ("softmoe_vit_tiny_patch16_224", {}, 354),
        ("softmoe_vit_small_patch16_224", {}, 1412),
        ("vjetmoe_tiny_patch16_224", dict(moe_layers=range(10, 12)), 92),
        ("vjetmoe_tiny_patch16_224", dict(moe_layers=range(8, 12)), 179),
        ("vjetmoe_tiny_patch16_224", dict(moe_layers=range(4, 12)), 352),
        ("vjetmoe_tiny_patch16_224", dict(core_experts=32, univ_experts=64), 89),
        ("vjetmoe_tiny_patch16_224", dict(core_experts=64, univ_experts=128), 175),
    ],
)
def test_param_counts_match_paper_table4(name, kwargs, paper_millions):
    assert meta_param_count(name, **kwargs) / 1e6 == pytest.approx(paper_millions, rel=0.01)


def test_every_registered_model_builds_and_runs_tiny():
    for name in MODEL_NAMES:
        kwargs = dict(TINY_CONVNEXT) if "conv" in name or "cjet" in name else dict(TINY_VIT)
        if name == "cjetmoe_femto":
            kwargs.update(moe_layers=(3, 4), core_experts=(0, 0, 2, 2), univ_experts=(0, 0, 4, 4))
        elif name.startswith("softmoe"):
            kwargs.update(moe_layers=(2, 3), num_experts=6)
        elif "moe" in name:
            kwargs.update(moe_layers=(2, 3), core_experts=2, univ_experts=4)
        model = timm.create_model(name, **kwargs)
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        layers = moe_modules(model)
        assert sorted(layers) == sorted(
            [] if name == "convnext_femto_d18" else
            ["stages.2.blocks.1.mlp", "stages.3.blocks.0.mlp"] if name == "cjetmoe_femto" else
            ["blocks.2.mlp", "blocks.3.mlp"]), name
        for layer in layers.values():  # the expert counts asked for, not the full-size defaults
            if name.startswith("softmoe"):
                assert isinstance(layer, SoftMoE) and layer.num_experts == 6, name
            else:
                assert isinstance(layer, SpheroMoE) and (layer.num_core, layer.num_univ) == (2, 4), name


def test_default_moe_blocks_are_second_half():
    with torch.device("meta"):
        model = timm.create_model("vjetmoe_tiny_patch16_224")
        femto = timm.create_model("cjetmoe_femto")
    assert model.moe_layers == tuple(range(6, 12))
    assert list(moe_modules(model)) == [f"blocks.{i}.mlp" for i in range(6, 12)]
    assert femto.moe_layers == tuple(range(9, 18))
    layers = moe_modules(femto)
    assert [layers[f"stages.2.blocks.{i}.mlp"].num_core for i in range(3, 9)] == [98] * 6
    assert [layers[f"stages.3.blocks.{i}.mlp"].num_univ for i in range(3)] == [48] * 3
    assert "stages.2.blocks.2.mlp" not in layers


def test_softmoe_models_use_full_experts():
    with torch.device("meta"):
        model = timm.create_model("softmoe_vit_tiny_patch16_224")
    layer = model.blocks[6].mlp
    assert isinstance(layer, SoftMoE) and layer.num_experts == 197 and layer.experts.hidden_dim == 768
    assert not isinstance(model.blocks[5].mlp, (SoftMoE, SpheroMoE))


def test_dense_vit_checkpoint_loads_into_vjetmoe(tmp_path):
    dense = timm.create_model("vit_tiny_patch16_224", **TINY_VIT)
    path = tmp_path / "vit.pth"
    torch.save(dense.state_dict(), path)
    state = torch.load(path, weights_only=True)
    moe = timm.create_model("vjetmoe_tiny_patch16_224", **TINY_VIT, moe_layers=(2, 3), core_experts=2, univ_experts=4)
    result = moe.load_state_dict(state, strict=False)
    assert sorted(result.unexpected_keys) == sorted(
        f"blocks.{i}.mlp.{fc}.{p}" for i in (2, 3) for fc in ("fc1", "fc2") for p in ("weight", "bias")
    )
    assert all(k.startswith(("blocks.2.mlp.", "blocks.3.mlp.")) for k in result.missing_keys)
    assert len(result.missing_keys) == 2 * 13  # queries, query_norm (2), temperatures (2), 2 banks x 4 tensors
    moe_state = moe.state_dict()
    for key, value in state.items():
        if key in moe_state:
            assert torch.equal(moe_state[key], value), key


def test_convnext_d18_and_cjetmoe_share_dense_keys():
    dense = timm.create_model("convnext_femto_d18", **TINY_CONVNEXT)
    moe = timm.create_model("cjetmoe_femto", **TINY_CONVNEXT, moe_layers=(3, 4), core_experts=(0, 0, 2, 2),
                            univ_experts=(0, 0, 4, 4))
    dense_keys = set(dense.state_dict())
    moe_keys = set(moe.state_dict())
    moe_mlp = ("stages.2.blocks.1.mlp.", "stages.3.blocks.0.mlp.")
    assert {k for k in dense_keys - moe_keys} == {k for k in dense_keys if k.startswith(moe_mlp)}
    assert all(k.startswith(moe_mlp) for k in moe_keys - dense_keys)


def test_convnext_moe_block_equals_flattened_tokens():
    moe = timm.create_model("cjetmoe_femto", **TINY_CONVNEXT, moe_layers=(3,), core_experts=2,
                            univ_experts=4).eval()
    layer = moe.stages[2].blocks[1].mlp
    seen = {}
    layer.register_forward_hook(lambda m, i, o: seen.update(x=i[0], y=o))
    moe(torch.randn(2, 3, 32, 32))
    x, y = seen["x"], seen["y"]
    assert x.ndim == 4  # (b, h, w, d), channels-last inside the ConvNeXt block
    torch.testing.assert_close(y, layer(x.flatten(1, 2)).reshape(x.shape))


def test_no_weight_decay_lists_router_queries_and_temperatures():
    model = timm.create_model("vjetmoe_tiny_patch16_224", **TINY_VIT, moe_layers=(3,), core_experts=2,
                              univ_experts=4)
    names = model.no_weight_decay()
    assert {"blocks.3.mlp.queries", "blocks.3.mlp.dispatch_temperature", "pos_embed"} <= names
    assert "blocks.3.mlp.core_experts.fc1_weight" not in names


def test_timm_kwargs_pass_through():
    model = timm.create_model("vjetmoe_tiny_patch16_224", **dict(TINY_VIT, num_classes=7), global_pool="avg",
                              drop_path_rate=0.1, moe_layers=(3,), core_experts=2, univ_experts=4, combine="entmax15",
                              key_l2norm=True, expert_drop_rate=0.1)
    assert model.global_pool == "avg" and model.head.out_features == 7
    layer = model.blocks[3].mlp
    assert layer.combine == "entmax15" and layer.key_l2norm and layer.expert_drop_rate == 0.1


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("vjetmoe_tiny_patch16_224", dict(moe_layers=(3, 4)), "MoE block index 4 is outside the model's 4 blocks"),
        ("vjetmoe_tiny_patch16_224", dict(core_experts=0, univ_experts=0), "at least one expert"),
        ("vjetmoe_tiny_patch16_224", dict(univ_factor=0.001), "univ_factor"),
        ("vjetmoe_tiny_patch16_224", dict(moe_type="switch"), "moe_type must be"),
        ("vjetmoe_tiny_patch16_224", dict(num_experts=8), "num_experts is for moe_type='soft'"),
        ("cjetmoe_femto", dict(moe_layers=(4,), core_experts=(1, 2)), "one value per stage"),
        ("cjetmoe_femto", dict(moe_layers=(4,), conv_mlp=True), "conv_mlp=False"),
    ],
)
def test_bad_model_arguments_raise(name, kwargs, message):
    base = TINY_CONVNEXT if name == "cjetmoe_femto" else TINY_VIT
    with pytest.raises(ValueError, match=message):
        timm.create_model(name, **{**base, **kwargs})


def test_macs_split_routing_from_experts():
    model = timm.create_model("vjetmoe_tiny_patch16_224", **TINY_VIT, moe_layers=(3,), core_experts=2,
                              univ_experts=4)
    macs, routing = count_macs(model, (3, 32, 32))
    n, slots, d = 17, 6, 32  # 16 patches + cls token
    assert routing == 3 * n * slots * d  # logits, dispatch, combine
    dense = timm.create_model("vit_tiny_patch16_224", **TINY_VIT)
    dense_macs, dense_routing = count_macs(dense, (3, 32, 32))
    assert dense_routing == 0
    dense_mlp = n * 2 * d * 4 * d
    experts = 2 * 2 * d * 4 * d + 4 * 2 * d * d  # one slot per expert
    assert macs - routing == dense_macs - dense_mlp + experts


def test_recycled_file_loads_through_timm_pretrained_overlay(tmp_path):
    from moejet.io.weights import save_model

    kwargs = dict(TINY_VIT, moe_layers=(3,), core_experts=2, univ_experts=4)
    source = timm.create_model("vjetmoe_tiny_patch16_224", **kwargs)
    save_model(source, tmp_path / "model.safetensors", "vjetmoe_tiny_patch16_224", kwargs)
    loaded = timm.create_model("vjetmoe_tiny_patch16_224", pretrained=True, **kwargs,
                               pretrained_cfg_overlay=dict(file=str(tmp_path / "model.safetensors"), num_classes=10))
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_models_command_rejects_unknown_names(capsys):
    from moejet.cli import main

    assert main(["models", "vjetmoe_nonexistent"]) == 2
    assert "unknown model 'vjetmoe_nonexistent': see `moejet models`" in capsys.readouterr().err


@pytest.mark.parametrize(("name", "family"), [("vjetmoe_tiny_patch16_224", "vit"), ("cjetmoe_femto", "convnext")])
def test_meta_param_count_is_the_built_models(name, family):
    kwargs = tiny_moe(family)
    assert meta_param_count(name, **kwargs) == count_params(timm.create_model(name, **kwargs))


def test_models_command_counts_params_and_measures_macs_only_when_asked(capsys):
    from moejet.cli import main

    assert main(["models", "--json", "convnext_femto_d18"]) == 0
    params = count_params(timm.create_model("convnext_femto_d18"))
    assert json.loads(capsys.readouterr().out) == [{"name": "convnext_femto_d18", "params": params}]
    assert main(["models", "--macs", "--json", "convnext_femto_d18"]) == 0
    assert json.loads(capsys.readouterr().out) == [model_cost("convnext_femto_d18").as_dict()]


@pytest.mark.parametrize("name", ["vjetmoe_tiny_patch16_224", "cjetmoe_femto"])
def test_features_only_and_forward_intermediates_run_the_moe_blocks(name, tmp_path):
    from moejet.io.weights import save_model

    if name == "cjetmoe_femto":
        kwargs = dict(TINY_CONVNEXT, moe_layers=(3, 4), core_experts=(0, 0, 2, 2), univ_experts=(0, 0, 4, 4))
    else:
        kwargs = dict(TINY_VIT, moe_layers=(2, 3), core_experts=2, univ_experts=4)
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        if name == "cjetmoe_femto":  # reference: stem, then each stage (MoE blocks in stages 3 and 4)
            expected, h = [], model.stem(x)
            for stage in model.stages:
                h = stage(h)
                expected.append(h)
        else:  # reference: blocks one by one (MoE in blocks 2, 3), patch tokens as (b, d, h, w)
            expected, h = [], model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
            for block in model.blocks:
                h = block(h)
                expected.append(h[:, 1:].reshape(2, 4, 4, -1).permute(0, 3, 1, 2))
        intermediates = model.forward_intermediates(x, indices=(1, 3), intermediates_only=True)
        save_model(model, tmp_path / "model.safetensors", name, kwargs)  # a backbone from moejet weights
        features = timm.create_model(name, features_only=True, out_indices=(1, 3), pretrained=True, **kwargs,
                                     pretrained_cfg_overlay=dict(file=str(tmp_path / "model.safetensors"))).eval()
        for got in (intermediates, features(x)):
            assert len(got) == 2
            for g, e in zip(got, (expected[1], expected[3])):
                torch.testing.assert_close(g, e)


def switch_values(layer):
    """The model switches a built SpheroMoE layer holds (docs/paper-vs-release.md)."""
    return {"key_l2norm": layer.key_l2norm, "combine": layer.combine,
            "noise_after_temperature": layer.noise_after_temperature, "noise_in_eval": layer.noise_in_eval,
            "expert_drop_mode": layer.expert_drop_mode, "query_norm_eps": layer.query_norm.eps,
            "expert_init": layer.core_experts.init}


PAPER_MODEL = {"key_l2norm": False, "combine": "softmax", "noise_after_temperature": False, "noise_in_eval": False,
               "expert_drop_mode": "expert", "query_norm_eps": 1e-6,  # the block norm's: timm's 1e-6
               "expert_init": "trunc_normal"}
RELEASE_MODEL = {"key_l2norm": True, "combine": "entmax15", "noise_after_temperature": True, "noise_in_eval": True,
                 "expert_drop_mode": "layer", "query_norm_eps": 1e-5, "expert_init": "kaiming_uniform"}


@pytest.mark.parametrize(
    ("name", "base"),
    [("vjetmoe_tiny_patch16_224", {}), ("cjetmoe_femto", dict(moe_layers=(4,)))],
)
def test_release_variant_flips_every_model_switch_and_explicit_kwargs_win(name, base):
    base = {**(TINY_VIT if name.startswith("vjet") else TINY_CONVNEXT), **base}
    small = dict(base, core_experts=2, univ_experts=4)
    paper = next(iter(moe_modules(timm.create_model(name, **small)).values()))
    release = next(iter(moe_modules(timm.create_model(name, **small, variant="release")).values()))
    assert switch_values(paper) == PAPER_MODEL
    assert switch_values(release) == RELEASE_MODEL
    mixed = timm.create_model(name, **small, variant="release", combine="softmax", noise_in_eval=False)
    layer = next(iter(moe_modules(mixed).values()))
    assert (layer.combine, layer.noise_in_eval, layer.key_l2norm) == ("softmax", False, True)


def test_softmoe_models_take_only_the_expert_init_switch():
    model = timm.create_model("softmoe_vit_tiny_patch16_224", **TINY_VIT, num_experts=3, variant="release")
    assert all(m.experts.init == "kaiming_uniform" for m in moe_modules(model).values())
    with pytest.raises(TypeError):
        timm.create_model("softmoe_vit_tiny_patch16_224", **TINY_VIT, num_experts=3, key_l2norm=True)


def test_model_kwargs_with_switches_round_trip_through_a_model_file(tmp_path):
    from moejet.io.weights import build_from_checkpoint, save_model

    kwargs = dict(TINY_VIT, core_experts=2, univ_experts=4, variant="release",
                  query_norm_eps=1e-6, noise_in_eval=False)
    model = timm.create_model("vjetmoe_tiny_patch16_224", **kwargs)
    save_model(model, tmp_path / "m.safetensors", "vjetmoe_tiny_patch16_224", kwargs)
    loaded, _, loaded_kwargs = build_from_checkpoint(tmp_path / "m.safetensors")
    assert loaded_kwargs == kwargs
    layer = loaded.blocks[3].mlp
    assert (layer.query_norm.eps, layer.noise_in_eval, layer.combine, layer.key_l2norm) == (1e-6, False, "entmax15",
                                                                                            True)


def test_bad_variant_raises():
    with pytest.raises(ValueError, match="variant must be one of paper, release, got 'authors'"):
        timm.create_model("vjetmoe_tiny_patch16_224", **TINY_VIT, variant="authors")


@pytest.mark.parametrize(
    ("name", "base", "depth"),
    [("vjetmoe_tiny_patch16_224", dict(moe_layers=(1, 3)), 4), ("cjetmoe_femto", dict(moe_layers=(2, 4)), 5)],
)
def test_moe_drop_path_rate_ramps_over_depth_like_the_release(name, base, depth):
    base = {**(TINY_VIT if name.startswith("vjet") else TINY_CONVNEXT), **base}
    model = timm.create_model(name, **base, core_experts=2, univ_experts=4, expert_drop_mode="layer",
                              moe_drop_path_rate=0.1)
    layers = list(moe_modules(model).values())
    expected = [0.1 * i / (depth - 1) for i in base["moe_layers"]]  # release: linspace(0, rate, depth)[i]
    assert [layer.expert_drop_rate for layer in layers] == pytest.approx(expected, abs=1e-7)
    assert all(layer.expert_drop_mode == "layer" for layer in layers)
    with pytest.raises(ValueError, match="use it with expert_drop_mode='layer'"):
        timm.create_model(name, **base, core_experts=2, univ_experts=4, moe_drop_path_rate=0.1)


@pytest.mark.parametrize("base,paper_model", [("vit_tiny_patch16_224", "vjetmoe_tiny_patch16_224"),
                                              ("vit_small_patch16_224", "vjetmoe_small_patch16_224"),
                                              ("vit_small_patch16_224", "softmoe_vit_small_patch16_224")])
def test_jetmoe_defaults_on_a_vit_base_are_the_paper_models(base, paper_model):
    """``jetmoe``'s defaults (second half of the blocks, tokens // 2 core and twice that universal experts, one Soft
    MoE expert per token) give exactly the paper's V-JetMoE and Soft MoE models on their ViT bases."""
    moe_type = "soft" if paper_model.startswith("softmoe") else "sphero"
    with torch.device("meta"):
        ours = timm.create_model("jetmoe", base=base, moe_type=moe_type).state_dict()
        paper = timm.create_model(paper_model).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in paper.items()}


def test_jetmoe_convnext_defaults_are_c_jetmoe_f():
    with torch.device("meta"):
        ours = timm.create_model("jetmoe", base="convnext_femto_d18").state_dict()
        paper = timm.create_model("cjetmoe_femto").state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in paper.items()}


def test_jetmoe_refuses_what_it_cannot_build():
    with pytest.raises(ValueError, match="not a timm model"):
        timm.create_model("jetmoe", base="vit_gigantic")
    with pytest.raises(ValueError, match="VisionTransformer, Eva, Beit, VisionTransformerRelPos or ConvNeXt"):
        timm.create_model("jetmoe", base="resnet18")
    with pytest.raises(ValueError, match="pretrained_cfg_overlay"):
        timm.create_model("jetmoe", base="vit_tiny_patch16_224", pretrained=True)
