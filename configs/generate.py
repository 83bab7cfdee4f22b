"""Write one YAML per paper experiment, and configs/README.md, from the tables below.

    python configs/generate.py          # rewrites configs/*.yaml and configs/README.md
    python configs/generate.py OUT_DIR  # writes them into OUT_DIR instead (the tests compare the two)

Edit the tables here, never the generated files. Every config goes through moejet's config schema
(``moejet.train.config``), so a typo here fails at generation time.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from moejet.train.config import config_from_dict, dump_config  # noqa: E402

# ----------------------------------------------------------------------------------------------- datasets
# paper App. B, Table 7: global batch, warmup epochs, epochs, drop path
DATASETS = {
    #  key        spec          batch warmup epochs drop_path
    "in1k":     ("imagenet",   4096, 50, 300, 0.0),
    "cifar10":  ("cifar10",     512, 50, 300, 0.1),
    "cifar100": ("cifar100",    512, 50, 300, 0.1),
    "food101":  ("food101",     512, 50, 300, 0.1),
    "stl10":    ("stl10",       512, 50, 300, 0.0),
    "pets":     ("pets",        512, 100, 600, 0.1),
    "flowers":  ("flowers102",  512, 100, 600, 0.1),
    "dtd":      ("dtd",         512, 100, 600, 0.2),
}
# per-GPU micro batch: 4096 = 256 x 4 GPUs x 4 accumulation (released IN-1k config); 512 = 128 x 4 x 1
MICRO_BATCH = {4096: 256, 512: 128}
SEED = 3407  # release: randomness seed of vit_tiny_dual_moe_timm_*.py (the paper names none)
# release moe_droprate 0.4 (in-expert dropout) and moe_drop_path_rate 0.1 (stochastic expert drop); the paper
# (§3.2, Expert Regularization) describes both without values. Every SpheroMoE config gets them.
EXPERT_REGULARISATION = {"expert_dropout": 0.4, "expert_drop_rate": 0.1}
LAYER_DECAY = 0.6  # release: layer_decay_rate of the fine-tuning (21k_ft) config; scratch arms get none
CROP_PCT = 0.875  # release: mmpretrain pipelines resize 256 -> centre crop 224 at evaluation (paper silent)

R_SCRATCH = "release timm/vit_tiny_dual_moe_timm_scratch.py"
R_FT = "release timm/vit_tiny_dual_moe_timm_21k_ft.py"
R_BASE = "release _base_/datasets/imagenet_bs64_swin_224.py"
# train.eval_every: (dataset, family) -> (epochs, source), the release's train_cfg val_interval. Its only experiment
# configs are the two ViT-T ImageNet ones (val_interval=3), which every ViT ImageNet config follows (as it follows their
# seed); its dataset configs (_base_/datasets/*.py) set no train_cfg and it has no ConvNeXt config, so every other
# config evaluates every epoch (the paper names no interval)
EVAL_EVERY = {
    ("in1k", "vit"): (3, "the release's val_interval (train_cfg in "
                         "moejet/configs/timm/vit_tiny_dual_moe_timm_scratch.py and vit_tiny_dual_moe_timm_21k_ft.py)"),
}
NO_RELEASE_EVAL = (1, "ours: no release config (the release sets val_interval only in its ViT-T ImageNet configs)")

# ------------------------------------------------------------------------------------ recycled checkpoints
VIT_T_DENSE = "checkpoints/vit_tiny_patch16_224.augreg_in21k.safetensors"
VIT_S_DENSE = "checkpoints/vit_small_patch16_224.augreg_in21k.safetensors"
AVG_POOL = (("global_pool", "avg"),)  # MoE ViT successors pool like the released models (fc_norm + mean)
CALIB_IMAGES = 38400  # released: torch.arange(128 * 300) ImageNet train images (prepare_imagenet), in batches of 256
RECYCLE_CALIB = f"--calib-data imagenet --calib-images {CALIB_IMAGES}"


@dataclass(frozen=True)
class Recycle:
    """One ``moejet recycle`` output directory under runs/recycle/."""

    out: str
    successor: str
    predecessor: str = "vit_small_patch16_224.augreg_in21k"
    dense_checkpoint: str | None = VIT_T_DENSE
    strategy: str = "importance"
    successor_args: tuple[tuple[str, str], ...] = AVG_POOL

    @property
    def checkpoint(self) -> str:
        return f"runs/recycle/{self.out}/model.safetensors"

    @property
    def calibrated(self) -> bool:
        return self.strategy in ("importance", "graph")

    def section(self) -> dict[str, Any]:
        """The config's ``recycle:`` section (``model.init: recycle``): this command's recipe, the successor being
        the config's model.name and model.kwargs (successor_args are among them)."""
        return {"predecessor": self.predecessor, "pretrained": True, "dense_checkpoint": self.dense_checkpoint,
                "strategy": self.strategy, "calib_data": "imagenet" if self.calibrated else "synthetic",
                "calib_images": CALIB_IMAGES if self.calibrated else 0}

    def command(self) -> str:
        parts = [f"moejet recycle --predecessor {self.predecessor} --pretrained"]
        if self.dense_checkpoint:
            parts.append(f"--dense-checkpoint {self.dense_checkpoint}")
        parts.append(f"--successor {self.successor}")
        parts += [f"--successor-arg '{k}={v}'" for k, v in self.successor_args]
        calib = RECYCLE_CALIB if self.calibrated else "--calib-images 0"
        parts += [f"--strategy {self.strategy}", calib, f"--out runs/recycle/{self.out}"]
        return " \\\n    ".join(parts)


