"""Prefix tokens and position tables across ViT layouts: every predecessor layout into every successor layout
converts exactly or is a one-line UserError (exit 2), never an internal error (exit 70)."""

import json

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

import moejet  # noqa: F401  (registers the models)
from moejet.cli import main
from moejet.errors import UserError
from moejet.io.weights import build_from_checkpoint
from moejet.recycle import RecycleOptions, load_dense_state, recycle_sources
from moejet.recycle.api import build_successor

TINY = dict(img_size=32, patch_size=16, embed_dim=16, depth=1, num_heads=2, num_classes=10)  # a 2x2 grid
# name -> (timm model, kwargs, (class, distillation, register tokens, position rows for them, grid side or None))
LAYOUTS = {
    "class token": ("vit_small_patch16_224", {}, (1, 0, 0, True, 2)),
    "no class token (gap)": ("vit_small_patch16_224", dict(class_token=False, global_pool="avg"), (0, 0, 0, True, 2)),
    "registers": ("vit_small_patch16_224", dict(reg_tokens=2), (1, 0, 2, True, 2)),
    "registers, no_embed_class (dinov2)": ("vit_small_patch16_224", dict(reg_tokens=2, no_embed_class=True),
                                           (1, 0, 2, False, 2)),
    "no_embed_class (deit3)": ("vit_small_patch16_224", dict(no_embed_class=True), (1, 0, 0, False, 2)),
    "distillation token": ("deit_small_distilled_patch16_224", {}, (1, 1, 0, True, 2)),
    "dynamic image size": ("vit_small_patch16_224", dict(dynamic_img_size=True), (1, 0, 0, True, 2)),
    "3x3 grid": ("vit_small_patch16_224", dict(img_size=48), (1, 0, 0, True, 3)),
    "no position embedding": ("vit_small_patch16_224", dict(pos_embed="none"), (1, 0, 0, True, None)),
}
KINDS = (("cls_token", 0), ("dist_token", 1), ("reg_token", 2))


def layout_kwargs(name):
    return {**TINY, **LAYOUTS[name][1]}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Each layout's random-init predecessor, saved as a plain safetensors file: ``name -> (file, model)``."""
    root = tmp_path_factory.mktemp("layouts")
    out = {}
    for i, (name, (model_name, _, _)) in enumerate(LAYOUTS.items()):
        torch.manual_seed(i)
        model = timm.create_model(model_name, **layout_kwargs(name)).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn_like(p))  # timm zero-inits some tokens: random values test every copy
        save_file(model.state_dict(), str(root / f"{i}.safetensors"))
        out[name] = (root / f"{i}.safetensors", model)
    return out


def refused(src, dst):
    """What the layouts allow: tokens only the successor has start fresh; tokens only the predecessor has, or a
    position table only one of them has, cannot be converted."""
    return (src[4] is None) != (dst[4] is None) or any(src[i] > dst[i] for _, i in KINDS)


def prefix(model, layout):
    """``kind -> (token (1, n, d), its position rows (1, n, d) or None)`` and the grid rows ``(1, g, d)``."""
    cls, dist, reg, rows, side = layout
    counts, start, out = (cls, dist, reg), 0, {}
    for (key, _), n in zip(KINDS, counts):
        if n:
            pos = model.pos_embed[:, start:start + n] if rows and side else None
            out[key] = (getattr(model, key).detach(), None if pos is None else pos.detach())
            start += n if rows and side else 0
    return out, None if side is None else model.pos_embed[:, start:].detach()


def check_converted(predecessor, src, state, model, target):
    """``state`` (in ``target``'s layout) feeds the first block what ``predecessor`` (layout ``src``) fed it: every
    prefix token the two share, as token + position row; the grid rows, resampled by timm where the grid differs.
    Tokens the predecessor lacks keep ``model``'s values (a freshly built successor: timm's init)."""
    dst = LAYOUTS[target][2]
    src_tokens, src_grid = prefix(predecessor, src)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state, strict=False)  # a dense state leaves out heads it has not got (head_dist)
    tokens, grid = prefix(model, dst)
    for key, (token, rows) in tokens.items():
        n_src = src_tokens[key][0].shape[1] if key in src_tokens else 0
        effective = token + (rows if rows is not None else 0)  # what the first block sees
        if n_src:
            src_token, src_rows = src_tokens[key]
            expected = src_token + (src_rows if src_rows is not None else 0)
            assert torch.equal(effective[:, :n_src], expected), (target, key)
        assert torch.equal(token[:, n_src:], fresh[key][:, n_src:]), (target, key)  # timm's init
    if src_grid is not None:
        expected = src_grid if src[4] == dst[4] else resample_abs_pos_embed(
            src_grid, new_size=[dst[4]] * 2, old_size=[src[4]] * 2, num_prefix_tokens=0)
        assert torch.equal(grid, expected), target


