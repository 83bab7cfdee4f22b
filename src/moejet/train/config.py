"""The training config: nested dataclasses, read from YAML, overridden with ``--set key.sub=value``.

Every field is checked against its type and its allowed values; an unknown key, a wrong type or an
impossible value is a :class:`~moejet.errors.UserError` that names the key. Defaults are the paper's
recipe (SPEC §4, paper App. B Tables 6-7) for a 512-image global batch.

Learning rate: ``optim.lr`` when given, else ``optim.base_lr * train.batch_size / optim.base_batch_size``
(the paper's 4e-3 at batch 4096, scaled linearly: 5e-4 at 512).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from ..errors import UserError
from ..variants import VARIANTS

AMP_MODES = ("auto", "none", "bf16", "fp16")
INIT_MODES = ("scratch", "checkpoint", "pretrained", "recycle")
MOE_LR_SCALES = ("top", "depth")
DEVICES = ("auto", "cpu", "cuda")
STRATEGIES = ("ddp", "fsdp")


@dataclass
class ModelConfig:
    name: str = "vjetmoe_tiny_patch16_224"  # any timm name; moejet's models are registered on import
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model kwargs (num_classes: from data)
    # scratch | checkpoint (init_checkpoint) | pretrained (timm pretrained=True) | recycle (the recycle: section,
    # run once into RUN/recycle/, as moejet recycle --out RUN/recycle)
    init: str = "scratch"
    # moejet safetensors (recycled or trained; its header's kwargs are the defaults) or a dense timm
    # checkpoint (.safetensors/.pth/.bin); the classifier is re-initialised when the class count differs
    init_checkpoint: str | None = None
    init_checkpoint_weights: str = "model"  # model | ema: which weights of a training checkpoint (timm train.py)
    drop_path_rate: float = 0.1


@dataclass
class DataConfig:
    dataset: str = "synthetic"  # a moejet.data spec: cifar100, folder:PATH, synthetic-downstream:size=32, ...
    root: str | None = None  # where torchvision datasets / ImageNet live
    download: bool = False  # let torchvision download the dataset into root (online machines)
    img_size: int = 224
    mean: tuple[float, ...] | None = None  # default: the model's timm data config
    std: tuple[float, ...] | None = None
    interpolation: str = "bicubic"
    crop_pct: float | None = None  # eval centre-crop fraction; default: the model's
    num_workers: int = 4  # per process
    pin_memory: bool = True


@dataclass
class AugmentConfig:
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"  # RandAugment (9, 0.5); null = off
    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range
    hflip: float = 0.5
    color_jitter: float = 0.4  # only used when auto_augment is off
    random_erasing: float = 0.25
    mixup: float = 0.8  # Beta(alpha, alpha); 0 = off
    cutmix: float = 1.0  # 0 = off
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    label_smoothing: float = 0.1


@dataclass
class OptimConfig:
    opt: str = "adamw"  # any timm.optim optimizer name
    lr: float | None = None  # absolute lr; null = base_lr scaled by batch_size / base_batch_size
    base_lr: float = 4e-3
    base_batch_size: int = 4096
    weight_decay: float = 0.05  # not on norms, biases, position embeddings, router queries / temperatures
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    layer_decay: float | None = 0.6  # layer-wise lr decay; null = off
    # under layer decay: "top" puts every MoE parameter (experts, router queries, temperatures, the MoE
    # block's norm) in the top group, lr scale 1.0 (released optimiser); "depth" scales them by their block
    moe_lr_scale: str = "top"
    clip_grad: float | None = 5.0  # max global grad norm; null = off


@dataclass
class ScheduleConfig:
    epochs: int = 300
    warmup_epochs: int = 50  # linear warmup, then cosine to min_lr_ratio * lr (updated every step)
    warmup_lr_ratio: float = 1e-3  # warmup starts at this fraction of lr
    min_lr_ratio: float = 0.01


@dataclass
class TrainConfig:
    batch_size: int = 512  # global batch per optimizer step, whatever the number of processes
    micro_batch_size: int | None = None  # per process and forward pass; null = batch_size / processes
    eval_batch_size: int | None = None  # per process; null = micro batch
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | none | bf16 | fp16 (CUDA only, with grad scaler)
    channels_last: bool = False
    compile: bool = False  # torch.compile the model
    # timm's set_grad_checkpointing(): every block's activations are recomputed in the backward pass instead of
    # kept (one extra forward pass per step, far less activation memory; same gradients)
    grad_checkpointing: bool = False
    ema: bool = False
    ema_decay: float = 0.9998
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms: bit-exact resume, slower on GPU
    device: str = "auto"  # auto | cpu | cuda
    eval_every: int = 1  # epochs between evaluations (the last epoch is always evaluated)
    tensorboard: bool = False  # also log to RUN/tb (needs the tensorboard package)
    # optimizer steps between progress lines (loss, lr, img/s, data wait, peak memory); 0 = off. 50 as the
    # release's LoggerHook(interval=50) (moejet/configs/_base_/default_runtime.py) and timm's --log-interval
    log_every: int = 50
    wandb: bool = False  # also log to Weights & Biases (needs the wandb package; one W&B run per run directory)
    wandb_project: str = "moejet"
    # routing telemetry (metrics.jsonl key 'routing', moejet.train.telemetry) at every evaluation, measured on
    # the first telemetry_images validation images in eval mode (~that many images' forward pass); 0 = off
    telemetry_images: int = 256
    recovery_every: int = 0  # optimizer steps between mid-epoch recovery checkpoints; 0 = epoch ends only
    strategy: str = "ddp"  # ddp (a full replica per process) | fsdp (FSDP2: weights, grads, optimizer state sharded)


@dataclass
class RecycleConfig:
    """``model.init: recycle``: ``moejet recycle``'s recipe (each key is the flag of the same name) with model.name
    as the successor and its kwargs (the dataset's classes included). Files are read once, when the run starts."""

    predecessor: str | None = None  # timm name, e.g. vit_small_patch16_224.augreg_in21k (optional with a moejet file)
    predecessor_checkpoint: str | None = None  # its weights file (.safetensors, .pth/.bin, .npz) ...
    pretrained: bool = False  # ... or timm's hosted weights (needs the network)
    predecessor_kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm kwargs of the predecessor
    dense_checkpoint: str | None = None  # same-width dense model for everything outside the MoE MLPs
    strategy: str = "importance"  # importance | graph | uniform | random | upcycle
    calib_data: str = "synthetic"  # calibration dataset spec (train split), e.g. imagenet
    calib_images: int = 1024  # 0: none (uniform / random / upcycle)
    calib_img_size: int | None = None  # default: the predecessor's data config
    calib_root: str | None = None  # where the calibration dataset lives (--data-root)
    batch_size: int = 64
    workers: int = 2
    seed: int = 0
    variant: str | None = None  # paper | release for every recycle switch; null = the config's variant
    # the recycle switches (moejet.variants.RECYCLE_SWITCHES); null = the variant's value
    importance_metric: str | None = None
    expert_channels: str | None = None
    uniform_rule: str | None = None
    query_norm: str | None = None
    univ_mode: str | None = None
    final_norm: str | None = None
    graph_parts: int = 32
    coact_percentile: float = 90.0


@dataclass
class DebugConfig:
    """Test hooks: leave at their defaults for real runs."""

    nan_at_step: int | None = None  # replace the loss by NaN at this optimizer step (1-based)
    max_steps_per_epoch: int | None = None  # cut every epoch short (smoke tests)


@dataclass
class Config:
    name: str = "run"
    description: str = ""
    variant: str = "paper"  # paper | release: every paper-vs-release switch at once (moejet.variants)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    recycle: RecycleConfig = field(default_factory=RecycleConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)

    @property
    def lr(self) -> float:
        """The peak learning rate actually used."""
        if self.optim.lr is not None:
            return self.optim.lr
        return self.optim.base_lr * self.train.batch_size / self.optim.base_batch_size

    @property
    def mixup_active(self) -> bool:
        return self.augment.mixup > 0 or self.augment.cutmix > 0


# ---------------------------------------------------------------------------------------------- reading


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None), apply ``key.sub=value`` overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file {path} does not exist: check the path (the configs live in configs/)")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            reason = str(err).splitlines()[0]
            raise UserError(f"config file {path} is not valid YAML ({reason}): fix its syntax") from None
        if not isinstance(raw, dict):
            raise UserError(f"config file {path} must hold a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        apply_override(raw, item)
    return config_from_dict(raw)


def config_from_dict(raw: dict[str, Any]) -> Config:
    config = _build(Config, raw, "")
    validate(config)
    return config


def apply_override(raw: dict[str, Any], item: str) -> None:
    """``"optim.lr=1e-3"`` -> ``raw["optim"]["lr"] = 1e-3`` (the value is parsed as YAML)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"override {item!r} is not of the form section.key=value (e.g. --set optim.lr=1e-3)")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    *parents, leaf = key.split(".")
    node = raw
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"override {item!r}: {'.'.join(parents[: i + 1])} is not a section")
        node = child
    node[leaf] = value


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _number_from_text(value: Any) -> Any:
    """YAML 1.1 reads ``4e-3`` as a string; read such strings as numbers."""
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        number = float(value)
        return int(number) if number.is_integer() and re.match(r"^[+-]?\d+$", value.strip()) else number
    return value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "the config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{where} must be a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise UserError(
            f"unknown config key {prefix}{unknown[0]}: valid keys of {where} are {', '.join(sorted(names))}"
        )
    values = {}
    for name, value in raw.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            values[name] = _check_type(value, hint, f"{prefix}{name}")
    return cls(**values)


def _check_type(value: Any, hint: Any, key: str) -> Any:
    """``value`` converted to ``hint`` (int -> float, list -> tuple) or a UserError naming ``key``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _check_type(value, option, key)
            except UserError as err:
                errors.append(err)
        raise errors[0]
    if hint is Any:
        return _plain(value, key)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise UserError(f"config key {key} must be a mapping with string keys, got {value!r}")
        return {k: _plain(v, f"{key}.{k}") for k, v in value.items()}
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key {key} must be a list, got {value!r}")
        variable = origin is list or args[-1] is Ellipsis
        if not variable and len(value) != len(args):
            raise UserError(f"config key {key} must be a list of {len(args)} values, got {value!r}")
        item_types = [args[0]] * len(value) if variable else list(args)
        return origin(_check_type(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, item_types)))
    value = _number_from_text(value) if hint in (int, float) else value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ok = isinstance(value, bool) if hint is bool else isinstance(value, hint) and not isinstance(value, bool)
    if ok:
        return value
    raise UserError(f"config key {key} must be {_type_name(hint)}, got {value!r}")


