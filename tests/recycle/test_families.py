"""Recycling today's checkpoint families with ``--successor auto``, on tiny random-initialised timm models.

Per family: the successor derived from the checkpoint reproduces it exactly where it has no MoE block, every
expert holds the predecessor slices that ``recycle.json`` names, and the recycled model trains, exports and
extracts features.
"""

import json
from dataclasses import fields

import pytest
import timm
import torch
import torch.nn as nn

import moejet  # noqa: F401  (registers the models)
from moejet.io.export import export_checkpoint, run_export
from moejet.io.weights import build_from_checkpoint, save_model
from moejet.layers import SoftMoE, SpheroMoE
from moejet.models import moe_modules
from moejet.recycle import RecycleOptions, recycle_sources, write_outputs

VIT = dict(embed_dim=32, depth=4, num_heads=2, num_classes=10)
CONVNEXT = dict(depths=(1, 1, 2, 1), dims=(8, 16, 32, 64), num_classes=10)
# name -> (timm model, tiny kwargs, image side); each row is one architecture feature of today's checkpoints
FAMILIES = {
    "deit3 (layer scale, no pos-embed for cls)": ("deit3_small_patch16_224", dict(VIT, img_size=32), 32),
    "dinov2 (layer scale, patch 14)": ("vit_small_patch14_dinov2", dict(VIT, img_size=28), 28),
    "dinov2-reg (register tokens)": ("vit_small_patch14_reg4_dinov2", dict(VIT, img_size=28), 28),
    "dinov2-giant (SwiGLUPacked, SiLU)": ("vit_giant_patch14_dinov2", dict(VIT, img_size=28, mlp_ratio=5.0), 28),
    "clip (pre-norm, no patch bias)": ("vit_base_patch16_clip_224", dict(VIT, img_size=32), 32),
    "siglip (no cls token, MAP head)": ("vit_base_patch16_siglip_224", dict(VIT, img_size=32), 32),
    "gap (no cls token, avg pool)": ("vit_small_patch16_224", dict(VIT, img_size=32, class_token=False,
                                                                    global_pool="avg", fc_norm=True), 32),
    "dynamic image size": ("vit_small_patch16_224", dict(VIT, img_size=32, dynamic_img_size=True), 32),
    "eva02 (packed SwiGLU, RoPE)": ("eva02_tiny_patch14_224", dict(VIT, img_size=28), 28),
    "eva02-base (SwiGLU, MLP norm, split qkv)": ("eva02_base_patch14_224", dict(VIT, img_size=28), 28),
    "beit-v2 (relative position bias per block)": ("beitv2_base_patch16_224", dict(VIT, img_size=32), 32),
    "vit-relpos (relative position MLP, avg pool)": ("vit_relpos_small_patch16_224", dict(VIT, img_size=32), 32),
    "convnext (layer scale)": ("convnext_atto", dict(CONVNEXT), 32),
    "convnext-v2 (GRN, conv MLP)": ("convnextv2_atto", dict(CONVNEXT), 32),
}
MOE_ARGS = {"vit": dict(moe_layers=[2, 3], core_experts=2, univ_experts=4),
            "convnext": dict(moe_layers=[3, 4], core_experts=[0, 0, 2, 2], univ_experts=[0, 0, 4, 4])}


def family_of(name):
    return "convnext" if name.startswith("convnext") else "vit"


def randomized(model):
    """Every parameter random (timm zero-inits layer scale, GRN and some biases; random values test the cut)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """``name -> (file, timm model, kwargs)``: each family's tiny dense checkpoint, saved as a plain timm file."""
    root = tmp_path_factory.mktemp("families")
    out = {}
    for i, (label, (model_name, kwargs, _)) in enumerate(FAMILIES.items()):
        path = root / f"{i}.pth"
        torch.save(randomized(timm.create_model(model_name, **kwargs)).state_dict(), path)
        out[label] = (path, model_name, kwargs)
    return out


def recycled(checkpoint, tmp_path, moe_args, strategy="importance", side=32, dense_checkpoint=None, **extra):
    path, model_name, kwargs = checkpoint
    predecessor_kwargs = {k: v for k, v in kwargs.items() if k != "num_classes"}
    options = {k: extra.pop(k) for k in list(extra) if k in {f.name for f in fields(RecycleOptions)}}
    state, report = recycle_sources(
        predecessor=model_name, predecessor_checkpoint=str(path), pretrained=False,
        predecessor_kwargs=predecessor_kwargs, dense_checkpoint=dense_checkpoint, successor="auto",
        successor_kwargs=dict(moe_args, num_classes=10), calib_images=8, calib_img_size=side, batch_size=4,
        workers=0, device="cpu", progress=False, options=RecycleOptions(strategy=strategy, **options), **extra)
    succ = report["successor"]
    paths = write_outputs(tmp_path, state, report, succ["name"], succ["kwargs"])
    return paths[0], report


