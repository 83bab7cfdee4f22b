"""Recycling test helpers: the recipe (predecessor and successor kwargs), predecessors whose important channels and
neurons are known, ``moejet recycle`` on them, calibration batches, and a check that experts are predecessor slices."""

from types import SimpleNamespace

import timm
import torch

import moejet  # noqa: F401  (registers the models)
from moejet.recycle.layout import blocks

# predecessor / successor kwargs of both families (pred_vit, succ_vit, pred_cnx, succ_cnx), the channels importance
# must pick (hot_channels) and the strategies
RECIPE = SimpleNamespace(
    pred_vit=dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=2, num_classes=10),
    succ_vit=dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, moe_layers=(2, 3), core_experts=3,
                  univ_experts=6, num_classes=10),
    pred_cnx=dict(dims=(16, 32, 64, 128), depths=(1, 1, 2, 1), num_classes=10),
    succ_cnx=dict(dims=(8, 16, 32, 64), depths=(1, 1, 2, 1), moe_layers=(3, 4), core_experts=(0, 0, 2, 2),
                  univ_experts=(0, 0, 4, 4), num_classes=10),
    hot_channels=list(range(1, 64, 2)),  # norm2 scaled up: importance must pick exactly these
    strategies=("importance", "graph", "uniform", "random", "upcycle"),
)


def make_predecessor(name, kwargs, seed=0):
    """A random-init timm model whose odd channels and first-half neurons are clearly the important ones."""
    torch.manual_seed(seed)
    model = timm.create_model(name, **kwargs).eval()
    with torch.no_grad():
        for b in blocks(model):
            b.module.mlp.fc1.weight[: b.hidden // 2] *= 4.0
            if name.startswith("vit"):
                b.module.norm2.weight[RECIPE.hot_channels] *= 10.0
    return model


def args_of(kwargs, flag="--successor-arg"):
    """kwargs as repeated ``FLAG key=value`` arguments."""
    out = []
    for k, v in kwargs.items():
        out += [flag, f"{k}={tuple(v) if isinstance(v, (list, tuple)) else v}"]
    return out


def run_recycle(files, out, family="vit", strategy="importance", succ=None, extra=(), seed=0):
    """``moejet recycle`` from ``recycle_files``' ViT or ConvNeXt into the tiny successor (12 synthetic calibration
    images); returns the exit code."""
    from moejet.cli import main

    pred = ["--predecessor", "vit_small_patch16_224", "--predecessor-checkpoint", str(files["vit_file"])]
    pred += args_of(dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=2), "--predecessor-arg")
    name = "vjetmoe_tiny_patch16_224"
    if family == "cnx":
        pred = ["--predecessor", "convnext_tiny", "--predecessor-checkpoint", str(files["cnx_file"]),
                *args_of(dict(dims=(16, 32, 64, 128), depths=(1, 1, 2, 1)), "--predecessor-arg"),
                "--calib-img-size", "32"]
        name = "cjetmoe_femto"
    succ = succ if succ is not None else (RECIPE.succ_vit if family == "vit" else RECIPE.succ_cnx)
    argv = ["recycle", *pred, "--successor", name, *args_of(succ), "--strategy", strategy,
            "--calib-data", "synthetic:size=32", "--calib-images", "12", "--batch-size", "6", "--workers", "0",
            "--device", "cpu", "--seed", str(seed), "--graph-parts", "8", "--out", str(out), *extra]
    return main(argv)


def calib_batches(seed=0, n=3):
    """n batches of 6 random 32-px images."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(6, 3, 32, 32, generator=g) for _ in range(n)]


def _recover_rows(rows, reference):
    """The row of ``reference`` each row of ``rows`` equals (-1 where none does)."""
    match = (rows[:, None, :] == reference[None, :, :]).all(dim=-1)  # (rows, reference rows)
    return torch.where(match.any(dim=1), match.float().argmax(dim=1), torch.tensor(-1))


def check_experts(model, pred, report):
    """Each expert's weights are predecessor slices, found from the weights alone: its fc1 rows are matched to rows
    of the predecessor's fc1 (at the expert's channels: the reported shared set, or its own set under
    expert_channels=per_expert), which recovers its neuron indices; they must equal the report's, and fc2 columns and
    both biases must be the same slices. Returns ``{block key: {path: [recovered indices of each expert]}}``."""
    pred_state, state = pred.state_dict(), model.state_dict()
    recovered = {}
    for key, paths in report["neuron_indices"].items():
        name = report["moe_blocks"][key]["name"]
        stage = 0 if name.startswith("blocks") else int(name.split(".")[1])
        shared = report["channel_indices"][stage]
        own = (report.get("expert_channel_indices") or {}).get(key, {})
        w1, b1 = pred_state[f"{name}.mlp.fc1.weight"].flatten(1), pred_state[f"{name}.mlp.fc1.bias"]
        w2, b2 = pred_state[f"{name}.mlp.fc2.weight"].flatten(1), pred_state[f"{name}.mlp.fc2.bias"]
        for path, attr in (("core", "core_experts"), ("univ", "univ_experts")):
            p = f"{name}.mlp.{attr}."
            found = []
            for e in range(state[p + "fc1_weight"].shape[0] if p + "fc1_weight" in state else 0):
                c = torch.tensor(own[path][e] if path in own else shared)
                idx = _recover_rows(state[p + "fc1_weight"][e], w1[:, c])
                assert (idx >= 0).all(), f"{p}{e}: an fc1 row that is no predecessor row"
                assert len(set(idx.tolist())) == len(idx), f"{p}{e}: a neuron taken twice"
                assert torch.equal(state[p + "fc1_bias"][e], b1[idx]), f"{p}{e} fc1 bias"
                assert torch.equal(state[p + "fc2_weight"][e], w2[c][:, idx]), f"{p}{e} fc2 columns"
                assert torch.equal(state[p + "fc2_bias"][e], b2[c]), f"{p}{e} fc2 bias"
                found.append(idx.tolist())
            assert found == paths.get(path, []), f"{name} {path}: the weights hold other neurons than reported"
            recovered.setdefault(key, {})[path] = found
    return recovered
