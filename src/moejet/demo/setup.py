"""The demo's miniature world: data, architectures, recipe and arms, in one place.

Roles mirror the paper at 1/4 width and half depth on 32x32 images (64 patches of 4x4):

- predecessor "S" (the ViT-S/16 in21k role): d=96, 6 blocks, 3 heads, pre-trained on ``synthetic-upstream``;
- predecessor "T" (the ViT-T/16 in21k role): d=48, 6 blocks, 3 heads, pre-trained on the same data;
- mini V-JetMoE: the T architecture with SpheroMoE in blocks 4:6 (0-based 3..5), 32 core experts
  (hidden 192 = 4d) and 64 universal experts (hidden 48): N/2 and N for N = 64 patches, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

UPSTREAM = "synthetic-upstream:size=32"
DOWNSTREAM = "synthetic-downstream:size=32"
UPSTREAM_CLASSES = 100  # synthetic-upstream's default

VIT = dict(img_size=32, patch_size=4, depth=6, num_heads=3)  # timm defaults: class token pooling
PREDECESSOR_S = ("vit_small_patch16_224", dict(VIT, embed_dim=96))
PREDECESSOR_T = ("vit_tiny_patch16_224", dict(VIT, embed_dim=48))
MOE_LAYERS = (3, 4, 5)
JETMOE = ("vjetmoe_tiny_patch16_224", dict(VIT, embed_dim=48, moe_layers=MOE_LAYERS, core_experts=32,
                                           univ_experts=64))
SOFTMOE = ("softmoe_vit_tiny_patch16_224", dict(VIT, embed_dim=48, moe_layers=MOE_LAYERS, num_experts=65))
# Sparse Upcycling on the same successor as MoE Jetpack, so the two arms differ only in their initial weights:
# core experts are copies of T's MLP, universal experts evenly spaced cuts of it (moejet.recycle, "upcycle").
UPCYCLE = JETMOE

ASSET_S, ASSET_T = "demo_predecessor_s.safetensors", "demo_predecessor_t.safetensors"


def recipe(epochs: int, warmup: int, batch: int, lr: float, seed: int, device: str, eval_every: int = 1
           ) -> dict[str, Any]:
    """The paper's recipe (App. B; docs/training.md) shrunk to a CPU budget, identical for every arm. Fixed before any
    arm was run and never tuned on the downstream val split. Mixup / cutmix are off: with 25 images per class and
    40 epochs they leave the tiny models too few clean examples (the paper trains 600 epochs on such sets)."""
    return {
        "data": {"img_size": 32, "num_workers": 0, "interpolation": "bicubic", "crop_pct": 1.0},
        "augment": {"auto_augment": "rand-m9-mstd0.5-inc1", "scale": [0.6, 1.0], "random_erasing": 0.25,
                    "mixup": 0.0, "cutmix": 0.0, "label_smoothing": 0.1},
        "optim": {"lr": lr, "weight_decay": 0.05, "layer_decay": None, "clip_grad": 5.0},
        "schedule": {"epochs": epochs, "warmup_epochs": warmup},
        "train": {"batch_size": batch, "seed": seed, "device": device, "amp": "none", "eval_every": eval_every},
    }


@dataclass(frozen=True)
class Arm:
    """One fine-tuning run of the comparison: a model and where its initial weights come from."""

    key: str
    label: str
    model: tuple[str, dict[str, Any]]
    init: str  # "scratch" | "dense-T" (the T predecessor) | "recycle:<strategy>"
    optional: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


ARMS = (
    Arm("dense_scratch", "Dense (scratch)", PREDECESSOR_T, "scratch"),
    Arm("dense_pretrained", "Dense (pre-trained)", PREDECESSOR_T, "dense-T"),
    Arm("softmoe_scratch", "Soft MoE (scratch)", SOFTMOE, "scratch"),
    Arm("moe_jetpack", "MoE Jetpack", JETMOE, "recycle:importance"),
    Arm("softmoe_recycled", "Soft MoE + recycling", SOFTMOE, "recycle:importance", optional=True),
    Arm("sparse_upcycling", "Sparse Upcycling + SpheroMoE", UPCYCLE, "recycle:upcycle", optional=True),
)
HEADLINE = "moe_jetpack"


@dataclass(frozen=True)
class Budget:
    """Sizes that set the demo's run time."""

    epochs: int
    warmup: int
    batch: int
    lr: float
    downstream: str
    calib_images: int
    eval_every: int = 1
    # the predecessors (our choice: the paper starts from timm's in21k checkpoints): the same recipe for S and T,
    # 40 epochs on 150 images per class, long enough that the wider S ends clearly stronger upstream (the paper's
    # premise: experts come from a larger, stronger checkpoint; measured S 52.6% vs T 44.5%, both curves flat over
    # the last 5 epochs); 50 val images per class, so the S - T margin is measured to about +-1.9 points (95%)
    pretrain_epochs: int = 40
    pretrain_upstream: str = UPSTREAM + ",per_class=150,val_per_class=50"
    # the last epoch's weights of every arm are scored on this val split (a superset of the training-time val
    # split: synthetic images are fixed per index), large enough that a paired 95% interval on a difference of
    # two arms is about +-2 points
    final_val: str = DOWNSTREAM


FULL = Budget(epochs=40, warmup=5, batch=64, lr=1e-3, downstream=DOWNSTREAM, calib_images=512, eval_every=2,
              final_val=DOWNSTREAM + ",val_per_class=150")
QUICK = Budget(epochs=2, warmup=0, batch=32, lr=1e-3, downstream=DOWNSTREAM + ",per_class=8,val_per_class=8,classes=8",
               calib_images=64, pretrain_epochs=1, pretrain_upstream=UPSTREAM + ",per_class=4,val_per_class=2",
               final_val=DOWNSTREAM + ",per_class=8,val_per_class=8,classes=8")
