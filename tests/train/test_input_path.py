"""The GPU input path: uint8 images from the workers, normalised (and randomly erased) after the copy to the device
by timm's PrefetchLoader. Forced on here on the CPU, it trains as the CPU path does."""

import pytest
from safetensors.torch import load_file

from moejet.train import build, train

from ..helpers.runs import tiny_config


@pytest.fixture
def prefetch_on_cpu(monkeypatch):
    monkeypatch.setattr(build, "uses_prefetcher", lambda device: True)


def test_uint8_images_normalised_on_the_device_train_as_the_cpu_path(tmp_path, monkeypatch):
    sections = dict(schedule={"epochs": 1}, train={"telemetry_images": 8},
                    augment={"auto_augment": "rand-m9-mstd0.5-inc1", "hflip": 0.5, "scale": [0.5, 1.0]})
    cpu = train(tiny_config(**sections), tmp_path / "cpu", progress=False, verbose=False)
    monkeypatch.setattr(build, "uses_prefetcher", lambda device: True)
    device = train(tiny_config(**sections), tmp_path / "device", progress=False, verbose=False)
    assert device[0]["train_loss"] == pytest.approx(cpu[0]["train_loss"], rel=1e-5)
    assert device[0]["val_top1"] == pytest.approx(cpu[0]["val_top1"])
    assert device[0]["routing"].keys() == cpu[0]["routing"].keys()
    a, b = load_file(tmp_path / "cpu" / "last.safetensors"), load_file(tmp_path / "device" / "last.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4  # 1/255 scaling rounds differently


def test_random_erasing_runs_on_the_device(tmp_path, prefetch_on_cpu):
    erased = train(tiny_config(schedule={"epochs": 1}, augment={"random_erasing": 1.0}), tmp_path / "erased",
                   progress=False, verbose=False)
    plain = train(tiny_config(schedule={"epochs": 1}), tmp_path / "plain", progress=False, verbose=False)
    assert erased[0]["train_loss"] != pytest.approx(plain[0]["train_loss"], rel=1e-3)
