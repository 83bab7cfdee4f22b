"""``moejet demo --pretrain``: regenerate the demo's shipped predecessors from scratch.

Both predecessors are trained on ``synthetic-upstream`` (the ImageNet-21k stand-in) with the training
engine, and their last weights are copied into the package's ``assets/`` with a JSON record of how.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from ..io.files import atomic_output, write_json
from ..rundir import LAST
from ..train import train
from ..train.config import config_from_dict
from .setup import ASSET_S, ASSET_T, PREDECESSOR_S, PREDECESSOR_T, Budget

ASSETS = Path(__file__).resolve().parent.parent / "assets"
RECORD = "demo_predecessors.json"
ABLATION = "demo_ablation.json"  # benchmarks/ablation_recycling.py's summary, quoted by the demo report
REGIME = "demo_regime.json"  # benchmarks/regime.py's summary (when recycling pays), quoted by the demo report


def pretrain_config(role: str, model: tuple[str, dict[str, Any]], budget: Budget, device: str) -> dict[str, Any]:
    name, kwargs = model
    return {
        "name": f"demo-pretrain-{role}",
        "description": f"demo predecessor {role}: {name} pre-trained on {budget.pretrain_upstream}",
        "model": {"name": name, "kwargs": kwargs, "init": "scratch", "drop_path_rate": 0.0},
        "data": {"dataset": budget.pretrain_upstream, "img_size": 32, "num_workers": 0, "crop_pct": 1.0},
        # light augmentation: tiny ViTs from scratch sit on a loss plateau for several epochs under RandAugment
        "augment": {"auto_augment": None, "color_jitter": 0.0, "scale": [0.8, 1.0], "random_erasing": 0.0,
                    "mixup": 0.0, "cutmix": 0.0, "label_smoothing": 0.0},
        "optim": {"lr": 1e-3, "weight_decay": 0.05, "layer_decay": None, "clip_grad": 5.0},
        "schedule": {"epochs": budget.pretrain_epochs, "warmup_epochs": min(1, budget.pretrain_epochs - 1)},
        "train": {"batch_size": 64, "seed": 0, "device": device, "amp": "none", "eval_every": 5},
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pretrain(work_dir: Path, budget: Budget, device: str, assets: Path = ASSETS,
             roles: tuple[str, ...] = ("S", "T")) -> dict[str, Any]:
    """Train the predecessors ``roles`` under ``work_dir`` and install them into ``assets``; returns the record.

    Roles can be trained by separate processes (e.g. one per core); each updates its entry of the record.
    """
    for role, model, asset in (("S", PREDECESSOR_S, ASSET_S), ("T", PREDECESSOR_T, ASSET_T)):
        if role not in roles:
            continue
        config = config_from_dict(pretrain_config(role, model, budget, device))
        run_dir = work_dir / f"pretrain-{role}"
        start = time.perf_counter()
        metrics = train(config, run_dir)
        with atomic_output(assets / asset) as tmp:
            shutil.copyfile(run_dir / LAST, tmp)
        record = load_record(assets) if (assets / RECORD).is_file() else {"predecessors": {}}
        record.pop("created", None)  # each entry carries its own creation time
        record.update(machine=platform.platform(), torch=torch.__version__, command="moejet demo --pretrain")
        record["predecessors"][role] = {
            "file": asset, "model": model[0], "kwargs": model[1], "data": budget.pretrain_upstream,
            "epochs": budget.pretrain_epochs, "upstream_val_top1": metrics[-1]["val_top1"],
            "upstream_val_curve": [[row["epoch"], row["val_top1"]] for row in metrics if "val_top1" in row],
            "train_time_s": round(time.perf_counter() - start, 1), "sha256": sha256(assets / asset),
            "created": time.strftime("%Y-%m-%d %H:%M:%S"), "threads": torch.get_num_threads(),
        }
        write_json(assets / RECORD, record)
        print(f"predecessor {role}: upstream val top-1 {metrics[-1]['val_top1']:.1f}% -> {assets / asset}")
    return load_record(assets)


def load_record(assets: Path = ASSETS) -> dict[str, Any]:
    return json.loads((assets / RECORD).read_text())