def successor_kwargs(target):
    return dict(layout_kwargs(target), base=LAYOUTS[target][0], moe_layers=[0], core_experts=1, univ_experts=2)


def converted_or_refused(convert, src, dst, pair: str, source_role: str):
    """``convert()`` for a pair the rule converts; None for one it refuses, after checking the refusal is one line
    naming both layouts (the source's role and the successor's)."""
    try:
        result = convert()
    except UserError as err:
        assert refused(src, dst), f"{pair}: {err}"
        assert "\n" not in str(err) and f"{source_role}: " in str(err) and "successor: " in str(err)
        return None
    assert not refused(src, dst), f"{pair} should be refused"
    return result


@pytest.mark.parametrize("source", LAYOUTS)
def test_every_layout_pair_converts_exactly_or_is_refused(checkpoints, source):
    path, predecessor = checkpoints[source]
    src = LAYOUTS[source][2]
    for target, (_, _, dst) in LAYOUTS.items():
        recycled = converted_or_refused(lambda target=target: recycle_sources(
            predecessor=LAYOUTS[source][0], predecessor_checkpoint=str(path), pretrained=False,
            predecessor_kwargs=layout_kwargs(source), dense_checkpoint=None, successor="jetmoe",
            successor_kwargs=successor_kwargs(target), calib_images=0, device="cpu", progress=False,
            options=RecycleOptions(strategy="uniform")), src, dst, f"{source} -> {target}", "predecessor")
        if recycled is None:
            continue
        state, report = recycled
        check_converted(predecessor, src, state, build_successor("jetmoe", successor_kwargs(target), 0), target)
        for key, i in KINDS:
            if dst[i]:
                assert (key in report["fresh_keys"]) == (src[i] == 0), (target, key)


@pytest.mark.parametrize("source", LAYOUTS)
def test_every_dense_checkpoint_layout_converts_exactly_or_is_refused(checkpoints, source):
    """The same rule for a dense checkpoint (a bare state dict: its layout is read from its keys and rows)."""
    path, dense = checkpoints[source]
    src = LAYOUTS[source][2]
    for target, (_, _, dst) in LAYOUTS.items():
        state = converted_or_refused(lambda target=target: load_dense_state(path, "jetmoe", successor_kwargs(target)),
                                     src, dst, f"{source} -> {target}", "dense checkpoint")
        if state is None:
            continue
        check_converted(dense, src, state, build_successor("jetmoe", dict(successor_kwargs(target), moe_layers=()), 0),
                        target)


def test_the_cli_converts_deit3_into_a_vit_successor_and_refuses_in_one_line(checkpoints, tmp_path, capsys):
    """The case that ended in exit 70: a DeiT-III checkpoint (no class position row) into an explicit ViT
    successor; its class token enters the successor's first block unchanged, its position row is zero."""
    path, deit3 = checkpoints["no_embed_class (deit3)"]
    pred = ["--predecessor", "vit_small_patch16_224", "--predecessor-checkpoint", str(path)]
    for k, v in layout_kwargs("no_embed_class (deit3)").items():
        pred += ["--predecessor-arg", f"{k}={v}"]
    succ = ["--successor", "vjetmoe_tiny_patch16_224"]
    for k, v in dict(TINY, moe_layers=(0,), core_experts=1, univ_experts=2).items():
        succ += ["--successor-arg", f"{k}={v}"]
    common = ["--strategy", "uniform", "--calib-images", "0", "--quiet"]
    assert main(["recycle", *pred, *succ, *common, "--out", str(tmp_path / "ok")]) == 0
    model = build_from_checkpoint(tmp_path / "ok" / "model.safetensors")[0]
    assert torch.equal(model.cls_token, deit3.cls_token) and not model.pos_embed[:, 0].any()
    report = json.loads((tmp_path / "ok" / "recycle.json").read_text())
    assert report["tokens"]["tokens"] == {"cls": "copied, position rows zero (the predecessor gives prefix tokens "
                                                 "none)"}
    capsys.readouterr()
    assert main(["recycle", *pred, *succ, "--successor-arg", "class_token=False", "--successor-arg",
                 "global_pool=avg", *common, "--out", str(tmp_path / "no")]) == 2
    err = capsys.readouterr().err
    assert err == ("moejet recycle: error: the successor drops the predecessor's class token (predecessor: 1 class "
                   "token without position rows, a 2x2 position grid; successor: no prefix tokens, a 2x2 position "
                   "grid): its patch tokens were trained attending to them; build the successor with the same tokens "
                   "(class_token, reg_tokens), or pass --dense-checkpoint\n")
    assert not (tmp_path / "no").exists()
