"""Mixup / CutMix drawn once per optimizer step (timm's batch-mode draw), applied to each micro-batch."""

from __future__ import annotations

import torch
from timm.data import Mixup
from timm.data.mixup import cutmix_bbox_and_lam, mixup_target


@torch.no_grad()
def draw_mix(mixup: Mixup, image_shape: torch.Size) -> tuple[float, tuple[int, int, int, int] | None]:
    """``(lambda, cutmix box (y0, y1, x0, x1) or None)``: timm's per-batch draw, made once per optimizer step so the
    mixing strength does not depend on the micro batch."""
    lam, use_cutmix = mixup._params_per_batch()
    if lam == 1.0 or not use_cutmix:
        return float(lam), None
    box, lam = cutmix_bbox_and_lam(image_shape, lam, ratio_minmax=mixup.cutmix_minmax, correct_lam=mixup.correct_lam)
    return float(lam), box


def apply_mix(images: torch.Tensor, targets: torch.Tensor, mixup: Mixup, lam: float,
              box: tuple[int, int, int, int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's batch-mode mix of (B, C, H, W) ``images`` with their reverse (``flip(0)``) under a given draw.

    Unlike timm's ``Mixup.__call__`` an odd B works: the middle image pairs with itself (it stays unmixed and
    its target is its own label-smoothed one-hot), so a smaller last micro-batch needs no special case.
    """
    if lam != 1.0:
        if box is None:
            images = images * lam + images.flip(0) * (1.0 - lam)
        else:
            y0, y1, x0, x1 = box
            images = images.clone()
            images[:, :, y0:y1, x0:x1] = images.flip(0)[:, :, y0:y1, x0:x1]
    return images, mixup_target(targets, mixup.num_classes, lam, mixup.label_smoothing)
