"""``train.save_every``: checkpoints every N epochs; a crash between them resumes from the last one, exactly."""

import pytest
from safetensors.torch import load_file

from moejet.train import train
from moejet.train.checkpointing import read_pointer

from ..helpers.runs import comparable, tiny_config


class Crash(Exception):
    pass


def test_checkpoints_every_n_epochs_and_a_crash_between_them_resumes_exactly(tmp_path):
    config = tiny_config(train={"save_every": 2, "telemetry_images": 0}, schedule={"epochs": 3})
    committed = []
    rows = train(config, tmp_path / "straight", progress=False, verbose=False,
                 on_epoch=lambda row: committed.append(read_pointer(tmp_path / "straight")["epoch"]))
    assert committed == [0, 2, 3]  # epoch 1 is not saved, the last epoch always is
    assert rows[1]["checkpoint_bytes"] > rows[0]["checkpoint_bytes"] > 0  # epoch 1 wrote only best's weights
    assert rows[2]["checkpoint_bytes"] >= rows[1]["checkpoint_bytes"] - rows[0]["checkpoint_bytes"]

    def crash_after_epoch_1(row):
        if row["epoch"] == 1:
            raise Crash

    with pytest.raises(Crash):
        train(config, tmp_path / "crashed", progress=False, verbose=False, on_epoch=crash_after_epoch_1)
    assert read_pointer(tmp_path / "crashed")["epoch"] == 0
    resumed = train(run_dir=tmp_path / "crashed", resume=True, progress=False, verbose=False)
    assert comparable(resumed) == comparable(rows)
    a, b = load_file(tmp_path / "straight" / "last.safetensors"), load_file(tmp_path / "crashed" / "last.safetensors")
    assert all((a[k] == b[k]).all() for k in a)
