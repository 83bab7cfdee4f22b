"""Everything a run is made of, built from a :class:`~moejet.train.config.Config` with timm's components."""

from __future__ import annotations

import json
import sys
from typing import Any

import timm
import torch
import torch.nn as nn
from timm.data import Mixup, create_transform, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2, param_groups_layer_decay, param_groups_weight_decay
from timm.scheduler import CosineLRScheduler

from ..checkpoint import KWARGS_KEY, MODEL_KEY, load_into, load_state_dict, read_metadata
from ..errors import UserError
from .config import Config

# Expert biases are 2-D ((E, h) / (E, d)), so timm's "1-D or .bias" rule misses them.
EXTRA_NO_WEIGHT_DECAY = ("*_bias",)
FUSED_ADAM_ON_CPU = torch.torch_version.TorchVersion(torch.__version__) >= (2, 4)  # CUDA had it earlier
# kwargs that describe a training run rather than an architecture: a checkpoint header's value is not a default
RUN_KWARGS = ("num_classes", "drop_path_rate", "pretrained", "pretrained_cfg_overlay")


# ---------------------------------------------------------------------------------------------------- model


def model_kwargs(config: Config, num_classes: int) -> tuple[str, dict[str, Any]]:
    """``(timm name, kwargs)`` of the model: the init checkpoint's header, then ``model.kwargs``, then the run's."""
    m = config.model
    kwargs: dict[str, Any] = {}
    if m.init == "checkpoint" and str(m.init_checkpoint).endswith(".safetensors"):
        header = read_metadata(m.init_checkpoint)
        if MODEL_KEY in header:
            saved = header[MODEL_KEY]
            if saved.split(".")[0] != m.name.split(".")[0]:
                raise UserError(
                    f"model.init_checkpoint {m.init_checkpoint} holds a {saved!r} but model.name is {m.name!r}: "
                    "set model.name to the checkpoint's model"
                )
            kwargs = {k: v for k, v in json.loads(header.get(KWARGS_KEY, "{}")).items() if k not in RUN_KWARGS}
    kwargs.update(m.kwargs)
    kwargs.update(num_classes=num_classes, drop_path_rate=m.drop_path_rate)
    if "img_size" not in m.kwargs and _fixed_input_size(m.name, kwargs):
        kwargs["img_size"] = config.data.img_size  # ViTs size their position embedding from it
    return m.name, kwargs


def _fixed_input_size(name: str, kwargs: dict[str, Any]) -> bool:
    with torch.device("meta"):
        model = create_model(name, kwargs, pretrained=False)
    return bool(model.pretrained_cfg.get("fixed_input_size", False))


def create_model(name: str, kwargs: dict[str, Any], pretrained: bool) -> nn.Module:
    """``timm.create_model`` with config errors (unknown name, bad kwargs) as UserErrors."""
    import moejet.models  # noqa: F401  (registers our models with timm)

    if not timm.is_model(name):
        raise UserError(f"config key model.name = {name!r} is not a timm model: see `moejet models` or "
                        "timm.list_models()")
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except (TypeError, ValueError, IndexError, KeyError, AssertionError) as err:
        raise UserError(f"cannot build model {name!r} with kwargs {kwargs} ({type(err).__name__}: {err}): "
                        "fix model.kwargs") from None


def build_model(config: Config, num_classes: int) -> tuple[nn.Module, str, dict[str, Any]]:
    """The model, initialised as ``model.init`` says; returns ``(model, timm name, kwargs to rebuild it)``."""
    name, kwargs = model_kwargs(config, num_classes)
    m = config.model
    if m.init == "pretrained":
        try:
            model = timm.create_model(name, pretrained=True, **kwargs)
        except UserError:
            raise
        except Exception as err:  # offline hub, no weights for this tag, ...
            raise UserError(
                f"cannot load timm's pretrained weights for {name!r} ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:160] if str(err) else ''}): on an offline machine download the "
                "checkpoint elsewhere and set model.init=checkpoint model.init_checkpoint=FILE"
            ) from None
        return model, name, kwargs
    model = create_model(name, kwargs, pretrained=False)
    if m.init == "checkpoint":
        load_init_checkpoint(model, m.init_checkpoint, m.init_checkpoint_weights)
    return model, name, kwargs


def load_init_checkpoint(model: nn.Module, path: str, weights: str = "model") -> None:
    """Load ``path`` strictly except the classifier, which stays freshly initialised when its shape differs.

    Checkpoints go through the model family's timm ``checkpoint_filter_fn`` (original-format keys,
    position embeddings resized to the model's image size).
    """
    state = load_state_dict(path, weights)
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            state = filter_fn(state, model)
        except Exception:  # noqa: BLE001  (an unfiltered state is still checked key by key below)
            pass
    own = model.state_dict()
    head = model.pretrained_cfg.get("classifier") or "head"
    head_keys = [k for k in own if any(k.startswith(f"{h}.") for h in ([head] if isinstance(head, str) else head))]
    if any(k not in state or state[k].shape != own[k].shape for k in head_keys):
        state = {k: v for k, v in state.items() if k not in head_keys} | {k: own[k] for k in head_keys}
    load_into(model, state, f"model.init_checkpoint {path}")


