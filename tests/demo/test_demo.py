"""demo: the shipped predecessors, the quick demo's artefacts, and the report's statistics."""

import json

import pytest
import torch
from PIL import Image

from moejet.cli import main
from moejet.demo.pretrain import ASSETS, RECORD, REGIME, sha256
from moejet.demo.report import findings, ordering, seed_summary
from moejet.demo.run import check_assets
from moejet.demo.setup import ASSET_S, ASSET_T, PREDECESSOR_S, PREDECESSOR_T, QUICK
from moejet.errors import UserError
from moejet.io.weights import build_from_checkpoint


@pytest.mark.parametrize(("asset", "expected"), [(ASSET_S, PREDECESSOR_S), (ASSET_T, PREDECESSOR_T)])
def test_shipped_predecessors_load_and_match_the_demo_architecture(asset, expected):
    path = ASSETS / asset
    assert path.stat().st_size < 4 * 2**20  # "a few MB at most"
    model, name, kwargs = build_from_checkpoint(path)  # strict load
    assert name == expected[0]
    assert {k: v for k, v in kwargs.items() if k in expected[1]} == {
        k: list(v) if isinstance(v, tuple) else v for k, v in expected[1].items()
    }
    assert model.embed_dim == expected[1]["embed_dim"] and len(model.blocks) == expected[1]["depth"]
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 100)
    record = json.loads((ASSETS / RECORD).read_text())
    entry = next(e for e in record["predecessors"].values() if e["file"] == asset)
    assert entry["sha256"] == sha256(path)  # the record describes the files that ship


def test_missing_predecessors_say_how_to_regenerate_them(tmp_path):
    with pytest.raises(UserError, match="moejet demo --pretrain"):
        check_assets(tmp_path)


