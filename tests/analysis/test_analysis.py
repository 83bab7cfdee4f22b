"""moejet.analysis and `moejet analyze`: routing capture, contributions, attention maps, curves, cost, recycling."""

from __future__ import annotations

import csv
import functools
import json
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import moejet  # noqa: F401  (registers the models)
from moejet.analysis.contributions import model_contributions, spread_batches
from moejet.analysis.curves import read_run, time_to_target
from moejet.analysis.common import eval_transforms
from moejet.analysis.recycling import layer_stats, read_recycle_report
from moejet.analysis.report import analyze_run
from moejet.analysis.routing import (
    attention_maps,
    capture_routing,
    expert_contributions,
    expert_shares,
    experts_of,
    patch_grid,
)
from moejet.io.weights import save_model
from moejet.cli import main
from moejet.data import build_dataset
from moejet.models import moe_modules

VIT = "vjetmoe_tiny_patch16_224"
VIT_KW = dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, moe_layers=(2, 3), core_experts=4,
              univ_experts=8, num_classes=10)
CNX = "cjetmoe_femto"
CNX_KW = dict(dims=(8, 16, 24, 32), depths=(1, 1, 2, 2), moe_layers=(2, 3, 4, 5), core_experts=(0, 0, 2, 2),
              univ_experts=(0, 0, 4, 4), num_classes=10)
DATA = "synthetic-downstream:size=32,per_class=1,val_per_class=1"
WROTE_PNG = re.compile(r"wrote (\S+\.png) \((\d+)x(\d+) px\)")


