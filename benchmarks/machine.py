"""What a benchmark figure was measured on: CPU model and the ISA flags that change its speed, or the GPU."""

from __future__ import annotations

import platform
import subprocess

SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_bf16", "amx_tile", "amx_int8")


def describe(device: str = "cpu") -> str:
    """e.g. ``"Intel(R) Xeon(R) Processor (2 cores; avx2 avx512f avx512_bf16)"`` or the CUDA device name."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    model = fields.get("Model name", platform.machine()).strip()
    cores = fields.get("CPU(s)", "?").strip()
    flags = set(fields.get("Flags", "").split())
    return f"{model} ({cores} cores; {' '.join(f for f in SPEED_FLAGS if f in flags) or 'no AVX2'})"


def apply_malloc() -> str:
    """Sets the malloc options the ``moejet`` program sets (``moejet.malloc``), so figures show what a run gets;
    ``MOEJET_MALLOC=default`` measures without them. Returns the setting, for the results."""
    from moejet.malloc import keep_freed_memory

    return "keep freed memory (moejet)" if keep_freed_memory() else "C library default"
