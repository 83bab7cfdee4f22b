"""Inputs of ``moejet recycle``: the predecessor (a file or timm's pretrained weights), a dense checkpoint for
the successor's dense part, and the calibration images (preprocessed as the predecessor's timm data config)."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset

from ..errors import UserError, first_line
from ..io.download import create_pretrained
from ..io.weights import (
    KWARGS_KEY,
    MODEL_KEY,
    build_from_checkpoint,
    load_into,
    load_state_dict,
    read_metadata,
    timm_layout,
)
from ..models.common import BUILD_ERRORS
from .api import build_successor
from .layout import axis_roles, family, final_norm_alias
from .tokens import convert_tokens, state_token_layout, token_layout

NUMPY_SUFFIXES = (".npz", ".npy")
PREDECESSOR_FILE_HINT = "--predecessor-checkpoint FILE (instead of --pretrained)"  # moejet recycle's flags


def _create(name: str, role: str, **kwargs: Any) -> nn.Module:
    if not timm.is_model(name):
        raise UserError(f"unknown {role} model {name!r}: pass a timm model name (e.g. vit_small_patch16_224)")
    try:
        return timm.create_model(name, **kwargs)
    except BUILD_ERRORS as err:
        raise UserError(f"cannot build {role} {name} with {kwargs}: {err}") from None


def _classifier_keys(model: nn.Module) -> list[str]:
    fam = family(model, "model")
    return [k for k in model.state_dict() if (axis_roles(k, fam) or (None,))[0] == "cls"]


def _npz_num_classes(path: Path) -> int | None:
    """Classes of a big_vision / JAX ``.npz`` ViT checkpoint (its ``head/kernel``), if it has a head."""
    try:
        with np.load(path) as w:
            heads = [k for k in w.files if k.endswith("head/kernel")]
            return int(w[heads[0]].shape[-1]) if heads else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise UserError(f"cannot read checkpoint {path} ({type(err).__name__}: {err}); it may be truncated: "
                        "re-create or re-download it") from None


def _load_numpy(model: nn.Module, path: Path, source: str) -> None:
    if not hasattr(model, "load_pretrained"):
        raise UserError(f"{source}: .npz checkpoints load only into timm ViTs; convert it to .safetensors or .pth")
    try:
        timm.models.load_checkpoint(model, str(path))
    except (KeyError, RuntimeError, ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        raise UserError(f"{source} does not match the model architecture or is damaged "
                        f"({type(err).__name__}: {first_line(err)}); check the model name and its "
                        "arguments") from None


def header_model(path: str | os.PathLike | None) -> tuple[str, dict[str, Any]] | None:
    """``(model name, kwargs)`` from a moejet safetensors header (see moejet.io.weights.save_model), else None."""
    if not path or Path(path).suffix.lower() != ".safetensors" or not Path(path).is_file():
        return None
    try:
        meta = read_metadata(path)
    except UserError:  # unreadable: the weights loader reports it
        return None
    if MODEL_KEY not in meta:
        return None
    try:
        return meta[MODEL_KEY], json.loads(meta.get(KWARGS_KEY, "{}"))
    except json.JSONDecodeError:
        raise UserError(f"checkpoint {path} has a damaged moejet header (model kwargs are not JSON): re-create "
                        "it") from None


def resolve_predecessor(name: str | None, checkpoint: str | os.PathLike | None, kwargs: dict[str, Any] | None = None,
                        flag: str = "--predecessor", role: str = "predecessor") -> tuple[str, dict[str, Any]]:
    """The timm name and kwargs of the model in ``checkpoint``: explicit ones, completed by its moejet header.

    The header's kwargs are defaults that explicit ``kwargs`` override; an explicit ``name`` must name the
    header's architecture (pretrained tags aside). ``flag`` / ``role``: the option that names the model and what
    it is, in messages (``--predecessor`` / ``predecessor``, ``--dense-model`` / ``dense checkpoint's model``).
    """
    kwargs = dict(kwargs or {})
    if checkpoint and not Path(checkpoint).is_file():
        raise UserError(f"checkpoint {checkpoint} does not exist: check the path")
    header = header_model(checkpoint)
    if header is None:
        if not name:
            raise UserError(f"name the {role}: pass {flag} MODEL (only a moejet .safetensors file, whose header "
                            "names its model, can go without)")
        return name, kwargs
    saved, saved_kwargs = header
    if name and timm.models.split_model_name_tag(name)[0] != timm.models.split_model_name_tag(saved)[0]:
        raise UserError(f"{flag} {name} contradicts checkpoint {checkpoint}, whose header names {saved}: "
                        f"drop {flag} or pass the checkpoint of that model")
    return name or saved, {**saved_kwargs, **kwargs}


def load_predecessor(name: str | None, checkpoint: str | os.PathLike | None = None, pretrained: bool = False,
                     kwargs: dict[str, Any] | None = None) -> nn.Module:
    """The dense predecessor with its weights, in eval mode on the CPU.

    ``checkpoint``: ``.safetensors``, ``.pth``/``.pt``/``.bin`` (``weights_only``) or a big_vision ``.npz``;
    the number of classes is read from the checkpoint's classifier unless ``kwargs`` sets ``num_classes``.
    A moejet ``.safetensors`` file names its model and kwargs: ``name`` may then be None (see
    :func:`resolve_predecessor`). ``pretrained``: timm's hosted weights (needs the network).
    """
    name, kwargs = resolve_predecessor(name, checkpoint, kwargs) if checkpoint else (name, dict(kwargs or {}))
    if not name:
        raise UserError("name the predecessor: pass --predecessor MODEL")
    if checkpoint and pretrained:
        raise UserError("pass either --predecessor-checkpoint or --pretrained, not both")
    if not checkpoint and not pretrained:
        raise UserError("the predecessor needs weights: pass --predecessor-checkpoint FILE or --pretrained")
    if pretrained:
        _create(name, "predecessor", **kwargs)  # a bad name or argument is reported as such, not as a download error
        return create_pretrained(name, PREDECESSOR_FILE_HINT, **kwargs).eval()
    path = Path(checkpoint)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: check the path")
    if path.suffix.lower() in NUMPY_SUFFIXES:
        if "num_classes" not in kwargs:
            num_classes = _npz_num_classes(path)
            kwargs["num_classes"] = 0 if num_classes is None else num_classes
        model = _create(name, "predecessor", **kwargs)
        _load_numpy(model, path, f"checkpoint {path}")
        return model.eval()
    state = load_state_dict(path)
    model = _create(name, "predecessor", **kwargs)
    family(model, "predecessor")
    state = timm_layout(state, model)
    if "num_classes" not in kwargs:
        fam = family(model, "predecessor")
        heads = [k for k in {*_classifier_keys(model), *state} if (axis_roles(k, fam) or (None,))[0] == "cls"]
        weight = next((k for k in sorted(heads) if k.endswith("weight")), None)
        classes = int(state[weight].shape[0]) if weight in state else (0 if weight else None)  # SigLIP: 0 by default
        if classes is not None and classes != model.num_classes:
            model = _create(name, "predecessor", **dict(kwargs, num_classes=classes))
    load_into(model, state, f"checkpoint {path}")
    return model.eval()


def load_dense_state(path: str | os.PathLike, successor: str, successor_kwargs: dict[str, Any],
                     seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights for the successor's dense part from a same-width dense checkpoint (e.g. ViT-T for V-JetMoE-T).

    The file is loaded strictly into the successor's dense twin (the same model with no MoE blocks), so a
    checkpoint of another architecture is a UserError. A classifier for a different number of classes, or none
    (DINOv2 ships without one), is left out: the successor keeps its fresh head.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"dense checkpoint {path} does not exist: check the path")
    with torch.device("meta"):
        probe = build_successor(successor, successor_kwargs, seed)
    twin_kwargs = dict(successor_kwargs, moe_layers=()) if getattr(probe, "moe_layers", None) is not None \
        else dict(successor_kwargs)
    twin = build_successor(successor, twin_kwargs, seed)
    source = f"dense checkpoint {path}"
    heads = _classifier_keys(twin)
    if header_model(path) is not None:
        # a moejet file: rebuild the model it was saved from (strict load); recycle() then checks that every
        # non-MoE key of the successor is there with its shape, and keeps a fresh head for another class count
        own = twin.state_dict()
        model, _, _ = build_from_checkpoint(path)
        state = timm_layout(model.state_dict(), twin)  # a conv-MLP ConvNeXt file: its MLPs as Linear weights
        return {k: v.detach().clone() for k, v in state.items() if not (k in heads and v.shape != own[k].shape)}
    if path.suffix.lower() in NUMPY_SUFFIXES:
        _load_numpy(twin, path, source)
        state = twin.state_dict()
        if _npz_num_classes(path) != twin.num_classes:
            state = {k: v for k, v in state.items() if k not in heads}
        return {k: v.detach().clone() for k, v in state.items()}
    state = timm_layout(tokens_like(load_state_dict(path), twin, source), twin)
    own = twin.state_dict()
    dropped = [k for k in heads if k not in state or state[k].shape != own[k].shape]  # another head, or none
    # a checkpoint that pools differently (norm vs fc_norm) loads with its final norm renamed, and is returned
    # under its own name so recycle() applies its final_norm switch
    renamed = {k: alias for k in own if (alias := final_norm_alias(k, state)) is not None}
    moved = {k: state[a] for k, a in renamed.items()}
    state = {k: v for k, v in state.items() if k not in renamed.values()}
    load_into(twin, {**state, **{k: own[k] for k in dropped}, **moved}, source)
    return {renamed.get(k, k): v.detach().clone() for k, v in twin.state_dict().items() if k not in dropped}


def tokens_like(state: dict[str, torch.Tensor], model: nn.Module, source: str) -> dict[str, torch.Tensor]:
    """A ViT-family checkpoint's prefix tokens and position table in ``model``'s layout
    (:func:`~moejet.recycle.tokens.convert_tokens`; the checkpoint's layout read from its keys): tokens it lacks
    take ``model``'s own values. Other families' states are returned as they are."""
    if family(model, "dense checkpoint's model") == "convnext" or "blocks.0.norm1.weight" not in state:
        return state
    target = token_layout(model)
    fix = "or pass a checkpoint of the successor's dense counterpart"
    state, fresh, _ = convert_tokens(state, state_token_layout(state, target, source), target, fix,
                                     "dense checkpoint")
    own = model.state_dict()
    for key, rows in fresh.items():
        state[key][:, rows] = own[key][:, rows]
    return state


def calibration_input_size(model: nn.Module, img_size: int | None = None) -> tuple[int, int, int]:
    """The predecessor's input size: ``img_size`` if given, a ViT's own fixed size, else its data config."""
    if img_size:
        return (3, int(img_size), int(img_size))
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is not None and getattr(patch_embed, "img_size", None) is not None:
        return (3, *map(int, patch_embed.img_size))
    return tuple(timm.data.resolve_data_config({}, model=model)["input_size"])


def calibration_loader(spec: str, model: nn.Module, num_images: int, batch_size: int, seed: int = 0,
                       workers: int = 0, img_size: int | None = None, root: str | None = None,
                       pin_memory: bool = False
                       ) -> tuple[DataLoader, dict[str, Any]]:
    """A loader over ``num_images`` images of dataset ``spec`` (train split; a seeded random subset),
    preprocessed with the predecessor's timm eval transform; and a description for the report."""
    from ..data import build_dataset

    if num_images < 1 or batch_size < 1:
        raise UserError(f"--calib-images and --batch-size must be >= 1, got {num_images} and {batch_size}")
    config = timm.data.resolve_data_config({"input_size": calibration_input_size(model, img_size)}, model=model)
    transform = timm.data.create_transform(**config, is_training=False)
    dataset = build_dataset(spec, "train", transform=transform, root=root)
    if len(dataset) == 0:
        raise UserError(f"calibration data {spec!r} is empty: point --calib-data at a dataset with images")
    n = min(num_images, len(dataset))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    loader = DataLoader(Subset(dataset, order.tolist()), batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=pin_memory, drop_last=False)
    info = {"data": spec, "requested_images": num_images, "images": n, "batch_size": batch_size,
            "input_size": list(config["input_size"]), "mean": list(config["mean"]), "std": list(config["std"]),
            "interpolation": config["interpolation"], "crop_pct": config["crop_pct"]}
    if n < num_images:
        info["warning"] = (f"{num_images} calibration images asked for, {spec!r} has {n} training images: "
                           f"calibrated on all {n}")
    return loader, info
