"""A run, wired: :func:`train` builds (or resumes) everything a run directory needs and drives its epochs.

The loop itself is :mod:`.loop`; every save and resume is :mod:`.checkpointing`.

Run directory (read by the analysis tools and the demo)::

    RUN/config.yaml         resolved config (learning rate written in)
    RUN/metrics.jsonl       one JSON object per epoch: epoch (1-based), train_loss, val_top1, val_top5 (percent),
                            val_loss, lr, images_per_s, epoch_time_s, wall_time_s (cumulative), step,
                            temperatures {moe module: {"dispatch", "combine"}} (+ val_top1_ema / val_top5_ema)
    RUN/last.safetensors    model weights (moejet.io.weights.save_model: rebuild with build_from_checkpoint)
    RUN/best.safetensors    weights of the epoch with the best val_top1
    RUN/checkpoint.json     the committed epoch: its weights and state under RUN/checkpoints/ (see .checkpointing)
    RUN/classes.json        the dataset's public name and class names in label order (moejet.io.labels)

Every epoch starts from RNG states derived from (seed, epoch, rank), each training image's augmentation is seeded
from (seed, epoch, image index) (:class:`moejet.data.SeededSamples`), and checkpoints are written at epoch ends and,
with ``train.recovery_every``, every N optimizer steps (with every rank's RNG states and partial loss sums), so
``--resume`` continues bit-exactly in deterministic mode, mid-epoch too, whatever ``data.num_workers``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from timm.data.loader import fast_collate
from timm.models.convnext import ConvNeXt
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader, Subset

from ..data import SeededSamples
from ..data.datasets import class_names, dataset_label
from ..data.sampler import GlobalBatchSampler
from ..errors import Interrupted, UserError
from ..io.files import atomic_output
from ..io.labels import write_labels
from ..models import moe_modules
from ..rundir import CONFIG_FILE, LABELS_FILE, POINTER
from . import build
from .checkpointing import (
    CONFIG_END,
    BackgroundWriter,
    is_run_dir,
    load_run_state,
    read_run_config,
    resume_model,
    save_between,
    save_epoch,
    save_recovery_point,
    saved_point,
)
from .config import Config, batch_plan, check_input_files, dump_config
from .distributed import (
    World,
    check_shared_dir,
    default_workers,
    epoch_seed,
    seed_everything,
    set_deterministic,
    set_rng_state,
    setup,
    shard_model,
    teardown,
    wrap_ddp,
)
from .loggers import StepLog, open_loggers, scalars
from .loop import evaluate, routing, train_one_epoch
from .state import TrainState

EXTEND_MODES = (None, "continue", "cosine-restart")


def train(
    config: Config | None = None,
    run_dir: str | Path = "runs/run",
    resume: bool = False,
    extend: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    stop_after: int | None = None,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    verbose: bool = True,
) -> list[dict[str, Any]]:
    """Train ``config`` into ``run_dir`` (or continue the run there when ``resume``); returns all epochs' metrics.

    ``stop_after``: leave after this many epochs of this invocation (the run stays resumable).
    ``overrides`` (``key.sub=value``) apply to the run's saved config when resuming; a changed
    ``schedule.epochs`` needs ``extend``: ``"continue"`` (the cosine is recomputed for the new length and
    followed from the current step: the LR rises to that curve) or ``"cosine-restart"`` (a new cosine, no
    warmup, from ``optim.lr`` at the current step down to the minimum at the new last epoch).
    ``progress``: a tqdm bar per epoch; ``verbose``: the header and one summary line per epoch;
    ``on_epoch(row)``: called on rank 0 with each epoch's metrics once its checkpoints are written.
    """
    run_dir = Path(run_dir)
    if resume:
        if (run_dir / CONFIG_FILE).is_file() and not is_run_dir(run_dir):
            raise UserError(f"{run_dir} has no committed checkpoint (it stopped before its first save): start it "
                            f"again with moejet train --config {run_dir / CONFIG_FILE} --out {run_dir}")
        if not is_run_dir(run_dir) or not (run_dir / CONFIG_FILE).is_file():
            raise UserError(f"{run_dir} is not a resumable run directory (no {CONFIG_FILE} / {POINTER}): check the "
                            "path")
        config = read_run_config(run_dir, overrides)
        planned = read_run_config(run_dir).schedule.epochs
        if extend not in EXTEND_MODES:
            raise UserError(f"--extend {extend}: use one of {', '.join(m for m in EXTEND_MODES if m)}")
        if config.schedule.epochs != planned and extend is None:
            raise UserError(
                f"schedule.epochs changed from {planned} to {config.schedule.epochs}: say how the schedule continues "
                "with --extend continue (the cosine recomputed for the new length) or --extend cosine-restart "
                "(a new cosine from optim.lr)")
        if config.schedule.epochs == planned:
            extend = None
    elif config is None:
        raise UserError("give a config to train (or resume a run directory)")
    elif is_run_dir(run_dir):  # a config alone (killed before the first save) is started over
        raise UserError(f"{run_dir} already holds a run: continue it with --resume {run_dir} or pick another --out")
    else:
        check_input_files(config)

    world = setup(config.train.device, config.train.dist_timeout_min)
    try:
        check_shared_dir(run_dir, world)
        metrics = _train(config, run_dir, world, _Invocation(resume, extend, stop_after, progress, verbose, on_epoch))
        if world.enabled:  # leave together: a rank that tears down while its peer still writes files can abort (gloo)
            torch.distributed.barrier()
        return metrics
    finally:
        teardown(world)


@dataclass(frozen=True)
class _Invocation:
    """What this call of :func:`train` asks for beyond the config."""

    resume: bool
    extend: str | None
    stop_after: int | None
    progress_bar: bool
    verbose: bool
    on_epoch: Callable[[dict[str, Any]], None] | None


@dataclass
class _Loaders:
    """The run's image streams: training (its samples and sampler re-seeded each epoch), validation, telemetry."""

    samples: SeededSamples
    sampler: GlobalBatchSampler
    rng: torch.Generator
    train: Any
    val: Any
    telemetry: Any
    steps_per_epoch: int


