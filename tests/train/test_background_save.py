"""``train.background_save``: rank 0 writes checkpoints in a thread from host copies; the run is the same."""

from safetensors.torch import load_file

from moejet.train import train
from moejet.train.checkpointing import BackgroundWriter, host_copy, read_pointer

from ..helpers.runs import comparable, tiny_config


def test_a_background_saved_run_equals_a_foreground_one(tmp_path, monkeypatch):
    threads = []
    real_submit = BackgroundWriter.submit
    monkeypatch.setattr(BackgroundWriter, "submit",
                        lambda self, *args: threads.append(self.enabled) or real_submit(self, *args))
    sections = dict(schedule={"epochs": 3}, train={"ema": True, "recovery_every": 2, "telemetry_images": 0})
    rows = {}
    for background in (False, True):
        threads.clear()
        config = tiny_config(**{**sections, "train": {**sections["train"], "background_save": background}})
        rows[background] = train(config, tmp_path / str(background), progress=False, verbose=False)
        assert threads == [True] * 3 if background else threads == []  # the 3 epoch saves went to the thread
    assert comparable(rows[True]) == comparable(rows[False])
    for name in ("last.safetensors", "best.safetensors"):
        a, b = load_file(tmp_path / "True" / name), load_file(tmp_path / "False" / name)
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert read_pointer(tmp_path / "True") == read_pointer(tmp_path / "False")


def test_the_writer_keeps_order_and_raises_a_writes_error_on_the_next_wait():
    import pytest
    import torch

    done = []
    writer = BackgroundWriter(enabled=True)
    writer.submit(lambda: done.append(1))
    writer.submit(lambda: done.append(2))  # waits for the first
    writer.wait()
    assert done == [1, 2]
    writer.submit(lambda: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        writer.wait()
    writer.wait()  # raised once
    live = {"w": torch.ones(2), "nested": [torch.zeros(1), 3]}
    copy = host_copy(live)
    live["w"].add_(1)
    assert torch.equal(copy["w"], torch.ones(2)) and copy["nested"][1] == 3
