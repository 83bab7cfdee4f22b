"""glibc malloc settings for CPU runs: keep freed memory in the process instead of handing it back to the kernel.

By default glibc serves every allocation above 32 MiB (and, until its threshold adapts, above 128 KiB) with a fresh
``mmap`` and unmaps it on free, so a tensor of that size costs one page fault per 4 KiB page every time it is
allocated again. A MoE layer allocates its weight gradients afresh on every step (``zero_grad`` sets them to None):
V-JetMoE-T's 265 M parameters are ~1 GB of gradients per step, and its CPU training step took 28-37% less time
without the faults (README, "CPU memory (glibc malloc)"). With ``mmap`` off and a high trim threshold, freed blocks stay
in the heap and the next step reuses them; the price is that the process keeps its peak heap until it exits.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

from .errors import UserError

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: free memory at the heap's top beyond 2 GiB still goes back
OPT_OUT = "MOEJET_MALLOC"  # MOEJET_MALLOC=default leaves glibc's settings alone


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to serve large allocations from its heap (no ``mmap``) and to keep up to 2 GiB of freed
    memory at the heap's top. Returns whether the settings were applied: not on other C libraries, nor with
    ``MOEJET_MALLOC=default`` in the environment. Process-wide; ``moejet`` calls it when run as a program."""
    choice = os.environ.get(OPT_OUT, "keep")
    if choice not in ("keep", "default"):
        raise UserError(f"environment variable {OPT_OUT} must be 'keep' or 'default', got {choice!r}")
    if choice == "default" or not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
