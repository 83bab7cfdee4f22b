"""The training loop, read top to bottom: one epoch of optimizer steps (:func:`train_one_epoch`), and the
evaluation (:func:`evaluate`). The run that wires them is :mod:`.run`; every save and resume is in
:mod:`.checkpointing`."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.mixup import apply_mix, draw_mix
from ..errors import UserError
from ..io.weights import read_metadata
from ..rundir import LAST
from .distributed import World, all_reduce_max, all_reduce_sum, average_grads, is_sharded
from .loggers import StepLog
from .state import TrainState
from .telemetry import routing_telemetry


def train_one_epoch(ts: TrainState, epoch: int, loader: Any, steps: int, start_step: int = 0,
                    loss_sum: torch.Tensor | None = None, save_point: Callable[[int, torch.Tensor], None] | None = None,
                    step_log: StepLog | None = None, progress_bar: bool = True) -> tuple[float, int]:
    """One epoch of ``steps`` optimizer steps, each of this process's micro-batches as the loader's
    :class:`~moejet.data.sampler.GlobalBatchSampler` plans them; returns (mean train loss, images).

    A resumed epoch starts at ``start_step`` with this rank's (loss sum, images) so far in ``loss_sum`` (the loader's
    sampler already skips the images done). ``save_point(step_in_epoch, loss_sum)`` writes a recovery point every
    ``train.recovery_every`` steps (not after the last step: the epoch checkpoint follows).

    The last step takes what is left (fewer or smaller micro-batches). Each micro-batch's mean loss is weighted by
    ``images * world_size / images of the global step``, so after DDP's average over processes a step's gradient is
    that of the mean loss over its global batch, however the sampler shared it out (:mod:`moejet.data.sampler`).

    No call waits for the device except on a ``train.log_every`` step, before a recovery point and at the epoch
    end: image counts are Python ints, loss sums stay on the device, and a non-finite loss is caught at the next
    of those points (the run stops there, before anything is saved, naming the first bad step).
    Mixup / cutmix draw lambda and the cutmix box once per step (:func:`~moejet.data.mixup.draw_mix`); the
    parameters FSDP left unsharded (``ts.whole``) have their gradients averaged here.
    ``step_log``: prints a line every ``train.log_every`` steps.
    """
    config, world, model, train_model, progress = ts.config, ts.world, ts.model, ts.train_model, ts.progress
    optimizer, scheduler, scaler, ema, mixup = ts.optimizer, ts.scheduler, ts.scaler, ts.ema, ts.mixup
    loss_fn, amp_dtype, run_dir, whole = ts.loss_fn, ts.amp_dtype, ts.run_dir, ts.whole
    t = config.train
    train_model.train()
    scheduler.step_update(progress.step)
    if loss_sum is None:
        loss_sum = torch.zeros(2, device=world.device, dtype=torch.float64)  # (sum of per-image losses, images)
    # disable=None: no bar when stderr is not a terminal (a log file gets the train.log_every lines, not bar frames)
    bar = tqdm(total=steps, initial=start_step, desc=f"epoch {epoch + 1}/{config.schedule.epochs}", leave=False,
               dynamic_ncols=True, disable=None if progress_bar and world.is_main else True)
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
            images, targets = to_device(batch, world.device, t.channels_last)
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
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(step_loss), progress.step + 1, first_bad)
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
        progress.step += 1
        scheduler.step_update(progress.step)
        if ema is not None:
            ema.update(model, step=progress.step)
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
                (tqdm.write if progress_bar else print)(f"moejet train: {line}")
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
        images, targets = to_device(batch, world.device, channels_last)
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


def routing(model: nn.Module, loader: DataLoader, world: World, amp_dtype: torch.dtype | None,
             channels_last: bool) -> dict[str, dict[str, float]]:
    """Routing telemetry of every MoE layer on ``loader``'s images; the RNG streams of training are untouched
    (a layer with eval-mode noise draws from a forked generator)."""
    def images():
        for batch in loader:
            yield to_device(batch, world.device, channels_last)[0]

    with torch.random.fork_rng(devices=[world.device] if world.device.type == "cuda" else []), \
            _autocast(world.device, amp_dtype):
        routing = routing_telemetry(model, images())
    if is_sharded(model):
        model.reshard()  # as in evaluate(): the root's parameters stay whole after a forward without backward
    return routing


# ------------------------------------------------------------------------------------------------- helpers


def to_device(batch: Any, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    images, targets = batch
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, torch.as_tensor(targets).to(device, non_blocking=True)


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