def _train(config: Config, run_dir: Path, world: World, call: _Invocation) -> list[dict[str, Any]]:
    """The run wired (data, model, loaders, state, new or resumed), then its epochs: train, evaluate every
    ``train.eval_every``, checkpoint every ``train.save_every`` (and at the last epoch and a stop)."""
    t = config.train
    set_deterministic(t.deterministic)
    seed_everything(t.seed)
    micro, accum = batch_plan(config, world.world_size)
    amp_dtype = amp_dtype_for(t.amp, world.device)
    if t.strategy == "fsdp" and not world.enabled:
        raise UserError("train.strategy=fsdp shards the model over processes: launch with torchrun --nproc_per_node "
                        "N (N > 1), or use train.strategy=ddp for one process")

    # data first: the dataset decides the number of classes
    meta_name, meta_kwargs = build.config_model(config)
    with torch.device("meta"):
        probe = build.create_model(meta_name, meta_kwargs, pretrained=False)
    prefetch = build.uses_prefetcher(world.device)
    train_tf, val_tf = build.build_transforms(config, probe, prefetch)
    train_ds, val_ds = build.build_dataset(config, "train", train_tf), build.build_dataset(config, "val", val_tf)
    num_classes = build.num_classes_of(train_ds, config)

    ts = _wire(config, run_dir, world, call.resume, num_classes, amp_dtype)
    loaders = _loaders(config, world, (train_ds, val_ds), probe, micro, prefetch)
    ts.scheduler = build.build_scheduler(config, ts.optimizer, loaders.steps_per_epoch)
    layout = {"processes": world.world_size, "micro_batch": micro, "accumulation": accum,
              "steps_per_epoch": loaders.steps_per_epoch}  # what a mid-epoch recovery point is only valid for
    recovery = _start_or_resume(ts, call, layout)
    if world.is_main and not (call.resume and (run_dir / LABELS_FILE).is_file()):  # moejet publish, export, predict
        write_labels(run_dir, dataset_label(config.data.dataset), class_names(train_ds))  # read the class names
    if ts.progress.epoch >= config.schedule.epochs:  # a finished run resumed without more epochs
        return ts.metrics
    eval_model, ema_model = _compile(ts)
    logs, closes = open_loggers(run_dir, config) if world.is_main else ([], [])
    if world.is_main and call.verbose:
        start = f"resuming {run_dir} from {_point(*saved_point(run_dir), loaders.steps_per_epoch)}: " if call.resume \
            else ""
        print(f"moejet train: {start}{config.name}: {ts.model_name} on {config.data.dataset} ({len(train_ds)} train / "
              f"{len(val_ds)} val images, {num_classes} classes); {world.world_size} process(es) on {world.device}; "
              f"global batch {t.batch_size} on {world.world_size} process(es), micro-batches of up to {micro} x "
              f"{accum} accumulation; lr {config.lr:.3g}; {loaders.steps_per_epoch} steps/epoch; run dir {run_dir}",
              flush=True)

    epochs_run = 0
    writer = BackgroundWriter(t.background_save and world.is_main)
    try:
        for epoch in range(ts.progress.epoch, config.schedule.epochs):
            if call.stop_after is not None and epochs_run >= call.stop_after:
                break
            row, start = _train_epoch(ts, loaders, epoch, recovery, writer, layout, call)
            recovery = None
            last_epoch = epoch + 1 == config.schedule.epochs
            if (epoch + 1) % t.eval_every == 0 or last_epoch:
                row.update(_evaluate_epoch(ts, loaders, eval_model, ema_model))
            _finish_epoch(ts, row, time.perf_counter() - start)
            stopping = call.stop_after is not None and epochs_run + 1 >= call.stop_after
            is_best = "val_top1" in row and row["val_top1"] > ts.progress.best_top1
            if is_best:
                ts.progress.best_top1 = row["val_top1"]
            if (epoch + 1) % t.save_every == 0 or last_epoch or stopping:
                save_epoch(ts, is_best, writer)
            else:  # no checkpoint this epoch: a resume redoes it from the last one, whose metrics rows it keeps
                writer.wait()
                save_between(ts, is_best)
            if world.is_main:
                if call.verbose:
                    print(_summary(row, config.schedule.epochs, is_best), flush=True)
                for log in logs:
                    log(scalars(row), epoch + 1)
                if call.on_epoch is not None:
                    call.on_epoch(row)
            epochs_run += 1
    except KeyboardInterrupt as err:
        if not world.is_main:
            raise
        with contextlib.suppress(Exception):  # a save in flight commits first; if it fails, the previous one stands
            writer.wait()
        raise Interrupted(_interruption(ts, loaders.steps_per_epoch), getattr(err, "signum", 2)) from None
    finally:
        for close in closes:
            close()
    writer.wait()  # the last save is committed before the run returns
    return ts.metrics