VJET_T = Recycle("vjetmoe_t_importance", "vjetmoe_tiny_patch16_224")
# ConvNeXt pools by averaging whatever the head, so its successors need no pooling argument
CJET_F = Recycle("cjetmoe_f_importance", "cjetmoe_femto", predecessor="convnext_tiny.fb_in22k", dense_checkpoint=None,
                 successor_args=())
# ConvNeXt-F has no in21k checkpoint in timm: "Dense (21k)" is ConvNeXt-T in22k with its channels selected
CONVNEXT_F_21K = Recycle("convnext_f_dense_in22k", "convnext_femto_d18", predecessor="convnext_tiny.fb_in22k",
                         dense_checkpoint=None, successor_args=())
# V-JetMoE-S (Table 4): experts from ViT-B/16 in21k, dense part (attention, embeddings) from ViT-S/16 in21k
VJET_S = Recycle("vjetmoe_s_importance", "vjetmoe_small_patch16_224", predecessor="vit_base_patch16_224.augreg_in21k",
                 dense_checkpoint=VIT_S_DENSE)
SOFT_T = Recycle("softmoe_t_importance", "softmoe_vit_tiny_patch16_224")
STRATEGIES = {s: Recycle(f"vjetmoe_t_{s}", "vjetmoe_tiny_patch16_224", strategy=s)
              for s in ("random", "uniform", "graph")}
STRATEGIES["importance"] = VJET_T
# Sparse Upcycling on the default V-JetMoE-T (same params and MACs as the other Table 3 rows): core experts are
# full copies of ViT-T in21k's MLP, universal experts are cut from it; the dense part is that same ViT-T
STRATEGIES["upcycle"] = Recycle("vjetmoe_t_upcycle", "vjetmoe_tiny_patch16_224",
                                predecessor="vit_tiny_patch16_224.augreg_in21k", dense_checkpoint=None,
                                strategy="upcycle")


# ------------------------------------------------------------------------------------------------ models


@dataclass(frozen=True)
class Arm:
    """A model and its initialisation."""

    label: str  # column / row name in the paper
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    init: str = "scratch"
    recycle: Recycle | None = None  # init: recycle with this recipe
    sphero: bool = False  # SpheroMoE: gets the expert regularisation
    global_pool: str = "avg"

    @property
    def layer_decay(self) -> float | None:
        return None if self.init == "scratch" else LAYER_DECAY

    def with_recycle(self, recycle: Recycle, label: str, **kwargs: Any) -> Arm:
        return dataclasses.replace(self, recycle=recycle, label=label, kwargs={**self.kwargs, **kwargs},
                                   init="recycle")


