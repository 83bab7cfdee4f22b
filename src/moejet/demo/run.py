"""``moejet demo``: the MoE Jetpack story in miniature, measured end to end on whatever machine runs it.

1. load the shipped predecessors (pre-trained on ``synthetic-upstream``; ``--pretrain`` regenerates them);
2. recycle them into a mini V-JetMoE (importance sampling, dual path) and, for the Sparse Upcycling arm,
   copy the same-width dense MLP into every expert;
3. fine-tune every arm on ``synthetic-downstream`` with the same recipe, epochs, batch and seed;
4. write ``results.md`` / ``results.json`` (top-1 at the last epoch, params, MACs, wall time), a convergence
   plot, the analysis pictures of the MoE Jetpack model, and ``report.md``.

The downstream val split is only ever *reported*: every arm runs its fixed number of epochs and the last
epoch's accuracy is the result (no best-epoch picking, no tuning on it).
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..analysis.cost import count_macs, count_params
from ..data import build_dataset
from ..errors import UserError
from ..io.files import write_json, write_text
from ..io.weights import build_from_checkpoint
from ..options import DEMO_DUAL, DEMO_UPCYCLED, DEMO_WITH_DENSE, OptionError, RecycleOptions
from ..rundir import LAST, REPORT_FILE
from ..train import train
from ..train.config import Config, config_from_dict
from .pretrain import ABLATION, ASSETS, RECORD, REGIME, load_record
from .report import seed_summary, write_report
from .setup import (
    ARMS,
    ASSET_S,
    ASSET_T,
    HEADLINE,
    PREDECESSOR_S,
    PREDECESSOR_T,
    UPSTREAM_CLASSES,
    Arm,
    Budget,
    recipe,
)


def check_assets(assets: Path) -> dict[str, Path]:
    paths = {"S": assets / ASSET_S, "T": assets / ASSET_T}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise UserError(f"demo predecessor {missing[0]} is missing: regenerate it with `moejet demo --pretrain`")
    return paths


# moejet demo --recycle-options: which recycled arms take an option (the others recycle without it), by the
# RecycleOptions field's ``demo`` tag. Sparse Upcycling recycles T alone (no dense checkpoint); the other recycled
# arms take experts from S and the dense part from T; only MoE Jetpack's successor has both expert banks.
_UPCYCLED = lambda arm: arm.init == "recycle:upcycle"
_WITH_DENSE = lambda arm: arm.init.startswith("recycle:") and not _UPCYCLED(arm)
DEMO_ARMS = {DEMO_UPCYCLED: _UPCYCLED, DEMO_DUAL: lambda arm: _WITH_DENSE(arm) and "univ_experts" in arm.model[1],
             DEMO_WITH_DENSE: _WITH_DENSE}
RECYCLE_OPTION_ARMS = {f.name: DEMO_ARMS[f.metadata["demo"]] for f in fields(RecycleOptions) if f.metadata["demo"]}


def arm_recycle_options(arms: list[Arm], options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``--recycle-options``: per recycled arm (key) the options it takes
    (:data:`RECYCLE_OPTION_ARMS`), each value checked as ``moejet recycle`` checks it. An unknown option, or one no
    arm of this run takes, is a UserError."""
    unknown = sorted(set(options) - set(RECYCLE_OPTION_ARMS))
    if unknown:
        raise UserError(f"--recycle-options {unknown[0]} is not a recycling option the demo applies: use "
                        f"{', '.join(RECYCLE_OPTION_ARMS)}")
    recycled = [a for a in arms if a.init.startswith("recycle:")]
    taken = {a.key: {k: v for k, v in options.items() if RECYCLE_OPTION_ARMS[k](a)} for a in recycled}
    for key in options:
        if not any(key in values for values in taken.values()):
            goes = "; ".join(f"{', '.join(f.name for f in fields(RecycleOptions) if f.metadata['demo'] == tag)} "
                             f"to {tag}" for tag in DEMO_ARMS)
            raise UserError(f"--recycle-options {key}: no recycled arm of this run takes it ({goes}; drop "
                            "--core-only)")
    for arm in recycled:
        try:
            RecycleOptions(strategy=arm.init.split(":", 1)[1], **taken[arm.key]).check()
        except OptionError as err:
            raise UserError(f"--recycle-options for the {arm.label} arm: {err}") from None
    return taken


