"""The training config: nested dataclasses, read from YAML, overridden with ``--set key.sub=value``.

Every field is checked against its type and its allowed values; an unknown key, a wrong type or an
impossible value is a :class:`~moejet.errors.UserError` that names the key. Defaults are the paper's
recipe (paper App. B, Tables 6-7; docs/training.md) for a 512-image global batch.

Learning rate: ``optim.lr`` when given, else ``optim.base_lr * train.batch_size / optim.base_batch_size``
(the paper's 4e-3 at batch 4096, scaled linearly: 5e-4 at 512).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from ..data.config import DataConfig
from ..errors import UserError
from ..io.files import plain_json
from ..model_args import check_model_kwargs
from ..options import OptionError, RecycleContext, RecycleOptions
from ..variants import VARIANTS

AMP_MODES = ("auto", "none", "bf16", "fp16")
INIT_MODES = ("scratch", "checkpoint", "pretrained", "recycle")
MOE_LR_SCALES = ("top", "depth")
DEVICES = ("auto", "cpu", "cuda")
DISTRIBUTED_STRATEGIES = ("ddp", "fsdp")
DDP_COMMS = ("fp32", "bf16")


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
    micro_batch_size: int | None = None  # at most this many images per process and forward pass; null = the share
    eval_batch_size: int | None = None  # per process; null = micro batch
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | none | bf16 | fp16 (CUDA only, with grad scaler)
    channels_last: bool | None = None  # null: on for ConvNeXt models on CUDA (faster convolutions), else off
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
    max_steps_per_epoch: int | None = None  # cut every epoch short (smoke runs); null = every image every epoch
    strategy: str = "ddp"  # ddp (a full replica per process) | fsdp (FSDP2: weights, grads, optimizer state sharded)
    ddp_comm: str = "fp32"  # fp32 | bf16: DDP's gradient all-reduce in bf16 (half the bytes; torch's compression hook)
    fsdp_reshard_after_forward: bool = True  # fsdp: free each unit's gathered weights after its forward (less memory)
    save_every: int = 1  # epochs between checkpoints (the last epoch, and where --stop-after stops, always save)
    # write rank 0's checkpoints in a thread while training goes on, from host copies (one more copy of the weights
    # and optimizer state in host memory while it writes)
    background_save: bool = False
    dist_timeout_min: float = 60.0  # how long processes wait for each other (rank 0 recycling, downloads)


@dataclass(frozen=True)
class RecycleConfig(RecycleOptions):
    """``model.init: recycle``: ``moejet recycle``'s recipe (each key is the flag of the same name) with model.name
    as the successor and its kwargs (the dataset's classes included). Files are read once, when the run starts.
    The recycling options are :class:`~moejet.options.RecycleOptions`'s fields; the keys below name the sources."""

    variant: str | None = None  # paper | release for every recycle switch; null = the config's variant
    predecessor: str | None = None  # timm name, e.g. vit_small_patch16_224.augreg_in21k (optional with a moejet file)
    predecessor_checkpoint: str | None = None  # its weights file (.safetensors, .pth/.bin, .npz) ...
    pretrained: bool = False  # ... or timm's hosted weights (needs the network)
    predecessor_kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm kwargs of the predecessor
    dense_checkpoint: str | None = None  # same-width dense model for everything outside the MoE MLPs
    dense_model: str | None = None  # model.name auto: the dense checkpoint's timm name (a moejet file names itself)
    dense_kwargs: dict[str, Any] = field(default_factory=dict)  # model.name auto: its extra timm kwargs
    calib_data: str = "synthetic"  # calibration dataset spec (train split), e.g. imagenet
    calib_images: int = 1024  # 0: none (uniform / random / upcycle)
    calib_img_size: int | None = None  # default: the predecessor's data config
    calib_root: str | None = None  # where the calibration dataset lives (--data-root)
    batch_size: int = 64
    workers: int = 2

    def options(self, variant: str) -> RecycleOptions:
        """The recycling options alone, with ``variant`` (the config's) where :attr:`variant` is null."""
        return RecycleOptions(**{f.name: getattr(self, f.name) for f in dataclasses.fields(RecycleOptions)
                                 if f.name != "variant"}, variant=self.variant or variant)


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
    """Read a YAML config (a file, or a packaged config by name: :func:`moejet.configs.resolve_config`; the defaults
    when ``path`` is None), apply ``key.sub=value`` overrides, validate.

    A config whose ``data.dataset`` an override changes is another experiment: unless ``name`` is overridden too,
    it is named after the data and its description says whose recipe it runs (:func:`renamed_for_data`)."""
    from ..configs import resolve_config

    raw: dict[str, Any] = {}
    if path is not None:
        path = resolve_config(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            reason = str(err).splitlines()[0]
            raise UserError(f"config file {path} is not valid YAML ({reason}): fix its syntax") from None
        if not isinstance(raw, dict):
            raise UserError(f"config file {path} must hold a mapping of sections, got {type(raw).__name__}")
    dataset, name, description = _dataset_of(raw), raw.get("name"), raw.get("description")
    for item in overrides:
        apply_override(raw, item)
    new_dataset = _dataset_of(raw)
    if path is not None and isinstance(dataset, str) and isinstance(new_dataset, str) and new_dataset != dataset:
        with contextlib.suppress(UserError):  # a bad spec: validation names its key below
            new_name, new_description = renamed_for_data(name or path.stem, dataset, new_dataset)
            raw["name"] = new_name if raw.get("name") == name else raw["name"]
            raw["description"] = new_description if raw.get("description") == description else raw["description"]
    return config_from_dict(raw)


def _dataset_of(raw: dict[str, Any]) -> Any:
    return raw["data"].get("dataset") if isinstance(raw.get("data"), dict) else None


def renamed_for_data(name: str, dataset: str, new_dataset: str) -> tuple[str, str]:
    """``(name, description)`` of config ``name`` (written for ``dataset``) run on ``new_dataset``: named after the
    data, and said not to be the config's own setting (a paper config's result is for its own dataset)."""
    from ..data.datasets import dataset_label

    label = dataset_label(new_dataset)
    short = re.sub(r"[^A-Za-z0-9_.-]+", "-", label.split(":", 1)[-1] if label.startswith("folder:") else
                   label.split(":", 1)[0]).strip("-.") or "data"
    return (f"{short}_{name}", f"{name}'s recipe on {label}: not a paper setting (the config was written for "
                               f"{dataset}; a published result of it is for that data only)")


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
    if ok and hint is float and not math.isfinite(value):
        raise UserError(f"config key {key} must be a finite number, got {value!r}")
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
    need = _checker(config)
    need(config.variant in VARIANTS, "variant", f"use one of {', '.join(VARIANTS)}")
    _validate_model(config, need)
    _validate_data(config.data, need)
    _validate_augment(config.augment, need)
    _validate_optim(config.optim, need)
    _validate_schedule(config.schedule, need)
    _validate_train(config.train, config.mixup_active, need)
    need(math.isfinite(config.lr), "optim.lr", "must be finite")


Need = typing.Callable[[bool, str, str], None]


def _checker(config: Config) -> Need:
    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise UserError(f"config key {key} = {_get(config, key)!r} is invalid: {what}")

    return need


def _validate_model(config: Config, need: Need) -> None:
    model = config.model
    need(model.init in INIT_MODES, "model.init", f"use one of {', '.join(INIT_MODES)}")
    need(model.init != "checkpoint" or bool(model.init_checkpoint), "model.init_checkpoint",
         "model.init is 'checkpoint': give the checkpoint file")
    need(model.init_checkpoint_weights in ("model", "ema"), "model.init_checkpoint_weights", "use model or ema")
    need(model.init == "checkpoint" or model.init_checkpoint is None, "model.init_checkpoint",
         "set model.init=checkpoint to start from a checkpoint file (or drop init_checkpoint)")
    if model.init == "recycle":
        _validate_recycle(config, need)
    else:
        need(config.recycle == RecycleConfig(), "model.init",
             "the recycle section is read only with model.init=recycle: set it (or drop the recycle section)")
    need(model.name != "auto" or model.init == "recycle", "model.name",
         "auto derives the successor from the recycle section (as moejet recycle --successor auto): set "
         "model.init=recycle, or name a model")
    need(model.name == "auto" or _is_model(model.name), "model.name",
         "not a timm model: see `moejet models` or timm.list_models()")
    check_model_kwargs(model.kwargs, "config key model.kwargs.")
    need("num_classes" not in model.kwargs, "model.kwargs", "num_classes comes from the dataset: remove it")
    need("drop_path_rate" not in model.kwargs, "model.kwargs", "set model.drop_path_rate instead of a kwarg")
    need(0.0 <= model.drop_path_rate < 1.0, "model.drop_path_rate", "must be in [0, 1)")


def _validate_data(data: DataConfig, need: Need) -> None:
    need(bool(data.dataset.strip()), "data.dataset", "name a dataset (e.g. cifar100 or synthetic)")
    _check_dataset_spec(data.dataset, "data.dataset")
    need(data.interpolation in INTERPOLATIONS, "data.interpolation", f"use one of {', '.join(INTERPOLATIONS)}")
    need(data.img_size >= 8, "data.img_size", "must be at least 8 pixels")
    for key, vec in (("data.mean", data.mean), ("data.std", data.std)):
        need(vec is None or len(vec) == 3, key, "give 3 values (RGB)")
    need(data.mean is None or all(0.0 <= v <= 1.0 for v in data.mean), "data.mean", "must be in [0, 1] (pixel scale)")
    need(data.std is None or all(v > 0 for v in data.std), "data.std", "must be positive")
    need(data.crop_pct is None or 0.0 < data.crop_pct <= 1.0, "data.crop_pct", "must be in (0, 1]")
    need(data.num_workers is None or data.num_workers >= 0, "data.num_workers", "must be >= 0 or null")


def _validate_augment(augment: AugmentConfig, need: Need) -> None:
    need(augment.auto_augment is None or _is_auto_augment(augment.auto_augment), "augment.auto_augment",
         "not a timm auto-augment policy (e.g. rand-m9-mstd0.5-inc1, augmix-m5-w4-d2, original) or null")
    need(0.0 < augment.scale[0] <= augment.scale[1] <= 1.0, "augment.scale", "must be 0 < min <= max <= 1")
    for key in ("hflip", "random_erasing", "mixup_prob", "mixup_switch_prob"):
        need(0.0 <= getattr(augment, key) <= 1.0, f"augment.{key}", "must be a probability in [0, 1]")
    for key in ("mixup", "cutmix", "color_jitter"):
        need(getattr(augment, key) >= 0.0, f"augment.{key}", "must be >= 0")
    need(0.0 <= augment.label_smoothing < 1.0, "augment.label_smoothing", "must be in [0, 1)")


def _validate_optim(optim: OptimConfig, need: Need) -> None:
    need(_is_optimizer(optim.opt), "optim.opt", "not a timm optimizer: see timm.optim.list_optimizers()")
    need(optim.moe_lr_scale in MOE_LR_SCALES, "optim.moe_lr_scale", f"use one of {', '.join(MOE_LR_SCALES)}")
    need(optim.lr is None or optim.lr > 0, "optim.lr", "must be > 0 (or null to scale base_lr)")
    need(optim.base_lr > 0, "optim.base_lr", "must be > 0")
    need(optim.base_batch_size > 0, "optim.base_batch_size", "must be > 0")
    need(optim.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    need(all(0.0 <= b < 1.0 for b in optim.betas), "optim.betas", "must be in [0, 1)")
    need(optim.eps > 0, "optim.eps", "must be > 0")
    need(optim.layer_decay is None or 0.0 < optim.layer_decay <= 1.0, "optim.layer_decay", "must be in (0, 1] or null")
    need(optim.clip_grad is None or optim.clip_grad > 0, "optim.clip_grad", "must be > 0 or null")


def _validate_schedule(schedule: ScheduleConfig, need: Need) -> None:
    need(schedule.epochs >= 1, "schedule.epochs", "must be >= 1")
    need(0 <= schedule.warmup_epochs < schedule.epochs, "schedule.warmup_epochs",
         f"must be in [0, schedule.epochs={schedule.epochs})")
    need(0.0 <= schedule.warmup_lr_ratio <= 1.0, "schedule.warmup_lr_ratio", "must be in [0, 1]")
    need(0.0 <= schedule.min_lr_ratio <= 1.0, "schedule.min_lr_ratio", "must be in [0, 1]")


def _validate_train(train: TrainConfig, mixup_active: bool, need: Need) -> None:
    need(train.batch_size >= 1, "train.batch_size", "must be >= 1")
    need(train.micro_batch_size is None or train.micro_batch_size >= 1, "train.micro_batch_size",
         "must be >= 1 or null")
    need(train.eval_batch_size is None or train.eval_batch_size >= 1, "train.eval_batch_size", "must be >= 1 or null")
    need(train.amp in AMP_MODES, "train.amp", f"use one of {', '.join(AMP_MODES)}")
    need(train.device in DEVICES, "train.device", f"use one of {', '.join(DEVICES)}")
    need(0.0 < train.ema_decay < 1.0, "train.ema_decay", "must be in (0, 1)")
    need(train.eval_every >= 1, "train.eval_every", "must be >= 1")
    need(train.strategy in DISTRIBUTED_STRATEGIES, "train.strategy", f"use one of {', '.join(DISTRIBUTED_STRATEGIES)}")
    fsdp = train.strategy == "fsdp"
    need(not (fsdp and train.ema), "train.strategy", "fsdp does not keep an EMA of sharded weights: set "
         "train.ema=false or use train.strategy=ddp")
    need(not (fsdp and train.amp == "fp16"), "train.strategy", "fsdp has no sharded fp16 grad scaler here: use "
         "train.amp=bf16 (or none), or train.strategy=ddp")
    need(train.log_every >= 0, "train.log_every", "must be >= 0 (0 = no per-step lines)")
    need(train.recovery_every >= 0, "train.recovery_every", "must be >= 0 (0 = no mid-epoch recovery checkpoints)")
    need(train.max_steps_per_epoch is None or train.max_steps_per_epoch >= 1, "train.max_steps_per_epoch",
         "must be >= 1 or null")
    need(train.telemetry_images >= 0, "train.telemetry_images", "must be >= 0 (0 = off)")
    need(train.ddp_comm in DDP_COMMS, "train.ddp_comm", f"use one of {', '.join(DDP_COMMS)}")
    need(train.save_every >= 1, "train.save_every", "must be >= 1")
    need(train.dist_timeout_min > 0, "train.dist_timeout_min", "must be > 0 (minutes)")
    need(train.seed >= 0, "train.seed", "must be >= 0")
    need(train.wandb_project.strip() != "", "train.wandb_project", "name the W&B project")


def _validate_recycle(config: Config, need: Need) -> None:
    recycle = config.recycle
    need(bool(recycle.predecessor) or bool(recycle.predecessor_checkpoint), "recycle.predecessor",
         "model.init is 'recycle': name the dense predecessor (a timm name) or give recycle.predecessor_checkpoint")
    need(bool(recycle.predecessor_checkpoint) != recycle.pretrained, "recycle.pretrained",
         "the predecessor needs weights from exactly one source: recycle.predecessor_checkpoint FILE or "
         "recycle.pretrained true")
    need(recycle.calib_images >= 0, "recycle.calib_images", "must be >= 0 (0: no calibration)")
    try:
        recycle.options(config.variant).check(RecycleContext(dense=recycle.dense_checkpoint is not None,
                                                             calibration=recycle.calib_images > 0))
    except OptionError as err:  # its advice in config keys: pass --dense-checkpoint -> set recycle.dense_checkpoint
        key = "variant" if err.option == "variant" and recycle.variant is None else f"recycle.{err.option}"
        what = re.sub(r"\bpass (--[a-z-]+)", r"set \1", err.what)
        need(False, key, re.sub(r"--([a-z-]+)", lambda m: "recycle." + m.group(1).replace("-", "_"), what))
    need(recycle.calib_img_size is None or recycle.calib_img_size >= 8, "recycle.calib_img_size",
         "must be at least 8 pixels or null")
    need(bool(recycle.calib_data.strip()), "recycle.calib_data", "name a dataset (e.g. imagenet or synthetic)")
    need(recycle.batch_size >= 1, "recycle.batch_size", "must be >= 1")
    need(recycle.workers >= 0, "recycle.workers", "must be >= 0")
    need(recycle.predecessor is None or _is_model(recycle.predecessor), "recycle.predecessor",
         "not a timm model name (e.g. vit_small_patch16_224.augreg_in21k)")
    check_model_kwargs(recycle.predecessor_kwargs, "config key recycle.predecessor_kwargs.")
    need(recycle.dense_model is None or _is_model(recycle.dense_model), "recycle.dense_model",
         "not a timm model name (e.g. vit_small_patch14_dinov2)")
    need(config.model.name == "auto" or (recycle.dense_model is None and not recycle.dense_kwargs),
         "recycle.dense_model", "describes the dense checkpoint for model.name auto: drop it (an explicit model "
         "loads the dense checkpoint into its own dense twin)")
    need(recycle.dense_checkpoint is not None or (recycle.dense_model is None and not recycle.dense_kwargs),
         "recycle.dense_model", "describes recycle.dense_checkpoint: set the checkpoint too, or drop it")
    check_model_kwargs(recycle.dense_kwargs, "config key recycle.dense_kwargs.")
    _check_dataset_spec(recycle.calib_data, "recycle.calib_data")


INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "random")  # timm's create_transform


def _is_model(name: str) -> bool:
    import timm

    return timm.is_model(name)


def _is_optimizer(name: str) -> bool:
    from timm.optim import list_optimizers

    return name.lower() in list_optimizers()


def _check_dataset_spec(spec: str, key: str) -> None:
    from ..data import parse_dataset_spec

    try:
        parse_dataset_spec(spec)
    except UserError as err:
        raise UserError(f"config key {key} = {spec!r} is invalid: {err}") from None


def _is_auto_augment(policy: str) -> bool:
    from timm.data import create_transform

    try:
        create_transform(32, is_training=True, auto_augment=policy)
    except Exception:  # noqa: BLE001  (timm reports a bad policy as AssertionError, KeyError or ValueError)
        return False
    return True


def check_input_files(config: Config) -> None:
    """The files a new run reads before its first step exist (each missing one is a UserError naming its key)."""
    files = {"model.init_checkpoint": config.model.init_checkpoint}
    if config.model.init == "recycle":
        files.update({"recycle.predecessor_checkpoint": config.recycle.predecessor_checkpoint,
                      "recycle.dense_checkpoint": config.recycle.dense_checkpoint})
    for key, path in files.items():
        if path is not None and not Path(path).is_file():
            raise UserError(f"config key {key} = {path!r} is invalid: the file does not exist; check the path")


def _get(config: Config, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


def batch_plan(config: Config, world_size: int) -> tuple[int, int]:
    """``(micro batch, accumulation steps)`` per process: ``train.micro_batch_size`` is a per-process maximum
    (null: the process's whole share of the global batch), and accumulation makes up the rest. Any global batch
    runs on any number of processes up to the batch size (see :mod:`moejet.data.sampler`)."""
    from ..data.sampler import accumulation

    batch = config.train.batch_size
    if world_size > batch:
        raise UserError(f"config key train.batch_size = {batch} is smaller than the {world_size} processes: every "
                        "process needs at least one image per step; use fewer processes or a larger batch")
    micro = config.train.micro_batch_size or math.ceil(batch / world_size)
    return micro, accumulation(batch, world_size, micro)


# ------------------------------------------------------------------------------------------------ writing


def config_to_dict(config: Config, resolve_lr: bool = True) -> dict[str, Any]:
    """Plain dict (lists instead of tuples), by default with the resolved learning rate written in."""
    out = plain_json(dataclasses.asdict(config))
    if config.model.init != "recycle":
        del out["recycle"]  # read only by model.init: recycle
    if resolve_lr:
        out["optim"]["lr"] = config.lr
    return out


class _Dumper(yaml.SafeDumper):
    """Block-style sections, flow-style lists (``scale: [0.08, 1.0]``)."""


_Dumper.add_representer(list, lambda dumper, data: dumper.represent_sequence(
    "tag:yaml.org,2002:seq", data, flow_style=True))


# what a run is: written by config_changes even at their defaults, so that every config file names them
IDENTITY_KEYS = ("name", "description", "model.name", "model.init", "data.dataset")


def config_changes(config: Config, resolve_lr: bool = True) -> dict[str, Any]:
    """:func:`config_to_dict` less every key whose value is ``Config()``'s default (but :data:`IDENTITY_KEYS`), and
    less the sections left empty: all a config file needs to hold, since ``load_config`` fills in the rest."""
    defaults = config_to_dict(Config(), resolve_lr=False)
    defaults["recycle"] = plain_json(dataclasses.asdict(RecycleConfig()))
    out: dict[str, Any] = {}
    for key, value in config_to_dict(config, resolve_lr).items():
        if isinstance(value, dict):  # a section: keep its changed keys
            value = {k: v for k, v in value.items() if v != defaults[key][k] or f"{key}.{k}" in IDENTITY_KEYS}
            if value:
                out[key] = value
        elif value != defaults[key] or key in IDENTITY_KEYS:
            out[key] = value
    return out


def dump_config(config: Config, resolve_lr: bool = True, changes_only: bool = False) -> str:
    """The config as YAML (what ``load_config`` reads back): every key, or with ``changes_only`` the keys that differ
    from the defaults (:func:`config_changes`)."""
    plain = config_changes(config, resolve_lr) if changes_only else config_to_dict(config, resolve_lr)
    return yaml.dump(plain, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)
