"""Running moejet in a subprocess: the environment, and torchrun."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# the environment for a ``python -m moejet`` / torchrun subprocess: this checkout's src/, one thread
MOEJET_ENV = {**os.environ, "OMP_NUM_THREADS": "1",
              "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}


def torchrun(*args, nproc=2, program=("-m", "moejet")):
    """``program *args --no-progress`` under torchrun with ``nproc`` CPU (gloo) processes; returns the finished
    process (stdout and stderr captured)."""
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
         *map(str, program), *map(str, args), "--no-progress"],
        env=MOEJET_ENV, capture_output=True, text=True, timeout=300)
