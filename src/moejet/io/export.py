"""``moejet export``: a moejet checkpoint as a torch.export program, an ONNX graph or a TorchScript module.

Every export is loaded back from the written file and run on a fresh batch (a different batch size than
the one it was traced with), and its output compared with the eager model's; a mismatch is an error and
no file is left behind. The batch dimension is dynamic in all three formats.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import UserError, first_line
from ..models.common import input_size_of
from ..options import EXPORT_FORMATS
from .files import atomic_output
from .labels import read_labels
from .weights import build_from_checkpoint

LABELS_KEY = "label_names"  # the exported file's metadata key of the class names, as timm's config.json names them
TRACE_BATCH, CHECK_BATCH = 2, 3


def _batch_dim() -> dict[int, Any]:
    return {0: torch.export.Dim("batch", min=1, max=4096)}


# through file objects: given a path, torch.export warns unless its name ends in .pt2 (atomic_output's ends in .tmp)
def write_export(model: nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, str]) -> None:
    program = torch.export.export(model, (example,), dynamic_shapes=(_batch_dim(),))
    with open(path, "wb") as f:
        torch.export.save(program, f, extra_files=metadata)  # torch.export.load(f, extra_files=...) reads them


def run_export(path: Path, images: torch.Tensor) -> torch.Tensor:
    with open(path, "rb") as f:
        return torch.export.load(f).module()(images)


def write_onnx(model: nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, str]) -> None:
    optimizer_log = logging.getLogger("onnxscript")  # its warnings name constant folds it skips: not the user's to fix
    level = optimizer_log.level
    optimizer_log.setLevel(logging.ERROR)
    try:
        program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=(_batch_dim(),),
                                    input_names=["images"], output_names=["logits"], verbose=False)
    finally:
        optimizer_log.setLevel(level)
    program.model.metadata_props.update(metadata)  # the ONNX model's metadata_props
    program.save(str(path), external_data=False)


def run_onnx(path: Path, images: torch.Tensor) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: images.numpy()})[0])


def write_torchscript(model: nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, str]) -> None:
    # tracing records the eval-mode graph, whose shapes depend on the batch only through tensor ops, so the traced
    # module accepts any batch size (tested). (torch.jit.script compiles these models too: docs/publish-export.md)
    entmax = [name for name, m in model.named_modules() if getattr(m, "combine", None) == "entmax15"]
    if entmax:
        raise UserError(f"TorchScript cannot record entmax15's autograd function ({entmax[0]} combines with "
                        "entmax15): use --format export or --format onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=FutureWarning)  # torch.jit.trace's deprecation notice
        torch.jit.trace(model, example, check_trace=False).save(str(path), _extra_files=metadata)


def run_torchscript(path: Path, images: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)  # torch.jit.load's deprecation notice
        return torch.jit.load(str(path))(images)


WRITERS = {"export": (write_export, run_export), "onnx": (write_onnx, run_onnx),
           "torchscript": (write_torchscript, run_torchscript)}


def _check_onnx_installed() -> None:
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if not _importable(m)]
    if missing:
        raise UserError(f"--format onnx needs {', '.join(missing)}: pip install 'moe-jetpack[export]'")


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def export_metadata(checkpoint: str | os.PathLike, name: str, num_classes: int) -> dict[str, str]:
    """What travels in an exported file besides the graph: the timm model name and, where the checkpoint's run
    recorded them for this head, the class names (JSON list, logit order) under :data:`LABELS_KEY`."""
    labels = read_labels(checkpoint)
    metadata = {"moejet.model": name}
    if labels is not None and len(labels) == num_classes:
        metadata[LABELS_KEY] = json.dumps(labels)
    return metadata


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike, fmt: str = "export",
                      atol: float = 1e-4, img_size: int | None = None, seed: int = 0) -> float:
    """Write ``checkpoint`` (a moejet safetensors file) to ``out`` in format ``fmt``; returns the max abs
    difference between the written file's output and the eager model's on a fresh batch. The image size is
    fixed in the export: ``img_size`` (default: the size the model expects, e.g. its pretrained config's)."""
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    if fmt == "onnx":
        _check_onnx_installed()
    model, name, _ = build_from_checkpoint(checkpoint)
    model.eval()
    size = input_size_of(model)
    if img_size is not None:
        size = (size[0], img_size, img_size)
    generator = torch.Generator().manual_seed(seed)
    example = torch.randn(TRACE_BATCH, *size, generator=generator)
    images = torch.randn(CHECK_BATCH, *size, generator=generator)
    write, run = WRITERS[fmt]
    out = Path(out)
    with torch.no_grad(), atomic_output(out) as tmp:
        expected = model(images)
        try:
            write(model, example, tmp, export_metadata(checkpoint, name, model.num_classes))
            got = run(tmp, images)
        except UserError:
            raise
        except Exception as err:  # exporters raise many types; report which step failed and why
            first = first_line(err)
            raise UserError(f"{fmt} export of {checkpoint} failed ({type(err).__name__}: {first})") from err
        difference = (got.float() - expected.float()).abs().max().item()
        if not difference <= atol:
            raise UserError(f"the {fmt} export of {checkpoint} differs from the model by {difference:.3g} "
                            f"(> --atol {atol:g}); nothing was written")
    return difference