def _wire(config: Config, run_dir: Path, world: World, resume: bool, num_classes: int,
          amp_dtype: torch.dtype | None) -> TrainState:
    """The model (built, or rebuilt from the run's committed weights), on its device, sharded if FSDP, and what
    trains it. The scheduler follows once the steps per epoch are known."""
    t = config.train
    seed_everything(t.seed)  # identical initial weights on every rank and every run with this seed
    if resume:
        model, model_name, model_kwargs = resume_model(run_dir, world.is_main)
    else:
        model, model_name, model_kwargs = build.build_model(config, num_classes, run_dir)
    model.to(world.device)
    build.set_grad_checkpointing(model, t.grad_checkpointing)
    if t.channels_last is None:  # resolved once, and written so into the run's config.yaml
        t.channels_last = world.device.type == "cuda" and isinstance(model, ConvNeXt)  # faster convolutions on GPUs
    if t.channels_last:
        model.to(memory_format=torch.channels_last)
    if world.device.type == "cuda" and not t.deterministic:
        torch.backends.cudnn.benchmark = True  # every step has the same shapes: let cuDNN pick its fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    # the optimizer must see the sharded parameters
    whole = shard_model(model, world, amp_dtype, t.fsdp_reshard_after_forward) if t.strategy == "fsdp" else []
    optimizer = build.build_optimizer(config, model)
    return TrainState(
        config, run_dir, world, model, model, model_name, model_kwargs, optimizer, None, build.build_loss(config),
        amp_dtype=amp_dtype, scaler=torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None,
        ema=ModelEmaV3(model, decay=t.ema_decay) if t.ema else None, mixup=build.build_mixup(config, num_classes),
        whole=whole)