def recycle_arm(arm: Arm, predecessors: dict[str, Path], out_dir: Path, budget: Budget, device: str,
                seed: int, options: dict[str, Any] | None = None, calib_data: str | None = None
                ) -> tuple[Path, float]:
    """Recycle the predecessors into ``arm``'s successor; returns (model.safetensors, seconds). ``options``: the
    arm's :class:`~moejet.options.RecycleOptions` beyond its strategy and ``seed`` (its share of
    ``--recycle-options``).

    Calibration images come from ``calib_data``'s train split, by default the predecessors' own (upstream) training
    data, as the released code calibrates on an ImageNet subset.
    """
    from ..recycle import calibration_loader, load_dense_state, load_predecessor, recycle, write_outputs

    strategy = arm.init.split(":", 1)[1]
    start = time.perf_counter()
    if strategy == "upcycle":  # Sparse Upcycling: copies of the same-width dense MLP
        (name, kwargs), path, dense = PREDECESSOR_T, predecessors["T"], None
    else:  # MoE Jetpack: experts from the wider S, dense part from the same-width T
        (name, kwargs), path, dense = PREDECESSOR_S, predecessors["S"], predecessors["T"]
    successor, successor_kwargs = arm.model[0], dict(arm.model[1], num_classes=UPSTREAM_CLASSES)
    predecessor = load_predecessor(name, path, kwargs=kwargs)
    loader, _ = calibration_loader(calib_data or budget.pretrain_upstream, predecessor, budget.calib_images, 64,
                                   seed=seed)
    dense_state = load_dense_state(dense, successor, successor_kwargs, seed) if dense else None
    state, report = recycle(predecessor, successor, successor_kwargs, loader,
                            RecycleOptions(strategy=strategy, seed=seed, **(options or {})), dense_state, device)
    report["predecessor"]["name"] = name
    model_path, _ = write_outputs(out_dir, state, report, successor, successor_kwargs)
    return model_path, time.perf_counter() - start


def arm_config(arm: Arm, init_checkpoint: Path | None, budget: Budget, seed: int, device: str) -> dict[str, Any]:
    name, kwargs = arm.model
    config = recipe(budget.epochs, budget.warmup, budget.batch, budget.lr, seed, device, budget.eval_every)
    config.update(
        name=f"demo-{arm.key}", description=f"moejet demo arm: {arm.label}",
        model={"name": name, "kwargs": dict(kwargs), "drop_path_rate": 0.1,
               "init": "checkpoint" if init_checkpoint else "scratch",
               "init_checkpoint": str(init_checkpoint) if init_checkpoint else None},
    )
    config["data"] = {**config["data"], "dataset": budget.downstream}
    return config


