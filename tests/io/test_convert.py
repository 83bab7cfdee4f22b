"""`moejet convert`: the authors' released checkpoints (MMPretrain format) give our model their forward pass."""

from __future__ import annotations

import sys
import types
from collections import OrderedDict

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from entmax import entmax15

import moejet  # noqa: F401  (registers the models)
from moejet.cli import main
from moejet.io.weights import build_from_checkpoint

DIM, DEPTH, MOE_LAYERS, CORE, UNIV, CLASSES = 192, 3, (1, 2), 2, 4, 5
NOISE_MULT = 1 / (CORE + UNIV)  # the release config's noise_mult = 1 / (c_EXPs + u_EXPs)


def dense_vit() -> nn.Module:
    return timm.create_model("vit_tiny_patch16_224", img_size=32, depth=DEPTH, num_classes=CLASSES,
                             global_pool="avg")


def release_state(seed: int = 0) -> OrderedDict:
    """Random weights in the key layout of the release's VisionTransformerMoe (dual path, slot_layernorm)."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape, scale=0.1: torch.randn(*shape, generator=g) * scale  # noqa: E731
    state = OrderedDict()
    for key, value in dense_vit().state_dict().items():
        block = key.split(".")[1] if key.startswith("blocks.") else None
        if block is not None and int(block) in MOE_LAYERS and ".mlp." in key:
            continue
        state[key] = value + rand(*value.shape, scale=0.02)
    for i in MOE_LAYERS:
        p = f"blocks.{i}.mlp"
        state[f"{p}.phi"] = rand(CORE + UNIV, 1, DIM, scale=1.0)
        state[f"{p}.slot_norm.weight"] = 1 + rand(DIM)
        state[f"{p}.slot_norm.bias"] = rand(DIM)
        state[f"{p}.scales.0"] = torch.tensor(0.5) + rand(1).squeeze().abs()
        state[f"{p}.scales.1"] = torch.tensor(0.3) + rand(1).squeeze().abs()
        for path, n, hidden in (("core", CORE, 4 * DIM), ("univ", UNIV, DIM)):
            state[f"{p}.{path}_experts.vit_fc1.weight"] = rand(n, hidden, DIM, scale=0.05)
            state[f"{p}.{path}_experts.vit_fc1.bias"] = rand(n, hidden)
            state[f"{p}.{path}_experts.vit_fc2.weight"] = rand(n, DIM, hidden, scale=0.05)
            state[f"{p}.{path}_experts.vit_fc2.bias"] = rand(n, DIM)
    return state


class ReleaseDualPath(nn.Module):
    """The release's DualPathSoftMoELayerWrapper.forward in eval mode, op by op, on their weights."""

    def __init__(self, state: dict, prefix: str) -> None:
        super().__init__()
        self.w = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}

    def forward(self, x):
        w = self.w
        l2norm = lambda t: t * (1 / (torch.sqrt(torch.sum(t ** 2, dim=-1, keepdim=True)) + 1e-6))  # noqa: E731
        key = l2norm(x)
        query = l2norm(F.layer_norm(w["phi"], (DIM,), w["slot_norm.weight"], w["slot_norm.bias"], eps=1e-5))
        logits = torch.einsum("b n d, e s d->b n e s", key, query)
        dispatch_logits, combine_logits = logits / w["scales.0"], logits / w["scales.1"]
        noise = torch.normal(mean=0, std=1, size=logits.shape) * NOISE_MULT  # added in eval too
        dispatch_logits, combine_logits = dispatch_logits + noise, combine_logits + noise
        z = dispatch_logits - dispatch_logits.amax(dim=-3, keepdim=True)
        dispatch = torch.exp(z) / torch.exp(z).sum(dim=-3, keepdim=True)
        combine = entmax15(combine_logits.flatten(start_dim=-2), dim=-1)
        slots = torch.einsum("... n d, ... n e s -> ... e s d", x, dispatch)

        def experts(path, s):
            h = torch.einsum("b e s d, e h d -> b e s h", s, w[f"{path}_experts.vit_fc1.weight"])
            h = F.gelu(h + w[f"{path}_experts.vit_fc1.bias"][None, :, None])
            y = torch.einsum("b e s h, e d h -> b e s d", h, w[f"{path}_experts.vit_fc2.weight"])
            return y + w[f"{path}_experts.vit_fc2.bias"][None, :, None]

        out = torch.cat((experts("core", slots[:, :CORE]), experts("univ", slots[:, CORE:])), dim=1)
        out = out.flatten(1, 2)  # b e s d -> b (e s) d
        return torch.einsum("... s d, ... n s -> ... n d", out, combine)


