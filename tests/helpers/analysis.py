"""Analysis test helpers: the tiny models the analysis looks into, PNG checks, and metrics files to plot."""

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

# ``vit`` / ``cnx`` names with their kwargs ``vit_kw`` / ``cnx_kw`` (several MoE layers each), and ``data``, a
# one-image-per-class dataset spec
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


def assert_png(path, size):
    """A PNG of that (width, height) that is not blank."""
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size == size
        assert np.asarray(img.convert("RGB"), dtype=np.float64).std() > 0


def stated_pngs(out):
    """``{file name: (width, height)}`` of each "wrote X.png (WxH px)" line of ``out``, after checking that each file
    is such a PNG."""
    pngs = {Path(m[1]).name: (int(m[2]), int(m[3])) for m in WROTE_PNG.finditer(out)}
    for name, size in pngs.items():
        assert_png(next(Path(m[1]) for m in WROTE_PNG.finditer(out) if Path(m[1]).name == name), size)
    return pngs


def write_metrics(run, top1, seconds_per_epoch):
    """A metrics.jsonl in ``run`` with one row per epoch (top-1 of ``top1``)."""
    run.mkdir(parents=True, exist_ok=True)
    with open(run / "metrics.jsonl", "w") as f:
        for epoch, acc in enumerate(top1, 1):
            f.write(json.dumps({"epoch": epoch, "train_loss": 1.0, "val_top1": acc, "val_top5": 99.0, "lr": 1e-3,
                                "images_per_s": 10.0, "epoch_time_s": seconds_per_epoch,
                                "wall_time_s": seconds_per_epoch * epoch, "temperatures": {}}) + "\n")