def _loaders(config: Config, world: World, datasets: tuple[Any, Any], probe: nn.Module, micro: int,
             prefetch: bool) -> _Loaders:
    """Every image every epoch (a last step with fewer images than processes aside), the last global batch
    smaller; on CUDA uint8 batches through a prefetcher that normalises on the device."""
    t = config.train
    train_ds, val_ds = datasets
    samples = SeededSamples(train_ds, t.seed)
    sampler = GlobalBatchSampler(len(samples), t.batch_size, world.world_size, world.rank, micro, seed=t.seed,
                                 tag_epoch=True)
    rng = torch.Generator()
    workers = config.data.num_workers
    if workers is None:
        workers = default_workers(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    collate = fast_collate if prefetch else None
    train_loader = DataLoader(  # workers live for the whole run: the sampler's (epoch, index) keys seed each image
        samples, batch_sampler=sampler, generator=rng, num_workers=workers, worker_init_fn=_seed_worker,
        pin_memory=config.data.pin_memory and world.device.type == "cuda", persistent_workers=workers > 0,
        collate_fn=collate)
    eval_batch = t.eval_batch_size or micro
    val_loader = eval_loader(val_ds, eval_batch, config, world, workers, prefetch)
    telemetry_loader = DataLoader(Subset(val_ds, range(min(t.telemetry_images, len(val_ds)))),
                                  batch_size=eval_batch, num_workers=0, collate_fn=collate)
    if prefetch:
        train_loader = build.device_loader(train_loader, config, probe, world.device, training=True)
        val_loader = build.device_loader(val_loader, config, probe, world.device, training=False)
        telemetry_loader = build.device_loader(telemetry_loader, config, probe, world.device, training=False)
    steps = sampler.steps if not t.max_steps_per_epoch else min(sampler.steps, t.max_steps_per_epoch)
    if steps == 0:
        raise UserError(f"dataset {config.data.dataset!r} has no training images: check data.dataset and data.root")
    return _Loaders(samples, sampler, rng, train_loader, val_loader, telemetry_loader, steps)


def _start_or_resume(ts: TrainState, call: _Invocation, layout: dict[str, int]) -> dict[str, Any] | None:
    """A new run writes its config and epoch-0 checkpoint; a resumed one loads its state and returns the mid-epoch
    recovery point to continue from (None: from the committed epoch's end). A finished run is left as it is."""
    config, run_dir, world, extend = ts.config, ts.run_dir, ts.world, call.extend
    if not call.resume:
        if world.is_main:
            with atomic_output(run_dir / CONFIG_FILE) as tmp:
                tmp.write_text(dump_config(config) + CONFIG_END)
        save_epoch(ts, is_best=False)
        return None
    ts.progress, ts.metrics, recovery = load_run_state(ts)
    progress = ts.progress
    if recovery is not None and recovery["layout"] != layout:
        raise UserError(
            f"the run's mid-epoch recovery point was written with {recovery['layout']}, this resume has "
            f"{layout}: resume with the same number of processes and batch settings")
    if progress.epoch >= config.schedule.epochs:
        if extend is not None:
            raise UserError(f"{run_dir} already trained {progress.epoch} epochs: --extend needs schedule.epochs "
                            f"above {progress.epoch}")
        if world.is_main:
            print(f"moejet train: {run_dir} is finished ({progress.epoch} of {config.schedule.epochs} epochs): "
                  "nothing to do; to train longer resume with --set schedule.epochs=N --extend continue", flush=True)
        return None
    if extend == "cosine-restart":
        progress.restart_step = progress.step
    elif extend == "continue":
        progress.restart_step = None
    if progress.restart_step is not None:
        ts.scheduler = _restarted_scheduler(config, ts.optimizer, layout["steps_per_epoch"], progress.restart_step)
    if world.is_main:  # overrides given with --resume are part of the run from now on
        with atomic_output(run_dir / CONFIG_FILE) as tmp:
            tmp.write_text(dump_config(config) + CONFIG_END)
    return recovery


def _compile(ts: TrainState) -> tuple[nn.Module, nn.Module | None]:
    """Sets ``ts.train_model`` (compiled with ``train.compile``, wrapped by DDP on several processes); returns the
    models evaluation calls: the model's and the EMA's (compiled too, unless FSDP shards them: a sharded model's
    evaluation is collective and checks its FSDP state, so it stays eager)."""
    t, world, model, ema = ts.config.train, ts.world, ts.model, ts.ema
    train_model: nn.Module = model
    eval_model, ema_model = model, ema.module if ema is not None else None
    if t.compile:
        train_model = torch.compile(model)
        if t.strategy != "fsdp":
            eval_model = train_model
            ema_model = torch.compile(ema.module) if ema is not None else None
    if world.enabled and t.strategy != "fsdp":
        train_model = wrap_ddp(train_model, world, t.ddp_comm)
    ts.train_model = train_model
    return eval_model, ema_model


def _train_epoch(ts: TrainState, loaders: _Loaders, epoch: int, recovery: dict[str, Any] | None,
                 writer: BackgroundWriter, layout: dict[str, int],
                 call: _Invocation) -> tuple[dict[str, Any], float]:
    """The epoch's optimizer steps from its derived RNG states, or from ``recovery``'s mid-epoch point; returns its
    row so far and when it started (``time.perf_counter``; a resumed epoch counts the seconds it ran before)."""
    t, world = ts.config.train, ts.world
    seed_everything(epoch_seed(t.seed, epoch, world.rank))
    loaders.rng.manual_seed(epoch_seed(t.seed, epoch, world.rank))
    loaders.samples.set_epoch(epoch)
    loaders.sampler.set_epoch(epoch)
    start_step, loss_sum, done_s = 0, torch.zeros(2, dtype=torch.float64), 0.0
    if recovery is not None:  # continue the epoch: its RNG streams and loss sums as they were, its images skipped
        set_rng_state(recovery["rng"][world.rank])
        start_step, loss_sum, done_s = (recovery["step_in_epoch"], recovery["loss_sums"][world.rank],
                                        recovery["elapsed_s"])
    loaders.sampler.start_step = start_step
    start = time.perf_counter() - done_s
    recovery_point = functools.partial(save_recovery_point, ts, layout, start)

    def save_point(step_in_epoch: int, loss_sum: torch.Tensor) -> None:
        writer.wait()  # the epoch's save before it is committed first
        recovery_point(step_in_epoch, loss_sum)

    step_log = StepLog(t.log_every, epoch, ts.config.schedule.epochs, loaders.steps_per_epoch, world.world_size,
                       world.device) if t.log_every and call.verbose and world.is_main else None
    train_loss, images = train_one_epoch(ts, epoch, loaders.train, loaders.steps_per_epoch, start_step,
                                         loss_sum.to(world.device), save_point if t.recovery_every else None,
                                         step_log, call.progress_bar)
    row = {"epoch": epoch + 1, "step": ts.progress.step, "train_loss": train_loss, "train_images": images,
           "images_per_s": images / (time.perf_counter() - start)}
    return row, start


def _evaluate_epoch(ts: TrainState, loaders: _Loaders, eval_model: nn.Module,
                    ema_model: nn.Module | None) -> dict[str, Any]:
    """Validation of the model (and of its EMA), and the routing telemetry, each compiled with the training."""
    world, amp_dtype, channels_last = ts.world, ts.amp_dtype, ts.config.train.channels_last
    row = _prefixed(evaluate(eval_model, loaders.val, world, amp_dtype, channels_last), "val_")
    if ema_model is not None:
        ema_eval = evaluate(ema_model, loaders.val, world, amp_dtype, channels_last)
        row.update(val_top1_ema=ema_eval["top1"], val_top5_ema=ema_eval["top5"])
    if ts.config.train.telemetry_images > 0 and moe_modules(ts.model):  # every rank: a sharded forward needs all
        telemetry = routing(eval_model, loaders.telemetry, world, amp_dtype, channels_last)
        if world.is_main:
            row["routing"] = telemetry
    return row


def _finish_epoch(ts: TrainState, row: dict[str, Any], epoch_time: float) -> None:
    """The row's closing figures; the epoch counted as done and its row kept."""
    ts.progress.wall_time_s += epoch_time
    row.update(
        lr=max(g["lr"] for g in ts.optimizer.param_groups), epoch_time_s=epoch_time,
        wall_time_s=ts.progress.wall_time_s,
        temperatures={name: layer.temperatures() for name, layer in moe_modules(ts.model).items()
                      if hasattr(layer, "temperatures")})
    ts.metrics.append(row)
    ts.progress.epoch = row["epoch"]


def eval_loader(dataset: Any, batch_size: int, config: Config, world: World, workers: int | None = None,
                 uint8: bool = False) -> DataLoader:
    """Each rank takes every world_size-th image (no padding duplicates, so metrics are exact); the workers stay
    between evaluations. ``uint8``: batches of uint8 images (for :func:`.build.device_loader`)."""
    shard = Subset(dataset, range(world.rank, len(dataset), world.world_size)) if world.enabled else dataset
    workers = config.data.num_workers or 0 if workers is None else workers
    return DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=workers, persistent_workers=workers > 0,
                      pin_memory=config.data.pin_memory and world.device.type == "cuda",
                      collate_fn=fast_collate if uint8 else None)


