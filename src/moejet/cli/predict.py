"""``moejet predict``: a trained run or a published model on image files and folders: ``file  label  probability``
rows (or JSON lines), with the model's own eval transform and class names."""

from __future__ import annotations

import argparse

from .common import integer


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict", help="classify image files or folders with a trained run or a published model",
        description="Run a model on images: one row per image and class (file, label, probability), the most "
                    "probable first. The model's own preprocessing and class names are used.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", metavar="RUN_DIR", help="a `moejet train` run directory (its last weights)")
    source.add_argument("--model", metavar="MODEL",
                        help="local-dir:PATH (a moejet publish folder), hf-hub:ID or a moejet .safetensors file")
    p.add_argument("images", nargs="+", metavar="IMAGES_OR_FOLDER", help="image files and folders (searched "
                   "recursively)")
    p.add_argument("--top-k", type=integer(1), default=5, help="classes per image (default 5)")
    p.add_argument("--batch-size", type=integer(1), default=32, help="images per forward pass (default 32)")
    p.add_argument("--device", default="auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda, ...")
    p.add_argument("--json", action="store_true", help="one JSON object per image instead of rows")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from ..predict import image_files, load_predictor, predict

    files = image_files(args.images)
    predictor = load_predictor(run=args.run, model=args.model)
    for p in predict(predictor, files, args.top_k, args.batch_size, args.device):
        if args.json:
            print(json.dumps({"file": p.file, "top": [{"label": label, "probability": round(prob, 6)}
                                                      for label, prob in p.top]}), flush=True)
        else:
            print("\n".join(f"{p.file}  {label}  {prob:.4f}" for label, prob in p.top), flush=True)
    return 0
