"""moejet.predict and `moejet predict`: a run or a published model on image files, with its own eval transform and
class names; bad input is one line."""

import json
import shutil

import pytest
import torch
from PIL import Image

import moejet  # noqa: F401  (registers the models)
from moejet.cli import main
from moejet.data.datasets import load_rgb
from moejet.io.weights import build_from_checkpoint
from moejet.predict import image_files, load_predictor, predict
from moejet.train import build, load_config

LABELS = ["blue", "green", "red"]


def reference_probabilities(run, files):
    """What the run's own validation pipeline computes for ``files``: its val transform, its last weights."""
    model = build_from_checkpoint(run / "last.safetensors", drop_path_rate=0.0)[0].eval()
    _, val_tf = build.build_transforms(load_config(run / "config.yaml"), model)
    with torch.no_grad():
        return model(torch.stack([val_tf(load_rgb(str(f))) for f in files])).softmax(-1)


def test_predictions_are_the_runs_own_probabilities_by_class_name(folder_run):
    files = image_files([folder_run["data"] / "val"])
    assert len(files) == 6 and all(f.suffix == ".png" for f in files)
    predictions = list(predict(load_predictor(run=folder_run["run"]), files, top_k=2, batch_size=4))
    expected = reference_probabilities(folder_run["run"], files)
    assert [p.file for p in predictions] == [str(f) for f in files]
    for p, probs in zip(predictions, expected):
        values, indices = probs.topk(2)
        assert [label for label, _ in p.top] == [LABELS[i] for i in indices]
        assert [prob for _, prob in p.top] == pytest.approx(values.tolist(), abs=1e-6)


def test_cli_rows_json_lines_and_a_published_folder_agree(folder_run, tmp_path, capsys):
    image = folder_run["data"] / "val" / "red" / "0.png"
    assert main(["predict", "--run", str(folder_run["run"]), str(image), "--top-k", "3"]) == 0
    rows = [line.split("  ") for line in capsys.readouterr().out.splitlines()]
    assert [r[0] for r in rows] == [str(image)] * 3 and sorted(r[1] for r in rows) == LABELS
    assert [float(r[2]) for r in rows] == sorted((float(r[2]) for r in rows), reverse=True)
    assert main(["publish", str(folder_run["run"]), "--out", str(tmp_path / "pub"), "--no-macs"]) == 0
    capsys.readouterr()
    assert main(["predict", "--model", f"local-dir:{tmp_path / 'pub'}", str(image), "--top-k", "3", "--json"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["file"] == str(image)
    assert [(t["label"], f"{t['probability']:.4f}") for t in line["top"]] == [(r[1], r[2]) for r in rows]


@pytest.mark.parametrize("case", ["unreadable", "empty_folder", "missing", "no_class_names", "two_models"])
def test_bad_input_is_one_line(folder_run, tmp_path, capsys, case):
    run = folder_run["run"]
    images = [str(folder_run["data"] / "val")]
    argv_source = ["--run", str(run)]
    if case == "unreadable":
        (tmp_path / "broken.jpg").write_bytes(b"not an image")
        images = [str(tmp_path / "broken.jpg")]
    elif case == "empty_folder":
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "notes.txt").write_text("no images here")
        images = [str(tmp_path / "empty")]
    elif case == "missing":
        images = [str(tmp_path / "nope.png")]
    elif case == "no_class_names":  # a run from before moejet recorded them
        copy = shutil.copytree(run, tmp_path / "old_run")
        (copy / "classes.json").unlink()
        argv_source = ["--run", str(copy)]
    elif case == "two_models":
        argv_source += ["--model", "local-dir:x"]
    assert main(["predict", *argv_source, *images]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    expected = {"unreadable": f"cannot read image {tmp_path / 'broken.jpg'} (UnidentifiedImageError",
                "empty_folder": f"folder {tmp_path / 'empty'} holds no images",
                "missing": f"{tmp_path / 'nope.png'} does not exist: pass image files or folders",
                "no_class_names": "has no class names",
                "two_models": "argument --model: not allowed with argument --run"}[case]
    assert expected in err


def test_a_grayscale_image_and_a_folder_of_subfolders_are_found_and_converted(folder_run, tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.new("L", (40, 20), 200).save(tmp_path / "a" / "b" / "gray.JPG")
    files = image_files([tmp_path])
    assert files == [tmp_path / "a" / "b" / "gray.JPG"]
    (prediction,) = predict(load_predictor(run=folder_run["run"]), files, top_k=1)
    assert prediction.top[0][0] in LABELS