def run_demo(out: Path, budget: Budget, device: str = "cpu", seed: int = 0, include_optional: bool = True,
             assets: Path = ASSETS, analyze: bool = True,
             recycle_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run every arm into ``out``; returns the results written to ``out/results.json``. ``recycle_options``
    (``--recycle-options``): recycling options for the recycled arms that take them (:func:`arm_recycle_options`),
    recorded per arm as ``recycle_options``."""
    if (out / "results.json").exists() or (out / "runs").exists():
        raise UserError(f"{out} already holds a demo run: pass another --out or delete it")
    predecessors = check_assets(assets)
    arms = [a for a in ARMS if include_optional or not a.optional]
    per_arm = arm_recycle_options(arms, recycle_options or {})
    start = time.perf_counter()
    total_epochs = budget.epochs * len(arms)
    overall = tqdm(total=total_epochs, desc="demo", unit="epoch", position=0, dynamic_ncols=True)
    rows = []
    for arm in arms:
        init, recycle_s = None, 0.0
        if arm.init == "dense-T":
            init = predecessors["T"]
        elif arm.init.startswith("recycle:"):
            overall.set_postfix_str(f"{arm.label}: recycling")
            init, recycle_s = recycle_arm(arm, predecessors, out / "recycled" / arm.key, budget, device, seed,
                                          per_arm[arm.key])
        config = config_from_dict(arm_config(arm, init, budget, seed, device))

        def on_epoch(row: dict[str, Any], label: str = arm.label) -> None:
            overall.update(1)
            top1 = f" top-1 {row['val_top1']:.1f}" if "val_top1" in row else ""
            overall.set_postfix_str(f"{label}: epoch {row['epoch']}/{budget.epochs}{top1}")

        metrics = train(config, out / "runs" / arm.key, progress=False, on_epoch=on_epoch, verbose=False)
        model, _, _ = build_from_checkpoint(out / "runs" / arm.key / LAST)
        macs, routing = count_macs(model, (3, 32, 32))
        correct, top5 = val_correctness(out / "runs" / arm.key / LAST, config, budget.final_val)
        rows.append({
            "arm": arm.key, "label": arm.label, "model": arm.model[0], "init": arm.init,
            "params": count_params(model), "macs": macs, "routing_macs": routing,
            "top1": 100.0 * sum(correct) / len(correct), "top5": top5,
            "train_val_top1": metrics[-1]["val_top1"], "correct": correct,
            "curve": [[m["epoch"], m["val_top1"]] for m in metrics if "val_top1" in m],
            "train_time_s": metrics[-1]["wall_time_s"],
            "recycle_time_s": recycle_s,
            "recycle_options": per_arm.get(arm.key),
        })
        tqdm.write(f"{arm.label:32s} top-1 {rows[-1]['top1']:5.1f}%  ({rows[-1]['train_time_s']:.0f} s)")
    overall.close()

    results = {
        "val_images": len(rows[0]["correct"]), "train_val_images": len(build_dataset(budget.downstream, "val")),
        "budget": budget.__dict__, "seed": seed, "device": device, "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "total_time_s": time.perf_counter() - start, "arms": rows,
        "predecessors": load_record(assets) if (assets / RECORD).is_file() else None,
        "ablation": json.loads((assets / ABLATION).read_text()) if (assets / ABLATION).is_file() else None,
        "regime": json.loads((assets / REGIME).read_text()) if (assets / REGIME).is_file() else None,
    }
    write_json(out / "results.json", results)
    pictures: list[Path] = []
    if analyze:
        pictures = analysis_pictures(out, rows, budget)
    write_report(out, results, pictures)
    return results


def run_seeds(out: Path, budget: Budget, device: str, seeds: list[int], include_optional: bool = True,
              recycle_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """:func:`run_demo` for each seed (into ``out/seed-N`` when there are several, with a mean ± spread summary
    in ``out/seeds.md``); prints each report's results table."""
    results = []
    for seed in seeds:
        seed_out = out if len(seeds) == 1 else out / f"seed-{seed}"
        results.append(run_demo(seed_out, budget, device, seed, include_optional=include_optional,
                                recycle_options=recycle_options))
        print(f"\nreport: {seed_out / 'report.md'}")
        print((seed_out / "results.md").read_text())
    if len(seeds) > 1:
        summary = seed_summary(results)
        write_text(out / "seeds.md", summary + "\n")
        print(summary)
    return results


def val_correctness(checkpoint: Path, config: Config, dataset: str, batch_size: int = 250) -> tuple[list[int], float]:
    """``(1/0 per image of dataset's val split: top-1 correct, top-5 accuracy in %)`` of ``checkpoint`` (eval)."""
    from torch.utils.data import DataLoader

    from ..train import build

    model = build_from_checkpoint(checkpoint, drop_path_rate=0.0)[0].eval()
    config = replace(config, data=replace(config.data, dataset=dataset))
    val = build.build_dataset(config, "val", build.build_transforms(config, model)[1])
    correct: list[int] = []
    in_top5 = 0
    with torch.inference_mode():
        for images, labels in DataLoader(val, batch_size=batch_size):
            logits = model(images)
            correct += (logits.argmax(-1) == labels).int().tolist()
            top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
            in_top5 += int((top == labels[:, None]).any(-1).sum())
    return correct, 100.0 * in_top5 / len(correct)


def analysis_pictures(out: Path, rows: list[dict[str, Any]], budget: Budget) -> list[Path]:
    """Convergence curves of every arm, and attention / contributions / recycling of the MoE Jetpack model."""
    from ..analysis.report import analyze_run, write_curves

    reference = next(r["top1"] for r in rows if r["arm"] == "dense_pretrained")
    files = write_curves([out / "runs" / r["arm"] for r in rows], out / "analysis", target=reference)[0]
    files += analyze_run(
        out / "runs" / HEADLINE, checkpoint=out / "runs" / HEADLINE / LAST, dataset_spec=budget.downstream,
        out_dir=out / "analysis" / HEADLINE, target=reference,
        recycle_report=out / "recycled" / HEADLINE / REPORT_FILE, root=out,
    )
    return files
