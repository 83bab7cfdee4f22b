"""recycle.build: every strategy's experts and the dense part are slices of the predecessor's weights."""

import json
from types import SimpleNamespace

import pytest
import timm
import torch
from safetensors.torch import load_file

import moejet  # noqa: F401  (registers the models)
from moejet.io.weights import build_from_checkpoint
from moejet.recycle import RecycleOptions, recycle

from ..helpers.recycling import RECIPE, calib_batches, check_experts, run_recycle

STRATEGIES = ("importance", "graph", "uniform", "random", "upcycle")


def floor_positions(n, k):
    """Eq. 7 (uniform): neuron floor(i * n / k) for i = 0 .. k-1."""
    return [i * n // k for i in range(k)]


def expected_indices(strategy, n, core, univ):
    """Hand-computed neuron indices of the deterministic strategies, per path, for a layer of n neurons with
    ``core`` / ``univ`` = (experts, hidden size): uniform (Eq. 7, every expert the same set); upcycle (each core
    expert the whole MLP, universal expert e every (n / h)-th neuron from offset e mod (n / h))."""
    if strategy == "uniform":
        return {"core": [floor_positions(n, core[1])] * core[0], "univ": [floor_positions(n, univ[1])] * univ[0]}
    step = n // univ[1]
    return {"core": [list(range(n))] * core[0],
            "univ": [[step * i + e % step for i in range(univ[1])] for e in range(univ[0])]}


@pytest.mark.parametrize("family", ["vit", "cnx"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_gives_predecessor_slices(recycle_files, tmp_path, capsys, family, strategy):
    if strategy == "upcycle":  # the same width as the predecessor, universal experts as wide as the core ones
        succ = (dict(RECIPE.succ_vit, embed_dim=64, univ_factor=1.0) if family == "vit"
                else dict(RECIPE.succ_cnx, dims=(16, 32, 64, 128), univ_factor=1.0))
    else:
        succ = None
    assert run_recycle(recycle_files, tmp_path / "out", family, strategy, succ,
                       extra=["--quiet"] if family == "cnx" else []) == 0
    model, name, kwargs = build_from_checkpoint(tmp_path / "out" / "model.safetensors")  # strict load
    assert name == ("vjetmoe_tiny_patch16_224" if family == "vit" else "cjetmoe_femto")
    report = json.loads((tmp_path / "out" / "recycle.json").read_text())
    assert report["strategy"] == strategy
    assert set(report["neuron_indices"]) == ({"2", "3"} if family == "vit" else {"3", "4"})
    recovered = check_experts(model, recycle_files[family], report)  # indices read back from the weights
    for key, info in report["moe_blocks"].items():
        assert 0 < info["coverage"] <= 1
        if strategy in ("uniform", "upcycle"):
            n = recycle_files[family].state_dict()[f"{info['name']}.mlp.fc1.weight"].shape[0]  # predecessor MLP
            core, univ = (tuple(info["experts"][path]) for path in ("core", "univ"))
            assert recovered[key] == expected_indices(strategy, n, core, univ), key
    if family == "vit":
        assert "recycled vit_small_patch16_224 -> vjetmoe_tiny_patch16_224" in capsys.readouterr().out


def test_dense_part_is_selected_with_one_channel_set(recycle_files, tmp_path):
    """Without a dense checkpoint every dense weight is the predecessor's at the same channel indices."""
    assert run_recycle(recycle_files, tmp_path / "out", strategy="importance", extra=["--quiet"]) == 0
    model, _, _ = build_from_checkpoint(tmp_path / "out" / "model.safetensors")
    report = json.loads((tmp_path / "out" / "recycle.json").read_text())
    c = torch.tensor(report["channel_indices"][0])
    assert c.tolist() == RECIPE.hot_channels  # Eq. 4: the top channels of the importance averaged over layers
    assert report["head_indices"] == {"heads": [0, 1], "head_channels": list(range(0, 32, 2))}
    attn = torch.tensor([h * 32 + j for h in (0, 1) for j in range(0, 32, 2)])
    qkv = torch.cat([attn, attn + 64, attn + 128])
    p, s = recycle_files["vit"].state_dict(), model.state_dict()
    assert torch.equal(s["cls_token"], p["cls_token"][..., c]) and torch.equal(s["pos_embed"], p["pos_embed"][..., c])
    assert torch.equal(s["patch_embed.proj.weight"], p["patch_embed.proj.weight"][c])
    assert torch.equal(s["head.weight"], p["head.weight"][:, c]) and torch.equal(s["norm.weight"], p["norm.weight"][c])
    for i in range(4):
        b = f"blocks.{i}."
        for k in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "attn.proj.bias"):
            assert torch.equal(s[b + k], p[b + k][c]), k
        assert torch.equal(s[b + "attn.qkv.weight"], p[b + "attn.qkv.weight"][qkv][:, c])
        assert torch.equal(s[b + "attn.proj.weight"], p[b + "attn.proj.weight"][c][:, attn])
        if i < 2:
            n = torch.tensor(report["dense_neuron_indices"][str(i)])
            assert torch.equal(s[b + "mlp.fc1.weight"], p[b + "mlp.fc1.weight"][n][:, c])
            assert torch.equal(s[b + "mlp.fc2.weight"], p[b + "mlp.fc2.weight"][c][:, n])
        else:  # the router's query norm inherits the block's norm2
            assert torch.equal(s[b + "mlp.query_norm.weight"], s[b + "norm2.weight"])


def test_upcycle_fills_the_default_dual_path_architecture(recycle_files):
    """Sparse Upcycling onto the same architecture as importance recycling: core experts are the whole dense MLP;
    universal expert e is every 4th neuron from offset e mod 4, so 4 consecutive experts partition the MLP."""
    torch.manual_seed(1)
    same_width = timm.create_model("vit_small_patch16_224", **dict(RECIPE.pred_vit, embed_dim=32)).eval()
    up, up_report = recycle(same_width, "vjetmoe_tiny_patch16_224", RECIPE.succ_vit, None,
                            RecycleOptions(strategy="upcycle"))
    rec, _ = recycle(recycle_files["vit"], "vjetmoe_tiny_patch16_224", RECIPE.succ_vit, calib_batches(),
                     RecycleOptions(strategy="importance"))
    assert {k: v.shape for k, v in up.items()} == {k: v.shape for k, v in rec.items()}
    assert up_report["successor"]["kwargs"] == RECIPE.succ_vit
    p = same_width.state_dict()
    for block in ("blocks.2", "blocks.3"):
        w1, b1 = p[f"{block}.mlp.fc1.weight"], p[f"{block}.mlp.fc1.bias"]
        w2, b2 = p[f"{block}.mlp.fc2.weight"], p[f"{block}.mlp.fc2.bias"]
        core, univ = f"{block}.mlp.core_experts.", f"{block}.mlp.univ_experts."
        assert up[core + "fc1_weight"].shape == (3, 128, 32) and up[univ + "fc1_weight"].shape == (6, 32, 32)
        for e in range(3):
            assert torch.equal(up[core + "fc1_weight"][e], w1) and torch.equal(up[core + "fc2_weight"][e], w2)
            assert torch.equal(up[core + "fc1_bias"][e], b1) and torch.equal(up[core + "fc2_bias"][e], b2)
        for e in range(6):
            n = 4 * torch.arange(32) + e % 4
            assert torch.equal(up[univ + "fc1_weight"][e], w1[n]) and torch.equal(up[univ + "fc2_weight"][e], w2[:, n])
            assert torch.equal(up[univ + "fc1_bias"][e], b1[n]) and torch.equal(up[univ + "fc2_bias"][e], b2)
    assert up_report["moe_blocks"]["2"]["univ_coverage"] == 1.0


@pytest.mark.parametrize("final_norm", ["copy", "fresh"])
@pytest.mark.parametrize("dense", [False, True])
def test_avg_pooled_successor_takes_the_final_norm_into_fc_norm(recycle_files, tmp_path, final_norm, dense):
    """A token-pooled source (final ``norm``) into a global_pool='avg' successor (``fc_norm``, norm = Identity)."""
    succ = dict(RECIPE.succ_vit, global_pool="avg")
    extra = ["--final-norm", final_norm, "--quiet"]
    extra += ["--dense-checkpoint", str(recycle_files["dense_file"])] if dense else []
    assert run_recycle(recycle_files, tmp_path / "out", succ=succ, extra=extra) == 0
    model, _, kwargs = build_from_checkpoint(tmp_path / "out" / "model.safetensors")
    report = json.loads((tmp_path / "out" / "recycle.json").read_text())
    assert kwargs["global_pool"] == "avg" and "norm.weight" not in model.state_dict()
    if dense:
        source = load_file(str(recycle_files["dense_file"]))
        expected = {k: source[f"norm.{k}"] for k in ("weight", "bias")}
    else:
        c, p = torch.tensor(report["channel_indices"][0]), recycle_files["vit"].state_dict()
        expected = {k: p[f"norm.{k}"][c] for k in ("weight", "bias")}
    got = {k: model.state_dict()[f"fc_norm.{k}"] for k in ("weight", "bias")}
    if final_norm == "copy":
        assert all(torch.equal(got[k], expected[k]) for k in got)
        assert "fc_norm.weight" not in report["fresh_keys"]
    else:
        assert torch.equal(got["weight"], torch.ones(32)) and torch.equal(got["bias"], torch.zeros(32))
        assert {"fc_norm.weight", "fc_norm.bias"} <= set(report["fresh_keys"])


@pytest.mark.parametrize("strategy", ["importance", "random", "uniform"])
def test_per_expert_channels_reproduce_the_expert_weights(recycle_files, strategy):
    """Release: expert e reads/writes its own channels c_e: W1[idx][:, c_e], W2[c_e][:, idx], b2[c_e]; the
    residual stream (norms, attention) keeps the shared channel set."""
    pred = recycle_files["vit"]
    state, report = recycle(pred, "vjetmoe_tiny_patch16_224", RECIPE.succ_vit, calib_batches(),
                            RecycleOptions(strategy=strategy, expert_channels="per_expert"))
    p = pred.state_dict()
    c = torch.tensor(report["channel_indices"][0])
    assert torch.equal(state["blocks.2.norm2.weight"], p["blocks.2.norm2.weight"][c])
    distinct = set()
    for key, paths in report["neuron_indices"].items():
        name = report["moe_blocks"][key]["name"]
        w1, b1 = p[f"{name}.mlp.fc1.weight"], p[f"{name}.mlp.fc1.bias"]
        w2, b2 = p[f"{name}.mlp.fc2.weight"], p[f"{name}.mlp.fc2.bias"]
        for path, attr in (("core", "core_experts"), ("univ", "univ_experts")):
            channels = report["expert_channel_indices"][key][path]
            assert len(channels) == len(paths[path])
            for e, (idx, ch) in enumerate(zip(paths[path], channels)):
                idx, ch = torch.tensor(idx), torch.tensor(ch)
                assert len(ch) == 32 and len(set(ch.tolist())) == 32 and ch.tolist() == sorted(ch.tolist())
                distinct.add(tuple(ch.tolist()))
                q = f"{name}.mlp.{attr}."
                assert torch.equal(state[q + "fc1_weight"][e], w1[idx][:, ch])
                assert torch.equal(state[q + "fc1_bias"][e], b1[idx])
                assert torch.equal(state[q + "fc2_weight"][e], w2[ch][:, idx])
                assert torch.equal(state[q + "fc2_bias"][e], b2[ch])
    check_experts(SimpleNamespace(state_dict=lambda: state), pred, report)  # the neurons, read back from the weights
    assert (len(distinct) == 1) == (strategy == "uniform")
    if strategy == "importance":  # ConvNeXt (1x1-conv MLPs, per-stage channels) under the release variant
        cnx = recycle_files["cnx"]
        state, report = recycle(cnx, "cjetmoe_femto", RECIPE.succ_cnx, [x[:, :, :32, :32] for x in calib_batches()],
                                RecycleOptions(strategy=strategy, variant="release"))
        p = cnx.state_dict()
        w1 = p["stages.2.blocks.1.mlp.fc1.weight"].flatten(1)
        idx, ch = (torch.tensor(report[k]["3"]["univ"][1]) for k in ("neuron_indices", "expert_channel_indices"))
        assert len(ch) == 32 and torch.equal(state["stages.2.blocks.1.mlp.univ_experts.fc1_weight"][1], w1[idx][:, ch])
        check_experts(SimpleNamespace(state_dict=lambda: state), cnx, report)
    if strategy == "importance":  # sampled ∝ importance: the hot channels dominate
        hot = sum(len(set(ch) & set(RECIPE.hot_channels)) for ch in distinct) / len(distinct)
        assert hot > 20


@pytest.mark.parametrize("family", ["vit", "cnx"])
def test_dense_successor_from_same_width_predecessor_reproduces_logits(recycle_files, tmp_path, family):
    succ = dict(RECIPE.pred_vit, moe_layers=()) if family == "vit" else dict(RECIPE.pred_cnx, moe_layers=())
    assert run_recycle(recycle_files, tmp_path / "out", family, succ=succ, extra=["--quiet"]) == 0
    model, _, _ = build_from_checkpoint(tmp_path / "out" / "model.safetensors")
    x = calib_batches()[0]
    with torch.no_grad():
        assert torch.equal(model.eval()(x), recycle_files[family](x))
