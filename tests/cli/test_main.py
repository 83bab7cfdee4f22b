"""``moejet.cli.main`` as the program: exit codes, and torchrun workers that leave without interpreter shutdown."""

import subprocess
import sys

import pytest

from ..helpers.subprocesses import MOEJET_ENV


@pytest.mark.parametrize(("world", "finalised"), [({"WORLD_SIZE": "2", "LOCAL_RANK": "1"}, False), ({}, True)])
@pytest.mark.parametrize(("args", "code"), [(["models", "--no-macs", "vit_tiny_patch16_224"], 0),
                                            (["models", "no_such_model"], 2)])
def test_a_torchrun_worker_exits_with_its_code_and_skips_interpreter_shutdown(world, finalised, args, code):
    """gloo threads that drop tensors during interpreter shutdown abort the process (SIGABRT): workers skip it."""
    script = ("import atexit, sys; atexit.register(lambda: print('finalised')); "
              f"sys.argv = ['moejet', *{args!r}]; from moejet.cli import main; sys.exit(main())")
    env = {k: v for k, v in MOEJET_ENV.items() if k not in ("WORLD_SIZE", "LOCAL_RANK", "RANK")}
    env.update(world)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == code, proc.stderr[-2000:]
    assert ("finalised" in proc.stdout) == finalised
    assert ("vit_tiny_patch16_224" in proc.stdout) == (code == 0)  # output written before the exit is not lost
