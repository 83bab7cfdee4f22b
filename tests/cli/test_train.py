"""``moejet train``: missing data and bad run directories are documented one-line errors."""

import moejet  # noqa: F401  (registers the models)
from moejet.cli import main

from ..helpers.runs import tiny_config_dict, write_config


def test_missing_data_and_bad_runs_are_documented_errors(tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", tiny_config_dict())
    argv = ["train", "--config", str(cfg), "--out", str(tmp_path / "run"), "--set", "data.dataset=cifar100",
            "--set", f"data.root={tmp_path / 'nowhere'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"moejet train: error: cifar100 not found in {tmp_path / 'nowhere'}"), err
    assert not (tmp_path / "run").exists()
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "is not a resumable run directory" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file" in capsys.readouterr().err
    assert main(["train", "--config", str(cfg), "--print-config", "--set", "optim.lr=null"]) == 0
    assert "lr: 7.8125e-06" in capsys.readouterr().out  # 4e-3 * 8 / 4096, resolved into the config
