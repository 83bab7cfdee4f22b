"""Test-wide settings and the fixtures several test folders share.

Threads: one intra-op thread per pytest-xdist worker. Two workers each running torch's default thread pool on a
2-core machine oversubscribe the cores, and OpenMP's spinning threads then make small ops tens of times slower.

Fixtures: tiny model kwargs (``tiny_vit``, ``tiny_convnext``, ``tiny_moe``), the tiny training config
(``train_vit``, ``tiny_config``), files written for runs (``write_config``), the NaN fault (``nan_loss_at_step``),
subprocess environments (``moejet_env``), and the recycling predecessors (``recycle_files`` and its helpers).
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import MappingProxyType, SimpleNamespace

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

import moejet  # noqa: F401  (registers the models)
from moejet.recycle.layout import blocks

from .helpers.nan_loss_at_step import install_nan_loss

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by subprocesses (torchrun, CLI runs)
    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One thread for every test, with or without xdist: runs compared bit for bit must see the same count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------- tiny models

TINY_VIT = MappingProxyType(dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, num_classes=10))
TINY_CONVNEXT = MappingProxyType(dict(dims=(8, 16, 32, 64), depths=(1, 1, 2, 1), num_classes=10))
# MoE blocks on top of the tiny architectures: 2 of 4 ViT blocks; ConvNeXt stages 3 and 4's last blocks
MOE = {"vit": dict(moe_layers=(2, 3), core_experts=2, univ_experts=4),
       "convnext": dict(moe_layers=(3, 4), core_experts=(0, 0, 2, 2), univ_experts=(0, 0, 4, 4))}


@pytest.fixture(scope="session")
def tiny_vit():
    """A 4-block, 32-wide ViT at 32 px with 10 classes (read-only: copy it with ``dict(tiny_vit, ...)``)."""
    return TINY_VIT


@pytest.fixture(scope="session")
def tiny_convnext():
    """A 5-block ConvNeXt (stages 8, 16, 32, 64 wide) with 10 classes (read-only)."""
    return TINY_CONVNEXT


@pytest.fixture(scope="session")
def tiny_moe():
    """``tiny_moe(family, **overrides)``: the tiny ViT ("vit") or ConvNeXt ("convnext") kwargs with MoE blocks."""

    def kwargs(family, **overrides):
        base = TINY_VIT if family == "vit" else TINY_CONVNEXT
        return {**base, **MOE[family], **overrides}

    return kwargs


# ------------------------------------------------------------------------------------------- tiny training runs

# the model of tiny_config (no img_size: data.img_size sets it)
TRAIN_VIT = MappingProxyType({"patch_size": 8, "embed_dim": 32, "depth": 4, "num_heads": 2, "moe_layers": [2, 3],
                              "core_experts": 4, "univ_experts": 8})
NO_AUGMENT = {"auto_augment": None, "mixup": 0.0, "cutmix": 0.0, "random_erasing": 0.0, "label_smoothing": 0.0,
              "scale": [1.0, 1.0], "hflip": 0.0, "color_jitter": 0.0}  # scale 1: the crop keeps the whole image
SYNTHETIC = "synthetic-downstream:size=32,classes=4,per_class=8,val_per_class=4"


def _tiny_config(**sections):
    from moejet.train.config import config_from_dict

    raw = {
        "name": "tiny",
        "model": {"name": "vjetmoe_tiny_patch16_224", "kwargs": dict(TRAIN_VIT), "drop_path_rate": 0.0},
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


@pytest.fixture(scope="session")
def train_vit():
    """The model kwargs of ``tiny_config``: the tiny ViT with MoE blocks 2 and 3 (4 core, 8 universal experts)."""
    return TRAIN_VIT


@pytest.fixture(scope="session")
def tiny_config():
    """``tiny_config(**sections)``: a 2-epoch run of the tiny ViT on 32 synthetic 32-px images (4 classes) at batch
    8, without augmentation; each keyword updates (dict) or replaces (anything else) that config section."""
    return _tiny_config


@pytest.fixture(scope="session")
def tiny_config_dict():
    """``tiny_config_dict(**sections)``: ``tiny_config(**sections)`` resolved, as the dict its config.yaml holds."""
    from moejet.train.config import dump_config

    return lambda **sections: yaml.safe_load(dump_config(_tiny_config(**sections)))


@pytest.fixture(scope="session")
def write_config():
    """``write_config(path, raw_dict)``: the dict as a YAML config file; returns the path."""

    def write(path, config_dict):
        path.write_text(yaml.safe_dump(config_dict))
        return path

    return write


@pytest.fixture(scope="session")
def comparable():
    """``comparable(rows)``: metrics rows without their timings, to compare two runs."""

    def strip(rows):
        drop = {"images_per_s", "epoch_time_s", "wall_time_s"}
        return [{k: v for k, v in row.items() if k not in drop} for row in rows]

    return strip


@pytest.fixture
def nan_loss_at_step(monkeypatch):
    """``nan_loss_at_step(k)``: from now on in this test, training's loss is NaN at optimizer step k (1-based,
    counted from the start of each ``train`` call). ``monkeypatch.undo()`` removes the fault."""
    return lambda k: install_nan_loss(k, monkeypatch.setattr)


@pytest.fixture(scope="session")
def torchrun(moejet_env):
    """``torchrun(*args, nproc=2, program=("-m", "moejet"))``: ``program *args --no-progress`` under torchrun with
    ``nproc`` CPU (gloo) processes; returns the finished process (stdout and stderr captured)."""

    def run(*args, nproc=2, program=("-m", "moejet")):
        return subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
             *map(str, program), *map(str, args), "--no-progress"],
            env=moejet_env, capture_output=True, text=True, timeout=300)

    return run


@pytest.fixture(scope="session")
def moejet_env():
    """The environment for a ``python -m moejet`` / torchrun subprocess: this checkout's src/, one thread."""
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="session")
def folder_run(tmp_path_factory):
    """A finished run on one's own images, as a new user makes it: recycled from a local predecessor file (named
    like timm's Hub model, ``vit_small_patch16_224.augreg_in21k``, but never downloaded), calibrated and trained for
    one 2-step epoch on a class-per-folder tree (classes ``red``, ``green``, ``blue``). Returns ``{"run", "data",
    "predecessor"}`` (read-only: copy the run to change it)."""
    from moejet.io.weights import save_model
    from moejet.train import train

    from .helpers.images import colour_folder

    root = tmp_path_factory.mktemp("folder_run")
    data = colour_folder(root / "my photos", per_class=4, val_per_class=2, classes=("red", "green", "blue"))
    pred_kwargs = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 4, "num_heads": 2, "num_classes": 10}
    torch.manual_seed(0)
    predecessor = root / "vit_small_patch16_224.augreg_in21k.safetensors"
    save_model(timm.create_model("vit_small_patch16_224", **pred_kwargs), predecessor, "vit_small_patch16_224",
               pred_kwargs)
    recycle = {"predecessor": "vit_small_patch16_224.augreg_in21k", "predecessor_checkpoint": str(predecessor),
               "calib_data": f"folder:{data}", "calib_images": 6, "batch_size": 6, "workers": 0}
    config = _tiny_config(model={"init": "recycle"}, recycle=recycle, data={"dataset": f"folder:{data}"},
                          schedule={"epochs": 1}, train={"max_steps_per_epoch": 2, "batch_size": 4})
    train(config, root / "run", progress=False, verbose=False)
    return MappingProxyType({"run": root / "run", "data": data, "predecessor": predecessor})


