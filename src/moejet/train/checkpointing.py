"""Crash-safe run checkpoints: epoch-tagged files committed by an atomic pointer written last.

Layout of a run directory's checkpoints::

    RUN/checkpoints/epoch-0003.safetensors   weights of epoch 3 (moejet header: model name, kwargs, epoch, step)
    RUN/checkpoints/epoch-0003.state.pt      optimizer, scheduler, grad scaler, EMA, RNG, epoch, step, best_top1
    RUN/checkpoint.json                      {"epoch": 3, "weights": ..., "state": ...}: the committed checkpoint
    RUN/last.safetensors                     the committed weights (a hard link to them where the filesystem can)
    RUN/best.safetensors                     weights of the epoch with the best val_top1

A save writes the new epoch's two files (each fsynced, renamed into place, directory fsynced), best, then the
pointer (same), and only then refreshes ``last.safetensors`` and deletes the previous epoch's files. A crash at any byte
therefore leaves the pointer naming a complete pair: the new one or the previous one.

Mid-epoch recovery points (``train.recovery_every``) go through the same commit::

    RUN/checkpoints/recovery-0003-00001200.safetensors   weights after global step 1200, inside epoch 4
    RUN/checkpoints/recovery-0003-00001200.state.pt      the epoch's state plus step_in_epoch, every rank's RNG
                                                         states and partial train-loss sums
    RUN/checkpoint.json                                  {"epoch": 3, ..., "recovery": {"step_in_epoch", "weights",
                                                         "state"}}

Under ``train.strategy=fsdp`` the optimizer state is sharded: every process writes its shard through
``torch.distributed.checkpoint`` into one directory per checkpoint, renamed into place before the pointer names it::

    RUN/checkpoints/epoch-0003.dcp/          {"optimizer": ...} (the state file's "optimizer" is None)
    RUN/checkpoint.json                      {"epoch": 3, "weights": ..., "state": ..., "sharded": ...}

The weights stay one full safetensors file (gathered on rank 0).

The pointer keeps naming the last complete epoch (``last.safetensors`` stays that epoch's weights); the previous
recovery pair is deleted only after the new pointer is durable, and the next epoch's commit drops the recovery entry,
then its files.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from ..errors import UserError, first_line
from ..io.files import atomic_output, write_json
from ..io.weights import build_from_checkpoint, read_metadata, save_model
from ..rundir import BEST, CKPT_DIR, CONFIG_FILE, LAST, METRICS_FILE, POINTER
from .config import Config, load_config
from .distributed import World, is_sharded, rng_state, set_rng_state
from .state import Progress, TrainState

CONFIG_END = "# end of the moejet run config\n"  # a truncated config.yaml can still parse: this line proves it whole


def weights_path(run_dir: Path, epoch: int) -> Path:
    return run_dir / CKPT_DIR / f"epoch-{epoch:04d}.safetensors"


def state_path(run_dir: Path, epoch: int) -> Path:
    return run_dir / CKPT_DIR / f"epoch-{epoch:04d}.state.pt"


def recovery_paths(run_dir: Path, epoch: int, step: int) -> tuple[Path, Path]:
    """(weights, state) of the recovery point after global ``step``, inside the epoch after ``epoch``."""
    stem = run_dir / CKPT_DIR / f"recovery-{epoch:04d}-{step:08d}"
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".state.pt")


def sharded_path(weights: Path) -> Path:
    """The sharded-state directory that goes with a checkpoint's weights file."""
    return weights.with_suffix(".dcp")


def save_sharded(run_dir: Path, path: Path, state_dict: dict[str, Any], is_main: bool) -> None:
    """Every process writes its shards of ``state_dict`` into ``path`` (collective): a hidden directory first,
    renamed into place by rank 0 once every shard is written and fsynced. It counts once a pointer names it."""
    partial = path.with_name(f".{path.name}.partial")
    previous = read_pointer(run_dir) if is_main and is_run_dir(run_dir) else None
    if is_main:
        shutil.rmtree(partial, ignore_errors=True)
    dist.barrier()
    try:
        dcp.save(state_dict, checkpoint_id=partial)
    except Exception as err:  # noqa: BLE001  (DCP reports any rank's failed write as a CheckpointException)
        raise _write_error(run_dir, path, err, previous) from None
    if not is_main:
        return
    try:
        for file in partial.iterdir():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
        shutil.rmtree(path, ignore_errors=True)  # an uncommitted leftover of a crashed save of this checkpoint
        os.replace(partial, path)
        _fsync_dir(path.parent)
    except OSError as err:
        raise _write_error(run_dir, path, err, previous) from None