@functools.cache
def tiny_models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "vit": timm.create_model(VIT, **VIT_KW),
        "vit-2slots": timm.create_model(VIT, **VIT_KW, slots_per_expert=2),
        "softmoe": timm.create_model("softmoe_vit_tiny_patch16_224", **{**VIT_KW, "num_experts": 6}),
        "convnext": timm.create_model(CNX, **CNX_KW),
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("analysis")
    torch.manual_seed(0)
    paths = {"root": root, "vit": root / "vit.safetensors", "cnx": root / "cnx.safetensors",
             "dense": root / "dense.safetensors", "image": root / "image.png", "bad_image": root / "broken.png"}
    save_model(timm.create_model(VIT, **VIT_KW), paths["vit"], VIT, VIT_KW)
    save_model(timm.create_model(CNX, **CNX_KW), paths["cnx"], CNX, CNX_KW)
    dense_kw = {**VIT_KW, "moe_layers": ()}
    save_model(timm.create_model(VIT, **dense_kw), paths["dense"], VIT, dense_kw)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(paths["image"])
    paths["bad_image"].write_text("not an image")
    return paths


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["analyze", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def assert_png(path: str | Path, size: tuple[int, int]) -> None:
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size == size
        assert np.asarray(img.convert("RGB"), dtype=np.float64).std() > 0


def stated_pngs(out: str) -> dict[str, tuple[int, int]]:
    found = {Path(m[1]).name: (int(m[2]), int(m[3])) for m in WROTE_PNG.finditer(out)}
    for name, size in found.items():
        path = next(Path(m[1]) for m in WROTE_PNG.finditer(out) if Path(m[1]).name == name)
        assert_png(path, size)
    return found


def write_metrics(run: Path, top1: list[float], seconds_per_epoch: float) -> None:
    run.mkdir(parents=True, exist_ok=True)
    with open(run / "metrics.jsonl", "w") as f:
        for epoch, acc in enumerate(top1, 1):
            f.write(json.dumps({"epoch": epoch, "train_loss": 1.0, "val_top1": acc, "val_top5": 99.0, "lr": 1e-3,
                                "images_per_s": 10.0, "epoch_time_s": seconds_per_epoch,
                                "wall_time_s": seconds_per_epoch * epoch, "temperatures": {}}) + "\n")


# ---- routing capture, output shares, attention maps --------------------------------------------------------------

@torch.no_grad()
def test_capture_routing_records_every_layer_and_restores_flags():
    model = tiny_models()["vit"].eval()
    layers = moe_modules(model)
    with capture_routing(model) as routing:
        model(torch.randn(2, 3, 32, 32))
        assert all(layer.record_routing for layer in layers.values())
    assert list(routing) == ["blocks.2.mlp", "blocks.3.mlp"]
    assert [r.block for r in routing.values()] == [2, 3]
    assert routing["blocks.2.mlp"].dispatch.shape == (2, 17, 12)
    assert all(not layer.record_routing and layer.last_routing is None for layer in layers.values())


@pytest.mark.parametrize("kind", ["vit", "vit-2slots", "softmoe", "convnext"])
@torch.no_grad()
def test_expert_shares_add_up_to_the_layer_output(kind):
    model = tiny_models()[kind].eval()
    outputs = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, name=name: outputs.__setitem__(name, o))
             for name, m in moe_modules(model).items()]
    size = 64 if kind == "convnext" else 32
    with capture_routing(model) as routing:
        model(torch.randn(2, 3, size, size))
    for h in hooks:
        h.remove()
    layers = moe_modules(model)
    for name, r in routing.items():
        experts = experts_of(layers[name])
        shares = expert_shares(r, experts)  # (b, n, E, d)
        assert shares.shape[2] == len(experts)
        y = outputs[name].reshape(2, -1, shares.shape[-1])
        torch.testing.assert_close(shares.sum(dim=2), y, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_contribution_is_mean_token_norm_of_each_experts_share():
    model = tiny_models()["vit-2slots"].eval()
    batches = [torch.randn(3, 3, 32, 32), torch.randn(2, 3, 32, 32)]
    results = model_contributions(model, batches)
    expected = {}
    with capture_routing(model) as routing:
        for x in batches:
            model(x)
            for name, r in routing.items():
                per_expert = []
                for e in range(12):  # slots 2e, 2e+1 belong to expert e
                    share = sum(r.combine[:, :, j, None] * r.slot_outputs[:, None, j] for j in (2 * e, 2 * e + 1))
                    per_expert.append(share.norm(dim=-1).sum(dim=0).mean())  # sum over images, mean over tokens
                expected[name] = expected.get(name, 0) + torch.stack(per_expert).double()
    for res in results:
        np.testing.assert_allclose(res.values, (expected[res.layer] / 5).numpy(), rtol=1e-5)
        assert [e.path for e in res.experts] == ["core"] * 4 + ["univ"] * 8
        assert res.temperatures == {"dispatch": 0.5, "combine": 0.5}


@pytest.mark.parametrize("kind", ["vit", "vit-2slots", "convnext"])
@torch.no_grad()
def test_attention_maps_sum_to_one_over_the_patch_grid(kind):
    model = tiny_models()[kind].eval()
    size = 64 if kind == "convnext" else 32
    with capture_routing(model) as routing:
        model(torch.randn(2, 3, size, size))
    grids = []
    for name, r in routing.items():
        experts = experts_of(moe_modules(model)[name])
        prefix, gh, gw = patch_grid(model, r, (size, size))
        maps = attention_maps(r, experts, prefix, (gh, gw))
        assert maps.shape == (2, len(experts), gh, gw)
        torch.testing.assert_close(maps.sum(dim=(-2, -1)), torch.ones(2, len(experts)))
        if kind == "vit":  # the map of slot e is its dispatch column over the patches, class token dropped
            column = r.dispatch[1, 1:, 5]
            torch.testing.assert_close(maps[1, 5].flatten(), column / column.sum())
        grids.append((prefix, gh, gw))
    assert grids == ([(1, 4, 4)] * 2 if kind != "convnext" else [(0, 4, 4)] * 2 + [(0, 2, 2)] * 2)


@torch.no_grad()
def test_expert_contributions_rank_the_attention_grid(files):
    from moejet.analysis.attention import image_attention
    from moejet.analysis.common import load_moe_model

    model = load_moe_model(files["vit"])
    shown, rows = image_attention(model, Image.open(files["image"]), top_k=2)
    assert shown.size == (32, 32)
    assert [[(m.block, m.expert.path) for m in row] for row in rows] == [
        [(b, "core"), (b, "core"), (b, "univ"), (b, "univ")] for b in (2, 3)]
    transform, _ = eval_transforms(model)
    with capture_routing(model) as routing:
        model(transform(Image.open(files["image"]).convert("RGB")).unsqueeze(0))
    for row, (name, r) in zip(rows, routing.items()):
        values = expert_contributions(r, experts_of(moe_modules(model)[name]))[0]
        assert row[0].contribution == pytest.approx(values[:4].max().item())
        assert row[2].contribution == pytest.approx(values[4:].max().item())
        assert row[0].contribution >= row[1].contribution and row[2].contribution >= row[3].contribution
        for m in row:
            assert m.attention.sum() == pytest.approx(1.0)


# ---- CLI: every subcommand writes its files ------------------------------------------------------------------------

def test_cli_attention_writes_a_grid_of_the_stated_size(files, capsys):
    code, out, _ = cli(capsys, "attention", "--checkpoint", files["vit"], "--image", files["image"], "--top-k", "2",
                       "--out", files["root"] / "att")
    assert code == 0
    # 2 layers x (input + 2 core + 2 universal): (1.6 * 5 + 0.3) x (2 * 2.0 + 1.8) inches at 100 dpi
    assert stated_pngs(out) == {"attention.png": (830, 580)}
    rows = list(csv.DictReader(open(files["root"] / "att" / "attention.csv")))
    assert [(r["block"], r["path"]) for r in rows] == [(b, p) for b in "23" for p in ("core",) * 2 + ("univ",) * 2]

    code, out, _ = cli(capsys, "attention", "--checkpoint", files["cnx"], "--image", files["image"], "--top-k", "1",
                       "--layers", "4", "5", "--img-size", "64", "--out", files["root"] / "att-cnx")
    assert code == 0
    assert stated_pngs(out) == {"attention.png": (510, 580)}
    rows = list(csv.DictReader(open(files["root"] / "att-cnx" / "attention.csv")))
    assert {r["grid"] for r in rows} == {"2x2"} and [r["block"] for r in rows] == ["4", "4", "5", "5"]


def test_cli_contributions_writes_csv_summary_and_figure(files, capsys):
    out_dir = files["root"] / "contrib"
    code, out, _ = cli(capsys, "contributions", "--checkpoint", files["vit"], "--data", DATA, "--images", "6",
                       "--batch-size", "4", "--out", out_dir)
    assert code == 0
    assert stated_pngs(out) == {"contributions.png": (1500, 460)}
    rows = list(csv.DictReader(open(out_dir / "contributions.csv")))
    assert len(rows) == 2 * 12 and {r["path"] for r in rows} == {"core", "univ"}
    # the CSV holds model_contributions() over the same evenly spread validation images
    from moejet.analysis.common import load_moe_model

    model = load_moe_model(files["vit"])
    dataset = build_dataset(DATA, "val", eval_transforms(model)[0])
    results = model_contributions(model, spread_batches(dataset, 6, 4))
    np.testing.assert_allclose([float(r["contribution"]) for r in rows],
                               np.concatenate([r.values for r in results]), rtol=1e-5)
    summary = list(csv.DictReader(open(out_dir / "contributions_summary.csv")))
    assert [(s["block"], s["path"], s["experts"]) for s in summary] == [
        ("2", "core", "4"), ("2", "univ", "8"), ("3", "core", "4"), ("3", "univ", "8")]
    core2 = results[0].values[:4]
    assert float(summary[0]["max"]) == pytest.approx(core2.max(), rel=1e-3)
    assert float(summary[0]["mean"]) == pytest.approx(core2.mean(), rel=1e-3)
    assert summary[0]["top_expert"] == f"core{core2.argmax()}"
    assert summary[0]["temperatures"] == "dispatch=0.5 combine=0.5"
    assert "| blocks.2.mlp | 2 | core | 4 |" in out


def test_cli_curves_plot_runs_and_time_to_target(tmp_path, capsys):
    write_metrics(tmp_path / "jetpack", [50.0, 70.0, 77.0, 80.0], 10.0)
    write_metrics(tmp_path / "scratch", [10.0, 20.0, 30.0, 40.0, 50.0], 8.0)
    code, out, _ = cli(capsys, "curves", tmp_path / "jetpack", tmp_path / "scratch", "--target", "76")
    assert code == 0
    pngs = stated_pngs(out)
    assert list(pngs) == ["curves.png"] and pngs["curves.png"][0] == 1200
    rows = list(csv.DictReader(open(tmp_path / "jetpack" / "analysis" / "time_to_target.csv")))
    assert [(r["run"], r["epoch"], r["wall_time_s"], r["best_top1"]) for r in rows] == [
        ("jetpack", "3", "30.0", "80.00"), ("scratch", "not reached", "not reached", "50.00")]
    assert "| jetpack | 76 | 3 | 30.0 |" in out
    assert time_to_target(read_run(tmp_path / "scratch"), 50.0)["epoch"] == 5


def test_cli_cost_reproduces_parameter_counts(files, capsys):
    sets = [a for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "core_experts", "univ_experts",
                        "num_classes") for a in ("--set", f"{k}={VIT_KW[k]}")]
    code, out, _ = cli(capsys, "cost", VIT, files["vit"], *sets, "--set", "moe_layers=[2, 3]",
                       "--out", files["root"] / "cost")
    assert code == 0
    costs = json.loads((files["root"] / "cost" / "cost.json").read_text())
    expected = sum(p.numel() for p in timm.create_model(VIT, **VIT_KW).parameters())
    assert [c["params"] for c in costs] == [expected, expected]
    assert costs[0]["macs"] == costs[1]["macs"] > costs[0]["routing_macs"] > 0
    table = (files["root"] / "cost" / "cost.md").read_text()
    assert table.splitlines()[0] == "| model | params (M) | MACs/img (G) | MACs/img without routing (G) | routing (G) |"
    assert f"| {VIT} | {expected / 1e6:.1f} |" in table and table in out + "\n"
    with torch.device("meta"):  # full size: paper Table 4 says 265 M
        full = timm.create_model(VIT)
    from moejet.analysis.cost import count_params

    assert round(count_params(full) / 1e6, 1) == 265.4


