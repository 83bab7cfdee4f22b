"""Fine-tuning with the paper's recipe (App. B; docs/training.md): ``moejet train`` / ``moejet eval`` and their API."""

from .checkpointing import read_metrics
from .config import Config, batch_plan, config_from_dict, dump_config, load_config
from .evaluation import evaluate_checkpoint, evaluate_run
from .loop import evaluate
from .run import train

__all__ = [
    "Config", "batch_plan", "config_from_dict", "dump_config", "evaluate", "evaluate_checkpoint", "evaluate_run",
    "load_config", "read_metrics", "train",
]
