"""Bad input never ends in a traceback: every subcommand, every config key, every typed CLI flag.

Each case runs ``moejet`` in process (``moejet.cli.run``) and asserts the contract of docs/faults.md: exit code 2,
exactly one line on stderr that names what is wrong, no traceback, and nothing written under the output path.

- ``ROWS``: a hand-written wrong input for each subcommand (missing file, file of the wrong kind, wrong type,
  out-of-range number, unknown name, a flag combination that cannot work);
- generated: for every key of the config schema a wrong-type and an out-of-range value, for every model keyword
  argument with a rule (``moejet.model_args.MODEL_KWARG_RULES``) the same, and for every CLI flag with a declared
  type or choices a wrong value.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Union

import pytest
import timm
import torch
import yaml

from moejet.cli import BUG_EXIT, build_parser, run
from moejet.io.weights import save_model
from moejet.model_args import MODEL_KWARG_RULES
from moejet.train.config import Config

TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2)
BASE_CONFIG = {
    "name": "bad-input",
    "model": {"name": "vjetmoe_tiny_patch16_224", "drop_path_rate": 0.0,
              "kwargs": {**TINY_VIT, "moe_layers": [2, 3], "core_experts": 2, "univ_experts": 4}},
    "data": {"dataset": "synthetic-downstream:size=32,per_class=2,val_per_class=1,classes=4", "img_size": 32,
             "num_workers": 0},
    "augment": {"auto_augment": None, "mixup": 0.0, "cutmix": 0.0, "random_erasing": 0.0},
    "optim": {"lr": 1e-3},
    "schedule": {"epochs": 1, "warmup_epochs": 0},
    "train": {"batch_size": 4, "device": "cpu", "telemetry_images": 0, "log_every": 0},
}
RECYCLE_SECTION = {"predecessor": "vit_small_patch16_224", "pretrained": True, "calib_images": 0,
                   "strategy": "uniform"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Inputs of every kind: a config, a predecessor, a moejet model file, and files of the wrong kind."""
    root = tmp_path_factory.mktemp("inputs")
    paths = {"config": root / "config.yaml", "text": root / "notes.txt", "pickle": root / "evil.pth",
             "truncated": root / "truncated.safetensors", "predecessor": root / "vit_s.safetensors",
             "model": root / "vjetmoe.safetensors", "recycle_config": root / "recycle.yaml",
             "dense": root / "dense.pth", "empty_dir": root / "empty", "eva": root / "eva02.safetensors",
             "siglip": root / "siglip.safetensors", "parallel": root / "parallel.pth"}
    paths["config"].write_text(yaml.safe_dump(BASE_CONFIG))
    paths["recycle_config"].write_text(yaml.safe_dump({**BASE_CONFIG, "model": {**BASE_CONFIG["model"],
                                                       "init": "recycle"}, "recycle": RECYCLE_SECTION}))
    paths["text"].write_text("not a checkpoint, not an image, not YAML: [\n")
    torch.save({"state_dict": {"w": torch.ones(1)}, "evil": Evil()}, paths["pickle"])
    vit = timm.create_model("vit_small_patch16_224", num_classes=4, **{**TINY_VIT, "embed_dim": 64})
    save_model(vit, paths["predecessor"], "vit_small_patch16_224", {"num_classes": 4, **TINY_VIT, "embed_dim": 64})
    torch.save(vit.state_dict(), paths["dense"])
    data = paths["predecessor"].read_bytes()
    paths["truncated"].write_bytes(data[: len(data) // 2])
    kwargs = {**BASE_CONFIG["model"]["kwargs"], "num_classes": 4}
    save_model(timm.create_model("vjetmoe_tiny_patch16_224", **kwargs), paths["model"], "vjetmoe_tiny_patch16_224",
               kwargs)
    paths["empty_dir"].mkdir()
    for key, name, kwargs in (("eva", "eva02_tiny_patch14_224", dict(TINY_VIT, patch_size=14, img_size=28)),
                              ("siglip", "vit_base_patch16_siglip_224", dict(TINY_VIT, patch_size=16))):
        save_model(timm.create_model(name, **kwargs), paths[key], name, kwargs)
    torch.save(timm.create_model("vit_small_patch16_18x2_224", **{**TINY_VIT, "depth": 2}).state_dict(),
               paths["parallel"])
    return paths


class Evil:
    """Unpickling this with plain ``pickle`` would run a shell command."""

    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def check_refused(argv: list[str], capsys, out: Path | None, expect: str | None = None) -> str:
    """Run ``moejet argv``; assert exit 2, one stderr line (containing ``expect``), no traceback, ``out`` untouched."""
    before = sorted(p.relative_to(out) for p in out.rglob("*")) if out is not None and out.exists() else None
    code = run([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip("\n").splitlines()
    assert code == 2, f"moejet {' '.join(map(str, argv))} exited {code}: {err}"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert "Traceback" not in err
    assert lines[0].startswith("moejet"), lines[0]
    if expect is not None:
        assert expect in lines[0], f"{expect!r} not in {lines[0]!r}"
    if out is not None:
        after = sorted(p.relative_to(out) for p in out.rglob("*")) if out.exists() else None
        assert after == before, f"{out} changed: {before} -> {after}"
    return lines[0]


# one row per subcommand and kind of mistake: (argv with {placeholders}, text the error line must contain)
ROWS = [
    # train
    (["train", "--config", "{missing}.yaml", "--out", "{out}"], "does not exist"),
    (["train", "--config", "{text}", "--out", "{out}"], "not valid YAML"),
    (["train", "--config", "{config}", "--set", "model.kwargs.depth=-1", "--out", "{out}"], "model.kwargs.depth"),
    (["train", "--config", "{config}", "--set", "optim.lr=fast", "--out", "{out}"], "optim.lr"),
    (["train", "--config", "{config}", "--set", "data.dataset=imagenet22k", "--out", "{out}"], "data.dataset"),
    (["train", "--config", "{config}", "--set", "model.name=vit_gigantic", "--out", "{out}"], "model.name"),
    (["train", "--config", "{config}", "--set", "train.batch_size=0", "--out", "{out}"], "train.batch_size"),
    (["train", "--config", "{config}", "--resume", "{out}"], "drop --config"),
    (["train", "--config", "{config}", "--extend", "continue", "--out", "{out}"], "--extend"),
    (["train", "--resume", "{empty_dir}"], "not a resumable run directory"),
    (["train", "--config", "{config}", "--stop-after", "0", "--out", "{out}"], "--stop-after"),
    (["train", "--config", "{recycle_config}", "--set", "recycle.strategy=magic", "--out", "{out}"],
     "recycle.strategy"),
    (["train", "--config", "{config}", "--set", "model.init=checkpoint", "--set",
      "model.init_checkpoint={pickle}", "--out", "{out}"], "evil.pth"),
    # eval
    (["eval", "--run", "{empty_dir}"], "not a moejet run directory"),
    (["eval", "--checkpoint", "{model}"], "needs --config"),
    (["eval", "--checkpoint", "{text}", "--config", "{config}", "--out", "{out}/eval.json"], "notes.txt"),
    (["eval", "--checkpoint", "{model}", "--config", "{config}", "--batch-size", "0"], "--batch-size"),
    # recycle
    (["recycle", "--predecessor-checkpoint", "{missing}.safetensors", "--successor", "vjetmoe_tiny_patch16_224",
      "--out", "{out}"], "does not exist"),
    (["recycle", "--predecessor", "vit_small_patch16_224", "--predecessor-checkpoint", "{truncated}",
      "--successor", "vjetmoe_tiny_patch16_224", "--out", "{out}"], "truncated.safetensors"),
    (["recycle", "--predecessor", "vit_small_patch16_224", "--predecessor-checkpoint", "{pickle}",
      "--successor", "vjetmoe_tiny_patch16_224", "--out", "{out}"], "evil.pth"),
    (["recycle", "--predecessor-checkpoint", "{predecessor}", "--successor", "vjetmoe_tiny_patch16_224",
      "--strategy", "magic", "--out", "{out}"], "--strategy"),
    (["recycle", "--predecessor-checkpoint", "{predecessor}", "--successor", "vjetmoe_tiny_patch16_224",
      "--calib-images", "-5", "--out", "{out}"], "--calib-images"),
    (["recycle", "--predecessor-checkpoint", "{predecessor}", "--successor", "vjetmoe_huge", "--out", "{out}"],
     "vjetmoe_huge"),
    (["recycle", "--predecessor-checkpoint", "{predecessor}", "--pretrained", "--successor",
      "vjetmoe_tiny_patch16_224", "--out", "{out}"], "not allowed with"),
    (["recycle", "--predecessor-checkpoint", "{predecessor}", "--successor", "vjetmoe_tiny_patch16_224",
      "--successor-arg", "depth=-1", "--out", "{out}"], "--successor-arg depth"),
    (["recycle", "--predecessor-checkpoint", "{predecessor}", "--successor", "vjetmoe_tiny_patch16_224",
      "--successor-arg", "img_size=32", "--successor-arg", "patch_size=8", "--successor-arg", "embed_dim=96",
      "--strategy", "uniform", "--calib-images", "0", "--out", "{out}"], "larger than the predecessor"),
    # recycle: --successor auto and today's checkpoints
    (["recycle", "--predecessor-checkpoint", "{predecessor}", "--dense-checkpoint", "{dense}", "--successor", "auto",
      "--out", "{out}"], "--dense-model"),
    (["recycle", "--predecessor-checkpoint", "{predecessor}", "--dense-checkpoint", "{dense}", "--dense-model",
      "vit_small_patch16_224", "--successor", "vjetmoe_tiny_patch16_224", "--out", "{out}"], "--dense-model"),
    (["recycle", "--predecessor-checkpoint", "{predecessor}", "--dense-model", "vit_small_patch16_224",
      "--successor", "auto", "--out", "{out}"], "--dense-checkpoint"),
    (["recycle", "--predecessor-checkpoint", "{eva}", "--successor", "auto", "--successor-arg", "embed_dim=24",
      "--successor-arg", "num_heads=2", "--strategy", "uniform", "--calib-images", "0", "--out", "{out}"],
     "whole heads"),
    (["recycle", "--predecessor-checkpoint", "{siglip}", "--successor", "auto", "--successor-arg", "global_pool=avg",
      "--strategy", "uniform", "--calib-images", "0", "--out", "{out}"], "attention-pool"),
    (["recycle", "--predecessor-checkpoint", "{predecessor}", "--successor", "auto", "--successor-arg",
      "pos_embed='none'", "--strategy", "uniform", "--calib-images", "0", "--out", "{out}"],
     "the predecessor has an absolute position embedding and the successor none"),
    (["recycle", "--predecessor-checkpoint", "{siglip}", "--successor", "vjetmoe_tiny_patch16_224",
      *[a for k, v in {**TINY_VIT, "moe_layers": (2, 3), "core_experts": 2, "univ_experts": 4}.items()
        for a in ("--successor-arg", f"{k}={v}")],
      "--strategy", "uniform", "--calib-images", "0", "--out", "{out}"], "attention-pool"),
    (["recycle", "--predecessor", "vit_small_patch16_18x2_224", "--predecessor-checkpoint", "{parallel}",
      *[a for k, v in {**TINY_VIT, "depth": 2}.items() for a in ("--predecessor-arg", f"{k}={v}")],
      "--successor", "auto", "--strategy", "uniform", "--calib-images", "0", "--out", "{out}"], "ParallelThingsBlock"),
    (["recycle", "--predecessor-checkpoint", "{eva}", "--dense-checkpoint", "{dense}", "--dense-model",
      "vit_small_patch16_224", "--successor", "auto", "--out", "{out}"], "does not match"),
    # demo
    (["demo", "--seeds", "abc", "--out", "{out}"], "--seeds"),
    (["demo", "--device", "tpu", "--out", "{out}"], "--device"),
    (["demo", "--pretrain-roles", "X", "--out", "{out}"], "--pretrain-roles"),
    # analyze
    (["analyze", "attention", "--checkpoint", "{missing}.safetensors", "--image", "{text}", "--out", "{out}"],
     "does not exist"),
    (["analyze", "attention", "--checkpoint", "{model}", "--image", "{text}", "--out", "{out}"], "notes.txt"),
    (["analyze", "contributions", "--checkpoint", "{model}", "--data", "nowhere", "--out", "{out}"], "nowhere"),
    (["analyze", "contributions", "--checkpoint", "{model}", "--data", "synthetic", "--images", "0",
      "--out", "{out}"], "--images"),
    (["analyze", "curves", "{empty_dir}", "--out", "{out}"], "metrics.jsonl"),
    (["analyze", "cost", "vit_gigantic", "--out", "{out}"], "vit_gigantic"),
    (["analyze", "cost", "vit_tiny_patch16_224", "--set", "depth=-2", "--out", "{out}"], "--set depth"),
    (["analyze", "cost", "vit_tiny_patch16_224", "--set", "num_heads=5", "--out", "{out}"], "num_heads"),
    (["analyze", "recycling", "{text}", "--out", "{out}"], "notes.txt"),
    # publish
    (["publish", "{missing}", "--out", "{out}"], "does not exist"),
    (["publish", "{model}"], "--repo-id"),
    (["publish", "{text}", "--out", "{out}"], "notes.txt"),
    # export
    (["export", "{text}", "--out", "{out}/m.pt2"], "notes.txt"),
    (["export", "{model}", "--format", "tflite", "--out", "{out}/m.tflite"], "--format"),
    (["export", "{model}", "--atol", "-1", "--out", "{out}/m.pt2"], "--atol"),
    # convert
    (["convert", "{missing}.pth", "--out", "{out}/m.safetensors"], "does not exist"),
    (["convert", "{dense}", "--out", "{out}/m.safetensors"], "not a MoE Jetpack checkpoint"),
    (["convert", "{pickle}", "--out", "{out}/m.safetensors"], "evil.pth"),
    # models
    (["models", "vit_gigantic"], "vit_gigantic"),
    # configs
    (["configs", "table9_*"], "no packaged config matches 'table9_*'"),
    # predict
    (["predict", "--model", "{model}", "{text}"], "has no class names"),
    (["predict", "--model", "{model}", "{empty_dir}"], "holds no images"),
    (["predict", "--model", "local-dir:{missing}", "{text}"], "no such folder"),
    (["predict", "--run", "{empty_dir}", "{text}"], "is not a moejet run directory"),
    # the program itself
    (["frobnicate"], "invalid choice"),
]


def fill(argv: list[str], files: dict[str, Path], tmp_path: Path) -> list[str]:
    names = {**{k: str(v) for k, v in files.items()}, "missing": str(tmp_path / "missing"),
             "out": str(tmp_path / "out")}
    return [a.format(**names) for a in argv]


@pytest.mark.parametrize("argv,expect", ROWS, ids=[f"{r[0][0]}-{i}" for i, r in enumerate(ROWS)])
def test_each_subcommand_refuses_bad_input_in_one_line(argv, expect, files, tmp_path, capsys):
    check_refused(fill(argv, files, tmp_path), capsys, tmp_path / "out", expect)


def test_every_subcommand_has_rows():
    assert {row[0][0] for row in ROWS} >= set(build_parser()._subparsers._group_actions[0].choices)


# ---------------------------------------------------------------------------------------- generated: config


FREE_FORM = {"name", "description", "data.root", "recycle.calib_root"}  # any string is a valid value


def leaves(cls: type, prefix: str = "") -> list[tuple[str, Any]]:
    """``(dotted key, type hint)`` of every field of the config schema."""
    out = []
    for field in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[field.name]
        if dataclasses.is_dataclass(hint):
            out += leaves(hint, f"{prefix}{field.name}.")
        else:
            out.append((f"{prefix}{field.name}", hint))
    return out


def base_type(hint: Any) -> Any:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def wrong_values(key: str, hint: Any) -> list[tuple[str, str]]:
    """``(kind, YAML text)``: a value of the wrong type and, where one exists, an out-of-range one."""
    hint = base_type(hint)
    origin = typing.get_origin(hint)
    if origin is dict:
        return [("type", "[1, 2]")]
    if origin in (tuple, list):
        return [("type", "abc"), ("range", "[-1.0, -1.0, -1.0]" if key in ("data.mean", "data.std")
                                   else "[-1.0, 2.0]")]
    if hint is bool:
        return [("type", "maybe")]
    if hint in (int, float):
        return [("type", "abc"), ("range", "-1"), ("range", ".nan")] if hint is float else [("type", "abc"),
                                                                                               ("range", "-1")]
    if hint is str:
        return [("type", "[1, 2]")] + ([] if key in FREE_FORM else [("range", "bogus-value" if key !=
                                                                              "train.wandb_project" else "''")])
    raise AssertionError(f"no wrong values for {key}: {hint}")


CONFIG_CASES = [(key, kind, text) for key, hint in leaves(Config) for kind, text in wrong_values(key, hint)]


@pytest.mark.parametrize("key,kind,text", CONFIG_CASES, ids=[f"{k}-{kind}-{t}" for k, kind, t in CONFIG_CASES])
def test_every_config_key_refuses_a_wrong_value(key, kind, text, files, tmp_path, capsys):
    config = files["recycle_config"] if key.startswith("recycle.") else files["config"]
    line = check_refused(["train", "--config", config, "--set", f"{key}={text}", "--out", tmp_path / "out"],
                         capsys, tmp_path / "out")
    assert key in line


def model_kwarg_values(name: str) -> list[str]:
    """A wrong-type value for every rule, and an out-of-range one where the rule has a range."""
    ok = MODEL_KWARG_RULES[name][0]
    candidates = ["'abc'", "-1", "[-3]", "nan"]
    return [c for c in candidates if not ok(yaml.safe_load(c.replace("nan", ".nan")))]


MODEL_CASES = [(name, value) for name in MODEL_KWARG_RULES for value in model_kwarg_values(name)]


@pytest.mark.parametrize("name,value", MODEL_CASES, ids=[f"{n}={v}" for n, v in MODEL_CASES])
def test_every_model_kwarg_is_checked_before_the_model_is_built(name, value, files, tmp_path, capsys):
    yaml_value = value.replace("nan", ".nan")
    line = check_refused(["train", "--config", files["config"], "--set", f"model.kwargs.{name}={yaml_value}",
                          "--out", tmp_path / "out"], capsys, tmp_path / "out")
    assert f"model.kwargs.{name}" in line


# ------------------------------------------------------------------------------------------ generated: flags


def typed_flags() -> list[tuple[list[str], str, str]]:
    """``(subcommand path, flag, wrong value)`` for every optional argument with a type or choices."""
    cases = []

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*path, name])
            elif action.option_strings and (action.choices is not None or callable(action.type)
                                            and action.type not in (str, Path)):
                flag = action.option_strings[-1]
                if action.choices is not None:
                    cases.append((path, flag, "not-a-choice"))
                if callable(action.type) and action.type not in (str, Path):
                    cases.append((path, flag, "abc"))
                    example = getattr(action.type, "invalid_example", None)
                    if example is not None:
                        cases.append((path, flag, example))

    walk(build_parser(), [])
    return cases


FLAG_CASES = typed_flags()


@pytest.mark.parametrize("path,flag,value", FLAG_CASES, ids=[f"{' '.join(p)} {f} {v}" for p, f, v in FLAG_CASES])
def test_every_typed_flag_refuses_a_wrong_value(path, flag, value, tmp_path, capsys):
    line = check_refused([*path, f"{flag}={value}"], capsys, None)
    assert flag in line


# ------------------------------------------------------------------------------------------------ safety net


def test_an_unexpected_exception_is_one_line_naming_a_traceback_file(monkeypatch, capsys):
    import moejet.cli.models

    def broken(args):
        raise RuntimeError("something moejet did not expect")

    monkeypatch.setattr(moejet.cli.models, "run", broken)
    assert run(["models"]) == BUG_EXIT
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "bug in moejet" in lines[0] and "Traceback" not in lines[0]
    path = Path(lines[0].split("the traceback is in ")[1].split(":")[0])
    assert "RuntimeError: something moejet did not expect" in path.read_text()
    path.unlink()
