"""Test-wide settings: one intra-op thread per pytest-xdist worker.

Two workers each running torch's default thread pool on a 2-core machine oversubscribe the cores, and
OpenMP's spinning threads then make small ops tens of times slower.
"""

import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by subprocesses (torchrun, CLI runs)
    torch.set_num_threads(1)