VIT_T = {
    # no dense recipe in the release: timm's class-token pooling, which the in21k checkpoint was trained with
    "dense": Arm("Dense", "vit_tiny_patch16_224", global_pool="token"),
    "dense21k": Arm("Dense (21k)", "vit_tiny_patch16_224.augreg_in21k", init="pretrained", global_pool="token"),
    "softmoe": Arm("Soft MoE", "softmoe_vit_tiny_patch16_224"),
    "jetpack": Arm("MoE Jetpack", "vjetmoe_tiny_patch16_224", init="recycle", recycle=VJET_T, sphero=True),
}
CONVNEXT_F = {
    "dense": Arm("Dense", "convnext_femto_d18"),
    "dense21k": Arm("Dense (21k)", "convnext_femto_d18", init="recycle", recycle=CONVNEXT_F_21K),
    # Soft MoE in the same blocks, one expert per token (196 at 14x14, 49 at 7x7), as Soft MoE-T's 197
    "softmoe": Arm("Soft MoE", "cjetmoe_femto",
                   {"moe_type": "soft", "core_experts": [0, 0, 196, 49], "univ_experts": 0}),
    "jetpack": Arm("MoE Jetpack", "cjetmoe_femto", init="recycle", recycle=CJET_F, sphero=True),
}
FAMILIES = {"vit_t": ("ViT-T", VIT_T), "convnext_f": ("ConvNeXt-F", CONVNEXT_F)}


# ------------------------------------------------------------------------------------------- experiments


@dataclass(frozen=True)
class Experiment:
    name: str
    table: str
    row: str
    dataset: str
    arm: Arm
    paper_top1: float | None = None


# paper Table 1 top-1 (%): dataset -> family -> (dense, dense21k, softmoe, jetpack)
TABLE1 = {
    "in1k":     {"vit_t": (73.9, 75.6, 77.1, 79.9), "convnext_f": (76.1, 76.4, 79.1, 80.5)},
    "food101":  {"vit_t": (79.6, 86.9, 82.0, 89.5), "convnext_f": (86.9, 89.0, 88.7, 90.7)},
    "cifar10":  {"vit_t": (92.4, 97.0, 92.9, 97.9), "convnext_f": (96.6, 97.4, 97.3, 98.2)},
    "cifar100": {"vit_t": (72.3, 81.4, 75.9, 88.4), "convnext_f": (81.4, 84.4, 82.8, 88.5)},
    "stl10":    {"vit_t": (61.5, 83.4, 67.7, 95.3), "convnext_f": (81.4, 92.3, 79.4, 98.7)},
    "flowers":  {"vit_t": (62.4, 81.9, 70.8, 95.4), "convnext_f": (80.3, 94.5, 83.3, 98.6)},
    "pets":     {"vit_t": (25.0, 68.6, 45.5, 84.3), "convnext_f": (72.9, 87.3, 77.4, 94.9)},
    "dtd":      {"vit_t": (49.4, 62.5, 51.3, 69.1), "convnext_f": (63.7, 68.8, 64.7, 79.5)},
}
ARMS = ("dense", "dense21k", "softmoe", "jetpack")


def table1() -> list[Experiment]:
    out = []
    for dataset, by_family in TABLE1.items():
        for family, scores in by_family.items():
            label, arms = FAMILIES[family]
            for arm_key, score in zip(ARMS, scores):
                arm = arms[arm_key]
                out.append(Experiment(f"table1_{family}_{arm_key}_{dataset}", "table1",
                                      f"{label} {arm.label}", dataset, arm, score))
    return out


def table2() -> list[Experiment]:
    """Soft MoE + Checkpoint Recycling (the other rows are Table 1 configs, listed in the README)."""
    arm = VIT_T["softmoe"].with_recycle(SOFT_T, "Soft MoE + Checkpoint Recycling")
    scores = {"in1k": 78.4, "cifar100": 84.7, "flowers": 91.2}
    return [Experiment(f"table2_softmoe_recycled_{d}", "table2", arm.label, d, arm, s) for d, s in scores.items()]


def table3() -> list[Experiment]:
    scores = {"upcycle": 79.1, "random": 79.5, "uniform": 79.6, "graph": 79.8, "importance": 79.9}
    out = []
    for strategy, score in scores.items():
        label = "Sparse Upcycling (copy)" if strategy == "upcycle" else f"Checkpoint Recycling ({strategy})"
        arm = VIT_T["jetpack"].with_recycle(STRATEGIES[strategy], label)
        out.append(Experiment(f"table3_{strategy}_in1k", "table3", label, "in1k", arm, score))
    return out


