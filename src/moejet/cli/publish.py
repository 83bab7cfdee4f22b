"""``moejet publish``: a Hugging Face Hub folder (config.json, model.safetensors, model card) that
``timm.create_model("hf-hub:ID", pretrained=True)`` loads; optionally uploaded."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "publish", help="write a Hugging Face Hub folder (config.json, model.safetensors, model card); upload it",
        description="Publish a moejet model (a run directory or a .safetensors file written by moejet) so that "
                    "timm.create_model('hf-hub:ID', pretrained=True) or 'local-dir:DIR' loads it.",
    )
    p.add_argument("source", help="a `moejet train` run directory (its last.safetensors) or a moejet .safetensors file")
    p.add_argument("--repo-id", help="Hugging Face Hub repository to create/update, e.g. user/vjetmoe-tiny-cifar100")
    p.add_argument("--out", help="also (or only, without --repo-id) write the folder here; must be new or empty")
    p.add_argument("--private", action="store_true", help="create the Hub repository as private")
    p.add_argument("--token", help="Hub token (default: huggingface-cli login / HF_TOKEN)")
    p.add_argument("--no-macs", action="store_true", help="skip counting MACs for the model card (faster)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..io.hub import publish

    result = publish(args.source, args.repo_id, args.out, args.private, args.token, macs=not args.no_macs)
    print(f"published {args.source} -> {result}")
    if args.out:
        print(f'load it with: timm.create_model("local-dir:{args.out}", pretrained=True)  (after `import moejet`)')
    return 0
