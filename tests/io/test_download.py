"""timm's hosted weights offline: one line naming the file to download and the command's own option for it, after a
single connection attempt (no retries), through both commands that download (moejet recycle, moejet train)."""

import socket

import pytest

from moejet.cli import main
from moejet.io import download
from moejet.io.download import WeightsUnavailable, create_pretrained

HUB_FILE = "/timm/vit_tiny_patch16_224.augreg_in21k/resolve/main/model.safetensors"


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """HF_ENDPOINT on a closed local port, an empty Hugging Face cache; returns the list of connection attempts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connecting is refused
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    attempts = []
    connect = socket.create_connection
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: attempts.append(address) or
                        connect(address, *a, **k))
    return attempts


def test_an_unreachable_hub_fails_at_once_from_the_cache_only(no_hub):
    assert not download.hub_reachable()
    no_hub.clear()
    with pytest.raises(WeightsUnavailable) as err:
        create_pretrained("vit_tiny_patch16_224.augreg_in21k", "--file FILE", img_size=32)
    assert len(no_hub) == 1, f"one probe, no download attempts or retries: {no_hub}"
    message = str(err.value)
    assert message == (
        "timm's pretrained weights for vit_tiny_patch16_224.augreg_in21k are not in the local cache and the Hugging "
        f"Face Hub ({download.hub_endpoint()}) is unreachable: download {download.hub_endpoint()}{HUB_FILE} on a "
        "machine with network and pass it with --file FILE")


def test_recycle_names_its_flag_and_train_its_config_keys(no_hub, tmp_path, capsys):
    argv = ["recycle", "--predecessor", "vit_tiny_patch16_224.augreg_in21k", "--pretrained", "--successor",
            "vjetmoe_tiny_patch16_224", "--strategy", "upcycle", "--calib-images", "0", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and HUB_FILE in err and err.rstrip().endswith(
        "pass it with --predecessor-checkpoint FILE (instead of --pretrained)"), err
    argv = ["train", "--config", "table3_upcycle_in1k", "--out", str(tmp_path / "run"), "--set",
            "data.dataset=synthetic-downstream:size=32,classes=2,per_class=2,val_per_class=1", "--set",
            "data.img_size=32", "--set", "model.kwargs.img_size=32", "--set", "recycle.predecessor_kwargs.img_size=32"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and HUB_FILE in err, err
    assert err.startswith("moejet train: error: recycling (config section recycle): timm's pretrained weights")
    assert err.rstrip().endswith(
        "pass it with --set recycle.pretrained=false --set recycle.predecessor_checkpoint=FILE")
    assert "--predecessor-checkpoint" not in err
