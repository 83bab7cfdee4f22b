"""Fault injection: a crash at every write, a full disk, damaged files, a moved init checkpoint.

Each case ends with a run that resumes to the same weights as an uninterrupted run, or a one-line UserError.
"""

import errno
import math
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import moejet.io.files
from moejet.cli import main
from moejet.data import datasets
from moejet.errors import UserError
from moejet.io.weights import save_model
from moejet.train import build, load_config, read_metrics, train
from moejet.train.checkpointing import read_pointer
from moejet.train.config import dump_config

from ..helpers.runs import TRAIN_VIT, tiny_config

CONFIG = dict(train={"batch_size": 8, "seed": 0, "deterministic": True, "ema": True, "ema_decay": 0.9,
                     "max_steps_per_epoch": 2})


def same_weights(a, b):
    a, b = load_file(a), load_file(b)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    run = tmp_path_factory.mktemp("straight") / "run"
    train(tiny_config(**CONFIG), run, progress=False, verbose=False)
    return run


@pytest.fixture(scope="module")
def after_one_epoch(tmp_path_factory):
    run = tmp_path_factory.mktemp("one") / "run"
    train(tiny_config(**CONFIG), run, stop_after=1, progress=False, verbose=False)
    return run


class Crash(BaseException):
    """Stands for a kill: not an Exception, so nothing catches it on the way out."""


def crash_at_fsync(monkeypatch, k):
    """Raise at the k-th fsync: every file's data is fsynced before its rename, every rename's directory after."""
    calls = {"n": 0}
    real = moejet.io.files.fsync_path

    def fsync(path):
        calls["n"] += 1
        if calls["n"] == k:
            raise Crash(path)
        real(path)

    monkeypatch.setattr(moejet.io.files, "fsync_path", fsync)
    return calls


