"""Publish moejet models the way timm models are published: a Hugging Face Hub folder that
``timm.create_model("hf-hub:ID", pretrained=True)`` (or ``"local-dir:DIR"``) loads.

The folder is timm's own :func:`timm.models.save_for_hf` output (``config.json`` with the architecture
and its kwargs, ``model.safetensors``) plus a model card (``README.md``) written from what moejet knows
about the model: recycling source and strategy, training recipe, metrics, params and MACs.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch.nn as nn
import yaml

from ..data.config import DataConfig, data_settings
from ..data.datasets import dataset_label
from ..errors import UserError, first_line
from ..rundir import BEST, CONFIG_FILE, LAST, METRICS_FILE, RECYCLE_DIR, REPORT_FILE
from .files import atomic_directory, plain_json
from .labels import read_labels
from .weights import build_from_checkpoint, read_metadata

WEIGHTS_FILES = (LAST, BEST)  # a run directory's weights, in order of preference


def jsonable_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Model kwargs as plain JSON values, as timm's config.json needs them."""
    kwargs = plain_json(kwargs)
    try:
        json.dumps(kwargs)
    except TypeError as err:
        raise UserError(f"model arguments are not JSON-serialisable ({err}): rebuild with plain values") from None
    return kwargs


def resolve_source(source: str | os.PathLike) -> tuple[Path, Path | None]:
    """``(weights file, run directory or None)`` for a moejet safetensors file or a ``moejet train`` run."""
    source = Path(source)
    if source.is_dir():
        weights = next((source / f for f in WEIGHTS_FILES if (source / f).is_file()), None)
        if weights is None:
            raise UserError(f"{source} has no {' or '.join(WEIGHTS_FILES)}: pass a run directory or a weights file")
        return weights, source
    if not source.is_file():
        raise UserError(f"{source} does not exist: pass a moejet run directory or a .safetensors file")
    return source, None


def describe(weights: Path, run_dir: Path | None) -> dict[str, Any]:
    """What the model card says: model, kwargs, where the weights came from, recipe and metrics (missing parts are
    omitted). ``recycle``: ``predecessor`` (timm name), ``from_hub`` (True: timm's Hub download, False: a local
    file, None: not recorded), ``dense_checkpoint`` (the other layers from a local file), ``strategy``, ``seed``."""
    meta = read_metadata(weights)
    info: dict[str, Any] = {"recycle": _recycle_source(
        {k.removeprefix("moejet.recycle."): v for k, v in meta.items() if k.startswith("moejet.recycle.")})}
    if "moejet.epoch" in meta:
        info["epoch"] = int(meta["moejet.epoch"])
    if run_dir is not None:
        config_path, metrics_path = run_dir / CONFIG_FILE, run_dir / METRICS_FILE
        if config_path.is_file():
            info["config"] = yaml.safe_load(config_path.read_text()) or {}
        if metrics_path.is_file():
            rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
            epoch = info.get("epoch")
            info["metrics"] = next((r for r in rows if r.get("epoch") == epoch), rows[-1] if rows else None)
            best = max(rows, key=lambda r: r.get("val_top1", float("-inf")), default=None)
            if best is not None and best is not info["metrics"]:
                info["best_metrics"] = best
        recycle_report = run_dir / RECYCLE_DIR / REPORT_FILE
        if recycle_report.is_file():
            report = json.loads(recycle_report.read_text())
            info["recycle"] = {"predecessor": report["predecessor"]["name"], "strategy": report["strategy"],
                               "seed": str(report["seed"]), "from_hub": bool(report["predecessor"].get("pretrained")),
                               "dense_checkpoint": report.get("dense_checkpoint") is not None}
    return info


def _recycle_source(header: dict[str, str]) -> dict[str, Any]:
    """The recycling keys of a recycled file's header (:func:`moejet.recycle.output.write_outputs`); files written
    before the source was recorded have ``from_hub`` None."""
    if not header:
        return {}
    out: dict[str, Any] = {k: header[k] for k in ("predecessor", "strategy", "seed") if k in header}
    out["from_hub"] = json.loads(header["pretrained"]) if "pretrained" in header else None
    out["dense_checkpoint"] = json.loads(header["dense_checkpoint"]) if "dense_checkpoint" in header else None
    return out


