"""Predictions on image files: a trained run or a published model, with its own eval transform and class names.

    >>> model = load_predictor(run="runs/flowers")              # or model="local-dir:PATH" / "hf-hub:ID"
    >>> for p in predict(model, image_files(["photos/"]), top_k=3):
    ...     print(p.file, p.top[0])                               # photos/rose.jpg ('rose', 0.93)

A run is rebuilt from its last committed weights (``RUN/last.safetensors``) and preprocessed as its validation
images were (the run config's size, crop, interpolation and normalisation); a published folder or Hub model as
its ``config.json`` says (timm's ``resolve_data_config``). Class names come from ``RUN/classes.json`` or the
published ``label_names`` (:mod:`moejet.io.labels`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torchvision.datasets.folder import IMG_EXTENSIONS

from .errors import UserError

PREFIXES = ("local-dir:", "hf-hub:")


@dataclass
class Predictor:
    """A model in eval mode with its class names (``labels[i]`` names logit ``i``) and its eval transform
    (PIL image -> normalised (3, H, W) tensor)."""

    model: nn.Module
    labels: list[str]
    transform: Callable
    source: str


@dataclass
class Prediction:
    file: str
    top: list[tuple[str, float]]  # (class name, probability), most probable first


def load_predictor(run: str | os.PathLike | None = None, model: str | None = None) -> Predictor:
    """The model of a ``moejet train`` run directory (``run``) or a published one (``model``: ``local-dir:PATH``,
    ``hf-hub:ID`` or a moejet ``.safetensors`` file), with its class names and eval transform."""
    from timm.data import create_transform, resolve_data_config

    from .io.labels import read_labels

    if (run is None) == (model is None):
        raise UserError("name one model: --run RUN_DIR or --model local-dir:PATH|hf-hub:ID")
    if run is not None:
        net, settings, source = _run_model(Path(run))
        labels, where = read_labels(run), f"{run}/classes.json"
    elif model.startswith(PREFIXES):
        net, settings, source = _published_model(model), {}, model
        labels, where = net.pretrained_cfg.get("label_names"), f"{model}'s config.json (label_names)"
    else:
        from .io.weights import build_from_checkpoint

        net, source = build_from_checkpoint(model, drop_path_rate=0.0)[0], model
        settings, labels, where = {}, read_labels(model), f"classes.json next to {model}"
    if not labels:
        raise UserError(f"{source} has no class names ({where} is missing): retrain it with this moejet, or write "
                        f"{where} as {{\"label_names\": [...]}} in label order")
    classes = getattr(net, "num_classes", len(labels))
    if len(labels) != classes:
        raise UserError(f"{where} names {len(labels)} classes but {source} predicts {classes}: fix the file")
    transform = create_transform(**resolve_data_config(settings, model=net), is_training=False)
    return Predictor(net.eval(), list(labels), transform, source)


def _run_model(run: Path) -> tuple[nn.Module, dict, str]:
    """The run's last weights and its validation preprocessing (:func:`moejet.data.config.data_settings`)."""
    from .data.config import data_settings
    from .io.hub import resolve_source
    from .io.weights import build_from_checkpoint
    from .rundir import CONFIG_FILE
    from .train.config import load_config

    if not (run / CONFIG_FILE).is_file():
        raise UserError(f"{run} is not a moejet run directory (no {CONFIG_FILE}): pass a `moejet train` run directory")
    weights, _ = resolve_source(run)
    net = build_from_checkpoint(weights, drop_path_rate=0.0)[0]
    return net, data_settings(load_config(run / CONFIG_FILE).data, net), str(run)


def _published_model(spec: str) -> nn.Module:
    import moejet.models  # noqa: F401  (registers the MoE architectures a published config names)

    from .io.download import create_pretrained

    if spec.startswith("local-dir:") and not Path(spec.removeprefix("local-dir:")).is_dir():
        raise UserError(f"--model {spec}: no such folder; pass a folder written by moejet publish --out")
    return create_pretrained(spec, "--model local-dir:PATH (its folder)")


def image_files(inputs: list[str | os.PathLike]) -> list[Path]:
    """The image files named by ``inputs``: files as given, folders searched recursively (sorted, images by their
    extension). A missing path or a folder without images is a UserError."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_file():
            files.append(item)
        elif item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
            if not found:
                raise UserError(f"folder {item} holds no images ({', '.join(IMG_EXTENSIONS)}): pass image files or "
                                "a folder of them")
            files += found
        else:
            raise UserError(f"{item} does not exist: pass image files or folders")
    if not files:
        raise UserError("no images given: pass image files or folders")
    return files


def predict(predictor: Predictor, files: list[Path], top_k: int = 5, batch_size: int = 32,
            device: str = "auto") -> Iterator[Prediction]:
    """The ``top_k`` classes of each image, batch by batch, in the order of ``files``."""
    from .data.datasets import LOAD_ERRORS, load_rgb
    from .device import resolve_device

    device_ = resolve_device(device)
    model = predictor.model.to(device_)
    k = min(top_k, len(predictor.labels))
    for start in range(0, len(files), batch_size):
        batch = files[start:start + batch_size]
        images = []
        for path in batch:
            try:
                images.append(predictor.transform(load_rgb(str(path))))
            except LOAD_ERRORS as err:
                raise UserError(f"cannot read image {path} ({type(err).__name__}: {' '.join(str(err).split())}): "
                                "remove it or pass readable images") from None
        with torch.inference_mode():
            probs = model(torch.stack(images).to(device_)).float().softmax(dim=-1).cpu()
        values, indices = probs.topk(k, dim=-1)
        for path, v, i in zip(batch, values.tolist(), indices.tolist()):
            yield Prediction(str(path), [(predictor.labels[c], p) for c, p in zip(i, v)])
