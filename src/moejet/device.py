"""Which device a command runs on: ``auto`` picks CUDA, else Apple's MPS, else the CPU."""

from __future__ import annotations

import torch

from .errors import UserError

DEVICE_NAMES = ("auto", "cpu", "cuda", "mps")  # also any indexed name torch knows, e.g. cuda:1


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto``: CUDA, else MPS, else CPU; a device this machine does not have is a one-line UserError."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError) as err:
        raise UserError(
            f"device {device!r} is not available ({str(err).splitlines()[0]}): use --device cpu or auto"
        ) from None
    return dev