def test_cli_recycling_coverage_and_overlap(tmp_path, capsys):
    report = {
        "predecessor": {"name": "vit_small_patch16_224", "hidden_sizes": {"2": 8, "3": 8}},  # as moejet recycle
        "neuron_indices": {
            "3": {"core": [[0, 1, 2, 3], [2, 3, 4, 5]], "univ": [[0], [1]]},
            "2": {"core": [[0, 1, 2, 3], [0, 1, 2, 3]], "univ": [[6], [7]]},
        },
    }
    (tmp_path / "recycle.json").write_text(json.dumps(report))
    code, out, _ = cli(capsys, "recycling", tmp_path)
    assert code == 0
    assert list(stated_pngs(out)) == ["recycling.png"]
    stats = json.loads((tmp_path / "analysis" / "recycling.json").read_text())["layers"]
    assert [s["block"] for s in stats] == [2, 3]
    s2, s3 = stats
    assert s2["experts_per_neuron"] == [2, 2, 2, 2, 0, 0, 1, 1] and s2["coverage"] == 6 / 8
    assert s2["max_jaccard"] == 1.0 and s2["core_mean_jaccard"] == 1.0 and s2["univ_mean_jaccard"] == 0.0
    # pairs: core0-core1 2/6, core0-univ0 1/4, core0-univ1 1/4, core1-univ* 0, univ0-univ1 0
    assert s3["mean_jaccard"] == pytest.approx((2 / 6 + 1 / 4 + 1 / 4) / 6)
    assert s3["coverage"] == 6 / 8 and s3["hidden_size"] == 8
    assert (tmp_path / "analysis" / "recycling.csv").is_file()
    report["predecessor"] = {"hidden_size": 10}  # one size for every block
    (tmp_path / "recycle.json").write_text(json.dumps(report))
    assert [layer.hidden_size for layer in read_recycle_report(tmp_path)[1]] == [10, 10]
    del report["predecessor"]  # no hidden size given: inferred as the largest index + 1
    (tmp_path / "recycle.json").write_text(json.dumps(report))
    _, layers = read_recycle_report(tmp_path / "recycle.json")
    assert [layer.hidden_size for layer in layers] == [8, 6] and layer_stats(layers[1])["coverage"] == 1.0