@pytest.mark.parametrize("label", FAMILIES)
def test_successor_without_moe_blocks_is_the_checkpoint(label, checkpoints, tmp_path):
    """The derived successor's dense part (tokens, norms, attention, RoPE, pooling, head) is the checkpoint's."""
    path, model_name, kwargs = checkpoints[label]
    side = FAMILIES[label][2]
    file, report = recycled(checkpoints[label], tmp_path, {"moe_layers": []}, strategy="uniform", side=side)
    assert report["successor"]["name"] == "jetmoe" and report["successor"]["kwargs"]["base"] == model_name
    successor, _, _ = build_from_checkpoint(file)
    predecessor = timm.create_model(model_name, **kwargs)
    predecessor.load_state_dict(torch.load(path, weights_only=True))
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        out, expected = successor.eval()(x), predecessor.eval()(x)
    if model_name.startswith("convnext"):  # timm builds these with 1x1-conv MLPs, the successor with Linear ones:
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)  # the same sums in another order
    else:
        assert torch.equal(out, expected)


def mlp_slices(state, prefix, kind, gate_last=False):
    """The predecessor MLP's ``(value rows (h, d), gate rows or None, fc2 (d, h), hidden norm params)``, read
    from its timm keys directly."""
    flat = lambda w: w.reshape(w.shape[0], -1)
    if kind == "swiglu":
        value, gate = state[prefix + "fc1_x.weight"], state[prefix + "fc1_g.weight"]
    elif kind == "glu":
        w = state[prefix + "fc1.weight"]
        first, second = w[: w.shape[0] // 2], w[w.shape[0] // 2:]
        gate, value = (second, first) if gate_last else (first, second)
    else:
        value, gate = flat(state[prefix + "fc1.weight"]), None
    norms = {name: state[prefix + key] for name, key in (("norm_weight", "norm.weight"), ("grn_weight", "grn.weight"))
             if prefix + key in state}
    return value, gate, flat(state[prefix + "fc2.weight"]), norms


@pytest.mark.parametrize("label", FAMILIES)
def test_experts_hold_the_slices_recycle_json_names(label, checkpoints, tmp_path):
    path, model_name, kwargs = checkpoints[label]
    fam = family_of(model_name)
    file, report = recycled(checkpoints[label], tmp_path, MOE_ARGS[fam], side=FAMILIES[label][2])
    successor, _, _ = build_from_checkpoint(file)
    dense = torch.load(path, weights_only=True)
    names = {str(i): name for i, name in enumerate(
        [f"blocks.{i}" for i in range(4)] if fam == "vit" else
        [f"stages.{s}.blocks.{j}" for s, n in enumerate(CONVNEXT["depths"]) for j in range(n)])}
    layers = moe_modules(successor)
    assert len(layers) == 2
    dense_model = timm.create_model(model_name, **kwargs)
    for key, paths in report["neuron_indices"].items():
        block = names[key]
        dense_mlp = dense_model.get_submodule(block + ".mlp")
        kind = {"SwiGLU": "swiglu", "GluMlp": "glu"}.get(type(dense_mlp).__name__, "mlp")
        value, gate, fc2, norms = mlp_slices(dense, block + ".mlp.", kind, getattr(dense_mlp, "gate_last", False))
        layer = layers[block + ".mlp"]
        assert isinstance(layer, SpheroMoE) and layer.core_experts.gated == (gate is not None)
        for path_name, experts in paths.items():
            bank = layer.core_experts if path_name == "core" else layer.univ_experts
            for e, idx in enumerate(experts):
                idx = torch.tensor(idx)
                assert torch.equal(bank.fc1_weight[e], value[idx])  # same width: every channel, in order
                assert torch.equal(bank.fc2_weight[e], fc2[:, idx])
                if gate is not None:
                    assert torch.equal(bank.fc1_gate_weight[e], gate[idx])  # the same neurons as the value rows
                for name, weight in norms.items():
                    assert torch.equal(getattr(bank, name)[e], weight[idx])
        norm = "norm" if fam == "convnext" else "norm2"  # query_norm: inherit (the paper's), EVA included
        for leaf in ("weight", "bias"):
            assert torch.equal(getattr(layer.query_norm, leaf), dense[f"{block}.{norm}.{leaf}"]), leaf
            assert f"{block}.mlp.query_norm.{leaf}" not in report["fresh_keys"]


@pytest.mark.parametrize("label", FAMILIES)
def test_recycled_model_trains_exports_and_extracts_features(label, checkpoints, tmp_path):
    model_name = checkpoints[label][1]
    side = FAMILIES[label][2]
    file, report = recycled(checkpoints[label], tmp_path, MOE_ARGS[family_of(model_name)], side=side)
    model, name, kwargs = build_from_checkpoint(file)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(2, 3, side, side), torch.tensor([1, 7])
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(2):
        loss = nn.functional.cross_entropy(model(x), y)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    moved = [k for k, v in model.state_dict().items() if "experts" in k and not torch.equal(v, before[k])]
    assert moved, "the experts did not train"
    model.eval()
    trained = tmp_path / "trained.safetensors"
    save_model(model, trained, name, kwargs)
    assert export_checkpoint(trained, tmp_path / "model.pt2", fmt="export", img_size=side) <= 1e-4
    with torch.no_grad():
        torch.testing.assert_close(run_export(tmp_path / "model.pt2", x), model(x), rtol=1e-4, atol=1e-4)
    features = timm.create_model(name, features_only=True, **kwargs).eval()
    with torch.no_grad():
        maps = features(x)
    assert len(maps) == len(features.feature_info.channels()) and all(torch.isfinite(m).all() for m in maps)


def test_kmeans_queries_on_eva_are_compared_through_the_inherited_norm(checkpoints, tmp_path):
    """``--router-init kmeans`` on EVA: the query norm is the block's norm2, and ``query_alignment`` is measured
    through it (mean cosine of a centroid to ``query_norm(centroid)``)."""
    path = checkpoints["eva02 (packed SwiGLU, RoPE)"][0]
    file, report = recycled(checkpoints["eva02 (packed SwiGLU, RoPE)"], tmp_path, MOE_ARGS["vit"], side=28,
                            router_init="kmeans")
    layers, dense = moe_modules(build_from_checkpoint(file)[0]), torch.load(path, weights_only=True)
    for key, info in report["router_init"]["blocks"].items():
        name = report["moe_blocks"][key]["name"]
        q = layers[name + ".mlp"].queries.detach().double()
        w, b = dense[name + ".norm2.weight"].double(), dense[name + ".norm2.bias"].double()
        normed = nn.functional.layer_norm(q, (q.shape[1],), w, b, layers[name + ".mlp"].query_norm.eps)
        expected = float(nn.functional.cosine_similarity(normed, q, dim=1).mean())
        assert info["query_alignment"] == pytest.approx(expected, abs=1e-6) and expected < 0.99


def test_soft_moe_successor_takes_the_dense_mlp_form(checkpoints, tmp_path):
    file, _ = recycled(checkpoints["eva02 (packed SwiGLU, RoPE)"], tmp_path,
                       dict(moe_type="soft", moe_layers=[3], num_experts=3), side=28)
    layer = moe_modules(build_from_checkpoint(file)[0])["blocks.3.mlp"]
    assert isinstance(layer, SoftMoE) and layer.experts.gated and layer.experts.num_experts == 3


def test_recycle_json_names_the_derived_successor(checkpoints, tmp_path):
    _, report = recycled(checkpoints["siglip (no cls token, MAP head)"], tmp_path, MOE_ARGS["vit"])
    saved = json.loads((tmp_path / "recycle.json").read_text())
    assert saved["successor"]["kwargs"] == {"base": "vit_base_patch16_siglip_224", "img_size": 32,
                                            "embed_dim": 32, "depth": 4, "num_heads": 2, **MOE_ARGS["vit"],
                                            "num_classes": 10}


# ---- narrower successors: weight selection from the predecessor, or the dense part from a dense checkpoint ------

WIDE_VIT = dict(embed_dim=64, depth=4, num_heads=4)
NARROW = {  # name -> (timm model, wide predecessor kwargs, successor overrides, image side)
    "siglip": ("vit_base_patch16_siglip_224", dict(WIDE_VIT, img_size=32), dict(embed_dim=32, num_heads=2), 32),
    "eva02-base": ("eva02_base_patch14_224", dict(WIDE_VIT, img_size=28), dict(embed_dim=32, num_heads=2), 28),
    "beit": ("beit_base_patch16_224", dict(WIDE_VIT, img_size=32), dict(embed_dim=32, num_heads=2), 32),
    "vit-srelpos": ("vit_srelpos_small_patch16_224", dict(WIDE_VIT, img_size=32), dict(embed_dim=32, num_heads=2),
                    32),
    "dinov2-giant": ("vit_giant_patch14_dinov2", dict(WIDE_VIT, img_size=28, mlp_ratio=5.0),
                     dict(embed_dim=32, num_heads=2), 28),
    "convnext-v2": ("convnextv2_atto", dict(dims=(16, 32, 64, 128), depths=(1, 1, 2, 1)),
                    dict(dims=[8, 16, 32, 64]), 32),
    "convnext, overlapping stem": ("convnext_zepto_rms_ols", dict(dims=(16, 32, 64, 128), depths=(1, 1, 2, 1)),
                                   dict(dims=[8, 16, 32, 64]), 32),
}


def wide_checkpoint(model_name, kwargs, path):
    model = randomized(timm.create_model(model_name, **kwargs))
    torch.save(model.state_dict(), path)
    return (path, model_name, kwargs), model.state_dict()


@pytest.mark.parametrize("label", NARROW)
def test_narrower_successor_takes_the_selected_channels(label, tmp_path):
    model_name, kwargs, narrow, side = NARROW[label]
    checkpoint, dense = wide_checkpoint(model_name, kwargs, tmp_path / "wide.pth")
    fam = family_of(model_name)
    file, report = recycled(checkpoint, tmp_path / "out", {**MOE_ARGS[fam], **narrow}, side=side)
    successor, _, _ = build_from_checkpoint(file)
    state = successor.state_dict()
    channels = [torch.tensor(c) for c in report["channel_indices"]]
    block = "blocks.3" if fam == "vit" else "stages.3.blocks.0"
    stage = 0 if fam == "vit" else 3
    c = channels[stage]
    value, gate, fc2, norms = mlp_slices(dense, block + ".mlp.", {"dinov2-giant": "glu", "eva02-base": "swiglu"}
                                         .get(label, "mlp"))
    layer = moe_modules(successor)[block + ".mlp"]
    for e, idx in enumerate(report["neuron_indices"]["3" if fam == "vit" else "4"]["core"]):
        idx = torch.tensor(idx)
        assert torch.equal(layer.core_experts.fc1_weight[e], value[idx][:, c])
        assert torch.equal(layer.core_experts.fc2_weight[e], fc2[c][:, idx])
        if gate is not None:
            assert torch.equal(layer.core_experts.fc1_gate_weight[e], gate[idx][:, c])
        for name, weight in norms.items():
            assert torch.equal(getattr(layer.core_experts, name)[e], weight[idx])
    if label == "beit":  # relative position biases: one column per kept head
        key, heads = "blocks.3.attn.relative_position_bias_table", torch.tensor(report["head_indices"]["heads"])
        assert torch.equal(state[key], dense[key][:, heads])
    if label == "vit-srelpos":  # the shared relative position MLP: one output per kept head
        key, heads = "shared_rel_pos.mlp.fc2.weight", torch.tensor(report["head_indices"]["heads"])
        assert torch.equal(state[key], dense[key][heads])
    if label == "convnext, overlapping stem":  # its second conv maps stage-0 channels to stage-0 channels
        assert torch.equal(state["stem.2.weight"], dense["stem.2.weight"][channels[0]][:, channels[0]])
    if label == "siglip":  # the MAP head: the same heads as the blocks, its MLP's neurons evenly spaced (Eq. 7)
        heads = torch.tensor(report["head_indices"]["heads"])
        rows = (heads[:, None] * 16 + torch.arange(16)).reshape(-1)  # 4 heads of 16 -> 2 heads of 16
        assert torch.equal(state["attn_pool.q.weight"], dense["attn_pool.q.weight"][rows][:, c])
        kv_rows = torch.cat([rows, rows + 64])  # k rows, then v rows
        assert torch.equal(state["attn_pool.kv.weight"], dense["attn_pool.kv.weight"][kv_rows][:, c])
        assert torch.equal(state["attn_pool.mlp.fc1.weight"],
                           dense["attn_pool.mlp.fc1.weight"][torch.arange(128) * 256 // 128][:, c])
        assert torch.equal(state["attn_pool.latent"], dense["attn_pool.latent"][:, :, c])
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        assert torch.isfinite(successor.eval()(x)).all()


@pytest.mark.parametrize("pair", [("vit_base_patch14_dinov2", "vit_small_patch14_dinov2"),
                                  ("convnextv2_tiny", "convnextv2_nano")])
def test_dense_part_comes_from_the_smaller_checkpoint(pair, tmp_path):
    """The paper's rule: experts from the larger checkpoint, the dense part from the smaller one of its family."""
    large, small = pair
    if large.startswith("convnext"):
        large_kwargs, small_kwargs = dict(dims=(16, 32, 64, 128), depths=(1, 1, 3, 1)), dict(CONVNEXT)
        moe, side = MOE_ARGS["convnext"], 32
    else:
        large_kwargs, small_kwargs = dict(WIDE_VIT, img_size=28), dict(VIT, img_size=28, num_classes=0)  # no head
        moe, side = MOE_ARGS["vit"], 28
    checkpoint, _ = wide_checkpoint(large, large_kwargs, tmp_path / "large.pth")
    small_model = randomized(timm.create_model(small, **small_kwargs))
    torch.save(small_model.state_dict(), tmp_path / "small.pth")
    small_kwargs.pop("num_classes", None)
    file, report = recycled(checkpoint, tmp_path / "out", moe, side=side, dense_checkpoint=str(tmp_path / "small.pth"),
                            dense_model=small, dense_kwargs=small_kwargs)
    assert report["successor"]["kwargs"]["base"] == small
    assert ("head.weight" in report["fresh_keys"]) == large.startswith("vit")  # DINOv2 ships no classifier
    state = build_from_checkpoint(file)[0].state_dict()
    moe_blocks = tuple(f"{name}." for name in moe_modules(build_from_checkpoint(file)[0]))
    for key, value in small_model.state_dict().items():
        if not key.startswith(moe_blocks):
            assert torch.equal(state[key], value.reshape(state[key].shape)), key  # conv MLPs: as Linear weights


def test_a_layout_the_role_table_does_not_describe_is_a_one_line_error(tmp_path):
    """A tiered ConvNeXt stem (``*_ols``) without a dense checkpoint: a UserError naming the reason; with one, the
    stem is the dense checkpoint's."""
    from moejet.errors import UserError

    kwargs = dict(dims=(16, 32, 64, 128), depths=(1, 1, 2, 1))
    checkpoint, _ = wide_checkpoint("convnext_atto_ols", kwargs, tmp_path / "ols.pth")
    with pytest.raises(UserError) as err:
        recycled(checkpoint, tmp_path / "out", {"dims": [8, 16, 32, 64]}, strategy="uniform")
    assert str(err.value) == (
        "the predecessor has timm's tiered stem (stem_type 'overlap_tiered', convnext_*_ols: two stacked convolutions, "
        "the first 8 channels wide), which recycling's selection rules do not read: pass --dense-checkpoint for the "
        "dense part (stem included), or use ConvNeXts with a patch or overlapping stem")
    small_kwargs = dict(dims=(8, 16, 32, 64), depths=(1, 1, 2, 1), num_classes=10)
    small = randomized(timm.create_model("convnext_atto_ols", **small_kwargs))
    torch.save(small.state_dict(), tmp_path / "small.pth")
    file, _ = recycled(checkpoint, tmp_path / "dense", MOE_ARGS["convnext"], strategy="uniform",
                       dense_checkpoint=str(tmp_path / "small.pth"), dense_model="convnext_atto_ols",
                       dense_kwargs=small_kwargs)
    state = build_from_checkpoint(file)[0].state_dict()  # with a dense checkpoint its stem is the successor's
    assert torch.equal(state["stem.1.weight"], small.state_dict()["stem.1.weight"])


def test_a_conv_mlp_convnext_moejet_file_is_a_dense_checkpoint(tmp_path):
    """A moejet file of a ConvNeXt built with 1x1-conv MLPs gives the dense part of a Linear-MLP successor."""
    small_kwargs = dict(CONVNEXT)
    small = randomized(timm.create_model("convnext_atto", **small_kwargs))
    save_model(small, tmp_path / "small.safetensors", "convnext_atto", small_kwargs)
    checkpoint, _ = wide_checkpoint("convnext_atto", dict(dims=(16, 32, 64, 128), depths=(1, 1, 2, 1)),
                                    tmp_path / "large.pth")
    file, _ = recycled(checkpoint, tmp_path / "out", MOE_ARGS["convnext"],
                       dense_checkpoint=str(tmp_path / "small.safetensors"))
    state = build_from_checkpoint(file)[0].state_dict()
    weight = "stages.0.blocks.0.mlp.fc1.weight"
    assert torch.equal(state[weight], small.state_dict()[weight].reshape(state[weight].shape))