def weights_origin(info: dict[str, Any]) -> str | None:
    """Where the initial weights came from, as recorded: a Hub name only for timm's Hub downloads, else "a local
    checkpoint" (never its path); None when nothing is recorded."""
    recycle = info.get("recycle") or {}
    if recycle:
        name = recycle.get("predecessor", "?")
        architecture = name.split(".")[0]
        source = {True: f"timm's `{name}`, downloaded from the Hugging Face Hub",
                  False: f"a local checkpoint (a `{architecture}`)",
                  None: f"a `{architecture}` (whether from the Hub or a local file is not recorded)"}
        rest = {True: "; the other layers from a local checkpoint", None: "",
                False: "; the other layers cut from the same predecessor"}[recycle.get("dense_checkpoint")]
        return (f"recycled with strategy `{recycle.get('strategy', '?')}` (seed {recycle.get('seed', '?')}): the "
                f"experts from {source[recycle.get('from_hub')]}{rest}")
    model = (info.get("config") or {}).get("model") or {}
    return {"pretrained": f"timm's `{model.get('name')}` pretrained weights, downloaded from the Hugging Face Hub",
            "checkpoint": "a local checkpoint", "scratch": "random initialisation"}.get(model.get("init"))


def model_card(name: str, kwargs: dict[str, Any], info: dict[str, Any], params: int, macs: int | None,
               repo_id: str | None) -> str:
    """A Hugging Face model card (``README.md``) in timm's style."""
    repo = repo_id or name
    load = f'timm.create_model("hf-hub:{repo}", pretrained=True)' if repo_id else \
        'timm.create_model("local-dir:PATH/TO/THIS/FOLDER", pretrained=True)'
    lines = [
        "---", "tags:", "- image-classification", "- timm", "- moejet", "- mixture-of-experts",
        "library_name: timm", "license: apache-2.0", "---", "",
        f"# {repo}", "",
        f"A `{name}` Mixture-of-Experts model built with moejet "
        "(MoE Jetpack, NeurIPS 2024: dense checkpoint recycling + SpheroMoE fine-tuning).", "",
        "## Model details", "",
        f"- architecture: `{name}`, arguments `{json.dumps(kwargs, sort_keys=True)}`",
        f"- params: {params / 1e6:.1f} M",
    ]
    if macs is not None:
        lines.append(f"- MACs per image: {macs / 1e9:.2f} G (torch FlopCounterMode, routing included)")
    origin = weights_origin(info)
    if origin:
        lines.append(f"- initial weights: {origin}")
    config = info.get("config") or {}
    if config:
        data, schedule, optim, train = (config.get(k) or {} for k in ("data", "schedule", "optim", "train"))
        dataset = dataset_label(data["dataset"]) if data.get("dataset") else "?"
        lines += [
            f"- fine-tuned on: `{dataset}` at {data.get('img_size', '?')} px, "
            f"{schedule.get('epochs', '?')} epochs, global batch {train.get('batch_size', '?')}, "
            f"lr {optim.get('lr', '?')}, layer decay {optim.get('layer_decay')}, "
            f"recipe variant `{config.get('variant', 'paper')}`",
        ]
    metrics, best = info.get("metrics"), info.get("best_metrics")
    labels = info.get("label_names")
    if labels:
        shown = ", ".join(f"`{n}`" for n in labels[:20]) + (f" and {len(labels) - 20} more" if len(labels) > 20 else "")
        lines.append(f"- classes ({len(labels)}, `label_names` in config.json): {shown}")
    if metrics:
        lines += ["", "## Results", "", "| weights | epoch | top-1 | top-5 |", "| --- | --- | --- | --- |",
                  f"| published (last epoch) | {metrics.get('epoch')} | {metrics.get('val_top1', float('nan')):.2f} "
                  f"| {metrics.get('val_top5', float('nan')):.2f} |"]
        if best:
            lines.append(f"| best epoch (selected on the val split; not published) | {best.get('epoch')} | "
                         f"{best.get('val_top1', float('nan')):.2f} | {best.get('val_top5', float('nan')):.2f} |")
    lines += ["", "## Usage", "", "```python", "import timm", "import moejet  # registers the MoE architectures",
              "", f"model = {load}.eval()",
              "cfg = timm.data.resolve_data_config({}, model=model)",
              "transform = timm.data.create_transform(**cfg)", "```", "",
              "## Citation", "", "```bibtex",
              "@inproceedings{zhu2024moejetpack,",
              "  title={MoE Jetpack: From Dense Checkpoints to Adaptive Mixture of Experts for Vision Tasks},",
              "  author={Zhu, Xingkui and Guan, Yiran and Liang, Dingkang and Chen, Yuchao and Liu, Yuliang and "
              "Bai, Xiang},",
              "  booktitle={Advances in Neural Information Processing Systems},", "  year={2024}", "}", "```", ""]
    return "\n".join(lines)