def _seed_worker(worker_id: int) -> None:
    import random

    import numpy as np

    seed = torch.initial_seed() % 2**32  # torch seeds each worker from the loader's generator
    np.random.seed(seed)  # timm's RandAugment draws ops with NumPy
    random.seed(seed)


def amp_dtype_for(amp: str, device: torch.device) -> torch.dtype | None:
    """``train.amp``'s dtype. ``auto``: bf16 on a GPU that computes in bf16 natively (never emulated: that is
    slower than fp32), else fp16 with a grad scaler; no autocast on a CPU."""
    if amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    if amp == "fp16" and device.type != "cuda":
        raise UserError("config key train.amp = 'fp16' needs a CUDA GPU (grad scaler): use bf16 or none on the CPU")
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def _prefixed(values: dict[str, float], prefix: str) -> dict[str, float]:
    return {f"{prefix}{k}": v for k, v in values.items() if k != "images"}


def _summary(row: dict[str, Any], epochs: int, is_best: bool) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"train_loss {row['train_loss']:.4f}"]
    if "val_top1" in row:
        parts += [f"val_loss {row['val_loss']:.4f}", f"val_top1 {row['val_top1']:.2f}" + (" (new best)" if is_best
                                                                                           else ""),
                  f"val_top5 {row['val_top5']:.2f}"]
    if "val_top1_ema" in row:
        parts.append(f"ema_top1 {row['val_top1_ema']:.2f}")
    parts += [f"lr {row['lr']:.3g}", f"{row['images_per_s']:.1f} img/s", f"{row['epoch_time_s']:.1f} s"]
    return "  ".join(parts)


