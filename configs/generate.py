"""Write one YAML per paper experiment, the modern recipes (modern/), and configs/README.md, from the tables below.

    python configs/generate.py          # rewrites src/moejet/configs/*.yaml, src/moejet/configs/modern/*.yaml and
                                        # configs/README.md
    python configs/generate.py OUT_DIR  # writes them all into OUT_DIR instead (the tests compare the two)

It imports this checkout's moejet as installed (``make test`` installs it editable, ``pip install -e .`` does too)
and refuses to run against another copy.

The YAML files ship inside the package (src/moejet/configs/, the single copy), so ``moejet train --config NAME``
finds them wherever moejet is installed; ``moejet configs`` lists them. The modern section at the end (beyond the
paper's tables) writes modern/: recipes for checkpoints the paper predates, with ``model.name: auto``.

Edit the tables here, never the generated files. Every config goes through moejet's config schema
(``moejet.train.config``), so a typo here fails at generation time. Each file holds only what differs from
``Config()``, whose defaults are the paper's recipe: ``load_config`` fills in the rest.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import moejet.configs
from moejet.train.config import config_from_dict, dump_config

HERE = Path(__file__).resolve().parent
PACKAGED = HERE.parent / "src" / "moejet" / "configs"  # the package's copy: moejet.configs

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


DEFAULTS_NOTE = ("# Keys not written here are Config()'s defaults, the paper's recipe (moejet.train.config); "
                 "--print-config shows them all.\n# optim.lr unset = optim.base_lr * train.batch_size / "
                 "optim.base_batch_size")


def write_configs(out_dir: Path = PACKAGED) -> list[Path]:
    for old in out_dir.glob("*.yaml"):
        old.unlink()
    paths = []
    for exp in EXPERIMENTS:
        config = config_from_dict(config_dict(exp))  # validates
        body = dump_config(config, resolve_lr=False, changes_only=True)
        path = out_dir / f"{exp.name}.yaml"
        every, source = eval_every(exp)
        path.write_text(f"# {config.description}\n# Generated by configs/generate.py: edit the table there.\n"
                        f"{DEFAULTS_NOTE}\n"
                        f"# train.eval_every: {every} = {source}; the last epoch is always evaluated\n{body}")
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------------------------- README

README_HEAD = """# Configs: one per paper experiment, and modern recipes

