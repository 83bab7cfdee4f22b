"""analysis.report: every picture of a run."""

from __future__ import annotations

import timm

import moejet  # noqa: F401  (registers the models)
from moejet.analysis.report import analyze_run
from moejet.io.weights import save_model

from ..helpers.analysis import TINY_ANALYSIS, write_metrics


def test_analyze_run_writes_all_pictures(analysis_files, tmp_path):
    write_metrics(tmp_path, [30.0, 60.0, 78.0], 5.0)
    save_model(timm.create_model(TINY_ANALYSIS.vit, **TINY_ANALYSIS.vit_kw), tmp_path / "last.safetensors",
               TINY_ANALYSIS.vit, TINY_ANALYSIS.vit_kw)
    written = analyze_run(tmp_path, dataset_spec=TINY_ANALYSIS.data, num_images=4)
    assert sorted(p.name for p in written) == sorted([
        "curves.png", "time_to_target.csv", "attention.png", "attention.csv", "contributions.csv",
        "contributions_summary.csv", "contributions.png"])
    assert all(p.parent == tmp_path / "analysis" and p.is_file() for p in written)
