"""``moejet analyze``: every subcommand writes its files of the stated size; clear errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import timm
import torch

import moejet  # noqa: F401  (registers the models)
from moejet.analysis.common import eval_transforms
from moejet.analysis.contributions import model_contributions, spread_batches
from moejet.analysis.curves import read_run, time_to_target
from moejet.analysis.recycling import layer_stats, read_recycle_report
from moejet.cli import main
from moejet.data import build_dataset

from ..helpers.analysis import TINY_ANALYSIS, stated_pngs, write_metrics


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["analyze", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


# ---- CLI: every subcommand writes its files --------------------------------------------------------------------------

def test_cli_attention_writes_a_grid_of_the_stated_size(analysis_files, capsys):
    code, out, _ = cli(capsys, "attention", "--checkpoint", analysis_files["vit"], "--image", analysis_files["image"],
                       "--top-k", "2", "--out", analysis_files["root"] / "att")
    assert code == 0
    # 2 layers x (input + 2 core + 2 universal): (1.6 * 5 + 0.3) x (2 * 2.0 + 1.8) inches at 100 dpi
    assert stated_pngs(out) == {"attention.png": (830, 580)}
    rows = list(csv.DictReader(open(analysis_files["root"] / "att" / "attention.csv")))
    assert [(r["block"], r["path"]) for r in rows] == [(b, p) for b in "23" for p in ("core",) * 2 + ("univ",) * 2]

    code, out, _ = cli(capsys, "attention", "--checkpoint", analysis_files["cnx"], "--image", analysis_files["image"],
                       "--top-k", "1",
                       "--layers", "4", "5", "--img-size", "64", "--out", analysis_files["root"] / "att-cnx")
    assert code == 0
    assert stated_pngs(out) == {"attention.png": (510, 580)}
    rows = list(csv.DictReader(open(analysis_files["root"] / "att-cnx" / "attention.csv")))
    assert {r["grid"] for r in rows} == {"2x2"} and [r["block"] for r in rows] == ["4", "4", "5", "5"]


def test_cli_contributions_writes_csv_summary_and_figure(analysis_files, capsys):
    out_dir = analysis_files["root"] / "contrib"
    code, out, _ = cli(capsys, "contributions", "--checkpoint", analysis_files["vit"], "--data", TINY_ANALYSIS.data,
                       "--images", "6", "--batch-size", "4", "--out", out_dir)
    assert code == 0
    assert stated_pngs(out) == {"contributions.png": (1500, 460)}
    rows = list(csv.DictReader(open(out_dir / "contributions.csv")))
    assert len(rows) == 2 * 12 and {r["path"] for r in rows} == {"core", "univ"}
    # the CSV holds model_contributions() over the same evenly spread validation images
    from moejet.analysis.common import load_moe_model

    model = load_moe_model(analysis_files["vit"])
    dataset = build_dataset(TINY_ANALYSIS.data, "val", eval_transforms(model)[0])
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


def test_cli_cost_reproduces_parameter_counts(analysis_files, capsys):
    sets = [a for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "core_experts", "univ_experts",
                        "num_classes") for a in ("--set", f"{k}={TINY_ANALYSIS.vit_kw[k]}")]
    code, out, _ = cli(capsys, "cost", TINY_ANALYSIS.vit, analysis_files["vit"], *sets, "--set", "moe_layers=[2, 3]",
                       "--out", analysis_files["root"] / "cost")
    assert code == 0
    costs = json.loads((analysis_files["root"] / "cost" / "cost.json").read_text())
    expected = sum(p.numel() for p in timm.create_model(TINY_ANALYSIS.vit, **TINY_ANALYSIS.vit_kw).parameters())
    assert [c["params"] for c in costs] == [expected, expected]
    assert costs[0]["macs"] == costs[1]["macs"] > costs[0]["routing_macs"] > 0
    table = (analysis_files["root"] / "cost" / "cost.md").read_text()
    assert table.splitlines()[0] == "| model | params (M) | MACs/img (G) | MACs/img without routing (G) | routing (G) |"
    assert f"| {TINY_ANALYSIS.vit} | {expected / 1e6:.1f} |" in table and table in out + "\n"
    with torch.device("meta"):  # full size: paper Table 4 says 265 M
        full = timm.create_model(TINY_ANALYSIS.vit)
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


# ---- errors --------------------------------------------------------------------------------------------------------

def test_clear_errors(analysis_files, tmp_path, capsys):
    code, _, err = cli(capsys, "attention", "--checkpoint", analysis_files["dense"], "--image", analysis_files["image"])
    assert code == 2
    assert err.strip() == (f"moejet analyze: error: model '{TINY_ANALYSIS.vit}' has no MoE layers (SpheroMoE / Soft "
                           "MoE) to analyse: pass a V-JetMoE, C-JetMoE or Soft MoE checkpoint")
    code, _, err = cli(capsys, "attention", "--checkpoint", analysis_files["vit"], "--image",
                       analysis_files["bad_image"])
    assert code == 2 and err.startswith(f"moejet analyze: error: cannot read image {analysis_files['bad_image']} (")
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
    assert not list((analysis_files["root"]).glob("**/.*.tmp"))  # nothing half-written
