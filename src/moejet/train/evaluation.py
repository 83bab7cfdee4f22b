"""``moejet eval``: top-1 / top-5 of a run's checkpoint or of any checkpoint file on a config's val split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..data.datasets import val_split_name
from ..errors import UserError
from ..io.weights import MODEL_KEY, build_from_checkpoint, load_into, load_state_dict, read_metadata
from ..rundir import BEST, CONFIG_FILE, LAST
from . import build
from .config import Config, load_config
from .distributed import seed_everything, setup, teardown
from .loop import evaluate
from .run import amp_dtype_for, eval_loader


def evaluate_checkpoint(
    checkpoint: str | Path, config: Config, batch_size: int | None = None, device: str | None = None
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``config``'s val split. moejet files rebuild their own model; other weight
    files are loaded strictly into ``config``'s model. Works under torchrun (metrics are all-reduced)."""
    world = setup(device or config.train.device)
    try:
        seed_everything(config.train.seed)
        checkpoint = Path(checkpoint)
        is_moejet = checkpoint.suffix == ".safetensors" and MODEL_KEY in read_metadata(checkpoint)
        if is_moejet:
            model, name, _ = build_from_checkpoint(checkpoint, drop_path_rate=0.0)
            _, val_tf = build.build_transforms(config, model)
            val_ds = build.build_dataset(config, "val", val_tf)
        else:
            with torch.device("meta"):
                probe = build.create_model(*build.config_model(config), pretrained=False)
            _, val_tf = build.build_transforms(config, probe)
            val_ds = build.build_dataset(config, "val", val_tf)
            model, name, _ = build.build_model(_scratch(config), build.num_classes_of(val_ds, config))
            load_into(model, load_state_dict(checkpoint), str(checkpoint))
        classes = build.num_classes_of(val_ds, config)
        head = model.get_classifier() if hasattr(model, "get_classifier") else None
        out_features = getattr(head, "out_features", None)
        if out_features is not None and out_features != classes:
            raise UserError(
                f"checkpoint {checkpoint} predicts {out_features} classes but {config.data.dataset!r} has {classes}: "
                "evaluate it on the dataset it was trained on"
            )
        model.to(world.device)
        loader = eval_loader(val_ds, batch_size or config.train.eval_batch_size or 64, config, world)
        result = evaluate(model, loader, world, amp_dtype_for(config.train.amp, world.device),
                          bool(config.train.channels_last))
        return {"checkpoint": str(checkpoint), "model": name, "dataset": config.data.dataset, **result}
    finally:
        teardown(world)


def best_note(dataset: str) -> str:
    """What a best-epoch result is: chosen on the split it is scored on (for torchvision datasets their official
    test split), so not a held-out result."""
    return f"best epoch selected on the val split ({val_split_name(dataset)}): not a held-out result"


def evaluate_run(run_dir: str | Path, which: str = "last", batch_size: int | None = None,
                 device: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Evaluate a run's last (or best) checkpoint on the val split of its own config (``overrides`` applied).

    The result records ``which``; a best-epoch result carries ``note`` (:func:`best_note`).
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise UserError(f"{run_dir} is not a moejet run directory (no {CONFIG_FILE}): check the path")
    path = run_dir / {"best": BEST, "last": LAST}[which]
    if not path.is_file():
        raise UserError(f"{path} does not exist: the run has not finished an evaluated epoch yet; try --which last")
    config = load_config(run_dir / CONFIG_FILE, overrides)
    result = evaluate_checkpoint(path, config, batch_size, device)
    return {**result, "which": which, **({"note": best_note(config.data.dataset)} if which == "best" else {})}


def _scratch(config: Config) -> Config:
    """The config's model without its init checkpoint (the weights come from the evaluated file)."""
    from dataclasses import replace

    return replace(config, model=replace(config.model, init="scratch", init_checkpoint=None))


def format_result(result: dict[str, Any]) -> str:
    return (f"{result['model']} on {result['dataset']}: top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  "
            f"loss {result['loss']:.4f}  ({result['images']} images)"
            + (f"  [{result['note']}]" if "note" in result else ""))


def result_json(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=2)
