"""analysis.recycling: a recycled model's report."""

from __future__ import annotations

import json

import moejet  # noqa: F401  (registers the models)


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