def write_folder(source: str | os.PathLike, out: str | os.PathLike, repo_id: str | None = None,
                 macs: bool = True) -> Path:
    """Write ``out`` (config.json, model.safetensors, README.md) for ``source``; atomic: all files or none, with the
    usual permissions (a published folder is meant to be shared). config.json carries the class names
    (``label_names``) and, for a run, the preprocessing its validation used."""
    from timm.models import save_for_hf

    from ..analysis.cost import count_macs, count_params
    from ..models.common import input_size_of

    weights, run_dir = resolve_source(source)
    model, name, kwargs = build_from_checkpoint(weights)
    kwargs = jsonable_kwargs(kwargs)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not an empty directory: pass a new directory")
    model.eval()
    mac_count = count_macs(model, input_size_of(model))[0] if macs else None
    info = describe(weights, run_dir)
    labels = read_labels(weights)
    if labels is not None and len(labels) != model.num_classes:
        labels = None  # recorded for another head (e.g. a recycled 1000-class file next to a run's classes.json)
    info["label_names"] = labels
    card = model_card(name, kwargs, info, count_params(model), mac_count, repo_id)
    with atomic_directory(out) as tmp:
        save_for_hf(model, tmp, model_config={"label_names": labels} if labels else None, model_args=kwargs,
                    safe_serialization=True, data_config=_data_config(info, model))
        (tmp / "README.md").write_text(card)
    return out


def _data_config(info: dict[str, Any], model: nn.Module) -> dict[str, Any] | None:
    """The run's validation preprocessing (:func:`moejet.data.config.data_settings`), for timm's config.json."""
    config = info.get("config")
    if not config:
        return None
    try:
        settings = data_settings(DataConfig(**(config.get("data") or {})), model)
    except TypeError:  # a data section this moejet cannot read: timm's defaults for the model
        return None
    return {**settings, "input_size": list(settings["input_size"])}


def push(folder: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None,
         revision: str | None = None, commit_message: str = "Upload moejet model") -> str:
    """Create ``repo_id`` on the Hub (if needed) and upload ``folder``; returns the commit URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                                 commit_message=commit_message, repo_type="model")
    except (HfHubHTTPError, OSError) as err:
        raise UserError(f"upload to {repo_id} failed ({type(err).__name__}: {first_line(err)}); "
                        "check your token (huggingface-cli login) and network, or use --out DIR") from None
    return str(getattr(info, "commit_url", info))


def publish(source: str | os.PathLike, repo_id: str | None = None, out: str | os.PathLike | None = None,
            private: bool = False, token: str | None = None, macs: bool = True) -> Path | str:
    """Write the Hub folder for ``source`` to ``out`` and/or upload it to ``repo_id``."""
    if repo_id is None and out is None:
        raise UserError("say where to publish: --repo-id ID (upload to the Hugging Face Hub) and/or --out DIR")
    if out is not None:
        folder = write_folder(source, out, repo_id, macs)
        return push(folder, repo_id, private, token) if repo_id else folder
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_folder(source, Path(tmp) / "model", repo_id, macs)
        return push(folder, repo_id, private, token)


def load_published(path_or_id: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` of a published folder (``local-dir:``) or Hub id (``hf-hub:``), with its weights."""
    import timm

    prefix = "local-dir:" if Path(path_or_id).is_dir() else "hf-hub:"
    return timm.create_model(prefix + str(path_or_id), pretrained=True, **kwargs)