# ------------------------------------------------------------------------------------------- recycling

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


def _make_predecessor(name, kwargs, seed=0):
    """A random-init predecessor whose odd channels and first-half neurons are clearly the important ones."""
    torch.manual_seed(seed)
    model = timm.create_model(name, **kwargs).eval()
    with torch.no_grad():
        for b in blocks(model):
            b.module.mlp.fc1.weight[: b.hidden // 2] *= 4.0
            if name.startswith("vit"):
                b.module.norm2.weight[RECIPE.hot_channels] *= 10.0
    return model


@pytest.fixture(scope="session")
def recipe():
    """The recycling test recipe: predecessor / successor kwargs of both families (``pred_vit``, ``succ_vit``,
    ``pred_cnx``, ``succ_cnx``), the channels importance must pick (``hot_channels``) and the strategies."""
    return RECIPE


@pytest.fixture(scope="session")
def make_predecessor():
    """``make_predecessor(name, kwargs, seed=0)``: a timm model whose odd channels / first-half neurons matter most."""
    return _make_predecessor


@pytest.fixture(scope="session")
def recycle_files(tmp_path_factory):
    """Predecessors for recycling: a ViT (safetensors) and a ConvNeXt (.pth), both twice the successors' width, and
    a same-width ViT as a dense checkpoint; with the models themselves."""
    root = tmp_path_factory.mktemp("recycle")
    vit = _make_predecessor("vit_small_patch16_224", RECIPE.pred_vit)
    cnx = _make_predecessor("convnext_tiny", RECIPE.pred_cnx)
    save_file(vit.state_dict(), str(root / "vit.safetensors"))
    torch.save(cnx.state_dict(), root / "cnx.pth")
    torch.manual_seed(1)
    dense = timm.create_model("vit_small_patch16_224", **dict(RECIPE.pred_vit, embed_dim=32))
    save_file(dense.state_dict(), str(root / "vit_dense.safetensors"))
    return {"root": root, "vit": vit, "cnx": cnx, "vit_file": root / "vit.safetensors", "cnx_file": root / "cnx.pth",
            "dense_file": root / "vit_dense.safetensors"}


def _args_of(kwargs, flag="--successor-arg"):
    out = []
    for k, v in kwargs.items():
        out += [flag, f"{k}={tuple(v) if isinstance(v, (list, tuple)) else v}"]
    return out


@pytest.fixture(scope="session")
def args_of():
    """``args_of(kwargs, flag="--successor-arg")``: kwargs as repeated ``FLAG key=value`` arguments."""
    return _args_of


@pytest.fixture(scope="session")
def run_recycle():
    """``run_recycle(files, out, family="vit", strategy="importance", succ=None, extra=(), seed=0)``: ``moejet
    recycle`` from ``recycle_files``' ViT or ConvNeXt into the tiny successor (12 synthetic calibration images);
    returns the exit code."""
    from moejet.cli import main

    def run(files, out, family="vit", strategy="importance", succ=None, extra=(), seed=0):
        pred = ["--predecessor", "vit_small_patch16_224", "--predecessor-checkpoint", str(files["vit_file"])]
        pred += _args_of(dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=2), "--predecessor-arg")
        name = "vjetmoe_tiny_patch16_224"
        if family == "cnx":
            pred = ["--predecessor", "convnext_tiny", "--predecessor-checkpoint", str(files["cnx_file"]),
                    *_args_of(dict(dims=(16, 32, 64, 128), depths=(1, 1, 2, 1)), "--predecessor-arg"),
                    "--calib-img-size", "32"]
            name = "cjetmoe_femto"
        succ = succ if succ is not None else (RECIPE.succ_vit if family == "vit" else RECIPE.succ_cnx)
        argv = ["recycle", *pred, "--successor", name, *_args_of(succ), "--strategy", strategy,
                "--calib-data", "synthetic:size=32", "--calib-images", "12", "--batch-size", "6", "--workers", "0",
                "--device", "cpu", "--seed", str(seed), "--graph-parts", "8", "--out", str(out), *extra]
        return main(argv)

    return run


