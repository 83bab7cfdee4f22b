"""Everything a run is made of, built from a :class:`~moejet.train.config.Config` with timm's components."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
from timm.data import Mixup, create_transform
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models import get_pretrained_cfg_value, group_parameters, model_entrypoint
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

from ..data.config import data_settings
from ..errors import UserError
from ..io.download import create_pretrained
from ..io.weights import KWARGS_KEY, MODEL_KEY, load_into, load_state_dict, read_metadata, timm_layout
from ..models import moe_modules
from ..models.common import BUILD_ERRORS
from ..recycle.pipeline import AUTO, AUTO_MODEL, resolve_successor
from .config import Config
from .recycling_step import recycle_into_run

STEM_PARAMS = ("cls_token", "reg_token", "dist_token", "pos_embed", "patch_embed")  # layer id 0 under layer decay
FUSED_ADAM_ON_CPU = torch.torch_version.TorchVersion(torch.__version__) >= (2, 4)  # CUDA had it earlier
# kwargs that describe a training run rather than an architecture: a checkpoint header's value is not a default
RUN_KWARGS = ("num_classes", "drop_path_rate", "pretrained", "pretrained_cfg_overlay")


# ---------------------------------------------------------------------------------------------------- model


def config_model(config: Config) -> tuple[str, dict[str, Any]]:
    """``model.name`` and ``model.kwargs``; ``model.name: auto`` resolved from the recycle section, as ``moejet
    recycle --successor auto`` resolves it (:func:`moejet.recycle.pipeline.resolve_successor`)."""
    m, r = config.model, config.recycle
    if m.name != AUTO:
        return m.name, dict(m.kwargs)
    return resolve_successor(AUTO, dict(m.kwargs), predecessor=r.predecessor,
                             predecessor_checkpoint=r.predecessor_checkpoint, predecessor_kwargs=r.predecessor_kwargs,
                             dense_checkpoint=r.dense_checkpoint, dense_model=r.dense_model,
                             dense_kwargs=r.dense_kwargs)


def model_kwargs(config: Config, num_classes: int) -> tuple[str, dict[str, Any]]:
    """``(timm name, kwargs)`` of the model: the init checkpoint's header, then ``model.kwargs``, then the run's."""
    m = config.model
    name, own_kwargs = config_model(config)
    kwargs: dict[str, Any] = {}
    if m.init == "checkpoint" and str(m.init_checkpoint).endswith(".safetensors"):
        header = read_metadata(m.init_checkpoint)
        if MODEL_KEY in header:
            saved = header[MODEL_KEY]
            if saved.split(".")[0] != name.split(".")[0]:
                raise UserError(
                    f"model.init_checkpoint {m.init_checkpoint} holds a {saved!r} but model.name is {m.name!r}: "
                    "set model.name to the checkpoint's model"
                )
            kwargs = {k: v for k, v in json.loads(header.get(KWARGS_KEY, "{}")).items() if k not in RUN_KWARGS}
    kwargs.update(own_kwargs)
    kwargs.update(num_classes=num_classes, drop_path_rate=m.drop_path_rate)
    img_size = m.kwargs.get("img_size")
    if img_size is not None and img_size not in (config.data.img_size, [config.data.img_size] * 2):
        raise UserError(f"config key model.kwargs.img_size = {img_size} differs from data.img_size = "
                        f"{config.data.img_size}: set them equal (or drop model.kwargs.img_size)")
    _check_model_name(name)
    architecture = kwargs.get("base", name) if name.split(".")[0] == AUTO_MODEL else name
    if "img_size" not in m.kwargs and get_pretrained_cfg_value(architecture, "fixed_input_size"):
        kwargs["img_size"] = config.data.img_size  # ViTs size their position embedding from it
    if "variant" not in m.kwargs and _is_moejet_model(name):
        kwargs["variant"] = config.variant
    return name, kwargs


def _is_moejet_model(name: str) -> bool:
    """moejet's models (V-JetMoE / Soft MoE ViTs, C-JetMoE and its dense d18 twin) take the config's ``variant``;
    timm's own models do not."""
    return model_entrypoint(name.split(".")[0]).__module__.startswith("moejet.models.")


def _check_model_name(name: str) -> None:
    import moejet.models  # noqa: F401  (registers our models with timm)

    if not timm.is_model(name):
        raise UserError(f"config key model.name = {name!r} is not a timm model: see `moejet models` or "
                        "timm.list_models()")


def create_model(name: str, kwargs: dict[str, Any], pretrained: bool) -> nn.Module:
    """``timm.create_model`` with config errors (unknown name, bad kwargs) as UserErrors."""
    _check_model_name(name)
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except BUILD_ERRORS as err:
        raise UserError(f"cannot build model {name!r} with kwargs {kwargs} ({type(err).__name__}: {err}): "
                        "fix model.kwargs") from None


