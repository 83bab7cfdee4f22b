"""`moejet export`: torch.export / ONNX / TorchScript files whose outputs equal the eager model's."""

from __future__ import annotations

import json
import warnings

import pytest
import timm
import torch

import moejet  # noqa: F401  (registers the models)
from moejet.cli import main
from moejet.io.weights import save_model

VIT = ("vjetmoe_tiny_patch16_224", dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2,
                                        num_classes=10, moe_layers=(2, 3), core_experts=2, univ_experts=4))
VIT_ENTMAX = (VIT[0], dict(VIT[1], combine="entmax15"))
CONVNEXT = ("cjetmoe_femto", dict(dims=(8, 16, 32, 64), depths=(1, 1, 2, 1), num_classes=10, moe_layers=(3, 4),
                                  core_experts=(0, 0, 2, 2), univ_experts=(0, 0, 4, 4)))


def saved(tmp_path, name, kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).eval()
    path = tmp_path / "model.safetensors"
    save_model(model, path, name, kwargs)
    return model, path


def load_and_run(fmt, path, images):
    if fmt == "export":
        return torch.export.load(path).module()(images)
    if fmt == "torchscript":
        return torch.jit.load(str(path))(images)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"images": images.numpy()})[0])


@pytest.mark.parametrize("fmt,suffix", [("export", ".pt2"), ("onnx", ".onnx"), ("torchscript", ".ts")])
@pytest.mark.parametrize("model_case", [VIT, VIT_ENTMAX, CONVNEXT], ids=["vit", "vit-entmax15", "convnext"])
def test_export_formats_equal_the_eager_model_at_any_batch_and_say_one_line(tmp_path, capfd, fmt, suffix,
                                                                             model_case):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    model, path = saved(tmp_path, *model_case)
    if fmt == "torchscript" and model_case is VIT_ENTMAX:
        assert main(["export", str(path), "--format", fmt]) == 2
        assert "TorchScript cannot record entmax15's autograd function (blocks.2.mlp combines with entmax15): " \
               "use --format export or --format onnx" in capfd.readouterr().err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
        return
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("default")  # what a user's interpreter shows
        assert main(["export", str(path), "--format", fmt, "--img-size", "32"]) == 0
    out = path.with_suffix(suffix)
    printed = capfd.readouterr()  # file descriptors: the exporters' own prints and logs too
    assert printed.out.startswith(f"wrote {out} ({fmt})") and printed.out.count("\n") == 1  # quiet on success
    assert printed.err == "" and [w for w in warned if not issubclass(w.category, DeprecationWarning)] == []
    images = torch.randn(7, 3, 32, 32)  # neither the trace batch (2) nor the check batch (3)
    with torch.no_grad():
        torch.testing.assert_close(load_and_run(fmt, out, images), model(images), atol=1e-5, rtol=1e-5)


def test_export_that_differs_from_the_model_is_refused_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    import moejet.io.export as export

    _, path = saved(tmp_path, *VIT)
    write, run = export.WRITERS["export"]
    monkeypatch.setitem(export.WRITERS, "export", (write, lambda p, images: run(p, images) + 1e-3))
    assert main(["export", str(path), "--out", str(tmp_path / "m.pt2")]) == 2
    err = capsys.readouterr().err
    assert "differs from the model by 0.001 (> --atol 0.0001); nothing was written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_export_of_a_file_moejet_did_not_write_is_a_one_line_error(tmp_path, capsys):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    assert main(["export", str(tmp_path / "plain.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has no moejet model header" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.safetensors"]


def test_onnx_without_its_packages_says_what_to_install(tmp_path, capsys, monkeypatch):
    import moejet.io.export as export

    _, path = saved(tmp_path, *VIT)
    monkeypatch.setattr(export, "_importable", lambda module: module != "onnxruntime")
    assert main(["export", str(path), "--format", "onnx"]) == 2
    assert "--format onnx needs onnxruntime: pip install 'moe-jetpack[export]'" in capsys.readouterr().err


def read_metadata_of(fmt, path):
    """The metadata an exported file carries, read back with each format's own loader."""
    if fmt == "export":
        extra = {"label_names": "", "moejet.model": ""}
        torch.export.load(path, extra_files=extra)
        return extra
    if fmt == "torchscript":
        extra = {"label_names": "", "moejet.model": ""}
        torch.jit.load(str(path), _extra_files=extra)
        return {k: v.decode() for k, v in extra.items()}  # TorchScript gives bytes
    import onnx

    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


@pytest.mark.parametrize("fmt", ["export", "torchscript"])  # ONNX writes metadata_props the same way (15 s more)
def test_exported_files_carry_the_class_names_of_their_run(folder_run, tmp_path, capsys, fmt):
    out = tmp_path / f"model.{fmt}"
    assert main(["export", str(folder_run["run"] / "last.safetensors"), "--format", fmt, "--out", str(out)]) == 0
    metadata = read_metadata_of(fmt, out)
    assert json.loads(metadata["label_names"]) == ["blue", "green", "red"]
    assert metadata["moejet.model"] == "vjetmoe_tiny_patch16_224"