@pytest.fixture(scope="session")
def calib_batches():
    """``calib_batches(seed=0, n=3)``: n batches of 6 random 32-px images."""

    def batches(seed=0, n=3):
        g = torch.Generator().manual_seed(seed)
        return [torch.randn(6, 3, 32, 32, generator=g) for _ in range(n)]

    return batches


def _recover_rows(rows, reference):
    """The row of ``reference`` each row of ``rows`` equals (-1 where none does)."""
    match = (rows[:, None, :] == reference[None, :, :]).all(dim=-1)  # (rows, reference rows)
    return torch.where(match.any(dim=1), match.float().argmax(dim=1), torch.tensor(-1))


@pytest.fixture(scope="session")
def check_experts():
    """``check_experts(model, pred, report)``: each expert's weights are predecessor slices, found from the weights
    alone: its fc1 rows are matched to rows of the predecessor's fc1 (at the expert's channels: the reported shared
    set, or its own set under expert_channels=per_expert), which recovers its neuron indices; they must equal the
    report's, and fc2 columns and both biases must be the same slices. Returns ``{block key: {path: [recovered
    indices of each expert]}}``."""

    def check(model, pred, report):
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

    return check


# ------------------------------------------------------------------------------------------- layers


@pytest.fixture(scope="session")
def randomize():
    """``randomize(layer)``: non-trivial values everywhere (biases, norm affine) so equalities test every term."""

    def fill(layer):
        with torch.no_grad():
            for p in layer.parameters():
                if p.ndim == 0:
                    p.fill_(0.3 + torch.rand(()).item())
                else:
                    p.normal_(0, 0.5)
        return layer

    return fill


