"""Process group set-up from torchrun's environment, device choice, FSDP2 sharding, seeding and reductions."""

from __future__ import annotations

import datetime
import gc
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from ..device import resolve_device
from ..errors import UserError


@dataclass(frozen=True)
class World:
    """This process's place in the run: its rank of ``world_size`` torchrun processes, and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto", timeout_min: float = 60.0) -> World:
    """Join torchrun's process group (NCCL on CUDA, gloo on CPU) when ``WORLD_SIZE`` > 1; pick the device.

    ``timeout_min`` is how long a collective waits: long enough for rank 0 to recycle a predecessor or download a
    dataset while the others wait (torch's default is 10 minutes)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("config key train.device = 'cuda' but no CUDA GPU is visible: use train.device=cpu or auto")
    use_cuda = resolve_device(device).type == "cuda"  # auto: CUDA, else the CPU (training does not use MPS)
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        torch_device = torch.device("cuda", torch.cuda.current_device())
    else:
        torch_device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(minutes=timeout_min))
    return World(rank, world_size, torch_device)


def check_shared_dir(run_dir: Path, world: World) -> None:
    """Every rank must see the run directory rank 0 writes to (checkpoints, recycled weights): rank 0 writes a token
    there, every rank reads it, and all of them stop with a one-line error if any rank does not see it."""
    if not world.enabled:
        return
    token = run_dir / f".moejet-shared-{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}"
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        token.write_text(str(os.getpid()))
    dist.barrier()
    seen = torch.tensor([float(token.is_file())], device=world.device)
    dist.all_reduce(seen, op=dist.ReduceOp.MIN)
    dist.barrier()
    if world.is_main:
        token.unlink(missing_ok=True)
    if seen.item() < 1:
        raise UserError(f"some processes do not see the run directory {run_dir}: multi-node runs need it on a "
                        "filesystem every node shares (NFS, Lustre, ...); pass --out on one")


def teardown(world: World) -> None:
    """Leave the process group. The DDP / FSDP wrappers that hold it sit in reference cycles: collect them first,
    so the group's worker threads stop now and not during interpreter shutdown (see ``leave``)."""
    if world.enabled and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def is_torchrun_worker() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ


def leave(code: int) -> NoReturn:
    """End a torchrun worker process without interpreter finalisation.

    A gloo worker thread that still drops a tensor while the interpreter finalises must take the GIL, is ended by
    the interpreter with ``pthread_exit``, and the unwind through C++ aborts the process ("terminate called
    without an active exception", SIGABRT; pytorch/pytorch#179291): a finished run then fails its launcher.
    Every file of ours is closed by now, so the process exits at once with its code."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def all_reduce_sum(tensor: torch.Tensor, world: World) -> torch.Tensor:
    if world.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor, world: World) -> torch.Tensor:
    if world.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules FSDP2 shards one by one: a ViT's transformer blocks, a ConvNeXt's stages."""
    for attr in ("blocks", "stages"):
        units = getattr(model, attr, None)
        if isinstance(units, (nn.Sequential, nn.ModuleList)):
            return list(units)
    return []


def shard_model(model: nn.Module, world: World, param_dtype: torch.dtype | None = None,
                reshard_after_forward: bool = True) -> list[nn.Parameter]:
    """FSDP2 in place: ``fully_shard`` every block / stage, then the root; returns the parameters left whole.

    Each process keeps 1 / world_size of every sharded parameter (dim 0), its gradient and so its optimizer state;
    a unit's full weights exist only during its forward / backward. ``param_dtype`` (bf16 under ``train.amp``)
    is FSDP2's compute dtype; gradients are reduced in float32. FSDP2 cannot shard 0-d parameters (the SpheroMoE
    temperatures): they stay whole on every process, and :func:`average_grads` reduces their gradients.
    """
    whole = [p for p in model.parameters() if p.ndim == 0]
    kwargs = {"mesh": init_device_mesh(world.device.type, (world.world_size,)), "ignored_params": set(whole),
              "mp_policy": MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32),
              "reshard_after_forward": reshard_after_forward}
    for unit in shard_units(model):
        fully_shard(unit, **kwargs)
    fully_shard(model, **kwargs)
    return whole


def wrap_ddp(model: nn.Module, world: World, comm: str = "fp32") -> nn.Module:
    """DDP with gradients as views of its communication buckets (no copy into them), and with ``comm="bf16"``
    torch's bf16 compression hook: the all-reduce moves half the bytes, and the averaged gradients are fp32 again."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import bf16_compress_hook
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [world.device.index] if world.device.type == "cuda" else None
    ddp = DistributedDataParallel(model, device_ids=device_ids, gradient_as_bucket_view=True)
    if comm == "bf16":
        ddp.register_comm_hook(None, bf16_compress_hook)
    return ddp


def default_workers(local_processes: int) -> int:
    """DataLoader workers per process: this machine's usable cores shared by its processes (at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(local_processes, 1))


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def average_grads(params: list[nn.Parameter], world: World) -> None:
    """Average the gradients of ``params`` over the processes (what DDP does for every parameter)."""
    grads = [p.grad for p in params if p.grad is not None]
    if world.enabled and grads:
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= world.world_size
        for g, value in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(value.view_as(g))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A distinct, reproducible seed per (run seed, epoch, rank): epochs restart from a known RNG state."""
    return ((seed * 100_003 + epoch) * 1_009 + rank) % 2**31


def set_deterministic(enabled: bool) -> None:
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(enabled, warn_only=True)


def rng_state() -> dict:
    """RNG states as tensors and plain Python values (loadable with ``torch.load(weights_only=True)``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        # this process's device only: a resume on a machine with fewer GPUs must still restore it
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "gauss": float(gauss)},
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    cuda = state["cuda"]
    if isinstance(cuda, list):  # earlier moejet versions saved every visible GPU's state: take this device's
        cuda = cuda[torch.cuda.current_device()] if cuda and torch.cuda.is_available() and \
            torch.cuda.current_device() < len(cuda) else None
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
