"""Model weight files: safetensors that carry the timm model name and kwargs needed to rebuild them.

Files are written atomically (:func:`moejet.io.files.atomic_output`). User files are read with safetensors or
``torch.load(weights_only=True)``; objects a pickle holds besides tensors are read into inert stand-ins
(:class:`Inert`), never imported or run.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from ..errors import UserError, first_line
from .files import atomic_output, plain_json

MODEL_KEY, KWARGS_KEY = "moejet.model", "moejet.model_kwargs"


def save_model(
    model: nn.Module | dict[str, torch.Tensor],
    path: str | os.PathLike,
    model_name: str,
    model_kwargs: dict[str, Any] | None = None,
    metadata: dict[str, str] | None = None,
) -> None:
    """Save weights as safetensors with the model's timm name and kwargs in the header (byte-reproducible)."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    header = {MODEL_KEY: model_name, KWARGS_KEY: json.dumps(plain_json(model_kwargs or {}))}
    header.update(metadata or {})
    with atomic_output(path) as tmp:
        save_file(state, str(tmp), metadata=header)
        _sort_header(tmp)  # same weights, same bytes


def _sort_header(path: Path) -> None:
    """Rewrite a safetensors header with sorted keys, in place.

    safetensors keeps the metadata in a hash map, so its header order (and the file's bytes) vary from run to
    run; sorted, the same weights always give the same bytes. Same content, so the same length: only the
    header bytes change (a longer header, never expected, is handled by rewriting the file).
    """
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        new = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        if len(new) <= n:
            f.seek(8)
            f.write(new + b" " * (n - len(new)))
            return
        data = f.read()
        new += b" " * (-len(new) % 8)
        f.seek(0)
        f.write(len(new).to_bytes(8, "little") + new + data)
        f.truncate()


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The safetensors header metadata of ``path`` (errors name the file and what to do)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: check the path")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(
            f"checkpoint {path} is not a readable safetensors file ({err}): re-create or re-download it"
        ) from None


# where training checkpoints keep their weights: timm train.py {'state_dict', 'state_dict_ema', 'args', ...},
# MMEngine {'meta', 'state_dict', 'optimizer', ...} and other {'model': ...} wrappers
WRAPPER_KEYS = {"model": ("state_dict", "model", "model_state", "module"), "ema": ("state_dict_ema", "model_ema")}


