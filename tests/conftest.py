"""Test-wide settings and the fixtures several test folders share; a folder's own fixtures are in its conftest.py,
and helper functions and constants in tests/helpers/.

Threads: one intra-op thread per pytest-xdist worker. Two workers each running torch's default thread pool on a
2-core machine oversubscribe the cores, and OpenMP's spinning threads then make small ops tens of times slower.

Fixtures: ``folder_run`` (a finished run on one's own images), ``recycle_files`` (the recycling predecessors) and
``analysis_files`` (model and image files to analyse).
"""

import os
from types import MappingProxyType

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

import moejet  # noqa: F401  (registers the models)

from .helpers.analysis import TINY_ANALYSIS
from .helpers.images import colour_folder
from .helpers.recycling import RECIPE, make_predecessor
from .helpers.runs import tiny_config

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by subprocesses (torchrun, CLI runs)
    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One thread for every test, with or without xdist: runs compared bit for bit must see the same count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def folder_run(tmp_path_factory):
    """A finished run on one's own images, as a new user makes it: recycled from a local predecessor file (named
    like timm's Hub model, ``vit_small_patch16_224.augreg_in21k``, but never downloaded), calibrated and trained for
    one 2-step epoch on a class-per-folder tree (classes ``red``, ``green``, ``blue``). Returns ``{"run", "data",
    "predecessor"}`` (read-only: copy the run to change it)."""
    from moejet.io.weights import save_model
    from moejet.train import train

    root = tmp_path_factory.mktemp("folder_run")
    data = colour_folder(root / "my photos", per_class=4, val_per_class=2, classes=("red", "green", "blue"))
    pred_kwargs = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 4, "num_heads": 2, "num_classes": 10}
    torch.manual_seed(0)
    predecessor = root / "vit_small_patch16_224.augreg_in21k.safetensors"
    save_model(timm.create_model("vit_small_patch16_224", **pred_kwargs), predecessor, "vit_small_patch16_224",
               pred_kwargs)
    recycle = {"predecessor": "vit_small_patch16_224.augreg_in21k", "predecessor_checkpoint": str(predecessor),
               "calib_data": f"folder:{data}", "calib_images": 6, "batch_size": 6, "workers": 0}
    config = tiny_config(model={"init": "recycle"}, recycle=recycle, data={"dataset": f"folder:{data}"},
                         schedule={"epochs": 1}, train={"max_steps_per_epoch": 2, "batch_size": 4})
    train(config, root / "run", progress=False, verbose=False)
    return MappingProxyType({"run": root / "run", "data": data, "predecessor": predecessor})


@pytest.fixture(scope="session")
def recycle_files(tmp_path_factory):
    """Predecessors for recycling: a ViT (safetensors) and a ConvNeXt (.pth), both twice the successors' width, and
    a same-width ViT as a dense checkpoint; with the models themselves."""
    root = tmp_path_factory.mktemp("recycle")
    vit = make_predecessor("vit_small_patch16_224", RECIPE.pred_vit)
    cnx = make_predecessor("convnext_tiny", RECIPE.pred_cnx)
    save_file(vit.state_dict(), str(root / "vit.safetensors"))
    torch.save(cnx.state_dict(), root / "cnx.pth")
    torch.manual_seed(1)
    dense = timm.create_model("vit_small_patch16_224", **dict(RECIPE.pred_vit, embed_dim=32))
    save_file(dense.state_dict(), str(root / "vit_dense.safetensors"))
    return {"root": root, "vit": vit, "cnx": cnx, "vit_file": root / "vit.safetensors", "cnx_file": root / "cnx.pth",
            "dense_file": root / "vit_dense.safetensors"}


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
