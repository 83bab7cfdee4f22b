"""``model.init: recycle``: ``moejet recycle --out RUN/recycle`` run once, before the first epoch.

    RUN/recycle/model.safetensors   the recycled successor (the run's initial weights; its header rebuilds it)
    RUN/recycle/recycle.json        moejet recycle's report, plus the recipe it came from

A start that finds both files written from the same recipe (a run killed before its first checkpoint, started
again) reuses them; ``--resume`` never gets here: it rebuilds the model from the run's own checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Any

import torch.distributed as dist

from ..device import resolve_device
from ..errors import UserError
from ..io.download import WeightsUnavailable
from ..io.files import plain_json
from ..rundir import MODEL_FILE, RECYCLE_DIR, REPORT_FILE
from .config import Config, RecycleConfig
from .distributed import rng_state, set_rng_state

TRAINING_KWARGS = ("drop_path_rate",)  # change how the model trains, not its weights: not the successor's


# moejet recycle's flags that are not a recycle key of the same name, as moejet train sets them
FLAG_KEYS = {"--data-root": "recycle.calib_root", "--successor": "model.name", "--successor-arg": "model.kwargs.KEY"}
_FLAG = re.compile(r"--([a-z][a-z-]*)(?: ([A-Z][A-Z_]*)\b)?")


def as_config_keys(message: str) -> str:
    """A recycling error's advice in moejet train's terms: ``pass --dense-checkpoint FILE`` -> ``pass --set
    recycle.dense_checkpoint=FILE`` (every moejet recycle flag is the recycle key of the same name, but
    :data:`FLAG_KEYS`); advice addressed to moejet train already (``(moejet train: ...)``) is dropped as such."""
    fields = {f.name: f.type for f in dataclasses.fields(RecycleConfig)}

    def key(match: re.Match) -> str:
        flag, value = match.group(0).split(" ")[0], match.group(2)
        name = FLAG_KEYS.get(flag) or (f"recycle.{flag[2:].replace('-', '_')}"
                                       if flag[2:].replace("-", "_") in fields else None)
        if name is None:
            return match.group(0)
        if value is None and fields.get(name.removeprefix("recycle.")) in (bool, "bool"):
            value = "true"
        return f"--set {name}={value}" if value else f"--set {name}"

    return _FLAG.sub(key, re.sub(r" \(moejet train: [^)]*\)", "", message))


def recipe(config: Config, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """What the recycled weights depend on: the recycle section, the successor and its kwargs, the variant."""
    successor_kwargs = {k: v for k, v in kwargs.items() if k not in TRAINING_KWARGS}
    raw = {"recycle": dataclasses.asdict(config.recycle), "variant": config.variant, "successor": name,
           "successor_kwargs": successor_kwargs}
    return plain_json(raw)  # tuples -> lists, as read back from recycle.json


def recycle_into_run(config: Config, run_dir: str | Path, name: str, kwargs: dict[str, Any]) -> Path:
    """``RUN/recycle/model.safetensors`` recycled from ``config.recycle`` into the successor ``name(**kwargs)``.

    Under torchrun rank 0 recycles and the other ranks wait for its files. The caller's RNG streams are left as
    they were, so a run initialised this way trains exactly as one started from the same file with
    ``model.init: checkpoint``.
    """
    out = Path(run_dir) / RECYCLE_DIR
    wanted = recipe(config, name, kwargs)
    distributed = dist.is_available() and dist.is_initialized()
    if not distributed or dist.get_rank() == 0:
        if _saved_recipe(out) != wanted:
            _recycle(config, out, wanted)
    if distributed:
        dist.barrier()
    return out / MODEL_FILE


def _saved_recipe(out: Path) -> dict[str, Any] | None:
    if not (out / MODEL_FILE).is_file():
        return None
    try:
        return json.loads((out / REPORT_FILE).read_text()).get("recipe")
    except (OSError, ValueError, AttributeError):  # missing or damaged: recycle again
        return None


def _recycle(config: Config, out: Path, wanted: dict[str, Any]) -> None:
    from ..recycle.output import summary, write_outputs
    from ..recycle.pipeline import recycle_sources

    r = config.recycle  # model.name auto is already resolved: wanted["successor"] names the model
    device = str(resolve_device(config.train.device))
    print(f"moejet train: recycling {r.predecessor or r.predecessor_checkpoint} into {wanted['successor']} "
          f"({r.strategy}) -> {out / MODEL_FILE}", flush=True)
    saved_rng = rng_state()
    try:
        state, report = recycle_sources(
            predecessor=r.predecessor, predecessor_checkpoint=r.predecessor_checkpoint, pretrained=r.pretrained,
            predecessor_kwargs=dict(r.predecessor_kwargs), dense_checkpoint=r.dense_checkpoint,
            successor=wanted["successor"], successor_kwargs=wanted["successor_kwargs"], calib_data=r.calib_data,
            calib_images=r.calib_images, calib_img_size=r.calib_img_size, data_root=r.calib_root,
            batch_size=r.batch_size, workers=r.workers, device=device, progress=sys.stderr.isatty(),
            options=r.options(config.variant),
        )
    except WeightsUnavailable as err:  # moejet train's way to pass the file: the recycle section's keys
        raise WeightsUnavailable(f"recycling (config section recycle): {err.reason}", err.url,
                                 "--set recycle.pretrained=false --set recycle.predecessor_checkpoint="
                                 "FILE") from None
    except UserError as err:
        raise UserError(f"recycling (config section recycle): {as_config_keys(str(err))}") from None
    finally:
        set_rng_state(saved_rng)
    report["recipe"] = wanted
    paths = write_outputs(out, state, report, wanted["successor"], wanted["successor_kwargs"])
    print(summary(report, paths), flush=True)
