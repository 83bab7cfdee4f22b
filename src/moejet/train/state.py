"""The state a run shares between its loop (:mod:`.loop`) and its checkpoints (:mod:`.checkpointing`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .config import Config
from .distributed import World


@dataclass
class Progress:
    """Where a run stands: epochs and optimizer steps done, the best val top-1 so far (-1: none yet), the training
    wall time so far, and the step from which an ``--extend cosine-restart`` schedule counts (None: no restart).

    A state file holds these as top-level keys of the same names (:func:`moejet.train.checkpointing.save_epoch`)."""

    epoch: int = 0
    step: int = 0
    best_top1: float = -1.0
    wall_time_s: float = 0.0
    restart_step: int | None = None


@dataclass
class TrainState:
    """One run, wired (:func:`moejet.train.run.train`): its config and processes, the model and everything that
    trains it, and where it stands (``progress``, the ``metrics`` rows so far).

    ``model`` is the module whose weights are saved; ``train_model`` is what the loop calls (the same model,
    compiled and / or wrapped by DDP); ``whole`` are the parameters FSDP left unsharded."""

    config: Config
    run_dir: Path
    world: World
    model: nn.Module
    train_model: nn.Module
    model_name: str
    model_kwargs: dict[str, Any]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss_fn: nn.Module
    amp_dtype: torch.dtype | None = None
    scaler: Any = None
    ema: Any = None
    mixup: Any = None
    whole: list[nn.Parameter] = field(default_factory=list)
    progress: Progress = field(default_factory=Progress)
    metrics: list[dict[str, Any]] = field(default_factory=list)