def load_sharded(path: Path, state_dict: dict[str, Any]) -> None:
    """Fill ``state_dict`` (this process's shards, as laid out now) from ``path`` (collective)."""
    try:
        dcp.load(state_dict, checkpoint_id=path)
    except Exception as err:  # noqa: BLE001
        raise UserError(f"{path} cannot be read ({type(err).__name__}: {first_line(err)}): resume "
                        "with the same model and optimizer, or restore the directory") from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_run_dir(run_dir: Path) -> bool:
    return (run_dir / POINTER).is_file()


def save_checkpoint(run_dir: Path, model: torch.nn.Module | dict[str, torch.Tensor], name: str,
                    kwargs: dict[str, Any], payload: dict[str, Any], is_best: bool) -> None:
    """Write epoch ``payload["epoch"]``'s weights and state, commit them, then drop the previous epoch's files.

    ``payload["optimizer"]`` None: the optimizer state is sharded, in the epoch's :func:`sharded_path` directory,
    already written (:func:`save_sharded`); the pointer names it too.

    A full disk (or a file-size limit) is a one-line :class:`UserError` naming the file; the previous
    checkpoint is left committed and intact.
    """
    epoch = payload["epoch"]
    header = {"moejet.epoch": str(epoch), "moejet.step": str(payload["step"])}
    previous = read_pointer(run_dir) if is_run_dir(run_dir) else None
    weights, state = weights_path(run_dir, epoch), state_path(run_dir, epoch)
    target = weights
    try:
        save_model(model, weights, name, kwargs, metadata=header)
        target = state
        with atomic_output(state) as tmp:
            torch.save(payload, tmp)
        if is_best:  # before the pointer: a crash before it commits redoes this epoch, which rewrites best
            target = run_dir / BEST
            _publish(weights, run_dir / BEST, link=False)  # best outlives the epoch files: its own copy
        target = run_dir / POINTER
        entry = {"epoch": epoch, "weights": str(weights.relative_to(run_dir)), "state": str(state.relative_to(run_dir))}
        if payload["optimizer"] is None:
            entry["sharded"] = str(sharded_path(weights).relative_to(run_dir))
        write_json(run_dir / POINTER, entry)
        target = run_dir / LAST
        _publish(weights, run_dir / LAST)
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as a RuntimeError
        raise _write_error(run_dir, target, err, previous) from None
    if previous is not None:
        stale = _epoch_files(previous) if previous["epoch"] != epoch else []
        _unlink(run_dir, stale + _recovery_files(previous))


def save_recovery(run_dir: Path, model: torch.nn.Module | dict[str, torch.Tensor], name: str,
                  kwargs: dict[str, Any], payload: dict[str, Any]) -> None:
    """Commit a mid-epoch recovery point (``payload`` has ``step_in_epoch``), then drop the previous one's files.

    The pointer's epoch entry is kept as it is: a crash at any byte leaves it naming the previous recovery point
    (or none) and the last complete epoch.
    """
    pointer = read_pointer(run_dir)
    weights, state = recovery_paths(run_dir, payload["epoch"], payload["step"])
    header = {"moejet.epoch": str(payload["epoch"]), "moejet.step": str(payload["step"])}
    target = weights
    try:
        save_model(model, weights, name, kwargs, metadata=header)
        target = state
        with atomic_output(state) as tmp:
            torch.save(payload, tmp)
        target = run_dir / POINTER
        entry = {"step_in_epoch": payload["step_in_epoch"], "weights": str(weights.relative_to(run_dir)),
                 "state": str(state.relative_to(run_dir))}
        if payload["optimizer"] is None:
            entry["sharded"] = str(sharded_path(weights).relative_to(run_dir))
        write_json(run_dir / POINTER, {**pointer, "recovery": entry})
    except (OSError, RuntimeError) as err:
        raise _write_error(run_dir, target, err, pointer) from None
    new = {weights, state, sharded_path(weights)}
    _unlink(run_dir, [rel for rel in _recovery_files(pointer) if run_dir / rel not in new])


