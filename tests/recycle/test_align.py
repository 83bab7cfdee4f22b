"""--align affine: ridge maps between the dense model's and the predecessor's bases, folded into the experts."""

import json
from dataclasses import replace

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import moejet  # noqa: F401  (registers the models)
from moejet.errors import UserError
from moejet.recycle import OptionError, RecycleOptions, recycle
from moejet.recycle.load import load_dense_state

from ..helpers.recycling import RECIPE, calib_batches, run_recycle

RIDGE = 1e-3


def flat(t):
    return t.reshape(-1, t.shape[-1])


def taps(model, names, batches):
    """MLP input and output tokens of blocks ``names``: ``{name: (x (n, d), y (n, d))}``."""
    seen = {n: ([], []) for n in names}
    hooks = []
    for n in names:
        mlp = model.get_submodule(f"{n}.mlp")
        hooks.append(mlp.register_forward_pre_hook(lambda m, a, n=n: seen[n][0].append(flat(a[0]))))
        hooks.append(mlp.register_forward_hook(lambda m, a, o, n=n: seen[n][1].append(flat(o))))
    with torch.no_grad():
        for x in batches:
            model(x)
    for h in hooks:
        h.remove()
    return {n: (torch.cat(xs).double(), torch.cat(ys).double()) for n, (xs, ys) in seen.items()}


def ridge_fit(x, y, ridge):
    """``y ≈ x M^T + m`` minimising ``||y - x M^T - m||^2 + ridge * n * ||M||^2``, by least squares on rows
    augmented with ``sqrt(ridge * n) I`` (the offset unpenalised); returns ``(M, m, R^2)``."""
    n, d = x.shape
    aug_x = torch.cat([torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], 1),
                       torch.cat([(ridge * n) ** 0.5 * torch.eye(d, dtype=x.dtype), torch.zeros(d, 1, dtype=x.dtype)],
                                 1)])
    aug_y = torch.cat([y, torch.zeros(d, y.shape[1], dtype=y.dtype)])
    sol = torch.linalg.lstsq(aug_x, aug_y).solution  # (d + 1, d_out)
    m_mat, m = sol[:d].t(), sol[d]
    residual = ((y - x @ m_mat.t() - m) ** 2).sum()
    return m_mat, m, float(1 - residual / ((y - y.mean(0)) ** 2).sum())


