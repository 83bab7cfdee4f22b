"""configs/: the committed files are generate.py's output, load through the schema, and carry the fixed recipe."""

import dataclasses
import functools
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml

from moejet.configs import PACKAGED_DIR, config_names, packaged_configs, resolve_config
from moejet.errors import UserError
from moejet.io.files import plain_json
from moejet.train import build
from moejet.train.config import Config, batch_plan, config_to_dict, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"  # generate.py and README.md
PACKAGED = PACKAGED_DIR  # the YAML files, shipped in the package
YAMLS = sorted(PACKAGED.glob("*.yaml"))
SPHERO_MODELS = ("vjetmoe_tiny_patch16_224", "vjetmoe_small_patch16_224")
# every packaged config, fully resolved (each field, defaults included), as the configs resolved when each file was
# still a full dump of its config: the files may be rewritten, the configs they mean may not change
RESOLVED = Path(__file__).resolve().parent / "fixtures" / "resolved_configs.json"


def resolved(path: Path) -> dict:
    """The config ``path`` means, every key (its file holds only the keys that differ from the defaults)."""
    return config_to_dict(_load(path), resolve_lr=False)


@functools.cache
def _load(path: Path) -> Config:
    return load_config(path)


def is_sphero(cfg: dict) -> bool:
    m = cfg["model"]
    return m["name"] in SPHERO_MODELS or (m["name"] == "cjetmoe_femto" and m["kwargs"].get("moe_type") != "soft")