@pytest.mark.parametrize("background", [False, True], ids=["foreground", "background-save"])
def test_a_crash_at_every_write_of_a_save_leaves_the_run_resumable(after_one_epoch, straight, tmp_path, monkeypatch,
                                                                   background):
    # with train.background_save the writes run in rank 0's writer thread; its crash surfaces when the run waits
    overrides = ["train.background_save=true"] if background else []
    k, crashed = 1, True
    while crashed:
        run = tmp_path / f"k{k}"
        shutil.copytree(after_one_epoch, run)
        calls = crash_at_fsync(monkeypatch, k)
        try:
            train(run_dir=run, resume=True, overrides=overrides, progress=False, verbose=False)
            crashed = False  # k is past the last write of the epoch-2 save
        except Crash:
            pass
        monkeypatch.undo()
        assert read_pointer(run)["epoch"] in (1, 2)
        if crashed:
            train(run_dir=run, resume=True, progress=False, verbose=False)
        assert read_pointer(run)["epoch"] == 2
        assert same_weights(run / "last.safetensors", straight / "last.safetensors"), f"crash at fsync {k}"
        assert sorted(p.name for p in (run / "checkpoints").iterdir() if not p.name.startswith(".")) == [
            "epoch-0002.safetensors", "epoch-0002.state.pt"]
        k += 1
    assert calls["n"] >= 10  # metrics, weights, state, pointer, last (and best): file + directory each


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(after_one_epoch, straight, tmp_path,
                                                                    monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(after_one_epoch, run)
    real = torch.save

    def full(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(UserError, match=r"^cannot write .*epoch-0002.state.pt: No space left on device; the last "
                                        r"complete checkpoint \(epoch 1\) is intact") as err:
        train(run_dir=run, resume=True, progress=False, verbose=False)
    assert "\n" not in str(err.value)
    monkeypatch.setattr(torch, "save", real)
    assert read_pointer(run)["epoch"] == 1
    train(run_dir=run, resume=True, progress=False, verbose=False)
    assert same_weights(run / "last.safetensors", straight / "last.safetensors")


@pytest.mark.parametrize("damage", ["truncate", "random"])
@pytest.mark.parametrize("which", ["state", "weights", "pointer", "config", "metrics"])
def test_a_damaged_run_file_is_a_one_line_error_naming_it(after_one_epoch, tmp_path, which, damage):
    run = tmp_path / "run"
    shutil.copytree(after_one_epoch, run)
    pointer = read_pointer(run)
    path = run / {"state": pointer["state"], "weights": pointer["weights"], "pointer": "checkpoint.json",
                  "config": "config.yaml", "metrics": "metrics.jsonl"}[which]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else torch.randint(0, 256, (len(data),),
                     generator=torch.Generator().manual_seed(0), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(UserError) as err:
        train(run_dir=run, resume=True, progress=False, verbose=False)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_resume_needs_nothing_but_the_run_directory(tmp_path, monkeypatch):
    init = tmp_path / "init.safetensors"
    model = timm.create_model("vjetmoe_tiny_patch16_224", num_classes=4, img_size=32, **TRAIN_VIT)
    save_model(model, init, "vjetmoe_tiny_patch16_224", {"num_classes": 4, "img_size": 32, **TRAIN_VIT})
    config = tiny_config(model={"init": "checkpoint", "init_checkpoint": str(init)}, **CONFIG)
    straight = train(config, tmp_path / "straight", progress=False, verbose=False)
    train(config, tmp_path / "run", stop_after=1, progress=False, verbose=False)
    init.rename(tmp_path / "moved.safetensors")

    def no_init(*args):  # e.g. model.init=pretrained on an offline machine: resuming must not build the init
        raise AssertionError("resume rebuilt the initial weights")

    monkeypatch.setattr(build, "build_model", no_init)
    resumed = train(run_dir=tmp_path / "run", resume=True, progress=False, verbose=False)
    assert [r["val_top1"] for r in resumed] == [r["val_top1"] for r in straight]
    assert same_weights(tmp_path / "run" / "last.safetensors", tmp_path / "straight" / "last.safetensors")


def test_resuming_a_finished_run_says_so_and_exits_0(straight, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert f"{run} is finished (2 of 2 epochs): nothing to do" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def lrs(rows):
    return [row["lr"] for row in rows]


def test_extending_a_run_needs_a_schedule_mode(straight, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    with pytest.raises(UserError, match=r"^schedule.epochs changed from 2 to 4: say how the schedule continues with "
                                        r"--extend continue"):
        train(run_dir=run, resume=True, overrides=["schedule.epochs=4"], progress=False, verbose=False)
    # continue: the run equals one planned for 4 epochs from the start, from epoch 3 on (same state, same LR curve)
    planned4 = train(tiny_config(**CONFIG, schedule={"epochs": 4, "warmup_epochs": 0}), tmp_path / "four",
                     progress=False, verbose=False)
    cont = tmp_path / "cont"
    shutil.copytree(straight, cont)
    rows = train(run_dir=cont, resume=True, extend="continue", overrides=["schedule.epochs=4"], progress=False,
                 verbose=False)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4] and lrs(rows[2:]) == pytest.approx(lrs(planned4[2:]))
    # cosine-restart: optim.lr again at the restart, then a cosine to the minimum over the 2 added epochs (4 steps)
    restart = tmp_path / "restart"
    shutil.copytree(straight, restart)
    rows = train(run_dir=restart, resume=True, extend="cosine-restart", overrides=["schedule.epochs=4"],
                 progress=False, stop_after=1, verbose=False)
    lr, lr_min = 2e-3, 2e-3 * load_config(restart / "config.yaml").schedule.min_lr_ratio
    # a row's lr is the LR set after the epoch's last step: step 2 of the 4 after the restart
    assert rows[-1]["lr"] == pytest.approx(lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * 2 / 4)))
    rows = train(run_dir=restart, resume=True, progress=False, verbose=False)  # the restart survives a resume
    assert rows[-1]["lr"] == pytest.approx(lr_min)


class FakeDownloadable:
    """Stands for a torchvision dataset: download=True writes its files (slowly); without them it fails."""

    def __init__(self, root, transform=None, download=False, train=True):
        log = Path(root) / f"calls-{os.environ['RANK']}.txt"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            f.write(f"{download}\n")
        if download:
            time.sleep(0.5)  # the other rank must wait for this, not race it
            (Path(root) / "fake").mkdir(exist_ok=True)
        elif not (Path(root) / "fake").is_dir():
            raise RuntimeError("Dataset not found")


def _download_worker(rank, root):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=os.environ["TEST_PORT"])
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        datasets.TORCHVISION["cifar10"] = (FakeDownloadable, 10, ({"train": True},), {"train": False}, "fake")
        assert datasets.build_dataset("cifar10", "train", root=root, download=True).num_classes == 10
    finally:
        torch.distributed.destroy_process_group()


def test_under_torchrun_only_rank_0_downloads_and_the_others_wait(tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("TEST_PORT", str(s.getsockname()[1]))
    torch.multiprocessing.spawn(_download_worker, args=(str(tmp_path),), nprocs=2)
    assert (tmp_path / "calls-0.txt").read_text() == "True\nFalse\n"  # downloads, then opens with the transform
    assert (tmp_path / "calls-1.txt").read_text() == "False\n"


def cli(*args, fsize=None, **popen):
    """``python -m moejet`` in a subprocess (one thread); ``fsize``: RLIMIT_FSIZE in bytes (a full disk)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(moejet.__file__).parents[1])}

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.Popen([sys.executable, "-m", "moejet", *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=limit if fsize else None, **popen)


@pytest.fixture(scope="module")
def tiny_yaml():
    """``tiny_yaml(path, **train_keys)``: a 3-epoch CONFIG run (with these train keys) as a config file."""

    def write(path, **train_keys):
        config = tiny_config(**{**CONFIG, "train": {**CONFIG["train"], **train_keys}},
                             schedule={"epochs": 3, "warmup_epochs": 0})
        path.write_text(dump_config(config))
        return path

    return write


@pytest.mark.parametrize("background", [False, True], ids=["foreground", "background-save"])
def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_result(tiny_yaml, tmp_path, background):
    # kills land before, between and in recovery writes (and, with background_save, in the writer thread's writes)
    config = tiny_yaml(tmp_path / "tiny.yaml", recovery_every=1, background_save=background)
    straight = cli("train", "--config", config, "--out", tmp_path / "straight", "--no-progress")
    assert straight.wait() == 0, straight.stderr.read()
    rng = random.Random(0)
    for attempt in range(3):
        run = tmp_path / f"killed{attempt}"
        proc = cli("train", "--config", config, "--out", run, "--no-progress")
        time.sleep(rng.uniform(2.0, 8.0))  # imports take a few seconds: some kills land mid-run, some before
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        again = ("train", "--resume", run) if (run / "checkpoint.json").exists() else ("train", "--config", config,
                                                                                        "--out", run)
        resumed = cli(*again, "--no-progress")
        assert resumed.wait() == 0, resumed.stderr.read()
        assert same_weights(run / "last.safetensors", tmp_path / "straight" / "last.safetensors"), attempt


def test_a_file_size_limit_is_exit_2_with_a_one_line_error_and_the_run_resumes(tiny_yaml, tmp_path):
    config = tiny_yaml(tmp_path / "tiny.yaml")
    run = tmp_path / "run"
    assert cli("train", "--config", config, "--out", run, "--no-progress", "--stop-after", "1").wait() == 0
    state = run / read_pointer(run)["state"]
    weights = run / read_pointer(run)["weights"]
    assert weights.stat().st_size < state.stat().st_size  # so a limit between them stops the state write
    full = cli("train", "--resume", run, "--no-progress", fsize=(weights.stat().st_size + state.stat().st_size) // 2)
    assert full.wait() == 2
    err = full.stderr.read().strip()
    assert err.startswith("moejet train: error: cannot write") and "epoch-0002.state.pt: " in err
    assert "the last complete checkpoint (epoch 1) is intact" in err and "\n" not in err
    assert read_pointer(run)["epoch"] == 1
    assert cli("train", "--resume", run, "--no-progress").wait() == 0
    straight = cli("train", "--config", config, "--out", tmp_path / "straight", "--no-progress")
    assert straight.wait() == 0
    assert same_weights(run / "last.safetensors", tmp_path / "straight" / "last.safetensors")


# ------------------------------------------------------------------------------ mid-epoch recovery points

AUGMENT = {"auto_augment": "rand-m9-mstd0.5-inc1", "scale": [0.08, 1.0], "hflip": 0.5, "random_erasing": 0.25,
           "mixup": 0.8, "cutmix": 1.0, "label_smoothing": 0.1}  # every random draw of the paper's recipe


@pytest.fixture(scope="module")
def mid_config():
    """``mid_config(workers=0, recovery_every=3, **train_keys)``: 8 steps per epoch (32 images, 4 per step as 2
    micro-batches of 2), drop path, full augmentation."""

    def config(workers=0, recovery_every=3, **train_keys):
        return tiny_config(model={"drop_path_rate": 0.1}, augment=AUGMENT, data={"num_workers": workers},
                           train={"batch_size": 4, "micro_batch_size": 2, "seed": 0, "deterministic": True,
                                  "ema": True, "ema_decay": 0.9, "recovery_every": recovery_every, **train_keys})

    return config


def run_files(run):
    return sorted(p.name for p in (run / "checkpoints").iterdir() if not p.name.startswith("."))


@pytest.fixture(scope="module")
def mid_straight(mid_config, tmp_path_factory):
    """Uninterrupted runs without recovery points, by number of workers: (run dir, metrics)."""
    runs = {}
    for workers in (0, 2):
        run = tmp_path_factory.mktemp(f"mid{workers}") / "run"
        runs[workers] = run, train(mid_config(workers, recovery_every=0), run, progress=False, verbose=False)
    return runs


def test_augmentations_do_not_depend_on_the_number_of_workers(mid_straight):
    (run0, rows0), (run2, rows2) = mid_straight[0], mid_straight[2]
    assert same_weights(run0 / "last.safetensors", run2 / "last.safetensors")
    assert [r["train_loss"] for r in rows0] == [r["train_loss"] for r in rows2]


def test_recovery_points_are_committed_then_superseded_and_change_nothing(mid_config, mid_straight, tmp_path,
                                                                          monkeypatch):
    from moejet.train import checkpointing

    seen, real = [], checkpointing.save_recovery

    def spy(run_dir, model, name, kwargs, payload):
        real(run_dir, model, name, kwargs, payload)
        pointer = read_pointer(run_dir)
        state = torch.load(run_dir / pointer["recovery"]["state"], weights_only=True)
        seen.append((pointer["epoch"], pointer["recovery"]["step_in_epoch"], state["step"], len(state["rng"]),
                     run_files(run_dir)))

    monkeypatch.setattr(checkpointing, "save_recovery", spy)
    run = tmp_path / "run"
    rows = train(mid_config(), run, progress=False, verbose=False)
    assert [s[:4] for s in seen] == [(0, 3, 3, 1), (0, 6, 6, 1), (1, 3, 11, 1), (1, 6, 14, 1)]
    assert seen[0][4] == ["epoch-0000.safetensors", "epoch-0000.state.pt", "recovery-0000-00000003.safetensors",
                          "recovery-0000-00000003.state.pt"]  # the previous recovery pair is gone once committed
    assert seen[3][4] == ["epoch-0001.safetensors", "epoch-0001.state.pt", "recovery-0001-00000014.safetensors",
                          "recovery-0001-00000014.state.pt"]
    assert run_files(run) == ["epoch-0002.safetensors", "epoch-0002.state.pt"]
    assert "recovery" not in read_pointer(run)
    straight, straight_rows = mid_straight[0]
    assert same_weights(run / "last.safetensors", straight / "last.safetensors")
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in straight_rows]


def crash_at_recovery(monkeypatch, n):
    """A kill just before the n-th recovery point is written: the steps since the previous one are lost."""
    from moejet.train import checkpointing

    calls, real = {"n": 0}, checkpointing.save_recovery

    def save(*args):
        calls["n"] += 1
        if calls["n"] == n:
            raise Crash("killed")
        real(*args)

    monkeypatch.setattr(checkpointing, "save_recovery", save)


def count_train_images(monkeypatch):
    """Images the training split renders in this process (num_workers 0)."""
    loaded = {"n": 0}
    real = datasets.SyntheticShapes.__getitem__

    def getitem(self, index):
        loaded["n"] += self.split == "train"
        return real(self, index)

    monkeypatch.setattr(datasets.SyntheticShapes, "__getitem__", getitem)
    return loaded


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("crash", [2, 4])  # epoch 1 after step 5 (recovery point at 3) / epoch 2 after 13 (at 11)
def test_a_crash_mid_epoch_resumes_from_the_recovery_point_bit_exactly(mid_config, mid_straight, tmp_path, monkeypatch,
                                                                       workers, crash):
    run = tmp_path / "run"
    crash_at_recovery(monkeypatch, crash)
    with pytest.raises(Crash):
        train(mid_config(workers), run, progress=False, verbose=False)
    monkeypatch.undo()
    pointer = read_pointer(run)
    assert (pointer["epoch"], pointer["recovery"]["step_in_epoch"]) == (crash // 2 - 1, 3)
    loaded = count_train_images(monkeypatch)
    rows = train(run_dir=run, resume=True, progress=False, verbose=False)
    if workers == 0:  # the 3 steps done (12 images) are skipped without rendering them
        assert loaded["n"] == (32 - 12) + 32 * (2 - crash // 2)
    straight, straight_rows = mid_straight[workers]
    assert same_weights(run / "last.safetensors", straight / "last.safetensors")
    assert same_weights(run / "best.safetensors", straight / "best.safetensors")
    keys = ("epoch", "step", "train_loss", "train_images", "val_top1", "val_loss", "val_top1_ema", "lr")
    assert [[r[k] for k in keys] for r in rows] == [[r[k] for k in keys] for r in straight_rows]
    assert run_files(run) == ["epoch-0002.safetensors", "epoch-0002.state.pt"]


@pytest.fixture(scope="module")
def mid_recovery(mid_config, tmp_path_factory):
    """A run killed in epoch 1 after step 5: its recovery point is step 3."""
    run = tmp_path_factory.mktemp("recovery") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        crash_at_recovery(monkeypatch, 2)
        with pytest.raises(Crash):
            train(mid_config(), run, progress=False, verbose=False)
    return run


def test_a_crash_at_every_write_of_a_recovery_point_leaves_the_run_resumable(mid_recovery, mid_straight, tmp_path,
                                                                            monkeypatch):
    from moejet.train import run as run_module

    for k in range(3, 9):  # after config.yaml (2): the recovery weights, state, pointer, file and directory each
        run = tmp_path / f"k{k}"
        shutil.copytree(mid_recovery, run)
        crash_at_fsync(monkeypatch, k)
        monkeypatch.setattr(run_module, "save_epoch",
                            lambda *args, **kwargs: pytest.fail("the recovery write was not interrupted"))
        with pytest.raises(Crash):
            train(run_dir=run, resume=True, progress=False, verbose=False)
        monkeypatch.undo()
        pointer = read_pointer(run)
        assert (pointer["epoch"], pointer["recovery"]["step_in_epoch"]) == (0, 6 if k == 8 else 3), k
        train(run_dir=run, resume=True, progress=False, verbose=False)
        assert same_weights(run / "last.safetensors", mid_straight[0][0] / "last.safetensors"), f"crash at fsync {k}"
        assert run_files(run) == ["epoch-0002.safetensors", "epoch-0002.state.pt"]


def test_a_recovery_point_resumes_only_with_its_batch_layout(mid_recovery, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(mid_recovery, run)
    with pytest.raises(UserError, match=r"^the run's mid-epoch recovery point was written with \{'processes': 1, "
                                        r"'micro_batch': 2, 'accumulation': 2, 'steps_per_epoch': 8\}, this resume "
                                        r"has .*'micro_batch': 4, 'accumulation': 1.*: resume with the same number"):
        train(run_dir=run, resume=True, overrides=["train.micro_batch_size=4"], progress=False, verbose=False)


@pytest.mark.parametrize("damage", ["truncate", "delete"])
@pytest.mark.parametrize("which", ["weights", "state"])
def test_a_damaged_recovery_file_is_a_one_line_error_naming_it(mid_recovery, tmp_path, which, damage):
    run = tmp_path / "run"
    shutil.copytree(mid_recovery, run)
    path = run / read_pointer(run)["recovery"][which]
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.unlink()
    with pytest.raises(UserError) as err:
        train(run_dir=run, resume=True, progress=False, verbose=False)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_full_disk_during_a_recovery_write_keeps_the_previous_point(mid_recovery, mid_straight, tmp_path,
                                                                      monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(mid_recovery, run)

    def full(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(UserError, match=r"^cannot write .*recovery-0000-00000006.state.pt: No space left on device; "
                                        r"the last complete checkpoint \(epoch 0 \+ 3 steps\) is intact"):
        train(run_dir=run, resume=True, progress=False, verbose=False)
    monkeypatch.undo()
    assert read_pointer(run)["recovery"]["step_in_epoch"] == 3
    train(run_dir=run, resume=True, progress=False, verbose=False)
    assert same_weights(run / "last.safetensors", mid_straight[0][0] / "last.safetensors")


def _recovery_worker(rank, ports, root, config):
    """One of 2 gloo ranks: an uninterrupted run, then a run that crashes before its 2nd recovery point (epoch 1,
    after step 5; the point kept is step 3), then its resume. Every rank crashes at the same step: none is left
    waiting in a collective. ``config``: ``mid_config(device="cpu")``."""
    from moejet.train import run as run_module

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1")
    torch.set_num_threads(1)
    calls, real = {"n": 0}, run_module.save_recovery_point

    def save(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Crash("killed")
        real(*args)

    os.environ["MASTER_PORT"] = str(ports[0])
    train(config, root / "straight", progress=False, verbose=False)
    os.environ["MASTER_PORT"] = str(ports[1])
    run_module.save_recovery_point = save
    with pytest.raises(Crash):
        train(config, root / "run", progress=False, verbose=False)
    run_module.save_recovery_point = real
    os.environ["MASTER_PORT"] = str(ports[2])
    if rank == 0:
        pointer = read_pointer(root / "run")
        state = torch.load(root / "run" / pointer["recovery"]["state"], weights_only=True)
        assert (state["step_in_epoch"], len(state["rng"]), len(state["loss_sums"])) == (3, 2, 2)
        assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # each rank's own dropout stream
    train(run_dir=root / "run", resume=True, progress=False, verbose=False)


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_processes_resume_mid_epoch_with_every_ranks_rng_and_loss_sums(mid_config, tmp_path):
    torch.multiprocessing.spawn(_recovery_worker, args=(free_ports(3), tmp_path, mid_config(device="cpu")),
                                nprocs=2)
    assert same_weights(tmp_path / "run" / "last.safetensors", tmp_path / "straight" / "last.safetensors")
    timing = ("images_per_s", "epoch_time_s", "wall_time_s")
    rows = [{k: v for k, v in row.items() if k not in timing} for row in read_metrics(tmp_path / "run")]
    assert rows == [{k: v for k, v in row.items() if k not in timing} for row in read_metrics(tmp_path / "straight")]
