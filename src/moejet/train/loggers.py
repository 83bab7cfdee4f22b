"""Where a run's per-epoch numbers go besides ``metrics.jsonl``: TensorBoard and Weights & Biases, each only when
asked for in the config and installed (a missing package is a warning, never an error)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..io.files import plain_json
from ..rundir import TENSORBOARD_DIR
from .config import Config

Log = Callable[[dict[str, float], int], None]  # (scalars, epoch) -> None


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """A metrics row as flat scalars: its float values, ``routing/<layer>/<stat>`` and ``temperature/<layer>/<t>``."""
    flat = {key: value for key, value in row.items() if isinstance(value, float)}
    for layer, stats in row.get("routing", {}).items():
        flat.update({f"routing/{layer}/{stat}": float(value) for stat, value in stats.items()})
    for layer, temps in row.get("temperatures", {}).items():
        flat.update({f"temperature/{layer}/{name}": float(value) for name, value in temps.items()})
    return flat


def open_loggers(run_dir: Path, config: Config) -> tuple[list[Log], list[Callable[[], None]]]:
    """The run's extra loggers (``train.tensorboard``, ``train.wandb``) as ``(log functions, close functions)``."""
    logs: list[Log] = []
    closes: list[Callable[[], None]] = []
    if config.train.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            _warn("train.tensorboard", "tensorboard", "moe-jetpack[tensorboard]")
        else:
            writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR))

            def log_tensorboard(values: dict[str, float], epoch: int) -> None:
                for key, value in values.items():
                    writer.add_scalar(key, value, epoch)
                writer.flush()

            logs.append(log_tensorboard)
            closes.append(writer.close)
    if config.train.wandb:
        try:
            import wandb
        except ImportError:
            _warn("train.wandb", "wandb", "wandb")
        else:
            run = wandb.init(project=config.train.wandb_project, name=config.name, id=wandb_run_id(run_dir),
                             resume="allow", dir=str(run_dir), config=plain_json(asdict(config)))
            logs.append(lambda values, epoch: run.log({**values, "epoch": epoch}, step=epoch))
            closes.append(run.finish)
    return logs, closes


def wandb_run_id(run_dir: Path) -> str:
    """The same W&B run id for every resume of one run directory."""
    return "moejet-" + hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


def _warn(key: str, package: str, pip: str) -> None:
    print(f"moejet train: warning: {key} is on but {package} is not installed (pip install '{pip}'); "
          "logging to metrics.jsonl only", flush=True)


def peak_memory_mb(device: torch.device) -> tuple[str, float]:
    """``("gpu", MiB)``: peak CUDA memory allocated on ``device``; on the CPU ``("rss", MiB)``: the process's peak
    resident set size."""
    if device.type == "cuda":
        return "gpu", torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return "rss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class StepLog:
    """One line every ``every`` optimizer steps (``train.log_every``): the window's mean train loss, the lr,
    images/s over all processes and per process, the share of the window spent waiting for data, and peak memory.
    Loss sums stay on the device; the only sync is on a printing step."""

    def __init__(self, every: int, epoch: int, epochs: int, steps: int, world_size: int, device: torch.device):
        self.every, self.epoch, self.epochs, self.steps = every, epoch, epochs, steps
        self.world_size, self.device = world_size, device
        self.last_loss: str | None = None
        self._reset()

    def _reset(self) -> None:
        self.start, self.data_s, self.images, self.global_images = time.perf_counter(), 0.0, 0, 0
        self.loss_sum: torch.Tensor | float = 0.0

    def waited(self, seconds: float) -> None:
        self.data_s += seconds

    def due(self, step_in_epoch: int) -> bool:
        """Whether 1-based ``step_in_epoch`` prints a line."""
        return step_in_epoch % self.every == 0 or step_in_epoch == self.steps

    def step(self, step_in_epoch: int, loss_sum: torch.Tensor, images: int, global_images: int, lr: float
             ) -> str | None:
        """Record one finished step (1-based ``step_in_epoch``; this process's loss sum and images, the step's images
        over all processes); returns the line to print when the window is full or the epoch ends."""
        self.loss_sum = self.loss_sum + loss_sum
        self.images += images
        self.global_images += global_images
        if not self.due(step_in_epoch):
            return None
        seconds = max(time.perf_counter() - self.start, 1e-9)
        kind, mib = peak_memory_mb(self.device)
        self.last_loss = f"{float(self.loss_sum) / max(self.images, 1):.4f}"
        line = (f"epoch {self.epoch + 1}/{self.epochs} step {step_in_epoch}/{self.steps}  loss {self.last_loss}  "
                f"lr {lr:.3g}  {self.global_images / seconds:.1f} img/s ({self.images / seconds:.1f} per process)  "
                f"data {100 * self.data_s / seconds:.0f}%  peak {kind} {mib:.0f} MiB")
        self._reset()
        return line