@pytest.fixture(scope="session")
def reference_experts():
    """``reference_experts(experts, x)``: a per-expert loop with nn.functional.linear, the definition batched experts
    must match (``x``: (experts, tokens, dim))."""
    import torch.nn.functional as F

    def run(experts, x):
        outs = []
        for e in range(experts.num_experts):
            h = F.gelu(F.linear(x[e], experts.fc1_weight[e], experts.fc1_bias[e]))
            outs.append(F.linear(h, experts.fc2_weight[e], experts.fc2_bias[e]))
        return torch.stack(outs)

    return run


def _run_with_grads(layer, x, seed=0):
    """Output, input gradient and every parameter gradient of ``sum(layer(x) * w)`` for a fixed random ``w``."""
    layer.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    torch.manual_seed(seed)
    y = layer(x)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(1)))
    return [y.detach(), x.grad] + [p.grad for p in layer.parameters()]


@pytest.fixture(scope="session")
def run_with_grads():
    """``run_with_grads(layer, x, seed=0)``: [output, input grad, each parameter's grad] of ``sum(layer(x) * w)``."""
    return _run_with_grads


class _Reference(torch.nn.Module):
    """``reference(layer, x)`` as a module whose parameters are ``layer``'s, in the same order."""

    def __init__(self, layer, reference) -> None:
        super().__init__()
        self.layer, self.reference = layer, reference

    def forward(self, x):
        return self.reference(self.layer, x)


@pytest.fixture(scope="session")
def assert_matches_reference():
    """``assert_matches_reference(layer, x, reference)``: the layer gives ``reference(layer, x)``'s output and every
    gradient, in float64 so that summation-order differences (~1e-16) cannot hide a wrong term."""

    def check(layer, x, reference):
        layer, x = layer.double(), x.double()
        expected = _run_with_grads(_Reference(layer, reference), x)
        got = _run_with_grads(layer, x)
        names = ["output", "input grad"] + [name for name, _ in layer.named_parameters()]
        for name, a, b in zip(names, expected, got, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")

    return check


# ------------------------------------------------------------------------------------------- analysis

TINY_ANALYSIS = SimpleNamespace(
    vit="vjetmoe_tiny_patch16_224",
    vit_kw=dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, moe_layers=(2, 3), core_experts=4,
                univ_experts=8, num_classes=10),
    cnx="cjetmoe_femto",
    cnx_kw=dict(dims=(8, 16, 24, 32), depths=(1, 1, 2, 2), moe_layers=(2, 3, 4, 5), core_experts=(0, 0, 2, 2),
                univ_experts=(0, 0, 4, 4), num_classes=10),
    data="synthetic-downstream:size=32,per_class=1,val_per_class=1",
)
WROTE_PNG = re.compile(r"wrote (\S+\.png) \((\d+)x(\d+) px\)")


