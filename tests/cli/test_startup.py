"""The ``moejet`` program starts without torch: ``--help``, every subcommand's ``--help`` and argument errors, run
through pyproject.toml's entry point in a fresh interpreter, import neither torch nor timm; a subcommand that runs
still finds moejet's models registered."""

import json
import re
import subprocess
import sys
from pathlib import Path

from moejet.cli import COMMANDS

from ..helpers.subprocesses import MOEJET_ENV

REPO = Path(__file__).resolve().parents[2]
# the console script's target, as [project.scripts] names it (tomllib is Python 3.11+)
ENTRY_POINT = re.search(r'^moejet = "([\w.:]+)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE).group(1)

# runs the entry point once per argv of sys.argv[1] (JSON), as the console script does; prints the exit codes and
# which of torch / timm were imported
PROGRAM = f"""
import contextlib, importlib, io, json, sys
module, function = {ENTRY_POINT!r}.split(":")
codes = []
for argv in json.loads(sys.argv[1]):
    sys.argv = ["moejet", *argv]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            codes.append(getattr(importlib.import_module(module), function)())
        except SystemExit as exit_:
            codes.append(exit_.code)
print(json.dumps({{"codes": codes, "imported": sorted(m for m in ("torch", "timm") if m in sys.modules)}}))
"""


def run_program(argvs: list[list[str]], env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROGRAM, json.dumps(argvs)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_help_and_argument_errors_import_neither_torch_nor_timm():
    helps = [["--help"], [], *([command, "--help"] for command in COMMANDS), ["analyze", "cost", "--help"]]
    errors = [["no-such-command"], ["recycle", "--successor", "x", "--out", "o", "--strategy", "best"],
              ["train", "--stop-after", "0"], ["export", "model.safetensors", "--format", "pickle"],
              ["models", "--flops"]]
    light = [["configs"], ["configs", "table1_*", "--describe"]]  # subcommands that build no model
    result = run_program(helps + errors + light, MOEJET_ENV)
    assert result == {"codes": [0] * len(helps) + [2] * len(errors) + [0] * len(light), "imported": []}


def test_a_subcommand_run_through_the_program_finds_the_models_registered():
    result = run_program([["models", "convnext_femto_d18"]], MOEJET_ENV)
    assert result == {"codes": [0], "imported": ["timm", "torch"]}
