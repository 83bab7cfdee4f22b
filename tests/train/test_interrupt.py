"""Ctrl-C (SIGINT) and SIGTERM during ``moejet train``: one line naming the last save, what is lost and the command
that resumes, and that command continues the run exactly."""

import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from moejet.cli import main
from moejet.train import read_metrics, train
from moejet.train.config import dump_config

from ..helpers.runs import comparable, tiny_config
from ..helpers.signal_at_step import install_signal
from ..helpers.subprocesses import MOEJET_ENV

HELPERS = Path(__file__).resolve().parents[1] / "helpers"
CONFIG = dict(train={"batch_size": 8, "seed": 0, "deterministic": True, "max_steps_per_epoch": 2},
              schedule={"epochs": 3, "warmup_epochs": 0})  # 2 optimizer steps per epoch


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run, on one thread as the subprocesses run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = tmp_path_factory.mktemp("straight") / "run"
        train(tiny_config(**CONFIG), run, progress=False, verbose=False)
    finally:
        torch.set_num_threads(threads)
    return run


def test_ctrl_c_mid_epoch_names_the_last_save_and_its_resume_command_continues_exactly(straight, tmp_path):
    config, run = tmp_path / "tiny.yaml", tmp_path / "my run"
    config.write_text(dump_config(tiny_config(**CONFIG)))
    interrupted = subprocess.run(  # Ctrl-C during optimizer step 4: epoch 2's first step done, its second not
        [sys.executable, HELPERS / "signal_at_step.py", "4", "SIGINT", "train", "--config", config, "--out", run,
         "--no-progress"], env=MOEJET_ENV, capture_output=True, text=True, timeout=300)
    assert interrupted.returncode == 130, interrupted.stderr[-2000:]
    assert interrupted.stderr.splitlines()[-1] == (
        "moejet train: interrupted at optimizer step 3; the last save is epoch 2 step 0/2 (optimizer step 2): the 1 "
        "step done since then is lost (mid-epoch saves are off: set train.recovery_every=N to save every N steps); "
        f"resume with: moejet train --resume '{run}'")

    command = shlex.split(interrupted.stderr.splitlines()[-1].split("resume with: ")[1])
    resumed = subprocess.run([sys.executable, "-m", *command, "--no-progress"], env=MOEJET_ENV, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.startswith(f"moejet train: resuming {run} from epoch 2 step 0/2 (optimizer step 2): ")
    a, b = load_file(run / "last.safetensors"), load_file(straight / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert comparable(read_metrics(run)) == comparable(read_metrics(straight))


def test_sigterm_after_a_recovery_point_loses_nothing_and_the_resume_says_where_it_starts(
        monkeypatch, tmp_path, capsys):
    config, run = tmp_path / "tiny.yaml", tmp_path / "run"
    config.write_text(dump_config(tiny_config(**{**CONFIG, "train": {**CONFIG["train"], "recovery_every": 1}})))
    install_signal(4, signal.SIGTERM, monkeypatch.setattr)  # a recovery point after step 3 (epoch 2, step 1)
    assert main(["train", "--config", str(config), "--out", str(run), "--no-progress"]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.splitlines()[-1] == (
        "moejet train: interrupted at optimizer step 3; the last save is epoch 2 step 1/2 (optimizer step 3): "
        "nothing is lost (mid-epoch saves every 1 steps (train.recovery_every)); resume with: moejet train --resume "
        f"{run}")
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith(f"moejet train: resuming {run} from epoch 2 step 1/2 (optimizer step 3)")
    assert [row["epoch"] for row in read_metrics(run)] == [1, 2, 3]
