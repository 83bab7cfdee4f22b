"""Class names that travel with a model: ``RUN/classes.json`` in a run directory, ``label_names`` in a published
``config.json`` (as timm's Hub configs carry them) and in the metadata of exported files.

    RUN/classes.json   {"dataset": "folder:flowers", "label_names": ["daisy", "rose", ...]}  (label order)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import UserError
from ..rundir import LABELS_FILE
from .files import write_json


def write_labels(run_dir: str | os.PathLike, dataset: str, label_names: list[str] | None) -> Path | None:
    """``RUN/classes.json`` for a run on ``dataset`` (its public name) with ``label_names``; nothing when the
    dataset has no class names."""
    if not label_names:
        return None
    return write_json(Path(run_dir) / LABELS_FILE, {"dataset": dataset, "label_names": list(label_names)})


def read_labels(source: str | os.PathLike) -> list[str] | None:
    """The class names recorded for ``source``: a run directory, a weights file inside one (``RUN/last.safetensors``,
    ``RUN/checkpoints/...``) or a published folder (its ``config.json``); None when none are recorded."""
    source = Path(source)
    folder = source if source.is_dir() else source.parent
    for candidate in (folder / LABELS_FILE, folder.parent / LABELS_FILE):
        if candidate.is_file():
            return _names(candidate)
    config = folder / "config.json"
    return _names(config) if config.is_file() else None


def _names(path: Path) -> list[str] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path} is not readable JSON ({type(err).__name__}): restore or rewrite it") from None
    names = record.get("label_names") if isinstance(record, dict) else None
    if names is None:
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserError(f"{path}: label_names must be a list of strings: rewrite the file or drop the key")
    return names