def test_analyze_run_writes_all_pictures(files, tmp_path):
    write_metrics(tmp_path, [30.0, 60.0, 78.0], 5.0)
    save_model(timm.create_model(VIT, **VIT_KW), tmp_path / "last.safetensors", VIT, VIT_KW)
    written = analyze_run(tmp_path, dataset_spec=DATA, num_images=4)
    assert sorted(p.name for p in written) == sorted([
        "curves.png", "time_to_target.csv", "attention.png", "attention.csv", "contributions.csv",
        "contributions_summary.csv", "contributions.png"])
    assert all(p.parent == tmp_path / "analysis" and p.is_file() for p in written)


# ---- errors --------------------------------------------------------------------------------------------------------

def test_clear_errors(files, tmp_path, capsys):
    code, _, err = cli(capsys, "attention", "--checkpoint", files["dense"], "--image", files["image"])
    assert code == 2
    assert err.strip() == (f"moejet analyze: error: model '{VIT}' has no MoE layers (SpheroMoE / Soft MoE) to analyse: "
                           "pass a V-JetMoE, C-JetMoE or Soft MoE checkpoint")
    code, _, err = cli(capsys, "attention", "--checkpoint", files["vit"], "--image", files["bad_image"])
    assert code == 2 and err.startswith(f"moejet analyze: error: cannot read image {files['bad_image']} (")
    assert err.strip().endswith("pass a JPEG/PNG image PIL can open") and len(err.strip().splitlines()) == 1
    (tmp_path / "empty-run").mkdir()
    code, _, err = cli(capsys, "curves", tmp_path / "empty-run")
    assert code == 2 and err.strip() == (f"moejet analyze: error: run directory {tmp_path / 'empty-run'} has no "
                                         "metrics.jsonl: pass a directory written by moejet train")
    (tmp_path / "empty-run" / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 2.0}\n')
    code, _, err = cli(capsys, "curves", tmp_path / "empty-run")
    assert code == 2 and "has no epochs with val_top1 yet" in err
    code, _, err = cli(capsys, "recycling", tmp_path)
    assert code == 2 and "recycle.json does not exist" in err
    code, _, err = cli(capsys, "cost", "no_such_model")
    assert code == 2 and "unknown model 'no_such_model'" in err
    assert not list((files["root"]).glob("**/.*.tmp"))  # nothing half-written


def test_recycling_names_its_report_relative_to_the_run_directory(tmp_path, monkeypatch):
    from moejet.analysis.report import write_recycling

    report = tmp_path / "demo" / "recycled" / "jetpack" / "recycle.json"
    report.parent.mkdir(parents=True)
    report.write_text(json.dumps({"predecessor": {"hidden_size": 4}, "neuron_indices": {"0": {"core": [[0, 1]]}}}))
    source = lambda out: json.loads((out / "recycling.json").read_text())["source"]
    write_recycling(report, tmp_path / "a", root=tmp_path / "demo")
    assert source(tmp_path / "a") == "recycled/jetpack/recycle.json"
    monkeypatch.chdir(tmp_path / "demo" / "recycled")  # default root: the working directory
    write_recycling(report, tmp_path / "b")
    assert source(tmp_path / "b") == "jetpack/recycle.json"
    monkeypatch.chdir(tmp_path / "a")  # outside the root: never the machine's absolute path
    write_recycling(report, tmp_path / "c")
    assert source(tmp_path / "c") == "jetpack/recycle.json"
