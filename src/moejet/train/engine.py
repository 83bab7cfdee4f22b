"""The training loop: one function, :func:`train`, that runs (or resumes) a run directory.

Run directory (read by the analysis tools and the demo)::

    RUN/config.yaml         resolved config (learning rate written in)
    RUN/metrics.jsonl       one JSON object per epoch: epoch (1-based), train_loss, val_top1, val_top5 (percent),
                            val_loss, lr, images_per_s, epoch_time_s, wall_time_s (cumulative), step,
                            temperatures {moe module: {"dispatch", "combine"}} (+ val_top1_ema / val_top5_ema)
    RUN/last.safetensors    model weights (moejet.io.weights.save_model: rebuild with build_from_checkpoint)
    RUN/best.safetensors    weights of the epoch with the best val_top1
    RUN/checkpoint.json     the committed epoch: its weights and state under RUN/checkpoints/ (see .checkpointing)

Every epoch starts from RNG states derived from (seed, epoch, rank), each training image's augmentation is seeded
from (seed, epoch, image index) (:class:`moejet.data.SeededSamples`), and checkpoints are written at epoch ends and,
with ``train.recovery_every``, every N optimizer steps (with every rank's RNG states and partial loss sums), so
``--resume`` continues bit-exactly in deterministic mode, mid-epoch too, whatever ``data.num_workers``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from timm.data import Mixup
from timm.data.loader import fast_collate
from timm.data.mixup import cutmix_bbox_and_lam, mixup_target
from timm.models.convnext import ConvNeXt
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ..data import SeededSamples
from ..data.sampler import GlobalBatchSampler
from ..errors import UserError
from ..io.files import atomic_output
from ..io.weights import build_from_checkpoint, read_metadata, save_model
from ..models import moe_modules
from . import build
from .checkpointing import (
    BEST,
    CONFIG_FILE,
    LAST,
    METRICS_FILE,
    POINTER,
    BackgroundWriter,
    host_copy,
    is_run_dir,
    load_sharded,
    load_state,
    read_pointer,
    recovery_paths,
    save_checkpoint,
    save_recovery,
    save_sharded,
    sharded_path,
    sync_last,
    weights_path,
)
from .config import Config, batch_plan, check_input_files, dump_config, load_config
from .distributed import (
    World,
    all_reduce_max,
    all_reduce_sum,
    average_grads,
    check_shared_dir,
    default_workers,
    epoch_seed,
    is_sharded,
    rng_state,
    seed_everything,
    set_deterministic,
    set_rng_state,
    setup,
    shard_model,
    teardown,
    wrap_ddp,
)
from .loggers import StepLog, open_loggers, scalars
from .telemetry import routing_telemetry

EXTEND_MODES = (None, "continue", "cosine-restart")
CONFIG_END = "# end of the moejet run config\n"  # a truncated config.yaml can still parse: this line proves it whole


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
        config = _read_run_config(run_dir, overrides)
        planned = _read_run_config(run_dir).schedule.epochs
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
        metrics = _train(config, run_dir, resume, stop_after, progress, world, on_epoch, verbose, extend)
        if world.enabled:  # leave together: a rank that tears down while its peer still writes files can abort (gloo)
            torch.distributed.barrier()
        return metrics
    finally:
        teardown(world)


def _train(config: Config, run_dir: Path, resume: bool, stop_after: int | None, progress: bool, world: World,
           on_epoch: Callable[[dict[str, Any]], None] | None, verbose: bool,
           extend: str | None = None) -> list[dict[str, Any]]:
    t = config.train
    set_deterministic(t.deterministic)
    seed_everything(t.seed)
    micro, accum = batch_plan(config, world.world_size)
    amp_dtype = _amp_dtype(t.amp, world.device)
    fsdp = t.strategy == "fsdp"
    if fsdp and not world.enabled:
        raise UserError("train.strategy=fsdp shards the model over processes: launch with torchrun --nproc_per_node "
                        "N (N > 1), or use train.strategy=ddp for one process")

    # data first: the dataset decides the number of classes
    meta_name, meta_kwargs = config.model.name, {**config.model.kwargs}
    with torch.device("meta"):
        probe = build.create_model(meta_name, meta_kwargs, pretrained=False)
    prefetch = build.uses_prefetcher(world.device)
    train_tf, val_tf = build.build_transforms(config, probe, prefetch)
    train_ds = build.build_dataset(config, "train", train_tf)
    val_ds = build.build_dataset(config, "val", val_tf)
    num_classes = build.num_classes_of(train_ds, config)

    seed_everything(t.seed)  # identical initial weights on every rank and every run with this seed
    if resume:
        model, model_name, model_kwargs = _resume_model(run_dir, world.is_main)
    else:
        model, model_name, model_kwargs = build.build_model(config, num_classes, run_dir)
    model.to(world.device)
    build.set_grad_checkpointing(model, t.grad_checkpointing)
    if t.channels_last is None:  # resolved once, and written so into the run's config.yaml
        t.channels_last = world.device.type == "cuda" and isinstance(model, ConvNeXt)  # faster convolutions on GPUs
    channels_last = t.channels_last
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if world.device.type == "cuda" and not t.deterministic:
        torch.backends.cudnn.benchmark = True  # every step has the same shapes: let cuDNN pick its fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    # the optimizer must see the sharded parameters
    whole = shard_model(model, world, amp_dtype, t.fsdp_reshard_after_forward) if fsdp else []
    optimizer = build.build_optimizer(config, model)
    ema = ModelEmaV3(model, decay=t.ema_decay) if t.ema else None
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    mixup = build.build_mixup(config, num_classes)
    loss_fn = build.build_loss(config)

    train_samples = SeededSamples(train_ds, t.seed)
    sampler = GlobalBatchSampler(len(train_samples), t.batch_size, world.world_size, world.rank, micro, seed=t.seed,
                                 tag_epoch=True)
    loader_rng = torch.Generator()
    workers = config.data.num_workers
    if workers is None:
        workers = default_workers(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    train_loader = DataLoader(  # workers live for the whole run: the sampler's (epoch, index) keys seed each image
        train_samples, batch_sampler=sampler, generator=loader_rng, num_workers=workers,
        pin_memory=config.data.pin_memory and world.device.type == "cuda", worker_init_fn=_seed_worker,
        persistent_workers=workers > 0, collate_fn=fast_collate if prefetch else None,
    )
    val_loader = _eval_loader(val_ds, t.eval_batch_size or micro, config, world, workers, prefetch)
    if prefetch:
        train_loader = build.device_loader(train_loader, config, probe, world.device, training=True)
        val_loader = build.device_loader(val_loader, config, probe, world.device, training=False)
    telemetry_loader = DataLoader(Subset(val_ds, range(min(t.telemetry_images, len(val_ds)))),
                                  batch_size=t.eval_batch_size or micro, num_workers=0,
                                  collate_fn=fast_collate if prefetch else None)
    if prefetch:
        telemetry_loader = build.device_loader(telemetry_loader, config, probe, world.device, training=False)
    # every image every epoch (a last step with fewer images than processes aside), the last global batch smaller
    steps_per_epoch = sampler.steps
    if t.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, t.max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise UserError(f"dataset {config.data.dataset!r} has no training images: check data.dataset and data.root")
    scheduler = build.build_scheduler(config, optimizer, steps_per_epoch)
    layout = {"processes": world.world_size, "micro_batch": micro, "accumulation": accum,
              "steps_per_epoch": steps_per_epoch}  # what a mid-epoch recovery point is only valid for

    state = {"epoch": 0, "step": 0, "best_top1": -1.0, "wall_time_s": 0.0, "restart_step": None}
    metrics: list[dict[str, Any]] = []
    recovery = None  # the mid-epoch point a resume continues from
    if resume:
        state, metrics, recovery = _load_state(run_dir, model, optimizer, scaler, ema, mixup)
        if recovery is not None and recovery["layout"] != layout:
            raise UserError(
                f"the run's mid-epoch recovery point was written with {recovery['layout']}, this resume has "
                f"{layout}: resume with the same number of processes and batch settings")
        if state["epoch"] >= config.schedule.epochs:
            if extend is not None:
                raise UserError(f"{run_dir} already trained {state['epoch']} epochs: --extend needs schedule.epochs "
                                f"above {state['epoch']}")
            if world.is_main:
                print(f"moejet train: {run_dir} is finished ({state['epoch']} of {config.schedule.epochs} epochs): "
                      "nothing to do; to train longer resume with --set schedule.epochs=N --extend continue",
                      flush=True)
            return metrics
        if extend == "cosine-restart":
            state["restart_step"] = state["step"]
        elif extend == "continue":
            state["restart_step"] = None
        if state["restart_step"] is not None:
            scheduler = _restarted_scheduler(config, optimizer, steps_per_epoch, state["restart_step"])
    else:
        if world.is_main:
            with atomic_output(run_dir / CONFIG_FILE) as tmp:
                tmp.write_text(dump_config(config) + CONFIG_END)
        _save(run_dir, model, model_name, model_kwargs, optimizer, scheduler, scaler, ema, state, metrics, False, world)
    if resume and world.is_main:  # overrides given with --resume are part of the run from now on
        with atomic_output(run_dir / CONFIG_FILE) as tmp:
            tmp.write_text(dump_config(config) + CONFIG_END)

    train_model: nn.Module = model
    eval_model, ema_model = model, ema.module if ema is not None else None
    if t.compile:  # training, evaluation and the EMA's evaluation (telemetry records tensors: it stays eager)
        train_model = torch.compile(model)
        if not fsdp:  # a sharded model's evaluation is collective and checks its FSDP state: eager
            eval_model = train_model
            ema_model = torch.compile(ema.module) if ema is not None else None
    if world.enabled and not fsdp:
        train_model = wrap_ddp(train_model, world, t.ddp_comm)
    logs, closes = open_loggers(run_dir, config) if world.is_main else ([], [])
    if world.is_main and verbose:
        print(f"moejet train: {config.name}: {model_name} on {config.data.dataset} ({len(train_ds)} train / "
              f"{len(val_ds)} val images, {num_classes} classes); {world.world_size} process(es) on {world.device}; "
              f"global batch {t.batch_size} on {world.world_size} process(es), micro-batches of up to {micro} x "
              f"{accum} accumulation; "
              f"lr {config.lr:.3g}; {steps_per_epoch} steps/epoch; run dir {run_dir}", flush=True)

    epochs_run = 0
    writer = BackgroundWriter(t.background_save and world.is_main)
    for epoch in range(state["epoch"], config.schedule.epochs):
        if stop_after is not None and epochs_run >= stop_after:
            break
        seed_everything(epoch_seed(t.seed, epoch, world.rank))
        loader_rng.manual_seed(epoch_seed(t.seed, epoch, world.rank))
        train_samples.set_epoch(epoch)
        sampler.set_epoch(epoch)
        start_step, loss_sum, done_s = 0, torch.zeros(2, dtype=torch.float64), 0.0
        if recovery is not None:  # continue the epoch: its RNG streams and loss sums as they were, its images skipped
            set_rng_state(recovery["rng"][world.rank])
            start_step, loss_sum, done_s = (recovery["step_in_epoch"], recovery["loss_sums"][world.rank],
                                            recovery["elapsed_s"])
            recovery = None
        sampler.start_step = start_step
        start = time.perf_counter() - done_s
        recovery_point = functools.partial(
            _save_recovery, run_dir, model, model_name, model_kwargs, optimizer, scheduler, scaler, ema, mixup, state,
            layout, world, start)

        def save_point(step_in_epoch: int, loss_sum: torch.Tensor, recovery_point=recovery_point) -> None:
            writer.wait()  # the epoch's save before it is committed first
            recovery_point(step_in_epoch, loss_sum)
        train_loss, images = _train_epoch(
            config, epoch, train_model, model, train_loader, steps_per_epoch, accum, optimizer, scheduler, scaler,
            ema, mixup, loss_fn, amp_dtype, state, run_dir, world, progress, start_step, loss_sum.to(world.device),
            save_point if t.recovery_every else None, whole,
            StepLog(t.log_every, epoch, config.schedule.epochs, steps_per_epoch, world.world_size, world.device)
            if t.log_every and verbose and world.is_main else None,
        )
        train_time = time.perf_counter() - start
        last_epoch = epoch + 1 == config.schedule.epochs
        row: dict[str, Any] = {"epoch": epoch + 1, "step": state["step"], "train_loss": train_loss,
                               "train_images": images}
        if (epoch + 1) % t.eval_every == 0 or last_epoch:
            row.update(_prefixed(evaluate(eval_model, val_loader, world, amp_dtype, channels_last), "val_"))
            if ema is not None:
                ema_eval = evaluate(ema_model, val_loader, world, amp_dtype, channels_last)
                row.update(val_top1_ema=ema_eval["top1"], val_top5_ema=ema_eval["top5"])
            if t.telemetry_images > 0 and moe_modules(model):  # every rank: a sharded (fsdp) forward needs all
                routing = _routing(model, telemetry_loader, world, amp_dtype, channels_last)
                if world.is_main:
                    row["routing"] = routing
        epoch_time = time.perf_counter() - start
        state["wall_time_s"] += epoch_time
        row.update(
            lr=max(g["lr"] for g in optimizer.param_groups), images_per_s=images / train_time,
            epoch_time_s=epoch_time, wall_time_s=state["wall_time_s"],
            temperatures={name: layer.temperatures() for name, layer in moe_modules(model).items()
                          if hasattr(layer, "temperatures")},
        )
        metrics.append(row)
        state["epoch"] = epoch + 1
        is_best = "val_top1" in row and row["val_top1"] > state["best_top1"]
        if is_best:
            state["best_top1"] = row["val_top1"]
        stopping = stop_after is not None and epochs_run + 1 >= stop_after
        if (epoch + 1) % t.save_every == 0 or last_epoch or stopping:
            _save(run_dir, model, model_name, model_kwargs, optimizer, scheduler, scaler, ema, state, metrics, is_best,
                  world, writer)
        else:  # no checkpoint this epoch: a resume redoes it from the last one, whose metrics rows it keeps
            writer.wait()
            _save_between(run_dir, model, model_name, model_kwargs, state, metrics, is_best, world)
        if world.is_main:
            if verbose:
                print(_summary(row, config.schedule.epochs), flush=True)
            for log in logs:
                log(scalars(row), epoch + 1)
            if on_epoch is not None:
                on_epoch(row)
        epochs_run += 1
    writer.wait()  # the last save is committed before the run returns
    for close in closes:
        close()
    return metrics


def _train_epoch(
    config: Config, epoch: int, train_model: nn.Module, model: nn.Module, loader: DataLoader, steps: int,
    accum: int, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: torch.amp.GradScaler | None,
    ema: ModelEmaV3 | None, mixup: Any, loss_fn: nn.Module, amp_dtype: torch.dtype | None, state: dict[str, Any],
    run_dir: Path, world: World, progress: bool, start_step: int = 0, loss_sum: torch.Tensor | None = None,
    save_point: Callable[[int, torch.Tensor], None] | None = None, whole: list[nn.Parameter] | None = None,
    step_log: StepLog | None = None,
) -> tuple[float, int]:
    """One epoch of ``steps`` optimizer steps of up to ``accum`` micro-batches; returns (mean train loss, images).

    A resumed epoch starts at ``start_step`` with this rank's (loss sum, images) so far in ``loss_sum`` (the loader's
    sampler already skips the images done). ``save_point(step_in_epoch, loss_sum)`` writes a recovery point every
    ``train.recovery_every`` steps (not after the last step: the epoch checkpoint follows).

    The last step takes what is left (fewer or smaller micro-batches). Each micro-batch's mean loss is weighted by
    ``images * world_size / images of the global step``, so after DDP's average over processes a step's gradient is
    that of the mean loss over its global batch, however the sampler shared it out (:mod:`moejet.data.sampler`).

    No call waits for the device except on a ``train.log_every`` step, before a recovery point and at the epoch
    end: image counts are Python ints, loss sums stay on the device, and a non-finite loss is caught at the next
    of those points (the run stops there, before anything is saved, naming the first bad step).
    Mixup / cutmix draw lambda and the cutmix box once per step (:func:`draw_mix`). ``whole``: parameters FSDP
    left unsharded, whose gradients are averaged here. ``step_log``: prints a line every ``train.log_every`` steps.
    """
    t = config.train
    train_model.train()
    scheduler.step_update(state["step"])
    if loss_sum is None:
        loss_sum = torch.zeros(2, device=world.device, dtype=torch.float64)  # (sum of per-image losses, images)
    bar = tqdm(total=steps, initial=start_step, desc=f"epoch {epoch + 1}/{config.schedule.epochs}", leave=False,
               dynamic_ncols=True, disable=not (progress and world.is_main))
    batches = iter(loader)
    sampler = loader.batch_sampler
    first_bad = torch.full((), -1, dtype=torch.int64, device=world.device)  # first step with a non-finite loss
    for step_in_epoch in range(start_step, steps):
        step_loss = torch.zeros((), device=world.device, dtype=torch.float64)  # sum of this rank's image losses
        step_images, global_images = 0, sampler.step_images(step_in_epoch)
        micro_sizes = sampler.micro_sizes(step_in_epoch)
        mix = None
        for micro_step, size in enumerate(micro_sizes):
            waiting = time.perf_counter()
            batch = next(batches)
            if step_log is not None:
                step_log.waited(time.perf_counter() - waiting)
            images, targets = _to_device(batch, world.device, t.channels_last)
            if mixup is not None:
                mix = mix or draw_mix(mixup, images.shape)
                images, targets = apply_mix(images, targets, mixup, *mix)
            sync = micro_step == len(micro_sizes) - 1
            with _no_sync(train_model, sync), _autocast(world.device, amp_dtype):
                loss = loss_fn(train_model(images).float(), targets)
                weighted = loss * (size * world.world_size / global_images)
                (scaler.scale(weighted) if scaler else weighted).backward()
            step_loss += loss.detach().double() * size
            step_images += size
        if whole:
            average_grads(whole, world)
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(step_loss), state["step"] + 1, first_bad)
        if scaler is not None:
            scaler.unscale_(optimizer)
        if config.optim.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.clip_grad)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        scheduler.step_update(state["step"])
        if ema is not None:
            ema.update(model, step=state["step"])
        loss_sum[0] += step_loss
        loss_sum[1] += step_images  # a Python number: no copy to the device
        bar.update(1)
        lr = max(g["lr"] for g in optimizer.param_groups)
        # the same steps on every rank: the check is collective
        logging = t.log_every > 0 and (step_in_epoch + 1) % t.log_every == 0
        saving = save_point is not None and (step_in_epoch + 1) % t.recovery_every == 0 and step_in_epoch + 1 < steps
        if logging or saving:
            _stop_if_nonfinite(first_bad, world, run_dir, steps, optimizer, bar)
        if step_log is not None:
            line = step_log.step(step_in_epoch + 1, step_loss, step_images, global_images, lr)
            if line is not None:
                (tqdm.write if progress else print)(f"moejet train: {line}")
                bar.set_postfix(loss=step_log.last_loss, lr=f"{lr:.3g}")
        if saving:
            save_point(step_in_epoch + 1, loss_sum)
    _stop_if_nonfinite(first_bad, world, run_dir, steps, optimizer, bar)
    bar.close()
    loss_sum = all_reduce_sum(loss_sum, world)
    return (loss_sum[0] / loss_sum[1]).item(), int(loss_sum[1].item())


def _stop_if_nonfinite(first_bad: torch.Tensor, world: World, run_dir: Path, steps_per_epoch: int,
                       optimizer: torch.optim.Optimizer, bar: Any) -> None:
    """Raise if any rank saw a non-finite loss (one all-reduce and one sync); the weights past that step are not
    saved."""
    bad_step = int(all_reduce_max(first_bad.clone(), world).item())
    if bad_step < 0:
        return
    optimizer.zero_grad(set_to_none=True)
    bar.close()
    good = read_metadata(run_dir / LAST).get("moejet.epoch", "?") if (run_dir / LAST).exists() else "none"
    epoch, step = divmod(bad_step - 1, steps_per_epoch)
    raise UserError(
        f"the training loss became non-finite at epoch {epoch + 1}, step {step + 1} (optimizer step {bad_step}); "
        f"stopped. The last good checkpoint is {run_dir / LAST} (epoch {good}): lower optim.lr or raise "
        f"schedule.warmup_epochs, then --resume {run_dir}"
    )


@torch.no_grad()
def draw_mix(mixup: Mixup, image_shape: torch.Size) -> tuple[float, tuple[int, int, int, int] | None]:
    """``(lambda, cutmix box (y0, y1, x0, x1) or None)``: timm's per-batch draw, made once per optimizer step so the
    mixing strength does not depend on the micro batch."""
    lam, use_cutmix = mixup._params_per_batch()
    if lam == 1.0 or not use_cutmix:
        return float(lam), None
    box, lam = cutmix_bbox_and_lam(image_shape, lam, ratio_minmax=mixup.cutmix_minmax, correct_lam=mixup.correct_lam)
    return float(lam), box


def apply_mix(images: torch.Tensor, targets: torch.Tensor, mixup: Mixup, lam: float,
              box: tuple[int, int, int, int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's batch-mode mix of (B, C, H, W) ``images`` with their reverse (``flip(0)``) under a given draw.

    Unlike timm's ``Mixup.__call__`` an odd B works: the middle image pairs with itself (it stays unmixed and
    its target is its own label-smoothed one-hot), so a smaller last micro-batch needs no special case.
    """
    if lam != 1.0:
        if box is None:
            images = images * lam + images.flip(0) * (1.0 - lam)
        else:
            y0, y1, x0, x1 = box
            images = images.clone()
            images[:, :, y0:y1, x0:x1] = images.flip(0)[:, :, y0:y1, x0:x1]
    return images, mixup_target(targets, mixup.num_classes, lam, mixup.label_smoothing)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, world: World, amp_dtype: torch.dtype | None = None,
             channels_last: bool = False) -> dict[str, float]:
    """Top-1 / top-5 accuracy (percent) and mean cross-entropy over every rank's shard of the data."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, device=world.device, dtype=torch.float64)  # correct@1, correct@5, loss sum
    count = 0  # images: a Python int, so no batch waits for the device
    # a sharded model's forward is collective: ranks with fewer batches repeat their last one, uncounted
    repeats = 0
    if is_sharded(model):
        repeats = int(all_reduce_max(torch.tensor(len(loader), device=world.device), world).item()) - len(loader)
    images = None
    for batch in loader:
        images, targets = _to_device(batch, world.device, channels_last)
        with _autocast(world.device, amp_dtype):
            logits = model(images).float()
        k = min(5, logits.shape[-1])
        top = logits.topk(k, dim=-1).indices
        hit = top == targets[:, None]
        sums += torch.stack([hit[:, 0].sum(), hit.any(dim=-1).sum(),
                             nn.functional.cross_entropy(logits, targets, reduction="sum")]).double()
        count += targets.shape[0]
    if repeats and images is None:
        raise UserError(f"the validation set has fewer images than the {world.world_size} processes: use fewer "
                        "processes or a larger validation set")
    for _ in range(repeats):
        with _autocast(world.device, amp_dtype):
            model(images)
    if is_sharded(model):
        model.reshard()  # FSDP keeps the root's parameters whole after a forward without backward
    model.train(was_training)
    sums = all_reduce_sum(torch.cat([sums, torch.tensor([float(count)], dtype=torch.float64, device=world.device)]),
                          world).tolist()  # one sync for the whole evaluation
    n = max(sums[3], 1.0)
    return {"top1": 100 * sums[0] / n, "top5": 100 * sums[1] / n, "loss": sums[2] / n, "images": int(sums[3])}


def _routing(model: nn.Module, loader: DataLoader, world: World, amp_dtype: torch.dtype | None,
             channels_last: bool) -> dict[str, dict[str, float]]:
    """Routing telemetry of every MoE layer on ``loader``'s images; the RNG streams of training are untouched
    (a layer with eval-mode noise draws from a forked generator)."""
    def images():
        for batch in loader:
            yield _to_device(batch, world.device, channels_last)[0]

    with torch.random.fork_rng(devices=[world.device] if world.device.type == "cuda" else []), \
            _autocast(world.device, amp_dtype):
        routing = routing_telemetry(model, images())
    if is_sharded(model):
        model.reshard()  # as in evaluate(): the root's parameters stay whole after a forward without backward
    return routing


# ------------------------------------------------------------------------------------------------- helpers


def _eval_loader(dataset: Any, batch_size: int, config: Config, world: World, workers: int | None = None,
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


def _to_device(batch: Any, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    images, targets = batch
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, torch.as_tensor(targets).to(device, non_blocking=True)


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """``train.amp``'s dtype. ``auto``: bf16 on a GPU that computes in bf16 natively (never emulated: that is
    slower than fp32), else fp16 with a grad scaler; no autocast on a CPU."""
    if amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    if amp == "fp16" and device.type != "cuda":
        raise UserError("config key train.amp = 'fp16' needs a CUDA GPU (grad scaler): use bf16 or none on the CPU")
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _no_sync(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Skip DDP's gradient all-reduce (FSDP's reduce-scatter) on all but the last micro-batch of an accumulation."""
    sharded = getattr(model, "_orig_mod", model)  # under torch.compile the FSDP module is the compiled one's original
    if is_sharded(sharded):
        sharded.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    if sync or not isinstance(model, DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()


def _prefixed(values: dict[str, float], prefix: str) -> dict[str, float]:
    return {f"{prefix}{k}": v for k, v in values.items() if k != "images"}


def _summary(row: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"train_loss {row['train_loss']:.4f}"]
    if "val_top1" in row:
        parts += [f"val_top1 {row['val_top1']:.2f}", f"val_top5 {row['val_top5']:.2f}"]
    if "val_top1_ema" in row:
        parts.append(f"ema_top1 {row['val_top1_ema']:.2f}")
    parts += [f"lr {row['lr']:.3g}", f"{row['images_per_s']:.1f} img/s", f"{row['epoch_time_s']:.1f} s"]
    return "  ".join(parts)


def _save(run_dir: Path, model: nn.Module, name: str, kwargs: dict[str, Any], optimizer: torch.optim.Optimizer,
          scheduler: Any, scaler: Any, ema: ModelEmaV3 | None, state: dict[str, Any],
          metrics: list[dict[str, Any]], is_best: bool, world: World, writer: BackgroundWriter | None = None) -> None:
    """metrics, then the epoch's weights + state committed together by rank 0 (see :mod:`.checkpointing`); a
    sharded model's optimizer shards are written by every rank first. ``writer``: rank 0's writes in the
    background, from host copies taken now."""
    if writer is not None:
        writer.wait()  # the previous save is committed (or its error raised) before this one starts
    weights, sharded = _sharded_save(run_dir, weights_path(run_dir, state["epoch"]), model, optimizer, world)
    if not world.is_main:
        return
    payload = _payload(optimizer, scheduler, scaler, ema, state, rng_state(), sharded=sharded)
    weights = weights.state_dict() if isinstance(weights, nn.Module) else weights
    if metrics:  # what this save writes: the weights, the state (optimizer, EMA) and best's copy of the weights
        metrics[-1]["checkpoint_bytes"] = tensor_bytes(weights) * (1 + is_best) + tensor_bytes(payload)
    _write_metrics(run_dir, metrics)
    if writer is not None and writer.enabled:
        weights, payload = host_copy(weights), host_copy(payload)
        writer.submit(save_checkpoint, run_dir, weights, name, kwargs, payload, is_best)
    else:
        save_checkpoint(run_dir, weights, name, kwargs, payload, is_best)


def _save_between(run_dir: Path, model: nn.Module, name: str, kwargs: dict[str, Any], state: dict[str, Any],
                  metrics: list[dict[str, Any]], is_best: bool, world: World) -> None:
    """An epoch without a checkpoint (``train.save_every``): its metrics row, and best's weights if it is the best."""
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
                   metadata={"moejet.epoch": str(state["epoch"]), "moejet.step": str(state["step"])})


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