class BackgroundWriter:
    """Runs rank 0's checkpoint writes in a thread while training goes on (``train.background_save``).

    ``submit(fn, *args)`` first waits for the previous write, so saves stay in order and the pointer-last commit of
    each is unchanged; an error (or a kill) in a write is raised by the next ``submit`` or ``wait``. The caller
    hands over host copies (:func:`host_copy`) of everything training will change. Disabled, ``submit`` just calls.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, fn: Any, *args: Any) -> None:
        self.wait()
        if not self.enabled:
            fn(*args)
            return

        def run() -> None:
            try:
                fn(*args)
            except BaseException as err:  # noqa: BLE001  (re-raised in the training thread)
                self._error = err

        self._thread = threading.Thread(target=run, name="moejet-checkpoint", daemon=False)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def host_copy(obj: Any) -> Any:
    """``obj`` with every tensor copied to host memory (nested dicts, lists and tuples rebuilt, the rest shared)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: host_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(host_copy(v) for v in obj)
    return obj


def _write_error(run_dir: Path, target: Path, err: Exception, previous: dict[str, Any] | None) -> UserError:
    reason = os.strerror(err.errno) if isinstance(err, OSError) and err.errno else \
        f"{first_line(err)}: is the disk full or a file-size limit reached?"
    kept = f"epoch {previous['epoch']}" if previous else "nothing yet"
    if previous and "recovery" in previous:
        kept += f" + {previous['recovery']['step_in_epoch']} steps"
    return UserError(f"cannot write {target}: {reason}; the last complete checkpoint ({kept}) is intact: "
                     f"free disk space, then continue with --resume {run_dir}")


def _epoch_files(entry: dict[str, Any]) -> list[str]:
    return [entry["weights"], entry["state"]] + ([entry["sharded"]] if "sharded" in entry else [])


def _recovery_files(pointer: dict[str, Any]) -> list[str]:
    return _epoch_files(pointer["recovery"]) if "recovery" in pointer else []


def _unlink(run_dir: Path, relative_paths: list[str]) -> None:
    for rel in relative_paths:
        _remove(run_dir / rel)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _publish(src: Path, dst: Path, link: bool = True) -> None:
    """Atomically make ``dst`` hold ``src``'s bytes: a hard link where possible, else a copy."""
    with atomic_output(dst) as tmp:
        if link:
            try:
                os.unlink(tmp)
                os.link(src, tmp)
                return
            except OSError:
                pass
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            while chunk := fin.read(1 << 24):
                fout.write(chunk)


def sync_last(run_dir: Path) -> None:
    """Finish an interrupted save: ``last.safetensors`` = the committed weights; drop uncommitted epoch and
    recovery files."""
    pointer = read_pointer(run_dir)
    last = run_dir / LAST
    if not last.is_file() or read_metadata(last).get("moejet.epoch") != str(pointer["epoch"]):
        _publish(run_dir / pointer["weights"], last)
    keep = {run_dir / rel for rel in [*_epoch_files(pointer), *_recovery_files(pointer)]}
    for path in (run_dir / CKPT_DIR).iterdir():
        if path not in keep and path.name.startswith(("epoch-", ".epoch-", "recovery-", ".recovery-")):
            _remove(path)


def saved_point(run_dir: Path) -> tuple[int, int, int]:
    """``(epochs done, steps done of the next epoch, optimizer step)`` of the committed checkpoint: its epoch, or its
    mid-epoch recovery point."""
    pointer = read_pointer(run_dir)
    entry = pointer.get("recovery", pointer)
    step = int(read_metadata(run_dir / entry["weights"]).get("moejet.step", 0))
    return pointer["epoch"], entry.get("step_in_epoch", 0), step


