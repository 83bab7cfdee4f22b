"""``moejet train``: fine-tune from a YAML config, or resume a run (also under ``torchrun --nproc_per_node N -m moejet
train ...``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from .common import integer


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="fine-tune a model from a YAML config (paper recipe), or resume a run",
        description="Train a model from a YAML config into a run directory. Under torchrun every process "
                    "joins one process group; train.batch_size stays the global batch whatever the process count.",
    )
    p.add_argument("--config", type=Path, metavar="NAME|FILE",
                   help="a packaged config by name (moejet configs lists them) or a YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=1e-3 --set model.kwargs.depth=6 (repeatable)")
    p.add_argument("--out", type=Path, help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR where it stopped")
    p.add_argument("--extend", choices=("continue", "cosine-restart"),
                   help="with --resume and a larger schedule.epochs: continue = the cosine recomputed for the new "
                        "length; cosine-restart = a new cosine from optim.lr over the added epochs")
    p.add_argument("--stop-after", type=integer(1), metavar="EPOCHS",
                   help="leave after this many epochs of this invocation (the run stays resumable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (one summary line per epoch)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train import dump_config, load_config, train

    if args.resume is not None:
        if args.config is not None:
            raise UserError("--resume uses the run's own config.yaml: drop --config (use --set to change values)")
        train(run_dir=args.resume, resume=True, extend=args.extend, overrides=args.overrides,
              stop_after=args.stop_after, progress=not args.no_progress)
        return 0
    if args.extend is not None:
        raise UserError("--extend lengthens a resumed run: use it with --resume RUN_DIR --set schedule.epochs=N")
    if args.config is None:
        raise UserError("give --config NAME|FILE (moejet configs lists the packaged names) or --resume RUN_DIR")
    config = load_config(args.config, args.overrides)
    if args.print_config:
        print(dump_config(config), end="")
        return 0
    if config.name == "run":
        config.name = args.config.stem
    train(config, args.out or Path("runs") / config.name, stop_after=args.stop_after, progress=not args.no_progress)
    return 0