def table4() -> list[Experiment]:
    """Soft MoE-S, V-JetMoE-T variants on CIFAR-100, V-JetMoE-S (the other rows are Table 1 configs)."""
    out = [Experiment(f"table4_softmoe_s_{d}", "table4", "Soft MoE-S (scratch)", d,
                      Arm("Soft MoE-S", "softmoe_vit_small_patch16_224"), s)
           for d, s in (("cifar100", 77.5), ("in1k", 80.3))]
    variants = [  # (tag, label, successor kwargs, paper CIFAR-100)
        ("layers11-12", "MoE layers 11:12", {"moe_layers": [10, 11]}, 87.4),
        ("layers9-12", "MoE layers 9:12", {"moe_layers": [8, 9, 10, 11]}, 87.8),
        ("layers5-12", "MoE layers 5:12", {"moe_layers": list(range(4, 12))}, 86.7),
        ("experts32-64", "experts 32 / 64", {"core_experts": 32, "univ_experts": 64}, 87.8),
        ("experts64-128", "experts 64 / 128", {"core_experts": 64, "univ_experts": 128}, 88.0),
    ]
    for tag, label, kwargs, score in variants:
        recycle = dataclasses.replace(VJET_T, out=f"vjetmoe_t_{tag}", successor_args=_successor_args(kwargs))
        arm = VIT_T["jetpack"].with_recycle(recycle, f"V-JetMoE-T {label}", **kwargs)
        out.append(Experiment(f"table4_vjetmoe_t_{tag}_cifar100", "table4", arm.label, "cifar100", arm, score))
    vjet_s = Arm("V-JetMoE-S", "vjetmoe_small_patch16_224", init="recycle", recycle=VJET_S, sphero=True)
    out += [Experiment(f"table4_vjetmoe_s_{d}", "table4", "V-JetMoE-S", d, vjet_s, s)
            for d, s in (("cifar100", 89.9), ("in1k", 82.4))]
    return out


def fig4() -> list[Experiment]:
    """Core-expert ratio on CIFAR-100 with 294 experts in total (1/3 core = the default 98 / 196)."""
    out = []
    for core in (0, 49, 98, 147, 196, 294):
        univ = 294 - core
        kwargs = {"core_experts": core, "univ_experts": univ}
        recycle = dataclasses.replace(VJET_T, out=f"vjetmoe_t_core{core}_univ{univ}",
                                      successor_args=_successor_args(kwargs))
        label = f"core ratio {core}/294"
        arm = VIT_T["jetpack"].with_recycle(recycle, f"V-JetMoE-T {label}", **kwargs)
        out.append(Experiment(f"fig4_core{core}_univ{univ}_cifar100", "fig4", label, "cifar100", arm))
    return out