Generated by `python configs/generate.py` from the tables in that script (Table 1, 2, 3, 4 and
Fig. 4 of the paper; recipes for newer checkpoints in `modern/`, see
[Modern checkpoints](#modern-checkpoints-beyond-the-paper)); edit the tables there, not the YAML
files. The YAML files ship inside the package (`src/moejet/configs/`), so an installed moejet
has them too: `moejet configs` lists their names and `moejet train --config NAME` runs one
(`--config FILE` takes your own YAML file). Every file holds only what differs from the defaults
of `moejet.train.config.Config`, which are the paper's recipe;
`moejet train --config NAME --print-config` shows it resolved, every key. The recipe and where each value
comes from are in [Recipe and sources](#recipe-and-sources) below; the paper-vs-release switches
of the model and recycling code live in `src/moejet/variants.py` (every config runs `variant: paper`, the
default).

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
moejet train --config table1_vit_t_jetpack_cifar100
# 4 GPUs on one machine (same global batch, so the same result)
torchrun --nproc_per_node 4 -m moejet train --config table1_vit_t_jetpack_cifar100
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
        lines += [f"- {title}:", "  `for c in $(moejet configs '" + table + "_*'); do moejet train --config $c; done`"]
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
    return "\n".join(lines) + "\n\n" + modern_readme()


# =====================================================================================================================
# Modern checkpoints: recipes beyond the paper's tables
# =====================================================================================================================
# Checkpoints the paper predates (DINOv2, CLIP, ConvNeXt-V2), recycled with `model.name: auto` (docs/recycling.md,
# Modern checkpoints): the successor is moejet's `jetmoe` on the dense checkpoint's architecture, else on the
# predecessor's. Each follows the paper's rule where its family allows (paper §4.3: V-JetMoE-T takes its experts from
# the larger ViT-S in21k and its dense part from the smaller ViT-T in21k) and the paper's fine-tuning recipe (Tables
# 6-7) exactly as the configs above; every other choice is listed with its source ("ours" with the reason). They have
# no paper result, and they are written to configs/modern/, apart from the paper's experiments.

MODERN_DIR = "modern"


@dataclass(frozen=True)
class Choice:
    """One choice of a modern recipe, its value and where it comes from (paper / release / timm / ours)."""

    what: str
    value: str
    source: str


@dataclass(frozen=True)
class Modern:
    """A modern recipe: ``model.name: auto`` with ``model.init: recycle``, fine-tuned on ``dataset``."""

    name: str
    title: str
    dataset: str
    classes: int  # the dataset's classes (the standalone recycle command's head)
    predecessor: str
    out: str  # runs/recycle/<out> of the standalone command
    moe_kwargs: dict[str, Any]  # model.kwargs besides pooling and expert regularisation (MoE layers, experts)
    predecessor_kwargs: dict[str, Any] = field(default_factory=dict)
    dense_checkpoint: str | None = None
    dense_model: str | None = None
    dense_kwargs: dict[str, Any] = field(default_factory=dict)
    dense_save: str | None = None  # how to write dense_checkpoint once, online
    choices: tuple[Choice, ...] = ()


def _arg(value: Any) -> str:
    return f"({','.join(map(str, value))})" if isinstance(value, (list, tuple)) else str(value)


# the dense part's file: timm's weights as a plain state dict (no moejet header), so the config names its
# architecture with recycle.dense_model / dense_kwargs (--dense-model / --dense-arg)
SAVE_STATE = ("python -c \"import timm; from safetensors.torch import save_file; \\\n"
              "m = timm.create_model('{model}', pretrained=True{kwargs}); \\\n"
              "save_file(m.state_dict(), '{path}')\"")
COMMON_CHOICES = (
    Choice("fine-tuning recipe", "epochs, warmup, global batch, drop path of the dataset; optimizer, lr, "
           "augmentation, layer decay, expert regularisation, pooling, eval crop, seed, calibration as the paper's "
           "configs above", "paper Tables 6-7 and release, as listed in Recipe and sources"),
    Choice("strategy", "importance, 38,400 ImageNet calibration images",
           "paper Eq. 4-5 (the default strategy); the release's calibration count"),
    Choice("pooling", "avg (+ fc_norm)", "release: every MoE model above pools by average; the source's final "
           "norm is copied into fc_norm (--final-norm copy)"),
)
DINOV2_S = "checkpoints/vit_small_patch14_dinov2.lvd142m_224.safetensors"
CONVNEXTV2_N = "checkpoints/convnextv2_nano.fcmae_ft_in22k_in1k.safetensors"
MODERN = [
    Modern(
        "modern_dinov2_b14_s14_cifar100", "V-JetMoE-S/14 from DINOv2: ViT-B/14 experts, ViT-S/14 dense part",
        "cifar100", 100, "vit_base_patch14_dinov2.lvd142m", "modern_dinov2_b14_s14",
        {"moe_layers": list(range(6, 12)), "core_experts": 128, "univ_experts": 256},
        predecessor_kwargs={"img_size": 224}, dense_checkpoint=DINOV2_S,
        dense_model="vit_small_patch14_dinov2.lvd142m", dense_kwargs={"img_size": 224},
        dense_save=SAVE_STATE.format(model="vit_small_patch14_dinov2.lvd142m", kwargs=", img_size=224",
                                     path=DINOV2_S),
        choices=(
            Choice("experts", "vit_base_patch14_dinov2.lvd142m", "paper §4.3's rule: the larger checkpoint of the "
                   "family (as ViT-S for V-JetMoE-T); lvd142m is timm's only DINOv2 ViT-B/14 weights"),
            Choice("dense part", "vit_small_patch14_dinov2.lvd142m (384 channels, 6 heads of 64: whole heads of "
                   "ViT-B/14's 12)", "paper §4.3's rule: the smaller checkpoint of the same family (as ViT-T)"),
            Choice("image size", "224 for both (16x16 patches + class token = 257 tokens)",
                   "paper §4.1 (its models at 224x224: 197 tokens for ViT-T/16) and data.img_size of every config "
                   "above; DINOv2 is released at 518, and timm resamples its position embedding to 16x16 when it "
                   "loads the weights with img_size=224"),
            Choice("MoE layers", "blocks 7:12 (moe_layers 6-11)", "paper Eq. 3: V-JetMoE-T's SpheroMoE in blocks 7:12, "
                   "the second half of its 12 blocks; also jetmoe's default"),
            Choice("experts", "128 core / 256 universal", "paper §4.1's rule, N/2 core and N universal experts for "
                   "N tokens (98 / 196 for ViT-T's 197): 257 // 2 = 128 and twice that; also jetmoe's default"),
        ),
    ),
    Modern(
        "modern_clip_b16_laion2b_cifar100", "CLIP ViT-B/16 (LAION-2B), same width: experts and dense part from one "
        "checkpoint", "cifar100", 100, "vit_base_patch16_clip_224.laion2b", "modern_clip_b16_laion2b",
        {"moe_layers": list(range(6, 12)), "core_experts": 32, "univ_experts": 64},
        choices=(
            Choice("checkpoint", "vit_base_patch16_clip_224.laion2b (OpenCLIP's image tower, GELU)", "ours: the "
                   "CLIP ViT-B/16 that timm builds as trained; timm's .openai weights were trained with QuickGELU, "
                   "which only vit_base_patch16_clip_quickgelu_224.openai reproduces"),
            Choice("dense part", "the same checkpoint (no dense checkpoint: same width)", "ours: timm has no smaller "
                   "CLIP ViT trained like it (its smaller CLIP ViTs are TinyCLIP distillations on other data, "
                   "vit_medium_patch16_clip_224.tinyclip_yfcc15m and vit_xsmall_patch16_clip_224.tinyclip_yfcc15m), "
                   "so paper §4.3's rule has no smaller member to take; every core expert then holds all 3,072 "
                   "neurons (importance sampling 3,072 of 3,072 draws them all) and each universal expert 768 of them"),
            Choice("MoE layers", "blocks 7:12 (moe_layers 6-11)", "paper Eq. 3, as V-JetMoE-T (blocks 7:12 of 12)"),
            Choice("experts", "32 core / 64 universal", "ours: paper Table 4's 32 / 64 variant (87.8 on CIFAR-100 "
                   "for V-JetMoE-T, against 88.4 with 98 / 196); at ViT-B width the paper's 98 / 196 has "
                   "{clip_98_196:,.0f} M parameters, 32 / 64 has {clip_32_64:,.0f} M (counted from the tensor "
                   "shapes on the meta device), near V-JetMoE-S's {vjetmoe_s:,.0f} M"),
        ),
    ),
    Modern(
        "modern_convnextv2_t_n_cifar100", "C-JetMoE-N from ConvNeXt-V2: ConvNeXt-V2-T experts, ConvNeXt-V2-N dense "
        "part", "cifar100", 100, "convnextv2_tiny.fcmae_ft_in22k_in1k", "modern_convnextv2_t_n",
        {"moe_layers": list(range(7, 14)), "core_experts": [0, 0, 98, 24], "univ_experts": [0, 0, 196, 48]},
        dense_checkpoint=CONVNEXTV2_N, dense_model="convnextv2_nano.fcmae_ft_in22k_in1k",
        dense_save=SAVE_STATE.format(model="convnextv2_nano.fcmae_ft_in22k_in1k", kwargs="", path=CONVNEXTV2_N),
        choices=(
            Choice("experts", "convnextv2_tiny.fcmae_ft_in22k_in1k", "paper App. A Table 5 recycles ConvNeXt-T "
                   "in22k; ConvNeXt-V2 has no in22k-only weights in timm, and fcmae_ft_in22k_in1k (FCMAE "
                   "pre-training, ImageNet-22k then -1k fine-tuning) is the nearest; timm's pretrained_cfg names "
                   "its licence cc-by-nc-4.0"),
            Choice("dense part", "convnextv2_nano.fcmae_ft_in22k_in1k (dims 80-640, depths 2-2-8-2)", "paper §4.3's "
                   "rule: a smaller checkpoint of the same family; nano is the widest ConvNeXt-V2 narrower than T "
                   "with ImageNet-22k weights (atto, femto, pico have fcmae and ft_in1k only). The successor has "
                   "nano's 14 blocks; block stages.s.blocks.j takes its experts from T's block of the same name "
                   "(T's extra blocks give none)"),
            Choice("MoE layers", "blocks 8:14 (moe_layers 7-13: stage 3 blocks 4-8, stage 4)", "C-JetMoE-F's layout "
                   "(moejet's cjetmoe_femto: SpheroMoE in the second half of the blocks, 10:18 of 18), as V-JetMoE-T's "
                   "7:12 of 12 (paper Eq. 3); also jetmoe's default"),
            Choice("experts", "stage 3: 98 core / 196 universal, stage 4: 24 / 48", "C-JetMoE-F's counts "
                   "(cjetmoe_femto), half of the 14x14 and 7x7 tokens at 224 as paper §4.1's N/2 rule; also jetmoe's "
                   "default"),
            Choice("1x1-conv MLPs", "nano is built with Linear MLPs (conv_mlp=False): the same weights",
                   "ours: MoE experts replace Linear MLPs; a plain state-dict file of the conv-MLP nano loads "
                   "into them"),
        ),
    ),
]


def modern_config_dict(m: Modern) -> dict[str, Any]:
    spec, batch, warmup, epochs, drop_path = DATASETS[m.dataset]
    dense = {"dense_checkpoint": m.dense_checkpoint}
    if m.dense_checkpoint:
        dense.update(dense_model=m.dense_model, dense_kwargs=m.dense_kwargs)
    return {
        "name": m.name,
        "description": f"modern (beyond the paper): {m.title}, on {m.dataset}. No paper result.",
        "model": {"name": "auto", "kwargs": {**m.moe_kwargs, "global_pool": "avg", **EXPERT_REGULARISATION},
                  "init": "recycle", "drop_path_rate": drop_path},
        "recycle": {"predecessor": m.predecessor, "pretrained": True, "predecessor_kwargs": m.predecessor_kwargs,
                    **dense, "strategy": "importance", "calib_data": "imagenet", "calib_images": CALIB_IMAGES},
        "data": {"dataset": spec, "img_size": 224, "crop_pct": CROP_PCT},
        "optim": {"layer_decay": LAYER_DECAY},
        "schedule": {"epochs": epochs, "warmup_epochs": warmup},
        "train": {"batch_size": batch, "micro_batch_size": MICRO_BATCH[batch], "seed": SEED,
                  "eval_every": NO_RELEASE_EVAL[0]},
    }


def modern_command(m: Modern) -> str:
    """The standalone ``moejet recycle`` command of the config's recycle section (with the dataset's head)."""
    parts = [f"moejet recycle --predecessor {m.predecessor} --pretrained"]
    parts += [" ".join(f"--predecessor-arg {k}={_arg(v)}" for k, v in m.predecessor_kwargs.items())]
    if m.dense_checkpoint:
        parts += [f"--dense-checkpoint {m.dense_checkpoint}",
                  " ".join([f"--dense-model {m.dense_model}"] + [f"--dense-arg {k}={_arg(v)}"
                                                                  for k, v in m.dense_kwargs.items()])]
    succ = {**m.moe_kwargs, "global_pool": "avg", "num_classes": m.classes}
    parts += ["--successor auto " + " ".join(f"--successor-arg '{k}={_arg(v)}'" for k, v in list(succ.items())[:2]),
              " ".join(f"--successor-arg '{k}={_arg(v)}'" for k, v in list(succ.items())[2:]),
              f"--strategy importance {RECYCLE_CALIB} --out runs/recycle/{m.out}"]
    return " \\\n    ".join(p for p in parts if p)


def _count(name: str, kwargs: dict[str, Any]) -> float:
    import timm
    import torch

    import moejet.models  # noqa: F401  (registers jetmoe)

    with torch.device("meta"):
        model = timm.create_model(name, **kwargs)
    return sum(p.numel() for p in model.parameters()) / 1e6


def modern_params(m: Modern, **moe_kwargs: Any) -> float:
    """Parameters (M) of the config's model (``moe_kwargs`` changed), counted on the meta device (no weights, no
    network). The successor is resolved as ``model.name: auto`` resolves it, from the dense model's name and
    kwargs (the checkpoint file need not exist here)."""
    from moejet.recycle.pipeline import AUTO, resolve_successor

    config = config_from_dict(modern_config_dict(dataclasses.replace(m, moe_kwargs={**m.moe_kwargs, **moe_kwargs})))
    r = config.recycle
    name, kwargs = resolve_successor(AUTO, config.model.kwargs, predecessor=r.dense_model or r.predecessor,
                                     predecessor_checkpoint=None,
                                     predecessor_kwargs=r.dense_kwargs if r.dense_model else r.predecessor_kwargs)
    return _count(name, {**kwargs, "num_classes": m.classes})


@functools.cache
def modern_counts() -> dict[str, float]:
    """The parameter counts the choices quote, counted when the files are written."""
    clip = next(m for m in MODERN if m.name.startswith("modern_clip"))
    return {"clip_98_196": modern_params(clip, core_experts=98, univ_experts=196),
            "clip_32_64": modern_params(clip),
            "vjetmoe_s": _count("vjetmoe_small_patch16_224", {"num_classes": 100})}


def _source(choice: Choice) -> str:
    return choice.source.format(**modern_counts())


def _comment(text: str, indent: str = "#   ") -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width=118, initial_indent=indent, subsequent_indent=indent + "  "))


def write_modern_configs(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.yaml"):
        old.unlink()
    paths = []
    for m in MODERN:
        config = config_from_dict(modern_config_dict(m))  # validates
        choices = "\n".join(_comment(f"{c.what} = {c.value}: {_source(c)}") for c in (*m.choices, *COMMON_CHOICES))
        path = out_dir / f"{m.name}.yaml"
        path.write_text(f"# {config.description}\n# Generated by configs/generate.py (modern section): edit the "
                        f"table there. Recipe: configs/README.md, Modern checkpoints.\n# Choices and sources:\n"
                        f"{choices}\n{DEFAULTS_NOTE}\n"
                        f"# train.eval_every: {NO_RELEASE_EVAL[0]} = {NO_RELEASE_EVAL[1]}; the last epoch is always "
                        f"evaluated\n{dump_config(config, resolve_lr=False, changes_only=True)}")
        paths.append(path)
    return paths


def modern_readme() -> str:
    lines = [
        "## Modern checkpoints (beyond the paper)\n",
        f"`{MODERN_DIR}/` (`moejet configs 'modern_*'`) holds recipes for checkpoints the paper predates, written by "
        "the modern section of "
        "`generate.py`. Each config has `model.name: auto` with `model.init: recycle`: the successor is moejet's "
        "`jetmoe` built on the architecture of `recycle.dense_checkpoint` (named by `recycle.dense_model` and "
        "`recycle.dense_kwargs`), else of the predecessor, with the MoE layers and experts of `model.kwargs` "
        "([docs/recycling.md, Modern checkpoints](../docs/recycling.md#modern-checkpoints)). They follow the "
        "paper's rule where the family allows it (experts from the larger checkpoint, the dense part from the "
        "smaller one of the same family, paper §4.3) and fine-tune with the recipe of the configs above (paper "
        "Tables 6-7); they have no paper result. Each config's header lists its choices and their sources; so does "
        "the list below.\n",
        "Step 0, once, online: the dense parts as plain timm state dicts (the configs name their architecture):\n",
        "```bash", "mkdir -p checkpoints"]
    lines += [m.dense_save for m in MODERN if m.dense_save]
    lines += ["```\n",
              "Step 1 runs inside `moejet train` (`moejet train --config NAME`), as for the "
              "configs above; the standalone commands below write the same recipe once, with the dataset's head. "
              "A run then starts from it with `--set model.name=jetmoe --set model.init=checkpoint --set "
              "model.init_checkpoint=runs/recycle/NAME/model.safetensors --set recycle=null` (the file's header "
              "names the base and its arguments).\n"]
    for m in MODERN:
        lines += [f"`{m.out}` (the recipe of `{m.name}`):\n", "```bash", modern_command(m), "```\n"]
    lines += ["| config | successor | experts from | dense part | MoE blocks | experts (core / universal) "
              "| params (M) |", "| --- | --- | --- | --- | --- | --- | ---: |"]
    for m in MODERN:
        kw = m.moe_kwargs
        blocks = f"{kw['moe_layers'][0] + 1}:{kw['moe_layers'][-1] + 1}"
        experts = (f"{kw['core_experts']} / {kw['univ_experts']}" if not isinstance(kw["core_experts"], list) else
                   "; ".join(f"{c} / {u}" for c, u in zip(kw["core_experts"], kw["univ_experts"]) if c))
        lines.append(f"| `{m.name}` | {m.title.split(':')[0]} | `{m.predecessor}` | "
                     f"`{m.dense_model or m.predecessor}` | {blocks} | {experts} | {modern_params(m):.1f} |")
    lines += ["", "params: counted from the model's tensor shapes on the meta device by `generate.py`; experts per "
              "stage for ConvNeXt (stages 3, 4).", "", "Choices and sources, per config:", ""]
    for m in MODERN:
        lines.append(f"- `{m.name}`:")
        lines += [f"  - **{c.what}** = {c.value}: {_source(c)}" for c in m.choices]
    lines.append("- every modern config:")
    lines += [f"  - **{c.what}** = {c.value}: {_source(c)}" for c in COMMON_CHOICES]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    if moejet.configs.PACKAGED_DIR != PACKAGED:
        sys.exit(f"configs/generate.py: moejet is imported from {moejet.configs.PACKAGED_DIR.parent}, not from this "
                 f"checkout's {PACKAGED.parent}: install this checkout (pip install -e .) or run with PYTHONPATH=src")
    out_dir, readme_dir = (Path(argv[0]),) * 2 if argv else (PACKAGED, HERE)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = write_configs(out_dir)
    modern = write_modern_configs(out_dir / MODERN_DIR)
    (readme_dir / "README.md").write_text(readme())
    print(f"wrote {len(written)} configs and {len(modern)} modern configs ({MODERN_DIR}/) into {out_dir}, README.md "
          f"into {readme_dir}")


if __name__ == "__main__":
    main(sys.argv[1:])
