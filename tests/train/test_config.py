"""train.config: the batch plan, configs written as their changes, and bad config keys as one-line errors."""

import pytest

import moejet  # noqa: F401  (registers the models)
from moejet.cli import main
from moejet.errors import UserError
from moejet.train.config import Config, batch_plan, config_changes, dump_config, load_config

from ..helpers.runs import tiny_config, tiny_config_dict, write_config

# ---------------------------------------------------------------------------------------------- configs


def test_batch_plan_reaches_the_global_batch():
    config = tiny_config(train={"batch_size": 512, "micro_batch_size": 64})
    assert batch_plan(config, 1) == (64, 8) and batch_plan(config, 4) == (64, 2)
    assert batch_plan(tiny_config(train={"batch_size": 512}), 4) == (128, 1)
    assert batch_plan(config, 3) == (64, 3)  # shares of 171, 171 and 170 images in 3 micro-batches of at most 64
    assert batch_plan(tiny_config(train={"batch_size": 512}), 3) == (171, 1)
    with pytest.raises(UserError, match=r"batch_size = 512 is smaller than the 1024 processes"):
        batch_plan(config, 1024)
    assert config.lr == 2e-3 and tiny_config(optim={"lr": None}, train={"batch_size": 512}).lr == 4e-3 * 512 / 4096


def test_a_config_written_as_its_changes_reads_back_as_the_same_config(tmp_path):
    config = tiny_config(model={"drop_path_rate": 0.0}, train={"seed": 7})
    changes = config_changes(config, resolve_lr=False)
    assert changes["model"]["drop_path_rate"] == 0.0 and changes["train"]["seed"] == 7
    assert "log_every" not in changes["train"] and "interpolation" not in changes["data"]  # defaults left out
    (tmp_path / "c.yaml").write_text(dump_config(config, resolve_lr=False, changes_only=True))
    assert load_config(tmp_path / "c.yaml") == config
    # the keys that say what a run is are written even at their defaults; nothing else of Config() is
    assert config_changes(Config(), resolve_lr=False) == {
        "name": "run", "description": "", "model": {"name": "vjetmoe_tiny_patch16_224", "init": "scratch"},
        "data": {"dataset": "synthetic"}}


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(("override", "message"), [
    ("optim.lrr=1", "unknown config key optim.lrr: valid keys of optim are"),
    ("trian.seed=1", "unknown config key trian: valid keys of the config are"),
    ("train.batch_size=abc", "config key train.batch_size must be an integer, got 'abc'"),
    ("augment.mixup=[1]", "config key augment.mixup must be a number, got [1]"),
    ("train.deterministic=3", "config key train.deterministic must be true or false, got 3"),
    ("schedule.warmup_epochs=5", "config key schedule.warmup_epochs = 5 is invalid: must be in [0, schedule.epochs=2)"),
    ("train.amp=fp8", "config key train.amp = 'fp8' is invalid: use one of auto, none, bf16, fp16"),
    ("model.init=checkpoint", "config key model.init_checkpoint = None is invalid: model.init is 'checkpoint'"),
    ("train.micro_batch_size=0", "config key train.micro_batch_size = 0 is invalid: must be >= 1 or null"),
    ("optim", "override 'optim' is not of the form section.key=value"),
    ("model.kwargs.img_size=48", "config key model.kwargs.img_size = 48 differs from data.img_size = 32: set them "
                                 "equal (or drop model.kwargs.img_size)"),
])
def test_bad_config_is_a_one_line_error_naming_the_key(tmp_path, capsys, override, message):
    cfg = write_config(tmp_path / "c.yaml", tiny_config_dict())
    assert main(["train", "--config", str(cfg), "--set", override, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"moejet train: error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()

