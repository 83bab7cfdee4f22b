"""No call in the training loop waits for the device except on a log step and at the epoch end."""

import sys

import pytest
import torch

from moejet.train import train

from ..helpers.runs import tiny_config

SYNCING = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__")


@pytest.fixture
def count_syncs(monkeypatch):
    """Count the calls of ``SYNCING`` tensor methods made while the training loop's frame is on the stack (outside
    the data loader, whose CPU-side transforms are not device syncs)."""
    counts = {"n": 0}

    def in_loop() -> bool:
        frame, loop = sys._getframe(2), False
        while frame is not None:
            name = frame.f_code.co_filename
            if "torch/utils/data" in name or "moejet/data" in name:
                return False
            loop = loop or frame.f_code.co_name == "train_one_epoch"
            frame = frame.f_back
        return loop

    for method in SYNCING:
        real = getattr(torch.Tensor, method)

        def counted(self, *args, _real=real, **kwargs):
            if in_loop():
                counts["n"] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, counted)
    return counts


@pytest.mark.parametrize("log_every", [0, 2])
def test_syncs_do_not_grow_with_the_steps(count_syncs, tmp_path, log_every):
    counts = []
    for per_class in (2, 6):  # 8 and 24 images at batch 4: 2 and 6 steps
        count_syncs["n"] = 0
        config = tiny_config(data={"dataset": f"synthetic-downstream:size=32,classes=4,per_class={per_class},"
                                              "val_per_class=1"},
                             train={"batch_size": 4, "log_every": log_every, "telemetry_images": 0},
                             schedule={"epochs": 1})
        rows = train(config, tmp_path / f"run-{per_class}", progress=False, verbose=log_every > 0)
        assert rows[0]["step"] == per_class
        counts.append(count_syncs["n"])
    assert counts[0] > 0  # the epoch end's non-finite check: the counter sees the loop
    if log_every == 0:
        assert counts[0] == counts[1]
    else:  # 1 vs 3 log lines, each reading the window's loss and checking for a non-finite loss: two syncs
        assert counts[1] - counts[0] == 2 * 2
