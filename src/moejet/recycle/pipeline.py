"""What ``moejet recycle`` does before writing: load the predecessor, the dense part and the calibration data from
files (or timm's hub), then :func:`~moejet.recycle.api.recycle`. ``moejet train`` runs the same for
``model.init: recycle``."""

from __future__ import annotations

import time
from typing import Any

import torch

from ..device import resolve_device
from .api import check_options, recycle
from .load import calibration_loader, load_dense_state, load_predecessor, resolve_predecessor


def recycle_sources(
    *, predecessor: str | None, predecessor_checkpoint: str | None, pretrained: bool,
    predecessor_kwargs: dict[str, Any], dense_checkpoint: str | None, successor: str,
    successor_kwargs: dict[str, Any], strategy: str = "importance", calib_data: str = "synthetic",
    calib_images: int = 1024, calib_img_size: int | None = None, data_root: str | None = None, batch_size: int = 64,
    workers: int = 2, device: str = "auto", seed: int = 0, variant: str = "paper",
    switches: dict[str, str | None] | None = None, graph_parts: int = 32, coact_percentile: float = 90.0,
    progress: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """What ``moejet recycle`` does before writing: load the predecessor, the dense part and the calibration data
    (each argument is the flag of the same name), recycle, and complete the report. Also ``model.init: recycle``
    of ``moejet train``. Returns ``(state dict of the successor, report)``."""
    t0 = time.perf_counter()
    check_options(strategy, variant, graph_parts, coact_percentile, **(switches or {}))  # before loading any file
    pred_kwargs = dict(predecessor_kwargs)
    dev = resolve_device(device)
    pred_name = predecessor
    if predecessor_checkpoint:
        pred_name, pred_kwargs = resolve_predecessor(pred_name, predecessor_checkpoint, pred_kwargs)
    pred_model = load_predecessor(pred_name, predecessor_checkpoint, pretrained, pred_kwargs)
    dense = load_dense_state(dense_checkpoint, successor, successor_kwargs, seed) if dense_checkpoint else None
    loader, calib = None, None
    if calib_images > 0:
        loader, calib = calibration_loader(calib_data, pred_model, calib_images, batch_size, seed, workers,
                                           calib_img_size, data_root, pin_memory=dev.type == "cuda")
    load_s = time.perf_counter() - t0
    state, report = recycle(
        pred_model, successor, successor_kwargs, strategy, loader, dense, seed=seed, device=dev,
        graph_parts=graph_parts, coact_percentile=coact_percentile, progress=progress,
        calib_batches=len(loader) if loader is not None else None, predecessor_name=pred_name,
        variant=variant, **(switches or {}),
    )
    report["predecessor"].update(checkpoint=predecessor_checkpoint, pretrained=pretrained, kwargs=pred_kwargs)
    report["dense_checkpoint"] = dense_checkpoint
    if calib is not None:
        report["calibration"] = {**calib, **(report["calibration"] or {})}
    report["timings"] = {"load_s": round(load_s, 4), **report["timings"],
                         "total_s": round(time.perf_counter() - t0, 4)}
    report["device"] = str(dev)
    return state, report