def expert(state, prefix, e, s):
    """Expert ``e`` of the bank at ``prefix`` on slots ``s (k, d)`` (GELU MLP)."""
    w1, b1, w2, b2 = (state[prefix + k][e].double() for k in ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"))
    return F.gelu(s @ w1.t() + b1) @ w2.t() + b2


def test_affine_alignment_is_folded_exactly_into_every_expert(recycle_files):
    pred = recycle_files["vit"]
    dense_state = load_dense_state(recycle_files["dense_file"], "vjetmoe_tiny_patch16_224", RECIPE.succ_vit)
    args = (pred, "vjetmoe_tiny_patch16_224", RECIPE.succ_vit, calib_batches())
    plain, _ = recycle(*args, RecycleOptions(strategy="importance"), dense_state)
    state, report = recycle(*args, RecycleOptions(strategy="importance", align="affine", align_ridge=RIDGE),
                            dense_state)
    assert report["options"]["align"] == "affine" and report["options"]["align_ridge"] == RIDGE
    dense = timm.create_model("vit_small_patch16_224", **dict(RECIPE.pred_vit, embed_dim=32)).eval()
    dense.load_state_dict(load_file(str(recycle_files["dense_file"])))
    names = [report["moe_blocks"][k]["name"] for k in ("2", "3")]
    p_taps, d_taps = taps(pred, names, calib_batches()), taps(dense, names, calib_batches())
    c = torch.tensor(report["channel_indices"][0])
    gen = torch.Generator().manual_seed(0)
    for key, name in zip(("2", "3"), names):
        a, b, r2_in = ridge_fit(d_taps[name][0], p_taps[name][0][:, c], RIDGE)
        big_b, beta, r2_out = ridge_fit(p_taps[name][1][:, c], d_taps[name][1], RIDGE)
        fit = report["align"]["blocks"][key]
        assert fit["input_r2"] == pytest.approx(r2_in, abs=1e-6) and fit["output_r2"] == pytest.approx(r2_out, abs=1e-6)
        assert 0 < r2_in < 1 and r2_out < 1
        tokens = d_taps[name][0]
        mix = torch.softmax(torch.randn(5, tokens.shape[0], generator=gen, dtype=torch.float64) * 3, dim=1)
        slots = mix @ tokens  # (5, d'): convex mixes of the dense model's tokens, as a soft router forms
        for attr in ("core_experts", "univ_experts"):
            prefix = f"{name}.mlp.{attr}."
            for e in range(state[prefix + "fc1_weight"].shape[0]):
                want = expert(plain, prefix, e, slots @ a.t() + b) @ big_b.t() + beta
                assert torch.allclose(expert(state, prefix, e, slots), want, atol=1e-4, rtol=1e-4), (prefix, e)
    assert all(torch.equal(plain[k], state[k]) for k in state if "_experts." not in k)


def test_align_errors(recycle_files):
    pred = recycle_files["vit"]
    dense_state = load_dense_state(recycle_files["dense_file"], "vjetmoe_tiny_patch16_224", RECIPE.succ_vit)
    args = (pred, "vjetmoe_tiny_patch16_224", RECIPE.succ_vit)
    align = RecycleOptions(strategy="uniform", align="affine")
    with pytest.raises(OptionError, match="pass --dense-checkpoint"):
        recycle(*args, calib_batches(), align)
    with pytest.raises(OptionError, match="fits on calibration images"):
        recycle(*args, None, align, dense_state)
    with pytest.raises(OptionError, match="expert_channels shared"):
        recycle(*args, calib_batches(), replace(align, expert_channels="per_expert"), dense_state)
    with pytest.raises(OptionError, match="align_ridge = -1.0 is invalid"):
        recycle(*args, calib_batches(), replace(align, align_ridge=-1.0), dense_state)
    torch.manual_seed(0)
    fine = timm.create_model("vit_small_patch16_224", **dict(RECIPE.pred_vit, patch_size=4)).eval()  # 64 patches
    with pytest.raises(UserError, match="same patch grid"):
        recycle(fine, *args[1:], calib_batches(), align, dense_state)


def test_align_flags_are_recorded(recycle_files, tmp_path, capsys):
    assert run_recycle(recycle_files, tmp_path / "out", "vit", "uniform",
                       extra=["--dense-checkpoint", str(recycle_files["dense_file"]), "--align", "affine",
                              "--align-ridge", "0.01", "--mixed", "univ_upcycled"]) == 0
    assert "options       mixed=univ_upcycled; align=affine (ridge 0.01, mean R^2 in " in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "recycle.json").read_text())
    assert report["options"]["align"] == "affine" and report["align"]["ridge"] == 0.01
    assert set(report["align"]["blocks"]) == {"2", "3"} and report["align"]["blocks"]["2"]["tokens"] == 12 * 17


def test_align_leaves_a_bank_upcycled_from_the_dense_mlp_as_it_is(recycle_files):
    dense_state = load_dense_state(recycle_files["dense_file"], "vjetmoe_tiny_patch16_224", RECIPE.succ_vit)
    args = (recycle_files["vit"], "vjetmoe_tiny_patch16_224", RECIPE.succ_vit, calib_batches())
    mixed = RecycleOptions(strategy="uniform", mixed="univ_upcycled")
    plain, _ = recycle(*args, mixed, dense_state)
    state, report = recycle(*args, replace(mixed, align="affine"), dense_state)
    assert set(report["align"]["blocks"]) == {"2", "3"}
    for name in ("blocks.2", "blocks.3"):
        for k in ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"):
            assert torch.equal(state[f"{name}.mlp.univ_experts.{k}"], plain[f"{name}.mlp.univ_experts.{k}"])
            assert not torch.equal(state[f"{name}.mlp.core_experts.{k}"], plain[f"{name}.mlp.core_experts.{k}"])