def release_model(state: dict) -> nn.Module:
    model = dense_vit()
    model.load_state_dict({k: v for k, v in state.items() if not any(
        k.startswith(f"blocks.{i}.mlp.") for i in MOE_LAYERS)}, strict=False)
    for i in MOE_LAYERS:
        model.blocks[i].mlp = ReleaseDualPath(state, f"blocks.{i}.mlp")
    return model.eval()


def save_mmengine_checkpoint(path, state, monkeypatch):
    """Wrap ``state`` as MMEngine's CheckpointHook does, with a message-hub object of an mmengine class."""
    module = types.ModuleType("mmengine.logging.history_buffer")

    class HistoryBuffer:
        def __init__(self):
            self._log_history, self._count_history = np.array([2.31, 2.05]), np.array([1, 1])

    HistoryBuffer.__module__, HistoryBuffer.__qualname__ = module.__name__, "HistoryBuffer"
    module.HistoryBuffer = HistoryBuffer
    with monkeypatch.context() as m:  # the class exists only while pickling: loading must not need it
        for name in ("mmengine", "mmengine.logging"):
            m.setitem(sys.modules, name, types.ModuleType(name))
        m.setitem(sys.modules, module.__name__, module)
        torch.save({"meta": {"mmengine_version": "0.10.4", "epoch": 300, "seed": 3407, "time": "20240601_120000"},
                    "state_dict": state,
                    "message_hub": {"log_scalars": {"train/loss": HistoryBuffer()}, "runtime_info": {"iter": 93600}},
                    "optimizer": {"state": {}, "param_groups": [{"lr": 4e-5, "params": [0, 1]}]}}, path)


def test_converted_release_checkpoint_gives_the_release_forward_pass(tmp_path, capsys, monkeypatch):
    state = release_state()
    save_mmengine_checkpoint(tmp_path / "epoch_300.pth", state, monkeypatch)
    assert "mmengine.logging.history_buffer" not in sys.modules
    assert main(["convert", str(tmp_path / "epoch_300.pth"), "--out", str(tmp_path / "ours.safetensors")]) == 0
    assert "2 MoE blocks (2 core / 4 universal experts)" in capsys.readouterr().out
    ours, name, kwargs = build_from_checkpoint(tmp_path / "ours.safetensors")
    assert name == "vjetmoe_tiny_patch16_224" and kwargs["moe_layers"] == list(MOE_LAYERS)
    ours.eval()
    theirs = release_model(state)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.manual_seed(7)  # the release adds router noise in eval: the same generator state for both
        expected = theirs(x)
        torch.manual_seed(7)
        got = ours(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.manual_seed(8)
        assert not torch.allclose(ours(x), got)  # the noise is really there, as in the release


def test_plain_state_dict_with_prefix_converts_too(tmp_path, capsys):
    state = release_state(1)
    torch.save({f"model.{k}": v for k, v in state.items()}, tmp_path / "init.pth")  # a recycled-init style file
    assert main(["convert", str(tmp_path / "init.pth"), "--out", str(tmp_path / "o.safetensors")]) == 0
    ours = build_from_checkpoint(tmp_path / "o.safetensors")[0]
    torch.testing.assert_close(ours.blocks[1].mlp.queries, state["blocks.1.mlp.phi"].reshape(CORE + UNIV, DIM))
    torch.testing.assert_close(ours.blocks[2].mlp.combine_temperature, state["blocks.2.mlp.scales.1"])


@pytest.mark.parametrize("case,expected", [
    ("truncated", "cannot read"),
    ("not_moe", "has no blocks.N.mlp.phi: it is not a MoE Jetpack checkpoint"),
    ("no_slot_norm", "slot_layernorm=False"),
    ("extra_key", "does not match the model architecture: 1 unexpected keys (e.g. blocks.1.mlp.extra)"),
])
def test_bad_release_files_are_one_line_errors(tmp_path, capsys, case, expected):
    state = release_state()
    path = tmp_path / "x.pth"
    if case == "truncated":
        torch.save(state, path)
        path.write_bytes(path.read_bytes()[:5000])
    else:
        if case == "not_moe":
            state = {k: v for k, v in state.items() if ".mlp.phi" not in k}
        elif case == "no_slot_norm":
            state = {k: v for k, v in state.items() if "slot_norm" not in k}
        else:
            state["blocks.1.mlp.extra"] = torch.zeros(1)
        torch.save(state, path)
    assert main(["convert", str(path), "--out", str(tmp_path / "o.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err
    assert not (tmp_path / "o.safetensors").exists()