def _successor_args(kwargs: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    fmt = lambda v: f"({','.join(map(str, v))})" if isinstance(v, list) else str(v)
    return AVG_POOL + tuple((k, fmt(v)) for k, v in kwargs.items())


EXPERIMENTS = table1() + table2() + table3() + table4() + fig4()


# ---------------------------------------------------------------------------------------------- configs


def eval_every(exp: Experiment) -> tuple[int, str]:
    """train.eval_every of the experiment and where it comes from (EVAL_EVERY)."""
    family = "convnext" if exp.arm.name.startswith(("convnext", "cjetmoe")) else "vit"
    return EVAL_EVERY.get((exp.dataset, family), NO_RELEASE_EVAL)


def config_dict(exp: Experiment) -> dict[str, Any]:
    spec, batch, warmup, epochs, drop_path = DATASETS[exp.dataset]
    arm = exp.arm
    kwargs = {**arm.kwargs, "global_pool": arm.global_pool, **(EXPERT_REGULARISATION if arm.sphero else {})}
    paper = f" Paper top-1: {exp.paper_top1}." if exp.paper_top1 is not None else ""
    return {
        "name": exp.name,
        "description": f"{exp.table}: {exp.row} on {exp.dataset}.{paper}",
        "model": {"name": arm.name, "kwargs": kwargs, "init": arm.init, "drop_path_rate": drop_path},
        **({"recycle": arm.recycle.section()} if arm.recycle else {}),
        "data": {"dataset": spec, "img_size": 224, "crop_pct": CROP_PCT},
        "optim": {"layer_decay": arm.layer_decay},
        "schedule": {"epochs": epochs, "warmup_epochs": warmup},
        "train": {"batch_size": batch, "micro_batch_size": MICRO_BATCH[batch], "seed": SEED,
                  "eval_every": eval_every(exp)[0]},
    }


def write_configs(out_dir: Path = HERE) -> list[Path]:
    for old in out_dir.glob("*.yaml"):
        old.unlink()
    paths = []
    for exp in EXPERIMENTS:
        config = config_from_dict(config_dict(exp))  # validates
        body = dump_config(config, resolve_lr=False)
        path = out_dir / f"{exp.name}.yaml"
        every, source = eval_every(exp)
        path.write_text(f"# {config.description}\n# Generated by configs/generate.py: edit the table there.\n"
                        f"# lr: null = optim.base_lr * train.batch_size / optim.base_batch_size\n"
                        f"# train.eval_every: {every} = {source}; the last epoch is always evaluated\n{body}")
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------------------------- README

README_HEAD = """# Configs: one per paper experiment

Generated by `python configs/generate.py` from the tables in that script (Table 1, 2, 3, 4 and
Fig. 4 of the paper); edit the tables there, not the YAML files. Every file is the complete config;
`moejet train --config FILE --print-config` shows it resolved. The recipe and where each value
comes from are in [Recipe and sources](#recipe-and-sources) below; the paper-vs-release switches of
the model and recycling code live in `src/moejet/variants.py` (every config sets `variant: paper`).

- **Batch**: `train.batch_size` is the global batch of every optimizer step whatever the number of
  GPUs; `train.micro_batch_size` is what one GPU runs per forward pass (128, ImageNet 256);
  gradient accumulation makes up the rest (512 = 128 x 1 GPU x 4 accumulation = 128 x 4 GPUs x 1).
  Lowering the micro batch (a GPU out of memory) keeps the optimizer, lr and schedule identical but
  does change the training signal slightly: the mixing ratio, the mixup-or-cutmix choice and the
  cutmix box are drawn once per optimizer step, but Mixup / CutMix pair images within a micro batch,
  so smaller micro batches mix different pairs. Everything else (the loss averaged over the global
  batch, weight decay, grad clipping on the accumulated gradient) does not change.
- **Data**: datasets are read from `$MOEJET_DATA/<name>` (default `~/.cache/moejet/data/<name>`) or
  `--set data.root=DIR`; `--set data.download=true` lets torchvision fetch the small ones. ImageNet
  is `ROOT/train/<class>/*` and `ROOT/val/<class>/*`.
- **Initialisation**: `model.init: recycle` configs carry their checkpoint recycling recipe in a
  `recycle:` section (the Step 1 command's flags under the same names; the successor is the config's
  model): `moejet train` recycles once into `RUN/recycle/` (`model.safetensors`, `recycle.json`) before the first
  epoch (`--resume` needs neither the predecessor nor the calibration data again). `pretrained` starts
  from timm's hosted weights (offline: save them to a file elsewhere and use
  `--set model.init=checkpoint --set model.init_checkpoint=FILE`), `scratch` from random weights.
  The classifier is re-initialised for the dataset's classes.

## Running

```bash
# one GPU
moejet train --config configs/table1_vit_t_jetpack_cifar100.yaml
# 4 GPUs on one machine (same global batch, so the same result)
torchrun --nproc_per_node 4 -m moejet train --config configs/table1_vit_t_jetpack_cifar100.yaml
# several machines: torchrun's usual --nnodes / --node_rank / --rdzv_endpoint flags
# stopped or crashed? continue exactly where it left off
moejet train --resume runs/table1_vit_t_jetpack_cifar100
# top-1 / top-5 of the best epoch (also writes RUN/eval.json)
moejet eval --run runs/table1_vit_t_jetpack_cifar100
```

Each run writes `runs/<config name>/` (`--out DIR` to change): `config.yaml`, `metrics.jsonl`,
`last.safetensors`, `best.safetensors`, `checkpoint.json` + `checkpoints/` (the committed epoch for `--resume`).

## Step 0: the dense ViT-T and ViT-S in21k checkpoints (the dense part of recycled V-JetMoE-T / -S)

```bash
mkdir -p checkpoints
for size in tiny small; do python -c "import sys, timm; from moejet.io import save_model; \\
name = f'vit_{sys.argv[1]}_patch16_224'; m = timm.create_model(name + '.augreg_in21k', pretrained=True); \\
save_model(m, f'checkpoints/{name}.augreg_in21k.safetensors', name, {'num_classes': m.num_classes})" $size; done
```
"""


CONFIG_TABLE_NOTE = ("lr is the resolved peak lr (`optim.lr: null` scales `base_lr` by the global batch); "
                     "init: recycle names the Step 1 recipe, `pretrained` timm's in21k weights, `scratch` random "
                     "weights; eval every = `train.eval_every`, epochs between evaluations (the last epoch is "
                     "always evaluated).")
SOURCES_NOTE = ("*paper* = the NeurIPS 2024 paper (section / table named), *release* = the authors' "
                "Adlith/MoE-Jetpack repository (file named, `moejet/configs/` omitted), *ours* = our choice, "
                "with the reason. Where paper and release differ the configs follow the paper and name the "
                "release's value; the model / recycling switches are in `src/moejet/variants.py`.")
SOURCES = [
    ("optimizer", "AdamW, betas (0.9, 0.999), wd 0.05", f"paper Table 6; eps 1e-8 from {R_SCRATCH}"),
    ("no weight decay", "norms, biases, position embeddings, router queries / temperatures",
     f"release ({R_SCRATCH}: norm/bias/pos_embed decay_mult 0, mlp.scales decay_mult 0)"),
    ("base lr", "4e-3 at global batch 4096, scaled linearly (5e-4 at 512)",
     f"paper Table 6 (4e-3, batch 4096); linear scaling rule: ours (paper Table 7 changes the batch and names "
     f"no lr; the release sets lr 4e-3 at total_batch 4096 in {R_SCRATCH})"),
    ("layer decay", f"{LAYER_DECAY} on fine-tuned arms (recycled / pretrained), none on scratch arms",
     f"release: layer_decay_rate 0.6 in {R_FT}, the decay constructor commented out in {R_SCRATCH}; "
     "the paper names none"),
    ("MoE lr grouping", "optim.moe_lr_scale top", f"release ({R_SCRATCH}: moe_mult 1.0 on the MoE parameters)"),
    ("schedule", "linear warmup from 1e-3 x lr, then cosine to 1e-2 x lr, per step",
     f"paper Table 6 (linear warmup, cosine); start factor 1e-3, eta_min_ratio 1e-2 and per-iteration "
     f"updates from {R_SCRATCH}"),
    ("epochs / warmup / global batch / drop path", "per dataset", "paper Table 7"),
    ("ImageNet warmup", "50 epochs", "paper Table 6-7; the release uses 20 (LinearLR end=20)"),
    ("ImageNet drop path", "0", f"paper Table 7; the release uses 0.1 (dp in {R_SCRATCH})"),
    ("expert regularisation", "in-expert dropout 0.4, stochastic expert drop 0.1, every SpheroMoE config",
     f"release (moe_droprate 0.4, moe_drop_path_rate 0.1 in {R_SCRATCH}); paper §3.2 describes both without "
     "values and does not exempt any table"),
    ("router noise", "std 1 / (core + universal experts)",
     f"release (noise_mult in {R_SCRATCH}); the model's default, not a config key"),
    ("pooling", "avg (+ fc_norm) in every MoE ViT and in ConvNeXt; class token in the dense ViT-T arms",
     f"release (global_pool='avg' in {R_SCRATCH} and {R_FT}, whose scratch model is also the Soft MoE arm's; "
     "ConvNeXt always "
     "averages); dense ViT: ours, the release has no dense recipe and the in21k checkpoint is trained with "
     "the class token. Recycle commands pass the same pooling to the successor"),
    ("eval crop", f"resize 256 -> centre crop 224 (crop_pct {CROP_PCT}), bicubic",
     f"release ({R_BASE}: ResizeEdge 256 + CenterCrop 224); the paper is silent"),
    ("augmentation", "RandAugment (9, 0.5), mixup 0.8, cutmix 1.0, random erasing 0.25, label smoothing 0.1",
     "paper Table 6; rand-m9-mstd0.5-inc1 is timm's spelling of the release's RandAugment (policies "
     f"timm_increasing, 2 ops, magnitude 9, std 0.5 in {R_BASE}); mixup-or-cutmix with probability 0.5 each "
     "per batch as the release's batch augments (Mixup + CutMix, equal probabilities)"),
    ("random erasing", "one region, area 0.02-1/3, per-pixel normal fill",
     f"release (RandomErasing mode 'rand' in {R_BASE}) = timm's re_mode pixel, re_count 1"),
    ("grad clip", "global norm 5.0", f"release (clip_grad max_norm 5.0 in {R_SCRATCH})"),
    ("AMP", "bf16 on CUDA", "ours: bf16 needs no loss scaler; the release's AmpOptimWrapper is fp16"),
    ("EMA", "off", f"release (EMAHook commented out in {R_SCRATCH})"),
    ("seed", str(SEED), f"release (randomness seed in {R_SCRATCH})"),
    ("machine settings", "data.num_workers null (the cores per process), train.channels_last null (on for ConvNeXt on "
     "CUDA), save_every 1, background_save false, ddp_comm fp32, dist_timeout_min 60",
     "ours: the same recipe on any machine; none of them changes the optimisation (docs/training.md, On GPUs)"),
    ("eval interval", "every 3 epochs on ImageNet (ViT configs), every epoch elsewhere; the last epoch always",
     f"release (train_cfg val_interval=3 in {R_SCRATCH} and {R_FT} at commit 2a50c78, its only experiment "
     "configs, both ViT-T ImageNet); elsewhere ours: no release config (the release's dataset configs "
     "`_base_/datasets/*.py` set no train_cfg, it has no ConvNeXt config, and `_base_/schedules/cifar10_bs128.py`, "
     "which no released config inherits, also validates every epoch); the paper names no interval. Each config's "
     "header comment names its source"),
    ("micro batch", "256 (ImageNet) / 128", f"release (bs 256 x 4 GPUs x 4 accumulation = 4096 in {R_SCRATCH}); "
     "128 for batch 512 is ours"),
    ("layer scale", "1e-6 in ConvNeXt-F", "paper Table 6 (timm ConvNeXt's default); ViTs have none as released "
     f"(layer_scale=False in {R_SCRATCH})"),
    ("recycling calibration", "38,400 ImageNet train images (importance, graph)",
     "release: torch.arange(128 * 300) = 38,400 images in batches of 256"),
    ("recycling predecessors", "ViT-S/16 in21k experts + ViT-T/16 in21k dense part (V-JetMoE-T, Soft MoE-T), "
     "ConvNeXt-T in22k (C-JetMoE-F, ConvNeXt-F Dense (21k)), ViT-B/16 + ViT-S/16 in21k (V-JetMoE-S)",
     "paper §4.3 (ViT-S and ViT-T in21k into V-JetMoE-T) and App. A Table 5 (ViT-S/16, ConvNeXt-T, in21k from "
     "timm); V-JetMoE-S: ours, the paper says only \"converted from larger dense checkpoints\""),
    ("recycling seed / batch", "seed 0, 64 calibration images per batch", "ours: moejet recycle's defaults, as in the "
     "Step 1 commands"),
]


def readme() -> str:
    recycles: dict[str, Recycle] = {}
    for exp in EXPERIMENTS:
        if exp.arm.recycle is not None:
            recycles.setdefault(exp.arm.recycle.out, exp.arm.recycle)
    lines = [README_HEAD, "## Step 1: recycling (inside `moejet train`, or once for many runs)\n",
             "Each `model.init: recycle` config runs one of these recipes when its run starts: the predecessor "
             "comes from timm's hub (`recycle.pretrained: true`; offline: save it to a file and "
             "`--set recycle.pretrained=false --set recycle.predecessor_checkpoint=FILE`), the dense part from "
             "Step 0's files. `importance` and `graph` calibrate on 38,400 ImageNet train images as released "
             "(`--set recycle.calib_root=DIR` to point at ImageNet; fewer images, or another dataset spec, work "
             "too); the other strategies need no calibration. The standalone commands below run the same recipe "
             "once for many runs (their successor keeps a 1000-class head, re-initialised for the dataset): start "
             "those runs with "
             "`--set model.init=checkpoint --set model.init_checkpoint=runs/recycle/NAME/model.safetensors "
             "--set recycle=null`. Add `--device cuda` on a GPU machine.\n"]
    for rec in recycles.values():
        users = sorted(e.name for e in EXPERIMENTS if e.arm.recycle == rec)
        lines += [f"`{rec.out}` (the recipe of {len(users)} config{'s' if len(users) > 1 else ''}):\n",
                  "```bash", rec.command(), "```\n"]
    lines.append("## Step 2: training, per table\n")
    sections = {
        "table1": "Table 1: Dense / Dense (21k) / Soft MoE / MoE Jetpack, ViT-T and ConvNeXt-F, 8 datasets",
        "table2": "Table 2: components (ImageNet, CIFAR-100, Flowers). Rows *Baseline ViT-T*, *Soft MoE* and "
                  "*Checkpoint Recycling + SpheroMoE* are the Table 1 configs `table1_vit_t_{dense,softmoe,jetpack}_"
                  "{in1k,cifar100,flowers}`; the new row is Soft MoE + Checkpoint Recycling",
        "table3": "Table 3: recycling strategies vs Sparse Upcycling (ImageNet), all on the default V-JetMoE-T",
        "table4": "Table 4: configurations. Rows ViT-T, Soft MoE-T, ViT-T (21k) and the default V-JetMoE-T are "
                  "Table 1 configs `table1_vit_t_{dense,softmoe,dense21k,jetpack}_{cifar100,in1k}` (ViT-T (21k) on "
                  "ImageNet reads 75.5 in Table 4 and 75.6 in Table 1)",
        "fig4": "Fig. 4: core-expert ratio (CIFAR-100, 294 experts per MoE layer)",
    }
    for table, title in sections.items():
        lines += [f"- {title}:", "  `for c in configs/" + table + "_*.yaml; do moejet train --config $c; done`"]
    lines += ["", "## Every config\n", CONFIG_TABLE_NOTE, "",
              "| config | experiment | dataset | epochs | global batch | lr | layer decay | expert reg. "
              "| pooling | eval crop | eval every | init | paper top-1 |",
              "| --- | --- | --- | ---: | ---: | ---: | --- | --- | --- | --- | ---: | --- | ---: |"]
    for exp in EXPERIMENTS:
        config = config_from_dict(config_dict(exp))
        kw = config.model.kwargs
        reg = (f"dropout {kw['expert_dropout']}, drop {kw['expert_drop_rate']}" if "expert_dropout" in kw else "-")
        init = config.model.init if config.model.init != "recycle" else f"recycle `{exp.arm.recycle.out}`"
        ld = "-" if config.optim.layer_decay is None else f"{config.optim.layer_decay}"
        lr = config.optim.base_lr * config.train.batch_size / config.optim.base_batch_size
        score = "-" if exp.paper_top1 is None else f"{exp.paper_top1}"
        lines.append(f"| `{exp.name}` | {exp.row} | {exp.dataset} | {config.schedule.epochs} | "
                     f"{config.train.batch_size} | {lr:g} | {ld} | {reg} | {kw['global_pool']} | "
                     f"{config.data.crop_pct} | {config.train.eval_every} | {init} | {score} |")
    lines += ["", "## Recipe and sources\n", SOURCES_NOTE, ""]
    lines += [f"- **{key}** = {value}: {source}" for key, value, source in SOURCES]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    out_dir = Path(argv[0]) if argv else HERE
    out_dir.mkdir(parents=True, exist_ok=True)
    written = write_configs(out_dir)
    (out_dir / "README.md").write_text(readme())
    print(f"wrote {len(written)} configs and README.md into {out_dir}")


if __name__ == "__main__":
    main(sys.argv[1:])