def test_quick_demo_writes_every_artefact(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--core-only", "--device", "cpu", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    arms = {r["arm"]: r for r in results["arms"]}
    assert list(arms) == ["dense_scratch", "dense_pretrained", "softmoe_scratch", "moe_jetpack"]
    for arm in arms.values():
        assert 0.0 <= arm["top1"] <= 100.0 and arm["params"] > 0 and arm["macs"] > 0
        assert len(arm["curve"]) == QUICK.epochs
        assert (out / "runs" / arm["arm"] / "metrics.jsonl").is_file()
    assert arms["moe_jetpack"]["routing_macs"] > 0 and arms["dense_scratch"]["routing_macs"] == 0
    assert arms["moe_jetpack"]["recycle_time_s"] > 0
    assert len(arms["moe_jetpack"]["correct"]) == results["val_images"] == 64  # QUICK.final_val: 8 classes x 8
    assert arms["dense_scratch"]["top1"] == 100 * sum(arms["dense_scratch"]["correct"]) / 64
    report = json.loads((out / "recycled" / "moe_jetpack" / "recycle.json").read_text())
    assert report["strategy"] == "importance"
    table = (out / "results.md").read_text()
    assert "MoE Jetpack" in table and "Dense (pre-trained)" in table
    text = (out / "report.md").read_text()
    assert "Paper ordering" in text and "![" in text
    pngs = sorted((out / "analysis").rglob("*.png"))
    assert {p.name for p in pngs} >= {"curves.png", "attention.png", "contributions.png"}
    for png in pngs:
        with Image.open(png) as img:
            assert img.size[0] > 100 and img.size[1] > 100
    assert "report:" in capsys.readouterr().out
    # a second run into the same directory is refused rather than mixing results
    assert main(["demo", "--quick", "--core-only", "--device", "cpu", "--out", str(out)]) == 2


def test_ordering_and_seed_summary():
    rows = [{"arm": "moe_jetpack", "label": "MoE Jetpack", "top1": 60.0},
            {"arm": "dense_pretrained", "label": "Dense (pre-trained)", "top1": 50.0},
            {"arm": "softmoe_scratch", "label": "Soft MoE (scratch)", "top1": 30.0},
            {"arm": "dense_scratch", "label": "Dense (scratch)", "top1": 20.0}]
    assert ordering(rows)[0]
    rows[2]["top1"] = 10.0
    holds, observed = ordering(rows)
    assert not holds and observed.startswith("moe_jetpack (60.0) > dense_pretrained (50.0) > dense_scratch")
    summary = seed_summary([{"seed": 0, "arms": rows[:1]}, {"seed": 1, "arms": [dict(rows[0], top1=62.0)]}])
    assert "| MoE Jetpack | 61.0 ± 1.0 | 60.0, 62.0 |" in summary


def test_paired_differences_and_their_intervals():
    import math
    import statistics

    from moejet.demo.report import paired_difference, results_table

    jet = [1] * 60 + [0] * 40
    dense = [1] * 50 + [0] * 10 + [1] * 5 + [0] * 35  # same images: 10 lost, 5 gained
    diff, half = paired_difference(dense, jet)
    d = [a - b for a, b in zip(dense, jet)]
    assert diff == -5.0 and math.isclose(half, 196 * statistics.stdev(d) / 10)
    rows = [{"arm": "moe_jetpack", "label": "MoE Jetpack", "correct": jet, "top1": 60.0},
            {"arm": "dense_pretrained", "label": "Dense (pre-trained)", "correct": dense, "top1": 55.0}]
    lines = findings({"arms": rows})
    assert lines == [f"Dense (pre-trained) vs MoE Jetpack: -5.0 points, 95% CI [{-5 - half:+.1f}, {-5 + half:+.1f}] "
                     "(paired over 100 val images; not resolved: the interval contains 0)."]
    many = {"arms": [dict(r, correct=r["correct"] * 40) for r in rows]}  # 4000 images: the same gap is resolved
    assert findings(many)[0].endswith("resolved: the interval excludes 0).")
    table = results_table([dict(r, init="scratch", params=1e6, macs=1e6, top5=90.0, train_time_s=1.0,
                                recycle_time_s=0.0) for r in rows])
    assert f"| 55.0 | 90.0 | -5.0 ± {half:.1f} | 1 |" in table
    with pytest.raises(ValueError, match="same images"):
        paired_difference([1, 0], [1])


def test_predecessor_margin_is_an_unpaired_interval_and_the_report_says_when_the_premise_fails():
    import math

    from moejet.demo.report import unpaired_difference

    diff, half = unpaired_difference(30.0, 20.0, 5000, 2000)
    assert diff == 10.0 and math.isclose(half, 196 * math.sqrt(0.3 * 0.7 / 5000 + 0.2 * 0.8 / 2000))
    spec = "synthetic-upstream:size=32,per_class=2,val_per_class=3"  # 100 classes x 3 val images
    preds = {role: {"upstream_val_top1": top1, "data": spec, "epochs": 1, "train_time_s": 60.0, "threads": 1}
             for role, top1 in (("S", 20.0), ("T", 24.0))}
    lines = findings({"predecessors": {"predecessors": preds}, "arms": []})
    assert lines[0] == ("Predecessors (pre-trained on synthetic-upstream, 100 classes, one recipe): S 20.0% upstream "
                        "val top-1 (1 epochs, 1 min on 1 thread(s)), T 24.0% upstream val top-1 (1 epochs, 1 min on "
                        "1 thread(s)).")
    assert lines[1].startswith("S - T upstream: -4.0 points, 95% CI [") and "(300 val images each)" in lines[1]
    assert "does NOT hold" in lines[1]
    preds["S"]["upstream_val_top1"] = 40.0
    assert "the wider S is the stronger checkpoint" in findings({"predecessors": {"predecessors": preds},
                                                                 "arms": []})[1]


def fabricated_results(top1s, val_images=50):
    """A demo result as `moejet demo` writes it: arms with per-image correctness, predecessors, budget, machine."""
    labels = {"moe_jetpack": "MoE Jetpack", "dense_pretrained": "Dense (pre-trained)",
              "softmoe_scratch": "Soft MoE (scratch)", "dense_scratch": "Dense (scratch)"}
    arms = []
    for arm, top1 in top1s.items():
        right = round(top1 * val_images / 100)
        arms.append({"arm": arm, "label": labels[arm], "init": "scratch", "params": 2e6, "macs": 3e6, "top1": top1,
                     "top5": 99.0, "train_time_s": 10.0, "recycle_time_s": 1.0,
                     "correct": [1] * right + [0] * (val_images - right)})
    spec = "synthetic-upstream:size=32,per_class=2,val_per_class=3"  # 100 classes x 3 val images
    preds = {role: {"upstream_val_top1": top1, "data": spec, "epochs": 1, "train_time_s": 60.0, "threads": 1}
             for role, top1 in (("S", 40.0), ("T", 20.0))}
    return {"arms": arms, "predecessors": {"predecessors": preds}, "val_images": val_images, "seed": 0,
            "processor": "cpu", "threads": 2, "device": "cpu", "torch": "2", "total_time_s": 120.0,
            "budget": {"downstream": "synthetic-downstream", "epochs": 2, "batch": 32, "lr": 1e-3, "warmup": 0}}


@pytest.mark.parametrize("holds", [True, False])
def test_the_report_states_the_ordering_findings_and_pictures_of_its_results(tmp_path, holds):
    """write_report on a fabricated result: the table it writes is results_table's, the paper ordering verdict is
    ordering()'s, every finding is listed, and each picture is linked relative to the report."""
    from moejet.demo.report import predecessor_margin, results_table, write_report

    top1s = {"moe_jetpack": 60.0, "dense_pretrained": 50.0, "softmoe_scratch": 30.0 if holds else 10.0,
             "dense_scratch": 20.0}
    results = fabricated_results(top1s)
    picture = tmp_path / "analysis" / "curves.png"
    report = write_report(tmp_path, results, [picture, tmp_path / "analysis" / "notes.txt"]).read_text()
    assert (tmp_path / "results.md").read_text() == results_table(results["arms"]) + "\n"
    assert results_table(results["arms"]) in report
    assert ordering(results["arms"])[0] is holds
    assert f"**{'reproduced' if holds else 'not reproduced'}**" in report
    assert f"Observed: {ordering(results['arms'])[1]}." in report
    lines = findings(results)
    assert len(lines) == 2 + 3  # predecessors, their margin, each arm against MoE Jetpack
    assert all(f"- {line}" in report for line in lines)
    assert "![curves](analysis/curves.png)" in report and "notes" not in report  # only pictures are shown
    # the margin is scored on the val images the predecessors' data spec holds: 100 classes x 3
    diff, half, images = predecessor_margin(results["predecessors"]["predecessors"])
    assert (diff, images) == (20.0, 300) and diff - half > 0
    assert "the wider S is the stronger checkpoint" in lines[1]


def test_recycled_arms_differ_only_in_their_initial_weights(tmp_path):
    from moejet.analysis.cost import count_params
    from moejet.demo.run import recycle_arm
    from moejet.demo.setup import ARMS

    arms = {a.key: a for a in ARMS}
    predecessors = check_assets(ASSETS)
    built = {}
    for key in ("moe_jetpack", "sparse_upcycling"):
        path, _ = recycle_arm(arms[key], predecessors, tmp_path / key, QUICK, "cpu", seed=0)
        built[key] = build_from_checkpoint(path)
    (jetpack, name_j, kwargs_j), (upcycled, name_u, kwargs_u) = built["moe_jetpack"], built["sparse_upcycling"]
    assert (name_j, kwargs_j) == (name_u, kwargs_u) and count_params(jetpack) == count_params(upcycled)
    dense_t = build_from_checkpoint(predecessors["T"])[0]
    block = kwargs_u["moe_layers"][0]
    experts, mlp = upcycled.blocks[block].mlp.core_experts, dense_t.blocks[block].mlp
    for e in range(experts.num_experts):  # Sparse Upcycling: every core expert is T's MLP
        torch.testing.assert_close(experts.fc1_weight[e], mlp.fc1.weight)
        torch.testing.assert_close(experts.fc2_weight[e], mlp.fc2.weight)


def test_recycle_options_go_to_the_arms_that_take_them(tmp_path, capsys):
    from moejet.demo.run import arm_recycle_options, recycle_arm
    from moejet.demo.setup import ARMS

    options = {"drop_ratio": 0.25, "router_init": "kmeans", "mixed": "core_upcycled", "align": "affine"}
    assert arm_recycle_options(ARMS, options) == {
        "moe_jetpack": {"mixed": "core_upcycled", "align": "affine"}, "softmoe_recycled": {"align": "affine"},
        "sparse_upcycling": {"drop_ratio": 0.25, "router_init": "kmeans"}}
    core = [a for a in ARMS if not a.optional]
    for bad, message in (({"key_proj": 1}, "not a recycling option the demo applies"),
                         ({"drop_ratio": 0.25}, "no recycled arm of this run takes it"),
                         ({"mixed": "both"}, "for the MoE Jetpack arm: recycle option mixed = 'both' is invalid")):
        with pytest.raises(UserError, match=message):
            arm_recycle_options(core, bad)
    assert main(["demo", "--quick", "--core-only", "--recycle-options", "drop_ratio=0.5", "--out",
                 str(tmp_path / "demo")]) == 2
    assert "no recycled arm of this run takes it" in capsys.readouterr().err and not (tmp_path / "demo").exists()
    arm = next(a for a in ARMS if a.key == "sparse_upcycling")
    recycle_arm(arm, check_assets(ASSETS), tmp_path / "up", QUICK, "cpu", seed=0,
                options={"drop_ratio": 0.25, "router_init": "kmeans"})
    report = json.loads((tmp_path / "up" / "recycle.json").read_text())
    assert report["options"]["drop_ratio"] == 0.25 and report["options"]["router_init"] == "kmeans"
    assert report["drop_upcycling"] is not None and report["router_init"]["blocks"]


def ablation_summary(upcycling_vs: dict[str, dict]) -> dict:
    """A summary.json of benchmarks/ablation_recycling.py: three rows, their differences to Sparse Upcycling."""
    def row(label, mean, vs, recycled=True):
        return {"label": label, "options": {}, "recycled": recycled, "seeds": [0, 1, 2], "top1": [mean] * 3,
                "mean_top1": mean, "vs": {"moe_jetpack": None, "sparse_upcycling": vs}}

    return {"machine": "AMD EPYC (2 cores; avx2)", "rows": {
        "moe_jetpack": row("MoE Jetpack", 55.0, upcycling_vs["moe_jetpack"]),
        "sparse_upcycling": row("Sparse Upcycling", 54.0, None),
        "dense_s": row("Dense S", 58.0, upcycling_vs["dense_s"], recycled=False)}}


@pytest.mark.parametrize("jetpack_resolved", [True, False])
def test_the_report_quotes_the_ablation_and_says_whether_any_recipe_beats_upcycling(jetpack_resolved, tmp_path):
    from moejet.demo.report import ablation_findings, write_report

    summary = ablation_summary({"moe_jetpack": {"mean": 1.0, "half": 0.5 if jetpack_resolved else 2.0,
                                                "resolved": jetpack_resolved},
                                "dense_s": {"mean": 4.0, "half": 1.5, "resolved": True}})
    lines = ablation_findings(summary)
    assert lines[0].endswith("mean top-1 Dense S 58.0, MoE Jetpack 55.0, Sparse Upcycling 54.0.")
    assert "3 recipes, 3 seeds, AMD EPYC (2 cores; avx2)" in lines[0]
    if jetpack_resolved:  # a recycling recipe's resolved gain is named; a dense one is reported apart
        assert lines[1] == ("Recycling recipes that beat Sparse Upcycling by a margin resolved across seeds: "
                            "MoE Jetpack +1.0 ± 0.5.")
    else:
        assert lines[1] == ("No recycling recipe beats Sparse Upcycling by a margin resolved across seeds (the "
                            "highest, MoE Jetpack +1.0 ± 2.0, has an interval that contains 0).")
    assert lines[2] == "Dense fine-tuning against Sparse Upcycling: Dense S +4.0 ± 1.5 (resolved)."
    results = {**fabricated_results({"moe_jetpack": 60.0, "dense_pretrained": 50.0}), "ablation": summary}
    report = write_report(tmp_path, results, []).read_text()
    assert all(f"- {line}" in report for line in lines)


def regime_summary(jetpack_vs_dense: dict[str, dict], jetpack_vs_upcycling: dict[str, dict]) -> dict:
    """A summary.json of benchmarks/regime.py: two complete points and one still running."""
    def row(vs_dense, vs_upcycling=None, gap=None):
        return {"vs": {"dense_t": vs_dense, "sparse_upcycling": vs_upcycling, "moe_jetpack": None},
                "gap_closed": gap}

    def point(per_class, epochs, key, complete=True):
        return {"per_class": per_class, "epochs": epochs, "complete": complete, "rows": {
            "dense_t": row(None), "dense_s": row({"mean": 9.0, "half": 1.0, "resolved": True}, gap=1.0),
            "moe_jetpack": row(jetpack_vs_dense[key], jetpack_vs_upcycling[key], gap=jetpack_vs_dense[key]["gap"]),
            "sparse_upcycling": row({"mean": 0.5, "half": 1.0, "resolved": False}, gap=0.05)}}

    return {"machine": "AMD EPYC (2 cores; avx2)", "runs": 30, "points": {
        "pc25_e40": point(25, 40, "pc25_e40"), "pc100_e40": point(100, 40, "pc100_e40"),
        "pc400_e40": point(400, 40, "pc400_e40", complete=False)}}


@pytest.mark.parametrize("separated", [True, False])
def test_the_report_quotes_when_recycling_pays(separated, tmp_path):
    from moejet.demo.report import regime_findings, write_report

    summary = regime_summary(
        {"pc25_e40": {"mean": -1.2, "half": 0.9, "resolved": True, "gap": -0.13},
         "pc100_e40": {"mean": 2.0, "half": 1.0, "resolved": True, "gap": 0.25},
         "pc400_e40": {"mean": 9.9, "half": 0.1, "resolved": True, "gap": 0.9}},
        {"pc25_e40": {"mean": -0.5, "half": 2.1, "resolved": False},
         "pc100_e40": {"mean": 1.5, "half": 1.0 if separated else 2.0, "resolved": separated},
         "pc400_e40": {"mean": 9.0, "half": 0.1, "resolved": True}})
    lines = regime_findings(summary)
    assert lines[0] == ("When recycling pays (30 runs, AMD EPYC (2 cores; avx2); the Recycling page of the docs has "
                        "the map): complete at 25/class x 40 epochs, 100/class x 40 epochs; 400/class x 40 epochs "
                        "not complete.")
    # an incomplete point is never quoted, whatever it holds so far
    assert not any("400/class" in line for line in lines[1:])
    assert lines[1] == ("MoE Jetpack - Dense T: 25/class x 40 epochs -1.2 ± 0.9; 100/class x 40 epochs +2.0 ± 1.0. "
                        "Ahead of Dense T by a resolved margin at 100/class x 40 epochs; behind it by a resolved "
                        "margin at 25/class x 40 epochs.")
    assert lines[2] == ("Sparse Upcycling - Dense T: 25/class x 40 epochs +0.5 ± 1.0; 100/class x 40 epochs "
                        "+0.5 ± 1.0. Ahead of Dense T by a resolved margin at no complete point; behind it by a "
                        "resolved margin at no complete point.")
    expected = ("Separated by a resolved margin at 100/class x 40 epochs." if separated
                else "Not separated by a resolved margin at any complete point.")
    assert lines[3].startswith("MoE Jetpack - Sparse Upcycling: 25/class x 40 epochs -0.5 ± 2.1; ")
    assert lines[3].endswith(expected)
    assert lines[4] == ("Share of the Dense T -> Dense S gap closed (Dense S costs 4x the FLOPs): 25/class x 40 "
                        "epochs: MoE Jetpack -13%, Sparse Upcycling 5%; 100/class x 40 epochs: MoE Jetpack 25%, "
                        "Sparse Upcycling 5%.")
    results = {**fabricated_results({"moe_jetpack": 60.0, "dense_pretrained": 50.0}), "regime": summary}
    report = write_report(tmp_path, results, []).read_text()
    assert all(f"- {line}" in report for line in lines)


def test_the_shipped_regime_map_is_complete_and_quoted_whole():
    from moejet.demo.report import regime_findings

    summary = json.loads((ASSETS / REGIME).read_text())
    points = summary["points"].values()
    seeds = {key: [len(row["seeds"]) for row in p["rows"].values()] for key, p in summary["points"].items()}
    assert all(counts == [3, 3, 3, 3] for counts in seeds.values()) and all(p["complete"] for p in points), seeds
    assert summary["runs"] == 12 * len(summary["points"])
    lines = regime_findings(summary)
    assert "not complete" not in lines[0]
    for p in points:  # every point is quoted, against Dense T and in the gap line
        name = f"{p['per_class']}/class x {p['epochs']} epochs"
        assert name in lines[1] and name in lines[-1]