# ----------------------------------------------------------------------------------------------------- data


def data_settings(config: Config, model: nn.Module) -> dict[str, Any]:
    """Normalisation, interpolation and crop fraction: the config's, else the model's timm data config."""
    resolved = resolve_data_config({}, model=model)
    d = config.data
    return {
        "input_size": (3, d.img_size, d.img_size),
        "mean": tuple(d.mean) if d.mean else resolved["mean"],
        "std": tuple(d.std) if d.std else resolved["std"],
        "interpolation": d.interpolation,
        "crop_pct": d.crop_pct if d.crop_pct is not None else resolved["crop_pct"],
    }


def build_transforms(config: Config, model: nn.Module) -> tuple[Any, Any]:
    """``(train, eval)`` transforms: RandomResizedCrop + flip + RandAugment + random erasing / resize + crop."""
    s, a = data_settings(config, model), config.augment
    train = create_transform(
        s["input_size"], is_training=True, scale=a.scale, hflip=a.hflip, color_jitter=a.color_jitter,
        auto_augment=a.auto_augment, interpolation=s["interpolation"], mean=s["mean"], std=s["std"],
        re_prob=a.random_erasing, re_mode="pixel", re_count=1,
    )
    val = create_transform(
        s["input_size"], is_training=False, interpolation=s["interpolation"], mean=s["mean"], std=s["std"],
        crop_pct=s["crop_pct"],
    )
    return train, val


def build_dataset(config: Config, split: str, transform: Any) -> torch.utils.data.Dataset:
    from ..data import build_dataset as data_build_dataset  # contract 1: moejet.data

    d = config.data
    return data_build_dataset(d.dataset, split, transform=transform, root=d.root, download=d.download)


def num_classes_of(dataset: Any, config: Config) -> int:
    n = getattr(dataset, "num_classes", None)
    if not isinstance(n, int) or n < 1:
        raise UserError(f"dataset {config.data.dataset!r} does not report its number of classes")
    return n


# ------------------------------------------------------------------------------------------ optimisation


def build_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    """timm optimizer; layer-wise lr decay; no weight decay on norms, biases, pos-embed, router parameters."""
    o = config.optim
    skip = set(getattr(model, "no_weight_decay", lambda: set())()) | set(EXTRA_NO_WEIGHT_DECAY)
    if o.layer_decay is not None:
        group_fn = lambda m: param_groups_layer_decay(m, o.weight_decay, no_weight_decay_list=skip,
                                                      layer_decay=o.layer_decay)
    else:
        group_fn = lambda m: param_groups_weight_decay(m, o.weight_decay, no_weight_decay_list=skip)
    kwargs: dict[str, Any] = {}
    if o.opt.lower().removeprefix("fused").endswith(("adam", "adamw", "lamb", "nadamw", "adamp")):
        kwargs.update(betas=tuple(o.betas), eps=o.eps)
    if o.opt.lower() in ("adam", "adamw") and FUSED_ADAM_ON_CPU:
        # one fused kernel per step instead of ~10 passes per tensor: the MoE models' hundreds of millions of
        # expert parameters make the optimizer step a large share of a training step
        kwargs["fused"] = True
    try:
        return create_optimizer_v2(model, opt=o.opt, lr=config.lr, weight_decay=o.weight_decay,
                                   param_group_fn=group_fn, **kwargs)
    except (AssertionError, ValueError) as err:
        raise UserError(f"config key optim.opt = {o.opt!r}: {err}") from None


def build_scheduler(config: Config, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> CosineLRScheduler:
    """Per-step schedule: linear warmup from ``warmup_lr_ratio * lr``, then cosine to ``min_lr_ratio * lr``."""
    s, lr = config.schedule, config.lr
    warmup = s.warmup_epochs * steps_per_epoch
    return CosineLRScheduler(
        optimizer,
        t_initial=(s.epochs - s.warmup_epochs) * steps_per_epoch,
        lr_min=lr * s.min_lr_ratio,
        warmup_t=warmup,
        warmup_lr_init=lr * s.warmup_lr_ratio,
        warmup_prefix=True,  # cosine runs over the epochs after warmup
        t_in_epochs=False,
    )


def build_mixup(config: Config, num_classes: int) -> Mixup | None:
    a = config.augment
    if not config.mixup_active:
        return None
    return Mixup(
        mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, prob=a.mixup_prob, switch_prob=a.mixup_switch_prob,
        mode="batch", label_smoothing=a.label_smoothing, num_classes=num_classes,
    )


def build_loss(config: Config) -> nn.Module:
    """Soft-target CE under mixup (it carries the label smoothing), else label-smoothing CE."""
    if config.mixup_active:
        return SoftTargetCrossEntropy()
    if config.augment.label_smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=config.augment.label_smoothing)
    return nn.CrossEntropyLoss()
