"""Multi-node runs need the run directory on a filesystem every process sees: a rank that does not see it stops the
run with one line, on every rank, before any work."""

from pathlib import Path

from ..helpers.runs import tiny_config_dict, write_config
from ..helpers.subprocesses import torchrun

HELPER = Path(__file__).resolve().parents[1] / "helpers" / "unshared_run_dir.py"


def test_a_rank_that_does_not_see_the_run_directory_stops_the_run(tmp_path):
    cfg = write_config(tmp_path / "tiny.yaml", tiny_config_dict(schedule={"epochs": 1}))
    proc = torchrun("train", "--config", cfg, "--out", tmp_path / "run", program=(HELPER,))
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("moejet train: error:")]
    assert errors  # every rank raises; torchrun may stop the others before they print, once one has failed
    assert all("do not see the run directory" in e and "filesystem every node shares" in e for e in errors)
    assert "Traceback" not in proc.stderr.split("moejet train: error:")[0]
    assert not (tmp_path / "run" / "checkpoint.json").exists()