def read_pointer(run_dir: Path) -> dict[str, Any]:
    """The committed checkpoint of ``run_dir`` (errors name the file and what to do)."""
    path = run_dir / POINTER
    try:
        pointer = json.loads(path.read_text())
        if not isinstance(pointer, dict) or not {"epoch", "weights", "state"} <= set(pointer):
            raise ValueError("missing keys")
    except FileNotFoundError:
        raise UserError(f"{run_dir} is not a resumable run directory (no {POINTER}): check the path") from None
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is damaged ({type(err).__name__}): the run cannot be resumed from it; "
                        f"restore the file or start a new run from {run_dir / LAST}") from None
    recovery = pointer.get("recovery", {"step_in_epoch": 0, "weights": pointer["weights"], "state": pointer["state"]})
    if not isinstance(recovery, dict) or not {"step_in_epoch", "weights", "state"} <= set(recovery):
        raise UserError(f"{path} is damaged (its recovery entry lacks keys): the run cannot be resumed from it; "
                        f"restore the file or start a new run from {run_dir / LAST}")
    for rel in (pointer["weights"], pointer["state"], recovery["weights"], recovery["state"]):
        if not (run_dir / rel).is_file():
            raise UserError(f"{run_dir / rel} (named by {path}) is missing: restore it to resume the run")
    for entry in (pointer, recovery):
        if "sharded" in entry and not (run_dir / entry["sharded"] / ".metadata").is_file():
            raise UserError(f"{run_dir / entry['sharded']} (named by {path}) is missing or incomplete: restore it "
                            "to resume the run")
    return pointer


def load_state(path: Path) -> dict[str, Any]:
    """A run's state file, read with ``weights_only=True``; any damage is a one-line error naming it."""
    try:
        # memory-mapped: the ranks of a node share the page cache instead of each holding the optimizer state
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise UserError(f"{path} is missing: restore it to resume the run") from None
    except Exception as err:  # noqa: BLE001  (a damaged pickle raises almost anything)
        raise UserError(f"{path} is damaged ({type(err).__name__}): the run cannot be resumed from it; "
                        "restore the file from a backup") from None
    if not isinstance(payload, dict) or not {"epoch", "step", "optimizer", "scheduler", "rng"} <= set(payload):
        raise UserError(f"{path} is not a moejet run state file: the run cannot be resumed from it")
    return payload


# ------------------------------------------------------------------------ a run's saves and resumes

def save_epoch(ts: TrainState, is_best: bool, writer: BackgroundWriter | None = None) -> None:
    """metrics, then the epoch's weights + state committed together by rank 0 (see this module's docstring); a
    sharded model's optimizer shards are written by every rank first. ``writer``: rank 0's writes in the
    background, from host copies taken now."""
    run_dir, model, name, kwargs, world = ts.run_dir, ts.model, ts.model_name, ts.model_kwargs, ts.world
    metrics = ts.metrics
    if writer is not None:
        writer.wait()  # the previous save is committed (or its error raised) before this one starts
    weights, sharded = _sharded_save(run_dir, weights_path(run_dir, ts.progress.epoch), model, ts.optimizer, world)
    if not world.is_main:
        return
    payload = _payload(ts, rng_state(), sharded=sharded)
    weights = weights.state_dict() if isinstance(weights, nn.Module) else weights
    if metrics:  # what this save writes: the weights, the state (optimizer, EMA) and best's copy of the weights
        metrics[-1]["checkpoint_bytes"] = tensor_bytes(weights) * (1 + is_best) + tensor_bytes(payload)
    _write_metrics(run_dir, metrics)
    if writer is not None and writer.enabled:
        weights, payload = host_copy(weights), host_copy(payload)
        writer.submit(save_checkpoint, run_dir, weights, name, kwargs, payload, is_best)
    else:
        save_checkpoint(run_dir, weights, name, kwargs, payload, is_best)