def test_committed_files_are_exactly_what_generate_writes(tmp_path, monkeypatch):
    """The package's configs (src/moejet/configs/) and configs/README.md are generate.py's output, byte for byte,
    and nothing else."""
    spec = importlib.util.spec_from_file_location("configs_generate", CONFIGS / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # no __pycache__ left in configs/
    monkeypatch.setitem(sys.modules, spec.name, generate)
    spec.loader.exec_module(generate)
    assert generate.PACKAGED == PACKAGED  # `python configs/generate.py` rewrites the package's copy
    generate.main([str(tmp_path)])
    assert sorted(p.name for p in CONFIGS.iterdir() if p.is_file()) == ["README.md", "generate.py"]
    assert (tmp_path / "README.md").read_bytes() == (CONFIGS / "README.md").read_bytes(), "rerun configs/generate.py"
    for sub in ("", generate.MODERN_DIR):
        written = sorted(p.name for p in (tmp_path / sub).glob("*.yaml"))
        packaged = sorted(p.name for p in (PACKAGED / sub).iterdir() if p.is_file() and p.name != "__init__.py")
        assert written == packaged, f"{sub or '.'}: rerun configs/generate.py"
        for name in written:
            assert (tmp_path / sub / name).read_bytes() == (PACKAGED / sub / name).read_bytes(), \
                f"{sub}/{name}: rerun configs/generate.py"
    # run against another copy of moejet (installed from elsewhere), it would write that copy's schema: it refuses
    monkeypatch.setattr(generate, "PACKAGED", tmp_path / "other" / "moejet" / "configs")
    with pytest.raises(SystemExit, match="not from this checkout"):
        generate.main([str(tmp_path / "out")])


def test_config_files_hold_only_what_differs_from_the_papers_defaults():
    """Two arms of one experiment differ in a few lines, not among a hundred: a default written out is a bug in
    generate.py's output (the test above checks the files are that output)."""
    defaults = plain_json(dataclasses.asdict(Config()))
    for path in sorted(PACKAGED.rglob("*.yaml")):
        for section, values in yaml.safe_load(path.read_text()).items():
            if isinstance(values, dict):
                identity = {"model": ("name", "init"), "data": ("dataset",)}.get(section, ())
                assert all(values[k] != defaults[section][k] or k in identity for k in values), (path.name, section)
    assert sum(len(p.read_text().splitlines()) for p in PACKAGED.rglob("*.yaml")) < 3000


def test_every_packaged_config_resolves_to_its_recorded_config():
    recorded = json.loads(RESOLVED.read_text())
    assert list(recorded) == config_names()
    for name, expected in recorded.items():
        assert plain_json(dataclasses.asdict(load_config(name))) == expected, name


def test_packaged_configs_resolve_by_name_and_by_path(tmp_path, monkeypatch):
    names = config_names()
    assert len(names) == len(YAMLS) + 3 and names == list(packaged_configs())
    assert config_names("table3_*") == [f"table3_{s}_in1k" for s in ("graph", "importance", "random", "uniform",
                                                                       "upcycle")]
    assert resolve_config("table1_vit_t_jetpack_cifar100") == PACKAGED / "table1_vit_t_jetpack_cifar100.yaml"
    assert resolve_config("modern_dinov2_b14_s14_cifar100.yaml").parent == PACKAGED / "modern"
    monkeypatch.chdir(tmp_path)  # a file of the same name in the working directory wins: a path is a path
    (tmp_path / "table1_vit_t_jetpack_cifar100.yaml").write_text("name: mine\n")
    assert resolve_config("table1_vit_t_jetpack_cifar100.yaml") == Path("table1_vit_t_jetpack_cifar100.yaml")
    assert load_config("table1_vit_t_jetpack_cifar100").name == "table1_vit_t_jetpack_cifar100"
    typo = r"does not exist, nor is 'table1_vit_t_jetpack_cifar10' a packaged config \(similar: table1_vit_t_jetpack_c"
    with pytest.raises(UserError, match=typo):
        load_config("configs/table1_vit_t_jetpack_cifar10.yaml")


def test_a_config_run_on_other_data_is_named_after_it_and_says_it_is_not_a_paper_setting():
    own = load_config("table1_vit_t_jetpack_flowers")
    assert own.name == "table1_vit_t_jetpack_flowers" and "Paper top-1: 95.4" in own.description
    moved = load_config("table1_vit_t_jetpack_flowers", ["data.dataset=folder:/home/someone/my pets/"])
    assert moved.name == "my-pets_table1_vit_t_jetpack_flowers"
    assert "Paper top-1" not in moved.description and "not a paper setting" in moved.description
    assert "folder:my pets" in moved.description and "/home" not in moved.description
    named = load_config("table1_vit_t_jetpack_flowers", ["data.dataset=cifar10", "name=mine"])
    assert named.name == "mine" and "not a paper setting" in named.description


@pytest.mark.parametrize("path", sorted((PACKAGED / "modern").glob("*.yaml")), ids=lambda p: p.stem)
def test_modern_configs_load_and_derive_their_successor(path):
    """Each modern recipe passes the schema and names its sources: model.name auto with model.init recycle, the
    predecessor from timm's hub, and (where the family has a smaller checkpoint) the dense part's timm name."""
    config = load_config(path)
    assert config.model.name == "auto" and config.model.init == "recycle" and config.recycle.pretrained
    assert config.recycle.dense_checkpoint is None or config.recycle.dense_model is not None


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.stem)
def test_every_config_loads_and_writes_eval_crop_and_pooling(path):
    config = load_config(path)
    assert config.name == path.stem
    assert config.variant == "paper"
    assert config.data.crop_pct == 0.875
    assert config.model.kwargs["global_pool"] in ("avg", "token")


def test_scratch_arms_have_no_layer_decay_and_fine_tuned_arms_do():
    scratch = [p for p in YAMLS if resolved(p)["model"]["init"] == "scratch"]
    assert len(scratch) == 8 * 4 + 2  # Table 1 Dense / Soft MoE x 2 families x 8 datasets, Table 4 Soft MoE-S x 2
    for path in YAMLS:
        cfg = resolved(path)
        expected = None if cfg["model"]["init"] == "scratch" else 0.6
        assert cfg["optim"]["layer_decay"] == expected, path.name


