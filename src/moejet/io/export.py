"""``moejet export``: a moejet checkpoint as a torch.export program, an ONNX graph or a TorchScript module.

Every export is loaded back from the written file and run on a fresh batch (a different batch size than
the one it was traced with), and its output compared with the eager model's; a mismatch is an error and
no file is left behind. The batch dimension is dynamic in all three formats.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import UserError
from ..models.common import input_size_of
from .files import atomic_output
from .weights import build_from_checkpoint

FORMATS = {"export": ".pt2", "onnx": ".onnx", "torchscript": ".ts"}
TRACE_BATCH, CHECK_BATCH = 2, 3


def _batch_dim() -> dict[int, Any]:
    return {0: torch.export.Dim("batch", min=1, max=4096)}


def write_export(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    program = torch.export.export(model, (example,), dynamic_shapes=(_batch_dim(),))
    torch.export.save(program, path)


def run_export(path: Path, images: torch.Tensor) -> torch.Tensor:
    return torch.export.load(path).module()(images)


def write_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    torch.onnx.export(model, (example,), str(path), dynamo=True, dynamic_shapes=(_batch_dim(),),
                      input_names=["images"], output_names=["logits"], external_data=False)


def run_onnx(path: Path, images: torch.Tensor) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: images.numpy()})[0])


def write_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    # tracing records the eval-mode graph, whose shapes depend on the batch only through tensor ops, so the traced
    # module accepts any batch size (tested). (torch.jit.script compiles these models too: docs/publish-export.md)
    entmax = [name for name, m in model.named_modules() if getattr(m, "combine", None) == "entmax15"]
    if entmax:
        raise UserError(f"TorchScript cannot record entmax15's autograd function ({entmax[0]} combines with "
                        "entmax15): use --format export or --format onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=FutureWarning)  # torch.jit.trace's deprecation notice
        torch.jit.trace(model, example, check_trace=False).save(str(path))


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


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike, fmt: str = "export",
                      atol: float = 1e-4, img_size: int | None = None, seed: int = 0) -> float:
    """Write ``checkpoint`` (a moejet safetensors file) to ``out`` in format ``fmt``; returns the max abs
    difference between the written file's output and the eager model's on a fresh batch. The image size is
    fixed in the export: ``img_size`` (default: the size the model expects, e.g. its pretrained config's)."""
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "onnx":
        _check_onnx_installed()
    model = build_from_checkpoint(checkpoint)[0].eval()
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
            write(model, example, tmp)
            got = run(tmp, images)
        except UserError:
            raise
        except Exception as err:  # exporters raise many types; report which step failed and why
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
            raise UserError(f"{fmt} export of {checkpoint} failed ({type(err).__name__}: {first})") from err
        difference = (got.float() - expected.float()).abs().max().item()
        if not difference <= atol:
            raise UserError(f"the {fmt} export of {checkpoint} differs from the model by {difference:.3g} "
                            f"(> --atol {atol:g}); nothing was written")
    return difference