def save_between(ts: TrainState, is_best: bool) -> None:
    """An epoch without a checkpoint (``train.save_every``): its metrics row, and best's weights if it is the best."""
    run_dir, model, name, kwargs, world = ts.run_dir, ts.model, ts.model_name, ts.model_kwargs, ts.world
    progress, metrics = ts.progress, ts.metrics
    weights = model
    if is_best and is_sharded(model):  # gathering the full weights is collective
        weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not world.is_main:
        return
    metrics[-1]["checkpoint_bytes"] = tensor_bytes(weights.state_dict() if isinstance(weights, nn.Module)
                                                   else weights) if is_best else 0
    _write_metrics(run_dir, metrics)
    if is_best:
        save_model(weights, run_dir / BEST, name, kwargs,
                   metadata={"moejet.epoch": str(progress.epoch), "moejet.step": str(progress.step)})


def save_recovery_point(ts: TrainState, layout: dict[str, int], epoch_start: float, step_in_epoch: int,
                        loss_sum: torch.Tensor) -> None:
    """A mid-epoch recovery point after ``step_in_epoch`` steps: every rank's RNG states and (loss sum, images) go
    to rank 0, which commits them with the shared state (see :func:`save_recovery`)."""
    run_dir, model, name, kwargs, world = ts.run_dir, ts.model, ts.model_name, ts.model_kwargs, ts.world
    progress, mixup = ts.progress, ts.mixup
    ranks = _gather({"rng": rng_state(), "loss_sum": loss_sum.cpu()}, world)
    weights, sharded = _sharded_save(run_dir, recovery_paths(run_dir, progress.epoch, progress.step)[0], model,
                                     ts.optimizer, world)
    if not world.is_main:
        return
    payload = _payload(ts, [r["rng"] for r in ranks], sharded=sharded)
    payload.update(step_in_epoch=step_in_epoch, loss_sums=[r["loss_sum"] for r in ranks], layout=layout,
                   elapsed_s=time.perf_counter() - epoch_start,
                   mixup_enabled=mixup.mixup_enabled if mixup is not None else None)
    save_recovery(run_dir, weights, name, kwargs, payload)


def _payload(ts: TrainState, rng: Any, sharded: bool = False) -> dict[str, Any]:
    return {
        **asdict(ts.progress),  # top-level keys, as in the state files written before Progress
        "optimizer": None if sharded else ts.optimizer.state_dict(),  # sharded: in the checkpoint's .dcp directory
        "scheduler": _plain_scheduler_state(ts.scheduler),
        "scaler": ts.scaler.state_dict() if ts.scaler is not None else None,
        "ema": ts.ema.state_dict() if ts.ema is not None else None,
        "rng": rng,
    }


def load_run_state(ts: TrainState) -> tuple[Progress, list[dict[str, Any]], dict[str, Any] | None]:
    """``(progress, metrics rows of the committed epochs, the mid-epoch recovery point or None)``."""
    run_dir, model, optimizer, scaler, ema, mixup = ts.run_dir, ts.model, ts.optimizer, ts.scaler, ts.ema, ts.mixup
    pointer = read_pointer(run_dir)
    entry = pointer.get("recovery", pointer)
    payload = load_state(run_dir / entry["state"])
    if payload["epoch"] != pointer["epoch"] or payload.get("step_in_epoch", 0) != entry.get("step_in_epoch", 0):
        raise UserError(f"{run_dir / entry['state']} holds epoch {payload['epoch']} + "
                        f"{payload.get('step_in_epoch', 0)} steps but {run_dir / POINTER} names epoch "
                        f"{pointer['epoch']} + {entry.get('step_in_epoch', 0)} steps: restore the run directory's "
                        "files")
    if payload["optimizer"] is None and "sharded" not in entry:
        raise UserError(f"{run_dir / entry['state']} has no optimizer state and {run_dir / POINTER} names no sharded "
                        "one: restore the run directory's files")
    if ("sharded" in entry) != is_sharded(model) and ("sharded" in entry or payload["optimizer"]["state"]):
        was, now = ("fsdp", "ddp") if "sharded" in entry else ("ddp", "fsdp")
        raise UserError(f"{run_dir} was trained with train.strategy={was}: resume it with --set train.strategy={was} "
                        f"(its optimizer state cannot be moved to {now})")
    if "sharded" in entry:
        optim_state = {"optimizer": get_optimizer_state_dict(model, optimizer)}  # this rank's shards, to fill in
        load_sharded(run_dir / entry["sharded"], optim_state)
    try:
        if "sharded" in entry:
            set_optimizer_state_dict(model, optimizer, optim_state["optimizer"])
        else:
            optimizer.load_state_dict(payload["optimizer"])  # the LR schedule is a function of the step: rebuilt
        if scaler is not None and payload["scaler"] is not None:
            scaler.load_state_dict(payload["scaler"])
        if ema is not None:
            if payload["ema"] is None:
                raise UserError(f"{run_dir} was trained without EMA: resume it with train.ema=false")
            ema.load_state_dict(payload["ema"])
    except (ValueError, KeyError, RuntimeError) as err:
        raise UserError(f"{run_dir / entry['state']} does not match the run's config ({type(err).__name__}: "
                        f"{first_line(err)}): resume without changing the model or optimizer") from None
    recovery = None
    if "recovery" in pointer:
        recovery = {k: payload[k] for k in ("step_in_epoch", "rng", "loss_sums", "layout", "elapsed_s")}
        if mixup is not None and payload["mixup_enabled"] is not None:
            mixup.mixup_enabled = payload["mixup_enabled"]
    else:
        set_rng_state(payload["rng"])
    try:
        metrics = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as err:
        raise UserError(f"{run_dir / METRICS_FILE} is damaged ({type(err).__name__}): restore it or delete it "
                        "(the resumed run then lists only its new epochs)") from None
    progress = Progress(epoch=payload["epoch"], step=payload["step"], best_top1=payload["best_top1"],
                        wall_time_s=payload["wall_time_s"], restart_step=payload.get("restart_step"))
    rows = [row for row in metrics if isinstance(row, dict) and row.get("epoch", 0) <= progress.epoch]
    return progress, rows, recovery