def test_expert_regularisation_on_every_spheromoe_config_only():
    sphero = [p for p in YAMLS if is_sphero(resolved(p))]
    assert len(sphero) == 16 + 5 + 7 + 6  # Table 1 (2 families x 8), Table 3, Table 4 (5 V-JetMoE-T + 2 -S), Fig. 4
    for path in YAMLS:
        kwargs = resolved(path)["model"]["kwargs"]
        if is_sphero(resolved(path)):
            assert (kwargs["expert_dropout"], kwargs["expert_drop_rate"]) == (0.4, 0.1), path.name
        else:
            assert "expert_dropout" not in kwargs and "expert_drop_rate" not in kwargs, path.name


def test_moe_vits_pool_by_average_and_dense_vits_by_class_token():
    for path in YAMLS:
        cfg = resolved(path)
        pool = cfg["model"]["kwargs"]["global_pool"]
        assert pool == ("token" if cfg["model"]["name"].startswith("vit_tiny") else "avg"), path.name


def test_table3_rows_differ_only_in_their_recycling_recipe():
    rows = {p.stem: resolved(p) for p in YAMLS if p.stem.startswith("table3_")}
    assert sorted(rows) == [f"table3_{s}_in1k" for s in ("graph", "importance", "random", "uniform", "upcycle")]
    recipes = {stem: cfg.pop("recycle") for stem, cfg in rows.items()}
    assert {r["strategy"] for r in recipes.values()} == {"graph", "importance", "random", "uniform", "upcycle"}
    assert recipes["table3_upcycle_in1k"]["predecessor"] == "vit_tiny_patch16_224.augreg_in21k"
    assert recipes["table3_upcycle_in1k"]["dense_checkpoint"] is None
    assert [r["calib_images"] for r in recipes.values()] == [38400, 38400, 0, 0, 0]  # graph, importance: calibrated
    strip = [{k: v for k, v in cfg.items() if k not in ("name", "description")} for cfg in rows.values()]
    assert all(s == strip[0] for s in strip)
    assert strip[0]["model"]["name"] == "vjetmoe_tiny_patch16_224"
    assert "univ_factor" not in strip[0]["model"]["kwargs"]


def test_every_recycled_arm_recycles_in_its_run_with_the_readme_recipe():
    readme = (CONFIGS / "README.md").read_text()
    commands = [block.split("```")[0] for block in readme.split("```bash")[1:] if "moejet recycle" in block]
    recycled = [p for p in YAMLS if resolved(p)["model"]["init"] == "recycle"]
    # Table 1 (MoE Jetpack x 2 families, ConvNeXt-F Dense (21k)) x 8 datasets, Tables 2-4 (Table 4: 5 T, 2 S), Fig. 4
    assert len(recycled) == 3 * 8 + 3 + 5 + 7 + 6
    for path in YAMLS:
        cfg = resolved(path)
        assert cfg["model"]["init"] != "checkpoint" and cfg["model"]["init_checkpoint"] is None, path.name
        if cfg["model"]["init"] != "recycle":
            assert "recycle" not in cfg, path.name
            continue
        r = cfg["recycle"]
        assert r["pretrained"] and r["predecessor_checkpoint"] is None and r["variant"] is None, path.name
        flags = [f"--predecessor {r['predecessor']} --pretrained", f"--successor {cfg['model']['name']}",
                 f"--strategy {r['strategy']}", f"--calib-images {r['calib_images']}"]
        flags += [f"--dense-checkpoint {r['dense_checkpoint']}"] if r["dense_checkpoint"] else []
        flags += [f"--successor-arg '{k}={v}'" for k, v in cfg["model"]["kwargs"].items()
                  if k in ("core_experts", "univ_experts") and not isinstance(v, list)]
        assert any(all(f in c for f in flags) and ("--dense-checkpoint" in c) == bool(r["dense_checkpoint"])
                   for c in commands), path.name


