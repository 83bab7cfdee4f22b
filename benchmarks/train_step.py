"""Images/s of one full training step (forward, loss, backward, grad clip, AdamW step) at 224 px.

    python benchmarks/train_step.py [--batch 8] [--steps 3] [--device cpu|cuda] [--amp none|bf16] [--threads 1]

Models: ViT-T, V-JetMoE-T, Soft MoE-T, ConvNeXt-F (Linear-MLP, depths 3,3,9,3) and C-JetMoE-F, with the
optimizer moejet train builds (AdamW, layer-wise lr decay, no-wd groups). The forward+backward time is
reported next to the full step: the MoE models carry 40-60x more parameters than their dense bases, and
on a CPU the optimizer's pass over them is a large share of the step. Prints a Markdown table and
writes benchmarks/results/train_step.json. Each MoE model's steps alternate with its dense reference's
(ViT-T, or ConvNeXt-F), so a ratio compares two models under the same machine load; a dense model's
row is from its first pairing. Runs with the malloc options the ``moejet`` program sets (``moejet.malloc``);
``MOEJET_MALLOC=default`` measures with the C library's.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path

import timm
import torch

import moejet  # noqa: F401  (registers the models)
from machine import apply_malloc, describe
from moejet.train.build import build_optimizer
from moejet.train.config import config_from_dict

RESULTS = Path(__file__).parent / "results" / "train_step.json"
MODELS = (  # (label, timm name, dense reference label)
    ("ViT-T", "vit_tiny_patch16_224", "ViT-T"),
    ("V-JetMoE-T", "vjetmoe_tiny_patch16_224", "ViT-T"),
    ("Soft MoE-T", "softmoe_vit_tiny_patch16_224", "ViT-T"),
    ("ConvNeXt-F", "convnext_femto_d18", "ConvNeXt-F"),
    ("C-JetMoE-F", "cjetmoe_femto", "ConvNeXt-F"),
)


class Stepper:
    """One model with the optimizer ``moejet train`` builds; ``step()`` times a full training step."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        torch.manual_seed(0)
        self.name, self.device = name, torch.device(args.device)
        self.model = timm.create_model(name, num_classes=100, drop_path_rate=0.1).to(self.device).train()
        self.optimizer = build_optimizer(config_from_dict({"optim": {"lr": 1e-4}}), self.model)
        self.images = torch.randn(args.batch, 3, 224, 224, device=self.device)
        self.labels = torch.randint(0, 100, (args.batch,), device=self.device)
        self.amp = args.amp == "bf16"
        self.fb: list[float] = []
        self.full: list[float] = []

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def step(self, record: bool = True) -> None:
        self._sync()
        start = time.perf_counter()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            loss = torch.nn.functional.cross_entropy(self.model(self.images).float(), self.labels)
        loss.backward()
        self._sync()
        middle = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._sync()
        if record:
            self.fb.append(middle - start)
            self.full.append(time.perf_counter() - start)

    def result(self, batch: int) -> dict:
        return {
            "model": self.name,
            "params_m": sum(p.numel() for p in self.model.parameters()) / 1e6,
            "fwd_bwd_ms": statistics.median(self.fb) * 1e3,
            "step_ms": statistics.median(self.full) * 1e3,
            "images_per_s": batch / statistics.median(self.full),
        }


def measure_pair(dense: str, moe: str, args: argparse.Namespace) -> tuple[dict, dict]:
    """Alternate the steps of a dense model and its MoE successor, so both see the same machine load."""
    pair = [Stepper(dense, args), Stepper(moe, args)]
    for _ in range(args.warmup):
        for s in pair:
            s.step(record=False)
    for _ in range(args.steps):
        for s in pair:
            s.step()
    results = tuple(s.result(args.batch) for s in pair)
    del pair
    gc.collect()
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3, help="timed steps per model (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", choices=("none", "bf16"), default="none")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1: steady numbers on a shared machine)")
    p.add_argument("--models", nargs="*", default=[label for label, _, ref in MODELS if label != ref],
                   help="MoE models, each timed in alternation with its dense reference")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    malloc = apply_malloc()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)

    names = {label: name for label, name, _ in MODELS}
    rows = {}
    for label, _, ref in MODELS:
        if label == ref or label not in args.models:
            continue
        dense, moe = measure_pair(names[ref], names[label], args)
        rows.setdefault(ref, {"label": ref, "reference": ref, **dense})
        rows[label] = {"label": label, "reference": ref, **moe, "step_ratio": moe["step_ms"] / dense["step_ms"],
                       "fwd_bwd_ratio": moe["fwd_bwd_ms"] / dense["fwd_bwd_ms"]}
        print(f"{label}: {moe['step_ms']:.0f} ms/step, {rows[label]['step_ratio']:.2f}x {ref} "
              f"(measured alongside: {dense['step_ms']:.0f} ms)", flush=True)
        rows[ref].setdefault("step_ratio", 1.0)
        rows[ref].setdefault("fwd_bwd_ratio", 1.0)

    device = describe(args.device) + ("" if args.device.startswith("cuda") else f", {args.threads} thread(s)")
    print(f"\nTraining step at 224 px, batch {args.batch}, {args.device} ({device}), amp {args.amp}, "
          f"malloc: {malloc}\n")
    print("| model | params (M) | fwd+bwd (ms) | full step (ms) | images/s | step / dense | fwd+bwd / dense |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows.values():
        print(f"| {r['label']} | {r['params_m']:.1f} | {r['fwd_bwd_ms']:.0f} | {r['step_ms']:.0f} | "
              f"{r['images_per_s']:.1f} | {r['step_ratio']:.2f}x | {r['fwd_bwd_ratio']:.2f}x |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "device": device, "batch": args.batch, "steps": args.steps, "amp": args.amp, "torch": torch.__version__,
        "malloc": malloc,
        "rows": list(rows.values()),
    }, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