def build_model(config: Config, num_classes: int,
                run_dir: str | Path | None = None) -> tuple[nn.Module, str, dict[str, Any]]:
    """The model, initialised as ``model.init`` says; returns ``(model, timm name, kwargs to rebuild it)``.

    ``model.init: recycle`` recycles into ``run_dir`` first (:mod:`moejet.train.recycling_step`).
    """
    name, kwargs = model_kwargs(config, num_classes)
    m = config.model
    if m.init == "pretrained":
        how = "--set model.init=checkpoint --set model.init_checkpoint=FILE"
        return create_pretrained(name, how, **kwargs), name, kwargs
    init_file = None
    if m.init == "recycle":
        if run_dir is None:
            raise UserError("model.init=recycle writes its initial weights into the run directory: pass run_dir")
        init_file = recycle_into_run(config, run_dir, name, kwargs)
    model = create_model(name, kwargs, pretrained=False)
    if m.init == "checkpoint":
        load_init_checkpoint(model, m.init_checkpoint, m.init_checkpoint_weights)
    elif init_file is not None:
        load_init_checkpoint(model, str(init_file))
    return model, name, kwargs


def set_grad_checkpointing(model: nn.Module, enabled: bool) -> None:
    """``train.grad_checkpointing``: timm's ``set_grad_checkpointing()``, every block (ViT) or stage's blocks
    (ConvNeXt) recomputed in the backward pass; ``torch.utils.checkpoint`` replays the RNG, so router noise,
    dropout and expert / path drop draw the same values again and the gradients are unchanged."""
    if not enabled:
        return
    try:
        model.set_grad_checkpointing(True)
    except (AttributeError, AssertionError, NotImplementedError) as err:
        raise UserError(f"config key train.grad_checkpointing: {type(model).__name__} does not support timm's "
                        f"gradient checkpointing ({type(err).__name__}: {err}): set it to false") from None


def load_init_checkpoint(model: nn.Module, path: str, weights: str = "model") -> None:
    """Load ``path`` strictly except the classifier, which stays freshly initialised when its shape differs.

    Checkpoints go through the model family's timm ``checkpoint_filter_fn`` (original-format keys,
    position embeddings resized to the model's image size).
    """
    state = load_state_dict(path, weights)
    state = timm_layout(state, model)
    own = model.state_dict()
    head = model.pretrained_cfg.get("classifier") or "head"
    head_keys = [k for k in own if any(k.startswith(f"{h}.") for h in ([head] if isinstance(head, str) else head))]
    if any(k not in state or state[k].shape != own[k].shape for k in head_keys):
        state = {k: v for k, v in state.items() if k not in head_keys} | {k: own[k] for k in head_keys}
    load_into(model, state, f"model.init_checkpoint {path}")


# ----------------------------------------------------------------------------------------------------- data


def build_transforms(config: Config, model: nn.Module, prefetch: bool = False) -> tuple[Any, Any]:
    """``(train, eval)`` transforms: RandomResizedCrop + flip + RandAugment + random erasing / resize + crop.

    ``prefetch``: the workers stop at uint8 images; normalisation and random erasing run on the device instead
    (:func:`device_loader`)."""
    s, a = data_settings(config.data, model), config.augment
    train = create_transform(
        s["input_size"], is_training=True, scale=a.scale, hflip=a.hflip, color_jitter=a.color_jitter,
        auto_augment=a.auto_augment, interpolation=s["interpolation"], mean=s["mean"], std=s["std"],
        re_prob=a.random_erasing, re_mode="pixel", re_count=1, use_prefetcher=prefetch,
    )
    val = create_transform(
        s["input_size"], is_training=False, interpolation=s["interpolation"], mean=s["mean"], std=s["std"],
        crop_pct=s["crop_pct"], use_prefetcher=prefetch,
    )
    return train, val


def uses_prefetcher(device: torch.device) -> bool:
    """Whether a run on ``device`` ships uint8 images from its workers (CUDA: a quarter of the bytes to copy, and the
    normalisation on the GPU); on the CPU the workers normalise, as they always did."""
    return device.type == "cuda"


def device_loader(loader: Any, config: Config, model: nn.Module, device: torch.device, training: bool) -> Any:
    """timm's ``PrefetchLoader`` around a loader of uint8 images: each batch is copied without blocking on a side
    stream while the previous one computes, then normalised (and, in training, randomly erased) on ``device``."""
    from timm.data.loader import PrefetchLoader

    s, a = data_settings(config.data, model), config.augment
    return PrefetchLoader(loader, mean=s["mean"], std=s["std"], device=device,
                          re_prob=a.random_erasing if training else 0.0, re_mode="pixel", re_count=1)


