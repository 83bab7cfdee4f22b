"""What ``moejet train`` prints: with no terminal (a log file), ``train.log_every`` lines and no progress-bar frames;
each epoch's line with its val loss and a mark on a new best top-1."""

from moejet.cli import main
from moejet.train import read_metrics
from moejet.train.config import dump_config

from ..helpers.runs import tiny_config


def test_without_a_terminal_the_log_has_step_lines_and_epoch_lines_with_val_loss_and_new_bests(tmp_path, capsys):
    config, run = tmp_path / "tiny.yaml", tmp_path / "run"
    config.write_text(dump_config(tiny_config(train={"log_every": 2})))  # 2 epochs of 4 steps
    assert main(["train", "--config", str(config), "--out", str(run)]) == 0  # progress on; capsys is no terminal
    out, err = capsys.readouterr()
    assert "\r" not in out + err and "it/s" not in err  # no bar frames
    steps = [line.split("  ")[0] for line in out.splitlines() if " step " in line and "loss" in line]
    assert steps == [f"moejet train: epoch {e}/2 step {s}/4" for e in (1, 2) for s in (2, 4)]

    rows, best = read_metrics(run), -1.0
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == len(rows) == 2
    for line, row in zip(epoch_lines, rows):
        new_best = row["val_top1"] > best
        best = max(best, row["val_top1"])
        assert f"  val_loss {row['val_loss']:.4f}  val_top1 {row['val_top1']:.2f}" in line
        assert ("(new best)" in line) == new_best