def _plain(value: Any, key: str) -> Any:
    """Free-form values (model kwargs): YAML scalars, lists and mappings; numbers from text."""
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, key) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return _number_from_text(value)
    raise UserError(f"config key {key} must be a YAML scalar, list or mapping, got {value!r}")


def _type_name(hint: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


# ------------------------------------------------------------------------------------------- validation


def validate(config: Config) -> None:
    """Impossible values, each reported with its key."""
    m, d, a, o, s, t, g = (config.model, config.data, config.augment, config.optim, config.schedule, config.train,
                           config.debug)

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            value = _get(config, key)
            raise UserError(f"config key {key} = {value!r} is invalid: {what}")

    need(config.variant in VARIANTS, "variant", f"use one of {', '.join(VARIANTS)}")
    need(o.moe_lr_scale in MOE_LR_SCALES, "optim.moe_lr_scale", f"use one of {', '.join(MOE_LR_SCALES)}")
    need(m.init in INIT_MODES, "model.init", f"use one of {', '.join(INIT_MODES)}")
    need(m.init != "checkpoint" or bool(m.init_checkpoint), "model.init_checkpoint",
         "model.init is 'checkpoint': give the checkpoint file")
    need(m.init_checkpoint_weights in ("model", "ema"), "model.init_checkpoint_weights", "use model or ema")
    need(m.init == "checkpoint" or m.init_checkpoint is None, "model.init_checkpoint",
         "set model.init=checkpoint to start from a checkpoint file (or drop init_checkpoint)")
    if m.init == "recycle":
        _validate_recycle(config)
    else:
        need(config.recycle == RecycleConfig(), "model.init",
             "the recycle section is read only with model.init=recycle: set it (or drop the recycle section)")
    need("num_classes" not in m.kwargs, "model.kwargs", "num_classes comes from the dataset: remove it")
    need("drop_path_rate" not in m.kwargs, "model.kwargs", "set model.drop_path_rate instead of a kwarg")
    need(0.0 <= m.drop_path_rate < 1.0, "model.drop_path_rate", "must be in [0, 1)")
    need(bool(d.dataset.strip()), "data.dataset", "name a dataset (e.g. cifar100 or synthetic)")
    need(d.img_size >= 8, "data.img_size", "must be at least 8 pixels")
    for key, vec in (("data.mean", d.mean), ("data.std", d.std)):
        need(vec is None or len(vec) == 3, key, "give 3 values (RGB)")
    need(d.std is None or all(v > 0 for v in d.std), "data.std", "must be positive")
    need(d.crop_pct is None or 0.0 < d.crop_pct <= 1.0, "data.crop_pct", "must be in (0, 1]")
    need(d.num_workers >= 0, "data.num_workers", "must be >= 0")
    need(0.0 < a.scale[0] <= a.scale[1] <= 1.0, "augment.scale", "must be 0 < min <= max <= 1")
    for key in ("hflip", "random_erasing", "mixup_prob", "mixup_switch_prob"):
        need(0.0 <= getattr(a, key) <= 1.0, f"augment.{key}", "must be a probability in [0, 1]")
    for key in ("mixup", "cutmix", "color_jitter"):
        need(getattr(a, key) >= 0.0, f"augment.{key}", "must be >= 0")
    need(0.0 <= a.label_smoothing < 1.0, "augment.label_smoothing", "must be in [0, 1)")
    need(o.lr is None or o.lr > 0, "optim.lr", "must be > 0 (or null to scale base_lr)")
    need(o.base_lr > 0, "optim.base_lr", "must be > 0")
    need(o.base_batch_size > 0, "optim.base_batch_size", "must be > 0")
    need(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    need(all(0.0 <= b < 1.0 for b in o.betas), "optim.betas", "must be in [0, 1)")
    need(o.eps > 0, "optim.eps", "must be > 0")
    need(o.layer_decay is None or 0.0 < o.layer_decay <= 1.0, "optim.layer_decay", "must be in (0, 1] or null")
    need(o.clip_grad is None or o.clip_grad > 0, "optim.clip_grad", "must be > 0 or null")
    need(s.epochs >= 1, "schedule.epochs", "must be >= 1")
    need(0 <= s.warmup_epochs < s.epochs, "schedule.warmup_epochs", f"must be in [0, schedule.epochs={s.epochs})")
    need(0.0 <= s.warmup_lr_ratio <= 1.0, "schedule.warmup_lr_ratio", "must be in [0, 1]")
    need(0.0 <= s.min_lr_ratio <= 1.0, "schedule.min_lr_ratio", "must be in [0, 1]")
    need(t.batch_size >= 1, "train.batch_size", "must be >= 1")
    need(t.micro_batch_size is None or t.micro_batch_size >= 1, "train.micro_batch_size", "must be >= 1 or null")
    need(t.micro_batch_size is None or t.batch_size % t.micro_batch_size == 0, "train.micro_batch_size",
         f"must divide train.batch_size={t.batch_size}")
    need(t.eval_batch_size is None or t.eval_batch_size >= 1, "train.eval_batch_size", "must be >= 1 or null")
    need(t.amp in AMP_MODES, "train.amp", f"use one of {', '.join(AMP_MODES)}")
    need(t.device in DEVICES, "train.device", f"use one of {', '.join(DEVICES)}")
    need(0.0 < t.ema_decay < 1.0, "train.ema_decay", "must be in (0, 1)")
    need(t.eval_every >= 1, "train.eval_every", "must be >= 1")
    need(t.strategy in STRATEGIES, "train.strategy", f"use one of {', '.join(STRATEGIES)}")
    fsdp = t.strategy == "fsdp"
    need(not (fsdp and t.ema), "train.strategy", "fsdp does not keep an EMA of sharded weights: set train.ema=false "
         "or use train.strategy=ddp")
    need(not (fsdp and t.amp == "fp16"), "train.strategy", "fsdp has no sharded fp16 grad scaler here: use "
         "train.amp=bf16 (or none), or train.strategy=ddp")
    need(t.log_every >= 0, "train.log_every", "must be >= 0 (0 = no per-step lines)")
    need(t.recovery_every >= 0, "train.recovery_every", "must be >= 0 (0 = no mid-epoch recovery checkpoints)")
    need(g.nan_at_step is None or g.nan_at_step >= 1, "debug.nan_at_step", "must be >= 1 or null")
    need(g.max_steps_per_epoch is None or g.max_steps_per_epoch >= 1, "debug.max_steps_per_epoch",
         "must be >= 1 or null")
    need(math.isfinite(config.lr), "optim.lr", "must be finite")


def _validate_recycle(config: Config) -> None:
    from ..recycle.api import CHOICES
    from ..recycle.select import STRATEGIES

    r = config.recycle

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise UserError(f"config key recycle.{key} = {getattr(r, key)!r} is invalid: {what}")

    need(bool(r.predecessor) or bool(r.predecessor_checkpoint), "predecessor",
         "model.init is 'recycle': name the dense predecessor (a timm name) or give recycle.predecessor_checkpoint")
    need(bool(r.predecessor_checkpoint) != r.pretrained, "pretrained",
         "the predecessor needs weights from exactly one source: recycle.predecessor_checkpoint FILE or "
         "recycle.pretrained true")
    need(r.strategy in STRATEGIES, "strategy", f"use one of {', '.join(STRATEGIES)}")
    need(r.calib_images >= 0, "calib_images", "must be >= 0 (0: no calibration)")
    need(r.calib_images > 0 or r.strategy not in ("importance", "graph"), "calib_images",
         f"strategy {r.strategy} needs calibration images: set recycle.calib_images > 0")
    need(r.calib_img_size is None or r.calib_img_size >= 8, "calib_img_size", "must be at least 8 pixels or null")
    need(bool(r.calib_data.strip()), "calib_data", "name a dataset (e.g. imagenet or synthetic)")
    need(r.batch_size >= 1, "batch_size", "must be >= 1")
    need(r.workers >= 0, "workers", "must be >= 0")
    need(r.variant is None or r.variant in VARIANTS, "variant", f"use one of {', '.join(VARIANTS)} or null")
    need(r.graph_parts >= 1, "graph_parts", "must be >= 1")
    need(0.0 < r.coact_percentile < 100.0, "coact_percentile", "must be in (0, 100)")
    for name, value in recycle_switches(config).items():
        need(value is None or value in CHOICES[name], name, f"use one of {', '.join(CHOICES[name])} or null")


def recycle_switches(config: Config) -> dict[str, str | None]:
    """The recycle section's switches (None: the variant's value)."""
    from ..variants import RECYCLE_SWITCHES

    return {s.name: getattr(config.recycle, s.name) for s in RECYCLE_SWITCHES}


def _get(config: Config, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


def batch_plan(config: Config, world_size: int) -> tuple[int, int]:
    """``(micro batch per process, accumulation steps)`` so that micro x world x accum = train.batch_size."""
    batch, micro = config.train.batch_size, config.train.micro_batch_size
    if micro is None:
        if batch % world_size:
            raise UserError(
                f"config key train.batch_size = {batch} is not divisible by the {world_size} processes: "
                "choose a multiple of the process count"
            )
        micro = batch // world_size
    if batch % (micro * world_size):
        raise UserError(
            f"config key train.batch_size = {batch} is not divisible by train.micro_batch_size ({micro}) x "
            f"{world_size} processes: choose micro_batch_size so that micro x processes divides batch_size"
        )
    if config.mixup_active and micro % 2:
        raise UserError(
            f"config key train.micro_batch_size = {micro} is odd: timm's mixup / cutmix needs an even batch per "
            "process; choose an even micro batch (or turn mixup and cutmix off)"
        )
    return micro, batch // (micro * world_size)


# ------------------------------------------------------------------------------------------------ writing


def config_to_dict(config: Config, resolve_lr: bool = True) -> dict[str, Any]:
    """Plain dict (lists instead of tuples), by default with the resolved learning rate written in."""
    out = _plain_dict(dataclasses.asdict(config))
    if config.model.init != "recycle":
        del out["recycle"]  # read only by model.init: recycle
    if resolve_lr:
        out["optim"]["lr"] = config.lr
    return out


def _plain_dict(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain_dict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_dict(v) for v in value]
    return value


class _Dumper(yaml.SafeDumper):
    """Block-style sections, flow-style lists (``scale: [0.08, 1.0]``)."""


_Dumper.add_representer(list, lambda dumper, data: dumper.represent_sequence(
    "tag:yaml.org,2002:seq", data, flow_style=True))


def dump_config(config: Config, resolve_lr: bool = True) -> str:
    """The config as YAML (what ``load_config`` reads back)."""
    return yaml.dump(config_to_dict(config, resolve_lr), Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     width=120)