def build_dataset(config: Config, split: str, transform: Any) -> torch.utils.data.Dataset:
    from ..data import build_dataset as data_build_dataset  # contract 1: moejet.data

    data = config.data
    return data_build_dataset(data.dataset, split, transform=transform, root=data.root, download=data.download)


def num_classes_of(dataset: Any, config: Config) -> int:
    n = getattr(dataset, "num_classes", None)
    if not isinstance(n, int) or n < 1:
        raise UserError(f"dataset {config.data.dataset!r} does not report its number of classes")
    return n


# ------------------------------------------------------------------------------------------ optimisation


def layer_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """``({param name: layer id}, top id)`` for layer-wise lr decay (lr scale ``decay ** (top - id)``).

    ViTs follow the release's ``get_layer_depth`` (moejet/models/layer_decay_optim_wrapper_constructor.py):
    cls token, position embedding and patch embedding 0, ``blocks.i`` i + 1, everything else (final norm,
    fc_norm, head) top = depth + 1. timm's ``param_groups_layer_decay`` differs only in putting the final norm
    with the last block. Other models (ConvNeXt) use timm's ``group_matcher``; unmatched parameters (the head) top.
    """
    names = [n for n, _ in model.named_parameters()]
    if isinstance(getattr(model, "blocks", None), nn.Sequential) and hasattr(model, "patch_embed"):
        top = len(model.blocks) + 1
        return {n: _vit_layer_id(n, top) for n in names}, top
    if not hasattr(model, "group_matcher"):
        return {n: 0 for n in names}, 0
    ids = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    top = max(ids.values()) + 1 if any(n not in ids for n in names) else max(ids.values())
    return {n: ids.get(n, top) for n in names}, top


def _vit_layer_id(name: str, top: int) -> int:
    if name.split(".")[0] in STEM_PARAMS:
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return top


def moe_param_names(model: nn.Module) -> set[str]:
    """Every parameter of the MoE layers (experts, router queries, temperatures, query norm) and the norm in
    front of each (the MoE block's ``norm2``; ``norm`` in a ConvNeXt block)."""
    names = set()
    params = dict(model.named_parameters())
    for prefix in moe_modules(model):
        block = prefix.rsplit(".", 1)[0]
        norm = f"{block}.norm2" if any(n.startswith(f"{block}.norm2.") for n in params) else f"{block}.norm"
        names |= {n for n in params if n.startswith((f"{prefix}.", f"{norm}."))}
    return names


def no_weight_decay(name: str, param: torch.Tensor, skip: set[str]) -> bool:
    """Norm weights, biases (2-D expert biases included), scalars and the model's ``no_weight_decay()`` names."""
    return param.ndim <= 1 or name.endswith((".bias", "_bias")) or name in skip


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None,
                 moe_lr_scale: str = "top") -> list[dict[str, Any]]:
    """Optimizer param groups with ``weight_decay`` and ``lr_scale`` (timm's schedulers multiply the lr by it).

    ``moe_lr_scale``: ``"top"`` puts every MoE parameter (:func:`moe_param_names`) in the top layer (lr scale 1)
    as the release's ``get_layer_depth`` does for its ``experts`` / ``phi`` (queries) / ``scale`` (temperature)
    names; ``"depth"`` scales them with their block.
    """
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    ids, top = layer_ids(model) if layer_decay is not None else ({}, 0)
    moe = moe_param_names(model) if layer_decay is not None and moe_lr_scale == "top" else set()
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = top if name in moe else ids.get(name, top)
        decay = not no_weight_decay(name, param, skip)
        group = groups.setdefault((layer, decay), {
            "params": [], "weight_decay": weight_decay if decay else 0.0,
            **({"lr_scale": layer_decay ** (top - layer)} if layer_decay is not None else {}),
        })
        group["params"].append(param)
    return list(groups.values())


def build_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    """timm optimizer over :func:`param_groups`: layer-wise lr decay, no weight decay on norms, biases, pos-embed,
    cls token, router queries and temperatures."""
    o = config.optim
    groups = param_groups(model, o.weight_decay, o.layer_decay, o.moe_lr_scale)
    kwargs: dict[str, Any] = {}
    if o.opt.lower().removeprefix("fused").endswith(("adam", "adamw", "lamb", "nadamw", "adamp")):
        kwargs.update(betas=tuple(o.betas), eps=o.eps)
    if o.opt.lower() in ("adam", "adamw") and FUSED_ADAM_ON_CPU:
        # one fused kernel per step instead of ~10 passes per tensor: the MoE models' hundreds of millions of
        # expert parameters make the optimizer step a large share of a training step
        kwargs["fused"] = True
    try:
        return create_optimizer_v2(groups, opt=o.opt, lr=config.lr, weight_decay=o.weight_decay, **kwargs)
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
