"""A user's first hour from a built wheel: installed into a fresh virtual environment (no checkout on ``sys.path``),
``moejet train --config <packaged name>`` on a folder of one's own images with a local predecessor file (no network),
then ``moejet predict`` on that folder, from a directory outside the repository.

The new environment borrows this interpreter's installed dependencies (torch is 5 GB) through a ``.pth`` file naming
its site-packages directories; ``.pth`` files inside those (an editable install of a checkout) are not processed, so
the only moejet it can import is the wheel's, which the test checks. About 40 s on 2 CPU cores.
"""

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import timm
import torch

from moejet.io.weights import save_model

from .helpers.images import colour_folder

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("blue", "green", "red")
# the tiny architecture and data, as --set overrides of the packaged config (everything else is the paper's recipe)
TINY = ["data.img_size=32", "data.num_workers=0", "model.kwargs.patch_size=8", "model.kwargs.embed_dim=32",
        "model.kwargs.depth=4", "model.kwargs.num_heads=2", "model.kwargs.moe_layers=[2, 3]",
        "model.kwargs.core_experts=2", "model.kwargs.univ_experts=4", "schedule.epochs=1", "schedule.warmup_epochs=0",
        "train.batch_size=6", "train.device=cpu", "train.telemetry_images=0", "recycle.calib_images=6",
        "recycle.batch_size=6", "recycle.workers=0"]


def build_wheel(out: Path) -> Path:
    """The wheel of a copy of this checkout's sources (the build's scratch files stay out of the checkout)."""
    source = out / "source"
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(out), str(source)], check=True, capture_output=True, text=True)
    return next(out.glob("moe_jetpack-*.whl"))


def fresh_venv(path: Path) -> Path:
    """A virtual environment without moejet whose imports fall back on this interpreter's installed packages."""
    venv.EnvBuilder(with_pip=False).create(path)
    python = path / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    deps = dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    Path(purelib, "borrowed_dependencies.pth").write_text("".join(f"{d}\n" for d in deps if Path(d).is_dir()))
    return python


def test_wheel_in_a_fresh_venv_trains_a_packaged_config_and_predicts_folder_names(tmp_path):
    wheel = build_wheel(tmp_path / "dist")
    python = fresh_venv(tmp_path / "venv")
    # --ignore-installed: the borrowed dependencies hold this checkout's own (editable) moe-jetpack of the same
    # version, which pip would otherwise take as already installed and skip the wheel
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
                    "--ignore-installed", str(wheel)], check=True, capture_output=True, text=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")  # no network: nothing may be downloaded
    home = tmp_path / "home"  # the user's own directory, outside the repository
    home.mkdir()

    def run(*argv: str) -> subprocess.CompletedProcess:
        done = subprocess.run([str(python.parent / "moejet"), *argv], cwd=home, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done

    probe = ("import moejet, moejet.configs as c; print(moejet.__file__); "
             "print(c.resolve_config('table1_vit_t_jetpack_flowers'))")
    where, config = subprocess.run([python, "-c", probe], cwd=home, env=env, check=True, capture_output=True,
                                   text=True).stdout.split()
    assert Path(where).is_relative_to(tmp_path / "venv"), f"moejet imported from {where}, not the wheel"
    assert Path(config).is_relative_to(tmp_path / "venv")  # the packaged configs came with the wheel

    data = colour_folder(home / "photos", per_class=4, val_per_class=2, classes=CLASSES)
    pred_kwargs = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 4, "num_heads": 2}
    torch.manual_seed(0)
    save_model(timm.create_model("vit_small_patch16_224", **pred_kwargs), home / "vit_small.safetensors",
               "vit_small_patch16_224", pred_kwargs)
    sets = [f"data.dataset=folder:{data}", "recycle.pretrained=false",
            "recycle.predecessor_checkpoint=vit_small.safetensors", "recycle.dense_checkpoint=null",
            f"recycle.calib_data=folder:{data}", *TINY]
    run("train", "--config", "table1_vit_t_jetpack_flowers", *[a for s in sets for a in ("--set", s)],
        "--out", "runs/photos", "--no-progress")
    assert json.loads((home / "runs/photos/classes.json").read_text())["label_names"] == list(CLASSES)

    rows = [line.split("  ") for line in run("predict", "--run", "runs/photos", "photos/val", "--top-k", "1")
            .stdout.splitlines()]
    assert sorted(r[0] for r in rows) == sorted(str(p.relative_to(home)) for p in (data / "val").rglob("*.png"))
    assert {r[1] for r in rows} <= set(CLASSES)
