"""The process-wide malloc options: freed tensors are reused without page faults, the opt-out, and who sets them."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

import moejet.cli
from moejet.cli import main

SRC = str(Path(__file__).resolve().parents[1] / "src")
MIB_64 = 64 * 2**20
PAGES_64 = MIB_64 // 4096

# Allocates and frees a 64 MiB tensor five times after three warm-up rounds (glibc's heap settles in two) and prints
# the minor page faults the five rounds took: every fresh mmap of 64 MiB faults in 16,384 pages, a reused block none.
REALLOCATE = f"""
import resource, torch
from moejet.malloc import keep_freed_memory
applied = keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    t = torch.ones({MIB_64 // 4}); del t
before = faults()
for _ in range(5):
    t = torch.ones({MIB_64 // 4}); del t
print(applied, faults() - before)
"""

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")


def reallocate(choice: str) -> tuple[str, int]:
    env = {**os.environ, "PYTHONPATH": SRC, "MOEJET_MALLOC": choice}
    out = subprocess.run([sys.executable, "-c", REALLOCATE], env=env, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied, int(faults)


def pages_per_64_mib() -> int:
    """Pages a fresh 64 MiB mapping faults in: 4 KiB ones, or 2 MiB ones where transparent huge pages are always on."""
    try:
        thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        thp = ""
    return MIB_64 // 2**21 if "[always]" in thp else PAGES_64


@glibc
def test_freed_tensors_come_back_without_page_faults():
    applied, faults = reallocate("keep")
    assert applied == "True"
    assert faults < pages_per_64_mib() // 4  # five 64 MiB allocations, not a quarter of one faulted in again


@glibc
def test_opt_out_keeps_glibc_defaults():
    applied, faults = reallocate("default")
    assert applied == "False"
    assert faults >= 5 * pages_per_64_mib() * 9 // 10  # each round maps and faults in the whole tensor again


def test_bad_opt_out_value_is_a_one_line_error(monkeypatch, capsys):
    monkeypatch.setenv("MOEJET_MALLOC", "jemalloc")
    monkeypatch.setattr(sys, "argv", ["moejet", "models", "--no-macs", "no_such_model"])
    assert main() == 2
    err = capsys.readouterr().err.strip()
    assert err == "moejet models: error: environment variable MOEJET_MALLOC must be 'keep' or 'default', got 'jemalloc'"


def test_the_program_sets_it_and_a_library_call_does_not(monkeypatch):
    calls = []
    monkeypatch.setattr(moejet.cli, "keep_freed_memory", lambda: calls.append(1))
    monkeypatch.setattr(sys, "argv", ["moejet", "models", "--no-macs", "no_such_model"])
    assert main() == 2
    assert calls == [1]
    assert main(["models", "--no-macs", "no_such_model"]) == 2
    assert calls == [1]