def _save_recovery(run_dir: Path, model: nn.Module, name: str, kwargs: dict[str, Any],
                   optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any, ema: ModelEmaV3 | None, mixup: Any,
                   state: dict[str, Any], layout: dict[str, int], world: World, epoch_start: float, step_in_epoch: int,
                   loss_sum: torch.Tensor) -> None:
    """A mid-epoch recovery point after ``step_in_epoch`` steps: every rank's RNG states and (loss sum, images) go
    to rank 0, which commits them with the shared state (see :func:`.checkpointing.save_recovery`)."""
    ranks = _gather({"rng": rng_state(), "loss_sum": loss_sum.cpu()}, world)
    weights, sharded = _sharded_save(run_dir, recovery_paths(run_dir, state["epoch"], state["step"])[0], model,
                                     optimizer, world)
    if not world.is_main:
        return
    payload = _payload(optimizer, scheduler, scaler, ema, state, [r["rng"] for r in ranks], sharded=sharded)
    payload.update(step_in_epoch=step_in_epoch, loss_sums=[r["loss_sum"] for r in ranks], layout=layout,
                   elapsed_s=time.perf_counter() - epoch_start,
                   mixup_enabled=mixup.mixup_enabled if mixup is not None else None)
    save_recovery(run_dir, weights, name, kwargs, payload)


