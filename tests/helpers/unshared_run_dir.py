"""A rank that does not see the run directory (as on a node without the shared filesystem).

    python tests/helpers/unshared_run_dir.py train --config ... --out ...

On every rank but 0, the token rank 0 writes into the run directory looks absent; then ``moejet.cli.main`` runs
with the given arguments.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    if int(os.environ.get("RANK", "0")) != 0:
        real = Path.is_file
        Path.is_file = lambda self: False if self.name.startswith(".moejet-shared-") else real(self)
    from moejet.cli import main

    sys.argv = ["moejet", *sys.argv[1:]]
    sys.exit(main())
