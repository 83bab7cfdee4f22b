"""io.weights: reading checkpoint files of every kind, damaged ones, and pickles that would run code."""

import argparse
import fractions
import os

import pytest
import timm
import torch

from moejet.errors import UserError
from moejet.io.weights import Inert, load_state_dict, read_torch_file
from moejet.train import build
from moejet.train.config import config_from_dict


def timm_train_checkpoint(path):
    """What timm's train.py saves (CheckpointSaver._save): weights, EMA weights, argparse args, optimizer."""
    model = {"fc.weight": torch.randn(3, 4), "fc.bias": torch.randn(3)}
    ema = {f"module.{k}": v + 1 for k, v in model.items()}
    torch.save({"epoch": 7, "arch": "vit_tiny_patch16_224", "state_dict": model, "state_dict_ema": ema,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}, "version": 2,
                "args": argparse.Namespace(model="vit_tiny_patch16_224", lr=0.1, mean=(0.5, 0.5, 0.5)),
                "metric": 71.5}, path)
    return model, {k.removeprefix("module."): v for k, v in ema.items()}


def test_timm_training_checkpoints_load_model_or_ema_weights(tmp_path):
    path = tmp_path / "model_best.pth.tar"
    model, ema = timm_train_checkpoint(path)
    for which, expected in (("model", model), ("ema", ema)):
        got = load_state_dict(path, which)
        assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    plain = tmp_path / "plain.pth"
    torch.save(model, plain)
    with pytest.raises(UserError, match=r"^checkpoint .*plain.pth is a plain weights file without EMA weights"):
        load_state_dict(plain, "ema")


def test_init_checkpoint_weights_picks_the_ema(tmp_path):
    config = config_from_dict({"model": {"name": "vit_tiny_patch16_224", "init": "checkpoint",
                                         "init_checkpoint": str(tmp_path / "x.pth"), "init_checkpoint_weights": "ema"}})
    assert config.model.init_checkpoint_weights == "ema"
    with pytest.raises(UserError, match="model.init_checkpoint_weights = 'last' is invalid: use model or ema"):
        config_from_dict({"model": {"init_checkpoint_weights": "last"}})
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, embed_dim=32,
                              num_heads=2, num_classes=3)
    weights = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    ema = {k: torch.randn_like(v) for k, v in weights.items()}
    torch.save({"state_dict": weights, "state_dict_ema": ema, "args": argparse.Namespace(lr=1.0)}, tmp_path / "t.pth")
    for which, expected in (("model", weights), ("ema", ema)):
        build.load_init_checkpoint(model, str(tmp_path / "t.pth"), which)
        assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("damage", ["truncate", "random", "empty"])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_damaged_weights_file_is_a_one_line_error_naming_it(tmp_path, damage, suffix):
    path = tmp_path / f"w{suffix}"
    timm_train_checkpoint(path)
    data = path.read_bytes()
    gen = torch.Generator().manual_seed(1)
    path.write_bytes({"truncate": data[: len(data) // 2], "empty": b"",
                      "random": torch.randint(0, 256, (len(data),), generator=gen, dtype=torch.uint8).numpy().tobytes()
                      }[damage])
    with pytest.raises(UserError, match=f"^cannot read checkpoint {path} ") as err:
        load_state_dict(path)
    assert "\n" not in str(err.value)


class RunsCode:
    """Unpickling this with plain ``pickle`` would run ``touch marker`` in a shell."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_objects_are_read_inert_and_calls_refused(tmp_path):
    inert, evil, marker = tmp_path / "inert.pth", tmp_path / "evil.pth", tmp_path / "executed"
    torch.save({"state_dict": {"w": torch.ones(1)}, "extra": fractions.Fraction(1, 3)}, inert)
    assert load_state_dict(inert) == {"w": torch.ones(1)}
    extra = read_torch_file(inert)["extra"]  # the Fraction is read into an inert stand-in that keeps its state
    assert isinstance(extra, Inert) and not isinstance(extra, fractions.Fraction)
    torch.save({"state_dict": {"w": torch.ones(1)}, "evil": RunsCode(marker)}, evil)
    with pytest.raises(UserError) as err:
        load_state_dict(evil)
    assert str(err.value) == (f"checkpoint {evil} holds pickled code or objects, which moejet never loads: convert "
                              "it to .safetensors, or pass a file that holds only a state dict of tensors")
    assert not marker.exists()