def _payload(optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any, ema: ModelEmaV3 | None,
             state: dict[str, Any], rng: Any, sharded: bool = False) -> dict[str, Any]:
    return {
        **state,
        "optimizer": None if sharded else optimizer.state_dict(),  # sharded: in the checkpoint's .dcp directory
        "scheduler": _plain_scheduler_state(scheduler),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "ema": ema.state_dict() if ema is not None else None,
        "rng": rng,
    }


def _gather(obj: Any, world: World) -> list[Any]:
    """``obj`` of every rank, in rank order (on every rank)."""
    if not world.enabled:
        return [obj]
    gathered: list[Any] = [None] * world.world_size
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def _read_run_config(run_dir: Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
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


def _resume_model(run_dir: Path, is_main: bool) -> tuple[nn.Module, str, dict[str, Any]]:
    """The run's model rebuilt from its committed weights alone (no init checkpoint, no hub download)."""
    if is_main:  # the other ranks only read the committed files, which this leaves alone
        sync_last(run_dir)
    pointer = read_pointer(run_dir)
    return build_from_checkpoint(run_dir / pointer.get("recovery", pointer)["weights"])


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


def _load_state(
    run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any, ema: ModelEmaV3 | None, mixup: Any,
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any] | None]:
    """``(state, metrics rows of the committed epochs, the mid-epoch recovery point or None)``."""
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
                        f"{str(err).splitlines()[0][:160]}): resume without changing the model or optimizer") from None
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
    state = {k: payload[k] for k in ("epoch", "step", "best_top1", "wall_time_s")}
    state["restart_step"] = payload.get("restart_step")
    rows = [row for row in metrics if isinstance(row, dict) and row.get("epoch", 0) <= state["epoch"]]
    return state, rows, recovery


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``RUN/metrics.jsonl``."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise UserError(f"{path} does not exist: is {run_dir} a moejet run directory?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

