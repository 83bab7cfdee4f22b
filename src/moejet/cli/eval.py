"""``moejet eval``: top-1 / top-5 of a run's checkpoint, or of any checkpoint on a config's val split (also under
``torchrun``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import UserError
from ..rundir import EVAL_FILE
from .common import integer


def register(subparsers: argparse._SubParsersAction) -> None:
    e = subparsers.add_parser("eval", help="top-1 / top-5 of a run or a checkpoint on a dataset's val split")
    source = e.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, metavar="RUN_DIR", help="a `moejet train` run directory")
    source.add_argument("--checkpoint", type=Path, metavar="FILE", help="a weights file (needs --config)")
    e.add_argument("--config", type=Path, help="config naming the dataset (with --checkpoint)")
    e.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (e.g. --set data.root=/data)")
    e.add_argument("--which", choices=("best", "last"), default="last",
                   help="checkpoint of the run (default last; best is selected on the val split it is scored on: "
                   "for torchvision datasets their official test split, for folder:PATH its val/ images)")
    e.add_argument("--batch-size", type=integer(1), help="images per process and batch")
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: the config's train.device")
    e.add_argument("--out", type=Path, help="eval.json path (default: RUN_DIR/eval.json or next to --checkpoint)")
    e.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..io.files import write_json
    from ..train import load_config
    from ..train.evaluation import evaluate_checkpoint, evaluate_run, format_result

    if args.run is not None:
        if args.config is not None:
            raise UserError("--run uses the run's own config.yaml: drop --config")
        result = evaluate_run(args.run, args.which, args.batch_size, args.device, args.overrides)
        out = args.out or args.run / EVAL_FILE
    else:
        if args.config is None:
            raise UserError("--checkpoint needs --config FILE naming the dataset to evaluate on")
        result = evaluate_checkpoint(args.checkpoint, load_config(args.config, args.overrides), args.batch_size,
                                     args.device)
        out = args.out or args.checkpoint.with_name(f"{args.checkpoint.stem}.eval.json")
    if int(os.environ.get("RANK", "0")) == 0:
        print(format_result(result))
        write_json(out, result)
    return 0