@pytest.fixture(scope="session")
def tiny_analysis():
    """The models the analysis tests look into: ``vit`` / ``cnx`` names with their kwargs ``vit_kw`` / ``cnx_kw``
    (several MoE layers each), and ``data``, a one-image-per-class dataset spec."""
    return TINY_ANALYSIS


@pytest.fixture(scope="session")
def analysis_models():
    """Random-init models by kind: "vit", "vit-2slots" (2 slots per expert), "softmoe", "convnext"."""
    a = TINY_ANALYSIS
    torch.manual_seed(0)
    return {
        "vit": timm.create_model(a.vit, **a.vit_kw),
        "vit-2slots": timm.create_model(a.vit, **a.vit_kw, slots_per_expert=2),
        "softmoe": timm.create_model("softmoe_vit_tiny_patch16_224", **{**a.vit_kw, "num_experts": 6}),
        "convnext": timm.create_model(a.cnx, **a.cnx_kw),
    }


@pytest.fixture(scope="session")
def analysis_files(tmp_path_factory):
    """Model files (MoE ViT "vit", MoE ConvNeXt "cnx", a ViT without MoE layers "dense"), an image and a file that
    is no image, in one directory ("root")."""
    from moejet.io.weights import save_model

    a = TINY_ANALYSIS
    root = tmp_path_factory.mktemp("analysis")
    torch.manual_seed(0)
    paths = {"root": root, "vit": root / "vit.safetensors", "cnx": root / "cnx.safetensors",
             "dense": root / "dense.safetensors", "image": root / "image.png", "bad_image": root / "broken.png"}
    save_model(timm.create_model(a.vit, **a.vit_kw), paths["vit"], a.vit, a.vit_kw)
    save_model(timm.create_model(a.cnx, **a.cnx_kw), paths["cnx"], a.cnx, a.cnx_kw)
    dense_kw = {**a.vit_kw, "moe_layers": ()}
    save_model(timm.create_model(a.vit, **dense_kw), paths["dense"], a.vit, dense_kw)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(paths["image"])
    paths["bad_image"].write_text("not an image")
    return paths


def _assert_png(path, size):
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size == size
        assert np.asarray(img.convert("RGB"), dtype=np.float64).std() > 0


@pytest.fixture(scope="session")
def assert_png():
    """``assert_png(path, (width, height))``: a PNG of that size that is not blank."""
    return _assert_png


@pytest.fixture(scope="session")
def stated_pngs():
    """``stated_pngs(output)``: ``{file name: (width, height)}`` of each "wrote X.png (WxH px)" line, after checking
    that each file is such a PNG."""

    def found(out):
        pngs = {Path(m[1]).name: (int(m[2]), int(m[3])) for m in WROTE_PNG.finditer(out)}
        for name, size in pngs.items():
            _assert_png(next(Path(m[1]) for m in WROTE_PNG.finditer(out) if Path(m[1]).name == name), size)
        return pngs

    return found


@pytest.fixture(scope="session")
def write_metrics():
    """``write_metrics(run_dir, top1s, seconds_per_epoch)``: a metrics.jsonl with one row per epoch."""

    def write(run, top1, seconds_per_epoch):
        run.mkdir(parents=True, exist_ok=True)
        with open(run / "metrics.jsonl", "w") as f:
            for epoch, acc in enumerate(top1, 1):
                f.write(json.dumps({"epoch": epoch, "train_loss": 1.0, "val_top1": acc, "val_top5": 99.0, "lr": 1e-3,
                                    "images_per_s": 10.0, "epoch_time_s": seconds_per_epoch,
                                    "wall_time_s": seconds_per_epoch * epoch, "temperatures": {}}) + "\n")

    return write