def test_readme_recycle_commands_match_the_configs():
    readme = (CONFIGS / "README.md").read_text()
    upcycle = readme.split("--out runs/recycle/vjetmoe_t_upcycle")[0].rsplit("```bash", 1)[1]
    assert "--strategy upcycle" in upcycle and "univ_factor" not in upcycle
    assert "--predecessor vit_tiny_patch16_224.augreg_in21k" in upcycle
    assert "--successor-arg 'global_pool=avg'" in upcycle
    vjet_s = readme.split("--out runs/recycle/vjetmoe_s_importance")[0].rsplit("```bash", 1)[1]
    assert "--predecessor vit_base_patch16_224.augreg_in21k" in vjet_s
    assert "--dense-checkpoint checkpoints/vit_small_patch16_224.augreg_in21k.safetensors" in vjet_s
    assert "--successor vjetmoe_small_patch16_224" in vjet_s
    assert "results do not change" not in readme


def test_v_jetmoe_s_configs_exist_with_the_papers_numbers():
    for dataset, top1 in (("cifar100", 89.9), ("in1k", 82.4)):
        cfg = resolved(PACKAGED / f"table4_vjetmoe_s_{dataset}.yaml")
        assert cfg["model"]["name"] == "vjetmoe_small_patch16_224"
        assert cfg["recycle"]["predecessor"] == "vit_base_patch16_224.augreg_in21k"
        assert cfg["recycle"]["dense_checkpoint"] == "checkpoints/vit_small_patch16_224.augreg_in21k.safetensors"
        assert f"Paper top-1: {top1}." in cfg["description"]


def test_paper_table7_values_and_imagenet_follows_the_paper_not_the_release():
    for path in YAMLS:
        cfg = resolved(path)
        if cfg["data"]["dataset"] == "imagenet":
            assert (cfg["schedule"]["warmup_epochs"], cfg["model"]["drop_path_rate"]) == (50, 0.0), path.name
            assert cfg["train"]["batch_size"] == 4096
        if cfg["data"]["dataset"] == "dtd":
            assert (cfg["schedule"]["epochs"], cfg["model"]["drop_path_rate"]) == (600, 0.2), path.name
        assert cfg["train"]["seed"] == 3407


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.stem)
def test_every_config_validates_and_builds(path, tmp_path):
    config = load_config(path)
    assert config.name == path.stem
    name, kwargs = build.model_kwargs(build_config := _scratch(config), num_classes=10)
    with torch.device("meta"):
        model = build.create_model(name, kwargs, pretrained=False)
    assert model.num_classes == 10
    build.build_optimizer(config, model)
    train_tf, val_tf = build.build_transforms(config, model)
    assert train_tf is not None and val_tf is not None and build.build_loss(config) is not None
    micro, accum = batch_plan(config, world_size=1)
    assert micro * accum == config.train.batch_size
    if config.model.init == "recycle":  # the recipe's predecessor fits this successor (weights aside)
        from moejet.recycle.api import check_pair

        r = config.recycle
        with torch.device("meta"):
            predecessor = timm.create_model(r.predecessor, **r.predecessor_kwargs)
        pair = check_pair(predecessor, model, r.strategy, dense=r.dense_checkpoint is not None)
        assert pair.moe_blocks or config.model.name == "convnext_femto_d18"
    if config.data.dataset.startswith("synthetic"):
        assert build.build_dataset(build_config, "val", val_tf).num_classes > 1
    else:  # no data on disk: the documented error, naming where it looked
        empty = _with_root(config, tmp_path)
        with pytest.raises(UserError, match="not found"):
            build.build_dataset(empty, "val", val_tf)


def _scratch(config):
    from dataclasses import replace

    return replace(config, model=replace(config.model, init="scratch", init_checkpoint=None))


def _with_root(config, root):
    from dataclasses import replace

    return replace(config, data=replace(config.data, root=str(root)))