class Inert:
    """Stand-in for any non-tensor object of a checkpoint (timm's saved ``argparse.Namespace``, MMEngine buffers,
    numpy scalars): keeps its state, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state


def read_torch_file(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` with every global the file names besides torch's read as
    :class:`Inert`. Any failure is a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: check the path")
    try:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:  # noqa: BLE001  (not a zip checkpoint: the plain weights-only load below decides)
            unsafe = []
        with torch.serialization.safe_globals([(Inert, name) for name in unsafe]):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (a damaged pickle raises almost anything; every case is the user's file)
        if isinstance(err, pickle.UnpicklingError) and "GLOBAL" in str(err):  # a callable the weights-only unpickler
            raise UserError(                                                      # refuses (Inert takes the rest)
                f"checkpoint {path} holds pickled code or objects, which moejet never loads: convert it to "
                ".safetensors, or pass a file that holds only a state dict of tensors"
            ) from None
        msg = first_line(err)
        raise UserError(
            f"cannot read checkpoint {path} ({type(err).__name__}: {msg}); "
            "it may be truncated or not a weights file: re-create or re-download it"
        ) from None


def unwrap_state_dict(obj: Any, path: str | os.PathLike, weights: str = "model") -> dict[str, torch.Tensor]:
    """The state dict of tensors inside a loaded checkpoint ``obj``: itself, or the model (``weights="model"``) or
    EMA (``"ema"``) weights of a training checkpoint (:data:`WRAPPER_KEYS`)."""
    if weights not in WRAPPER_KEYS:
        raise UserError(f"weights={weights!r}: use one of {', '.join(WRAPPER_KEYS)}")
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        found = [k for k in WRAPPER_KEYS[weights] if isinstance(obj.get(k), dict)]
        if not found:
            if weights == "ema":
                raise UserError(f"checkpoint {path} holds no EMA weights (no {' / '.join(WRAPPER_KEYS['ema'])}): "
                                "use its model weights (model.init_checkpoint_weights=model)")
            raise UserError(f"checkpoint {path} holds no state dict (keys: {', '.join(map(str, list(obj)[:8]))}): "
                            "pass a weights file")
        obj = obj[found[0]]
    elif weights == "ema":
        raise UserError(f"checkpoint {path} is a plain weights file without EMA weights: "
                        "use model.init_checkpoint_weights=model")
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"checkpoint {path} does not hold a state dict of tensors: pass a weights file")
    return obj


def load_state_dict(path: str | os.PathLike, weights: str = "model") -> dict[str, torch.Tensor]:
    """Weights from ``.safetensors`` or ``.pth``/``.pt``/``.bin`` (:func:`read_torch_file`).

    Training checkpoints give their model weights, or their EMA weights with ``weights="ema"``
    (:func:`unwrap_state_dict`); a DDP ``module.`` prefix is removed.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise UserError(f"checkpoint {path} does not exist: check the path")
        try:
            obj = load_file(str(path))
        except Exception as err:  # noqa: BLE001
            msg = first_line(err)
            raise UserError(f"cannot read checkpoint {path} ({type(err).__name__}: {msg}); it may be truncated: "
                            "re-create or re-download it") from None
    else:
        obj = read_torch_file(path)
    state = unwrap_state_dict(obj, path, weights)
    return {k.removeprefix("module."): v for k, v in state.items()}


def timm_layout(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """``state`` in ``model``'s timm layout: through the family's ``checkpoint_filter_fn`` (original-format keys of
    official DeiT / ConvNeXt / EVA releases, position embeddings resized), the first one found along the model's
    class hierarchy; and 1x1-conv MLP weights reshaped to Linear ones or back (ConvNeXt-V2's ``conv_mlp``)."""
    own = model.state_dict()
    if set(state) != set(own) or any(k in own and v.shape != own[k].shape for k, v in state.items()):
        filter_fn = next((fn for cls in type(model).__mro__ if (fn := getattr(sys.modules.get(cls.__module__),
                                                                               "checkpoint_filter_fn", None))), None)
        try:
            state = filter_fn(state, model) if filter_fn else state
        except Exception:  # noqa: BLE001  (an unrecognised layout: load_into reports the mismatch key by key)
            pass
    squeeze = lambda shape: [n for n in shape if n != 1]
    return {k: v.reshape(own[k].shape) if k in own and v.shape != own[k].shape and v.numel() == own[k].numel()
            and squeeze(v.shape) == squeeze(own[k].shape) else v for k, v in state.items()}


def build_from_checkpoint(path: str | os.PathLike, **overrides: Any) -> tuple[nn.Module, str, dict[str, Any]]:
    """Rebuild the model a moejet safetensors file was saved from and load its weights strictly.

    Returns ``(model, model_name, model_kwargs)``; ``overrides`` update the saved kwargs.
    """
    meta = read_metadata(path)
    if MODEL_KEY not in meta:
        raise UserError(
            f"checkpoint {path} has no moejet model header: it was not written by moejet; "
            "build the model yourself and load the weights with load_state_dict()"
        )
    name, kwargs = meta[MODEL_KEY], {**json.loads(meta.get(KWARGS_KEY, "{}")), **overrides}
    if not timm.is_model(name):
        raise UserError(f"checkpoint {path} is for model {name!r}, which this timm does not know")
    model = timm.create_model(name, **kwargs)
    load_into(model, load_file(str(path)), str(path))
    return model, name, kwargs


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state, strict=True)`` with a one-line error on mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatches (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        raise UserError(
            f"{source} does not match the model architecture: {'; '.join(parts)}; "
            "check the model name and its arguments"
        )
    model.load_state_dict(state, strict=True)
