"""Model files: safetensors weights that carry the timm model name and kwargs needed to rebuild them.

Every file moejet writes goes through :func:`atomic_output`, so an interrupted run never leaves a
truncated file behind. User files are read with safetensors or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from .errors import UserError

MODEL_KEY, KWARGS_KEY = "moejet.model", "moejet.model_kwargs"


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path``, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        fsync_path(tmp)  # the data is on disk before the name points at it (else a power cut leaves 0 bytes)
        os.replace(tmp, path)
        fsync_path(path.parent)  # ... and the rename itself is durable
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's (or a directory's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


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
    header = {MODEL_KEY: model_name, KWARGS_KEY: json.dumps(model_kwargs or {}, default=_jsonable)}
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


def _jsonable(value: Any) -> Any:
    if isinstance(value, (range, tuple, set)):
        return list(value)
    raise TypeError(f"model kwarg {value!r} is not JSON-serialisable")


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


# objects a timm train.py checkpoint holds besides tensors: its command-line arguments
TRAINING_CHECKPOINT_GLOBALS = [argparse.Namespace]
WEIGHTS_KEYS = {"model": ("state_dict", "model", "model_state", "module"), "ema": ("state_dict_ema", "model_ema")}


def load_state_dict(path: str | os.PathLike, weights: str = "model") -> dict[str, torch.Tensor]:
    """Weights from ``.safetensors`` or ``.pth``/``.pt``/``.bin`` (read with ``weights_only=True``).

    Training checkpoints (timm ``train.py``: ``{'state_dict', 'state_dict_ema', 'args', ...}``, and other
    ``{'model': ...}`` wrappers) give their model weights, or their EMA weights with ``weights="ema"``.
    """
    path = Path(path)
    if weights not in WEIGHTS_KEYS:
        raise UserError(f"weights={weights!r}: use one of {', '.join(WEIGHTS_KEYS)}")
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: check the path")
    try:
        if path.suffix == ".safetensors":
            obj = load_file(str(path))
        else:
            with torch.serialization.safe_globals(TRAINING_CHECKPOINT_GLOBALS):
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (a damaged pickle raises almost anything; every case is the user's file)
        msg = str(err).splitlines()[0][:200] if str(err) else ""
        raise UserError(
            f"cannot read checkpoint {path} ({type(err).__name__}: {msg}); "
            "it may be truncated or not a weights file: re-create or re-download it"
        ) from None
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        found = [k for k in WEIGHTS_KEYS[weights] if isinstance(obj.get(k), dict)]
        if not found:
            if weights == "ema":
                raise UserError(f"checkpoint {path} holds no EMA weights (no {' / '.join(WEIGHTS_KEYS['ema'])}): "
                                "use its model weights (model.init_checkpoint_weights=model)")
            raise UserError(f"checkpoint {path} holds no state dict (keys: {', '.join(map(str, list(obj)[:8]))}): "
                            "pass a weights file")
        obj = obj[found[0]]
    elif weights == "ema":
        raise UserError(f"checkpoint {path} is a plain weights file without EMA weights: "
                        "use model.init_checkpoint_weights=model")
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"checkpoint {path} does not hold a state dict of tensors: pass a weights file")
    return {k.removeprefix("module."): v for k, v in obj.items()}


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
    import moejet.models  # noqa: F401  (registers our models)

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
