"""What ``moejet recycle`` does before writing: load the predecessor, the dense part and the calibration data from
files (or timm's hub), then :func:`~moejet.recycle.api.recycle`. ``moejet train`` runs the same for
``model.init: recycle``."""

from __future__ import annotations

import sys
import time
from typing import Any

import torch

from ..device import resolve_device
from ..errors import UserError
from ..options import RecycleContext, RecycleOptions
from .api import recycle
from .load import calibration_loader, load_dense_state, load_predecessor, resolve_predecessor

AUTO = "auto"  # --successor auto / model.name: auto
AUTO_MODEL = "jetmoe"  # what it builds: moejet.models.jetmoe on the source's architecture
SOURCE_ONLY_KWARGS = ("num_classes", "pretrained_cfg", "pretrained_cfg_overlay")  # the successor's own head / cfg


def resolve_successor(
    successor: str, successor_kwargs: dict[str, Any], *, predecessor: str | None,
    predecessor_checkpoint: str | None, predecessor_kwargs: dict[str, Any] | None = None,
    dense_checkpoint: str | None = None, dense_model: str | None = None, dense_kwargs: dict[str, Any] | None = None,
) -> tuple[str, dict[str, Any]]:
    """``(timm name, kwargs)`` of the successor. ``successor="auto"``: ``jetmoe`` built on the architecture of the
    dense checkpoint (named by ``dense_model`` or its moejet header), else of the predecessor, with the source's
    kwargs (its class count aside) under ``successor_kwargs`` (the MoE arguments, or any override)."""
    if successor != AUTO:
        if dense_model or dense_kwargs:
            raise UserError("--dense-model / --dense-arg describe the dense checkpoint for --successor auto; an "
                            f"explicit successor ({successor}) loads it into its own dense twin: drop them")
        return successor, dict(successor_kwargs)
    if dense_checkpoint:
        name, kwargs = resolve_predecessor(dense_model, dense_checkpoint, dense_kwargs, "--dense-model",
                                           "dense checkpoint's model")
    elif dense_model or dense_kwargs:
        raise UserError("--dense-model / --dense-arg describe a --dense-checkpoint: pass the checkpoint too, or "
                        "drop them")
    else:
        if not predecessor and not predecessor_checkpoint:
            raise UserError("--successor auto builds on the predecessor's architecture: name it with --predecessor")
        name, kwargs = resolve_predecessor(predecessor, predecessor_checkpoint, predecessor_kwargs) \
            if predecessor_checkpoint else (predecessor, dict(predecessor_kwargs or {}))
    base_kwargs = {k: v for k, v in kwargs.items() if k not in SOURCE_ONLY_KWARGS}
    return AUTO_MODEL, {"base": name, **base_kwargs, **successor_kwargs}


def recycle_sources(
    *, predecessor: str | None, predecessor_checkpoint: str | None, pretrained: bool,
    predecessor_kwargs: dict[str, Any], dense_checkpoint: str | None, successor: str,
    successor_kwargs: dict[str, Any], dense_model: str | None = None, dense_kwargs: dict[str, Any] | None = None,
    calib_data: str = "synthetic", calib_images: int = 1024, calib_img_size: int | None = None,
    data_root: str | None = None, batch_size: int = 64, workers: int = 2, device: str = "auto", progress: bool = True,
    options: RecycleOptions | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """What ``moejet recycle`` does before writing: load the predecessor, the dense part and the calibration data
    (each argument is the flag of the same name), recycle with ``options``, and complete the report. Also
    ``model.init: recycle`` of ``moejet train``. ``successor="auto"``: see :func:`resolve_successor`; the report
    names the model built. Returns ``(state dict of the successor, report)``."""
    t0 = time.perf_counter()
    options = options or RecycleOptions()
    options.check(RecycleContext(dense=dense_checkpoint is not None, calibration=calib_images > 0))  # before any file
    seed = options.seed
    successor, successor_kwargs = resolve_successor(
        successor, successor_kwargs, predecessor=predecessor, predecessor_checkpoint=predecessor_checkpoint,
        predecessor_kwargs=predecessor_kwargs, dense_checkpoint=dense_checkpoint, dense_model=dense_model,
        dense_kwargs=dense_kwargs)
    pred_kwargs = dict(predecessor_kwargs)
    dev = resolve_device(device)
    pred_name = predecessor
    if predecessor_checkpoint:
        pred_name, pred_kwargs = resolve_predecessor(pred_name, predecessor_checkpoint, pred_kwargs)
    pred_model = load_predecessor(pred_name, predecessor_checkpoint, pretrained, pred_kwargs)
    head = {"num_classes": int(getattr(pred_model, "num_classes", 0))}  # recycle()'s default: the predecessor's
    dense = load_dense_state(dense_checkpoint, successor, {**head, **successor_kwargs}, seed) \
        if dense_checkpoint else None
    loader, calib = None, None
    if calib_images > 0:
        loader, calib = calibration_loader(calib_data, pred_model, calib_images, batch_size, seed, workers,
                                           calib_img_size, data_root, pin_memory=dev.type == "cuda")
    load_s = time.perf_counter() - t0
    state, report = recycle(pred_model, successor, successor_kwargs, loader, options, dense, dev, progress)
    report["predecessor"].update(checkpoint=predecessor_checkpoint, pretrained=pretrained, kwargs=pred_kwargs)
    report["predecessor"]["name"] = pred_name or report["predecessor"]["name"]
    report["dense_checkpoint"] = dense_checkpoint
    if calib is not None:
        report["calibration"] = {**calib, **(report["calibration"] or {})}
        if "warning" in calib:  # once the recycling went through: a failed run's error stays the only line
            print(f"moejet: warning: {calib['warning']}", file=sys.stderr)
    report["timings"] = {"load_s": round(load_s, 4), **report["timings"],
                         "total_s": round(time.perf_counter() - t0, 4)}
    report["device"] = str(dev)
    return state, report