def _point(epochs_done: int, step_in_epoch: int, optimizer_step: int, steps_per_epoch: int) -> str:
    """Where a run stands: ``epoch 3 step 0/8 (optimizer step 16)`` is the start of epoch 3 (the end of epoch 2)."""
    return f"epoch {epochs_done + 1} step {step_in_epoch}/{steps_per_epoch} (optimizer step {optimizer_step})"


def _interruption(ts: TrainState, steps_per_epoch: int) -> str:
    """What an interrupt leaves: the last saved point, the optimizer steps done since (lost), the command that
    resumes."""
    epochs_done, step_in_epoch, saved_step = saved_point(ts.run_dir)
    lost = ts.progress.step - saved_step
    every = ts.config.train.recovery_every
    saves = (f"mid-epoch saves every {every} steps (train.recovery_every)" if every else
             "mid-epoch saves are off: set train.recovery_every=N to save every N steps")
    lost_text = {0: "nothing is lost", 1: "the 1 step done since then is lost"}.get(
        lost, f"the {lost} steps done since then are lost")
    return (f"interrupted at optimizer step {ts.progress.step}; the last save is "
            f"{_point(epochs_done, step_in_epoch, saved_step, steps_per_epoch)}: {lost_text} ({saves}); resume "
            f"with: moejet train --resume {shlex.quote(str(ts.run_dir))}")


class _Shifted:
    """A scheduler whose step 0 is step ``offset`` of the run (``--extend cosine-restart``)."""

    def __init__(self, scheduler: Any, offset: int):
        self.scheduler, self.offset = scheduler, offset

    def step_update(self, num_updates: int) -> None:
        self.scheduler.step_update(num_updates - self.offset)

    def state_dict(self) -> dict[str, Any]:
        return {**self.scheduler.state_dict(), "offset": self.offset}


def _restarted_scheduler(config: Config, optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                         restart_step: int) -> _Shifted:
    """Cosine from optim.lr (no warmup) at ``restart_step`` down to the minimum at the end of schedule.epochs."""
    remaining = config.schedule.epochs * steps_per_epoch - restart_step
    return _Shifted(CosineLRScheduler(optimizer, t_initial=max(remaining, 1), lr_min=config.lr * config.schedule
                                      .min_lr_ratio, t_in_epochs=False), restart_step)