def _write_metrics(run_dir: Path, metrics: list[dict[str, Any]]) -> None:
    with atomic_output(run_dir / METRICS_FILE) as tmp:  # rows past the committed epoch are dropped on resume
        tmp.write_text("".join(json.dumps(row) + "\n" for row in metrics))


def tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor in a (nested) state dict."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def _sharded_save(run_dir: Path, weights: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                  world: World) -> tuple[nn.Module | dict[str, torch.Tensor], bool]:
    """``(what rank 0 saves as the checkpoint's weights, whether the optimizer state went to a sharded directory)``.

    A sharded model (collective): every rank writes its optimizer shards next to ``weights``, then the full state
    dict is gathered on rank 0. An optimizer that has not stepped yet is left alone: DCP would initialise its state
    with a zero-gradient step, which counts as Adam's first step.
    """
    if not is_sharded(model):
        return model, False
    stepped = bool(optimizer.state)
    if stepped:
        save_sharded(run_dir, sharded_path(weights), {"optimizer": get_optimizer_state_dict(model, optimizer)},
                     world.is_main)
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)), stepped


def _gather(obj: Any, world: World) -> list[Any]:
    """``obj`` of every rank, in rank order (on every rank)."""
    if not world.enabled:
        return [obj]
    gathered: list[Any] = [None] * world.world_size
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def read_run_config(run_dir: Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    path = run_dir / CONFIG_FILE
    try:
        whole = path.read_text().endswith(CONFIG_END)
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is damaged ({type(err).__name__}): restore it to resume the run") from None
    if not whole:
        raise UserError(f"{path} is truncated or damaged (its last line is not {CONFIG_END.strip()!r}): restore it "
                        "to resume the run")
    return load_config(path, overrides)


def _plain_scheduler_state(scheduler: Any) -> dict[str, Any]:
    return {k: v for k, v in scheduler.state_dict().items() if isinstance(v, (int, float, str, bool, list, tuple,
                                                                              type(None)))}


def resume_model(run_dir: Path, is_main: bool) -> tuple[nn.Module, str, dict[str, Any]]:
    """The run's model rebuilt from its committed weights alone (no init checkpoint, no hub download)."""
    if is_main:  # the other ranks only read the committed files, which this leaves alone
        sync_last(run_dir)
    pointer = read_pointer(run_dir)
    return build_from_checkpoint(run_dir / pointer.get("recovery", pointer)["weights"])


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``RUN/metrics.jsonl``."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise UserError(f"{path} does not exist: is {run_dir} a moejet run directory?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
