"""Recycling options beyond the paper (issue 23): Drop-Upcycling, mixed sources, k-means router init."""

import json

import pytest
import timm
import torch
import torch.nn.functional as F

import moejet  # noqa: F401  (registers the models)
from moejet.recycle import OptionError, RecycleOptions, recycle
from moejet.recycle.load import load_dense_state

from ..helpers.recycling import RECIPE, calib_batches, run_recycle

PRED = dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=2, num_classes=10)
UPCYCLED = dict(PRED, moe_layers=(2, 3), core_experts=3, univ_experts=6, univ_factor=1.0)  # experts of 256 neurons
PATHS = (("core", "core_experts"), ("univ", "univ_experts"))


@pytest.fixture(scope="module")
def dense_vit():
    """A ViT whose MLP tensors have distinct, non-zero means and stds (timm's init has zero biases)."""
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", **PRED).eval()
    with torch.no_grad():
        for i, blk in enumerate(model.blocks):
            blk.mlp.fc1.weight.normal_(0.05 + 0.01 * i, 0.02)
            blk.mlp.fc1.bias.normal_(-0.3, 0.1)
            blk.mlp.fc2.weight.normal_(-0.02, 0.04)
    return model


def reference_positions(report, ratio, seed):
    """Drop-Upcycling's draw written out: upcycle takes nothing from the seeded generator, so each expert's
    re-initialised positions are ``randperm(h_e)[:round(ratio * h_e)]`` in block, path, expert order."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key in report["successor"]["moe_blocks"]:
        for path, _ in PATHS:
            num, size = report["moe_blocks"][str(key)]["experts"][path]
            out.setdefault(str(key), {})[path] = [
                torch.randperm(size, generator=gen)[:round(ratio * size)].sort().values.tolist() for _ in range(num)]
    return out


def test_drop_upcycling_reinitialises_exactly_the_recorded_neurons(dense_vit):
    ratio = 0.25
    state, report = recycle(dense_vit, "vjetmoe_tiny_patch16_224", UPCYCLED, None,
                            RecycleOptions(strategy="upcycle", seed=3, drop_ratio=ratio))
    drop = report["drop_upcycling"]
    assert drop["ratio"] == ratio and report["options"]["drop_ratio"] == ratio
    assert drop["reinit_positions"] == reference_positions(report, ratio, 3)
    p = dense_vit.state_dict()
    for key, info in report["moe_blocks"].items():
        name = info["name"]
        w1, b1, w2 = (p[f"{name}.mlp.{k}"] for k in ("fc1.weight", "fc1.bias", "fc2.weight"))
        fc1_stats = [w1.double().mean().item(), w1.double().std().item()]
        assert drop["dense_stats"][key]["core"]["fc1"] == drop["dense_stats"][key]["univ"]["fc1"] == pytest.approx(
            fc1_stats)
        new = {"fc1": [], "fc1_bias": [], "fc2": []}
        for path, attr in PATHS:
            q = f"{name}.mlp.{attr}."
            seen = []
            positions = drop["reinit_positions"][key][path]
            for e, (idx, pos) in enumerate(zip(report["neuron_indices"][key][path], positions)):
                idx, pos = torch.tensor(idx), torch.tensor(pos)
                assert len(pos) == round(ratio * len(idx)) == 64 and len(set(pos.tolist())) == 64
                kept = torch.tensor([j for j in range(len(idx)) if j not in set(pos.tolist())])
                assert torch.equal(state[q + "fc1_weight"][e][kept], w1[idx[kept]])
                assert torch.equal(state[q + "fc1_bias"][e][kept], b1[idx[kept]])
                assert torch.equal(state[q + "fc2_weight"][e][:, kept], w2[:, idx[kept]])
                assert torch.equal(state[q + "fc2_bias"][e], p[f"{name}.mlp.fc2.bias"])
                rows, bias, cols = (state[q + "fc1_weight"][e][pos], state[q + "fc1_bias"][e][pos],
                                    state[q + "fc2_weight"][e][:, pos])
                assert not torch.isclose(rows, w1[idx[pos]]).any() and not torch.isclose(cols, w2[:, idx[pos]]).any()
                assert not any(torch.equal(rows, other) for other in seen)  # fresh values per expert
                seen.append(rows)
                new["fc1"].append(rows.reshape(-1))
                new["fc1_bias"].append(bias)
                new["fc2"].append(cols.reshape(-1))
        for tensor, dense in (("fc1", w1), ("fc1_bias", b1), ("fc2", w2)):  # N(mean, std) of the dense tensor
            values = torch.cat(new[tensor]).double()
            tol = 4 * dense.double().std().item() / values.numel() ** 0.5
            assert values.mean().item() == pytest.approx(dense.double().mean().item(), abs=tol), tensor
            assert values.std().item() == pytest.approx(dense.double().std().item(), rel=0.03 if tensor != "fc1_bias"
                                                        else 0.1), tensor


def test_drop_upcycling_off_is_exact_copies_and_seeded(dense_vit):
    plain, report = recycle(dense_vit, "vjetmoe_tiny_patch16_224", UPCYCLED, None, RecycleOptions(strategy="upcycle"))
    assert report["drop_upcycling"] is None and report["options"]["drop_ratio"] == 0.0
    once, _ = recycle(dense_vit, "vjetmoe_tiny_patch16_224", UPCYCLED, None,
                      RecycleOptions(strategy="upcycle", drop_ratio=0.5))
    again, _ = recycle(dense_vit, "vjetmoe_tiny_patch16_224", UPCYCLED, None,
                       RecycleOptions(strategy="upcycle", drop_ratio=0.5))
    assert all(torch.equal(once[k], again[k]) for k in once)
    changed = [k for k in once if not torch.equal(once[k], plain[k])]
    assert changed and all(".mlp." in k and k.rsplit(".", 1)[1] in ("fc1_weight", "fc1_bias", "fc2_weight")
                           for k in changed)


@pytest.mark.parametrize(("options", "message"), [
    (dict(strategy="importance", drop_ratio=0.1),
     "recycle option drop_ratio = 0.1 is invalid: Drop-Upcycling re-initialises parts of whole-MLP copies: it needs "
     "strategy upcycle, not importance"),
    (dict(strategy="upcycle", drop_ratio=1.0),
     "recycle option drop_ratio = 1.0 is invalid: must be a number in [0, 1)"),
    (dict(strategy="upcycle", drop_ratio=True), "recycle option drop_ratio = True is invalid: must be a number in"),
])
def test_bad_drop_ratio_is_one_line(options, message):
    with pytest.raises(OptionError) as err:
        RecycleOptions.from_dict(options).check()
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_drop_ratio_flag_is_recorded(recycle_files, tmp_path):
    succ = dict(RECIPE.succ_vit, embed_dim=64, univ_factor=1.0)
    assert run_recycle(recycle_files, tmp_path / "out", "vit", "upcycle", succ,
                       extra=["--quiet", "--drop-ratio", "0.5"]) == 0
    report = json.loads((tmp_path / "out" / "recycle.json").read_text())
    assert report["options"]["drop_ratio"] == 0.5
    assert len(report["drop_upcycling"]["reinit_positions"]["2"]["core"][0]) == 128
    assert run_recycle(recycle_files, tmp_path / "bad", "vit", "importance", extra=["--drop-ratio", "0.5"]) != 0


def mlp_of(state, name):
    return [state[f"{name}.mlp.{k}"] for k in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")]


def assert_bank(state, prefix, idx, channels, mlp):
    """Expert ``e`` of the bank at ``prefix`` is ``mlp`` (fc1, b1, fc2, b2) at neurons ``idx[e]`` and ``channels``."""
    w1, b1, w2, b2 = mlp
    c = torch.tensor(channels)
    for e, i in enumerate(idx):
        i = torch.tensor(i)
        assert torch.equal(state[prefix + "fc1_weight"][e], w1[i][:, c]), (prefix, e)
        assert torch.equal(state[prefix + "fc1_bias"][e], b1[i]), (prefix, e)
        assert torch.equal(state[prefix + "fc2_weight"][e], w2[c][:, i]), (prefix, e)
        assert torch.equal(state[prefix + "fc2_bias"][e], b2[c]), (prefix, e)
    assert state[prefix + "fc1_weight"].shape[0] == len(idx)


@pytest.mark.parametrize("mixed", ["core_upcycled", "univ_upcycled"])
@pytest.mark.parametrize("strategy", ["importance", "random"])
def test_mixed_sources_take_one_bank_from_the_dense_checkpoint(recycle_files, mixed, strategy):
    dense = load_dense_state(recycle_files["dense_file"], "vjetmoe_tiny_patch16_224", RECIPE.succ_vit)
    calib = calib_batches() if strategy == "importance" else None
    state, report = recycle(recycle_files["vit"], "vjetmoe_tiny_patch16_224", RECIPE.succ_vit, calib,
                            RecycleOptions(strategy=strategy, mixed=mixed), dense_state=dense)
    up, other = ("core", "univ") if mixed == "core_upcycled" else ("univ", "core")
    attrs = {"core": "core_experts", "univ": "univ_experts"}
    assert report["options"]["mixed"] == mixed and report["mixed"]["upcycled_path"] == up
    pred = recycle_files["vit"].state_dict()
    for key, info in report["moe_blocks"].items():
        name = info["name"]
        num, size = info["experts"][up]
        h = dense[f"{name}.mlp.fc1.weight"].shape[0]  # 128: the dense ViT-T-like MLP
        step = h // size
        expected = ([list(range(h))] * num if up == "core"  # Sparse Upcycling: whole copies
                    else [[step * i + e % step for i in range(size)] for e in range(num)])  # the upcycle cut rule
        assert report["mixed"]["neuron_indices"][key] == expected
        assert set(report["neuron_indices"][key]) == {other}
        assert_bank(state, f"{name}.mlp.{attrs[up]}.", expected, list(range(32)), mlp_of(dense, name))
        assert_bank(state, f"{name}.mlp.{attrs[other]}.", report["neuron_indices"][key][other],
                    report["channel_indices"][0], mlp_of(pred, name))
    assert torch.equal(state["blocks.0.mlp.fc1.weight"], dense["blocks.0.mlp.fc1.weight"])  # the dense part


def test_mixed_flag_and_its_errors(recycle_files, tmp_path):
    dense = ["--dense-checkpoint", str(recycle_files["dense_file"])]
    assert run_recycle(recycle_files, tmp_path / "out", "vit", "uniform",
                       extra=["--quiet", "--mixed", "univ_upcycled", *dense]) == 0
    report = json.loads((tmp_path / "out" / "recycle.json").read_text())
    assert report["mixed"]["upcycled_path"] == "univ" and report["options"]["mixed"] == "univ_upcycled"
    with pytest.raises(OptionError, match="pass --dense-checkpoint"):
        recycle(recycle_files["vit"], "vjetmoe_tiny_patch16_224", RECIPE.succ_vit, None,
                RecycleOptions(strategy="uniform", mixed="core_upcycled"))
    with pytest.raises(OptionError, match="use one of none, core_upcycled, univ_upcycled"):
        RecycleOptions(strategy="uniform", mixed="both").check()
    succ = dict(RECIPE.succ_vit, core_experts=0)
    dense_state = load_dense_state(recycle_files["dense_file"], "vjetmoe_tiny_patch16_224", succ)
    with pytest.raises(OptionError, match="block 2 has no core experts"):
        recycle(recycle_files["vit"], "vjetmoe_tiny_patch16_224", succ, None,
                RecycleOptions(strategy="uniform", mixed="univ_upcycled"), dense_state=dense_state)


def reference_kmeans(tokens, k, gen, iters=20):
    """Spherical k-means written out: k-means++ (first centre randint, then multinomial draws weighted by 1 - the
    best cosine so far), then Lloyd steps with per-cluster loops. Returns (centroids, mean best cosine)."""
    x = F.normalize(tokens.double(), dim=1)
    centres = [x[int(torch.randint(x.shape[0], (1,), generator=gen))]]
    while len(centres) < k:
        gap = (1 - torch.stack([x @ c for c in centres]).max(dim=0).values).clamp_min(0)
        centres.append(x[int(torch.multinomial(gap if gap.sum() > 0 else torch.ones_like(gap), 1, generator=gen))])
    c = torch.stack(centres)
    for _ in range(iters):
        assign = torch.stack([x @ cj for cj in c], dim=1).argmax(dim=1)
        c = torch.stack([F.normalize(x[assign == j].sum(0), dim=0) if (assign == j).any() else c[j]
                         for j in range(k)])
    return c, (x @ c.t()).max(dim=1).values.mean().item()


def norm2_tokens(model, names, batches):
    """The MLP input (norm2 output) of blocks ``names`` of ``model`` over ``batches``: ``{name: (n, d)}``."""
    seen = {n: [] for n in names}
    hooks = [model.get_submodule(f"{n}.norm2").register_forward_hook(
        lambda m, a, out, n=n: seen[n].append(out.reshape(-1, out.shape[-1]))) for n in names]
    with torch.no_grad():
        for x in batches:
            model(x)
    for h in hooks:
        h.remove()
    return {n: torch.cat(v) for n, v in seen.items()}


def test_kmeans_router_queries_are_the_reference_centroids(recycle_files):
    pred = recycle_files["vit"]
    state, report = recycle(pred, "vjetmoe_tiny_patch16_224", RECIPE.succ_vit, calib_batches(),
                            RecycleOptions(strategy="uniform", seed=5, router_init="kmeans"))
    info = report["router_init"]
    assert report["options"]["router_init"] == "kmeans" and info["iterations"] == 20
    c = torch.tensor(report["channel_indices"][0])
    names = [report["moe_blocks"][k]["name"] for k in ("2", "3")]
    tokens = norm2_tokens(pred, names, calib_batches())
    gen = torch.Generator().manual_seed(5)  # uniform draws nothing: k-means++ starts the seeded generator
    for key, name in zip(("2", "3"), names):
        queries = state[f"{name}.mlp.queries"]
        ref, fit = reference_kmeans(tokens[name][:, c], queries.shape[0], gen)
        assert torch.allclose(queries.double(), ref, atol=1e-6), name
        block = info["blocks"][key]
        assert block["tokens"] == 3 * 6 * 17 and block["slots"] == queries.shape[0]
        assert block["mean_cosine"] == pytest.approx(fit) and 0 < block["query_alignment"] <= 1 + 1e-9
        assert f"{name}.mlp.queries" not in report["fresh_keys"]
    fresh, plain = recycle(pred, "vjetmoe_tiny_patch16_224", RECIPE.succ_vit, calib_batches(),
                           RecycleOptions(strategy="uniform", seed=5))
    assert plain["router_init"] is None and f"{names[0]}.mlp.queries" in plain["fresh_keys"]
    assert all(torch.equal(fresh[k], state[k]) for k in state if not k.endswith(".queries"))


def test_kmeans_router_on_convnext_and_its_errors(recycle_files, tmp_path):
    batches = [x[:, :, :32, :32] for x in calib_batches()]
    state, report = recycle(recycle_files["cnx"], "cjetmoe_femto", RECIPE.succ_cnx, batches,
                            RecycleOptions(strategy="importance", router_init="kmeans"))
    for key, positions in (("3", 4), ("4", 1)):  # 18 images of 32 px: 2x2 positions in stage 2, 1x1 in stage 3
        q = state[f"{report['moe_blocks'][key]['name']}.mlp.queries"]
        assert torch.allclose(q.norm(dim=1), torch.ones(q.shape[0]), atol=1e-5)
        assert report["router_init"]["blocks"][key]["tokens"] == 18 * positions
    with pytest.raises(OptionError, match="pass calibration data"):
        recycle(recycle_files["vit"], "vjetmoe_tiny_patch16_224", RECIPE.succ_vit, None,
                RecycleOptions(strategy="uniform", router_init="kmeans"))
    dense = load_dense_state(recycle_files["dense_file"], "vjetmoe_tiny_patch16_224", RECIPE.succ_vit)
    with pytest.raises(OptionError, match="drop --dense-checkpoint"):
        recycle(recycle_files["vit"], "vjetmoe_tiny_patch16_224", RECIPE.succ_vit, calib_batches(),
                RecycleOptions(strategy="uniform", router_init="kmeans"), dense_state=dense)
    with pytest.raises(OptionError, match="use one of fresh, kmeans"):
        RecycleOptions(strategy="uniform", router_init="spectral").check()
    assert run_recycle(recycle_files, tmp_path / "out", "vit", "random", extra=["--quiet", "--router-init",
                                                                                 "kmeans"]) == 0
    report = json.loads((tmp_path / "out" / "recycle.json").read_text())
    assert report["router_init"]["blocks"]["2"]["tokens"] == 12 * 17


def test_drop_upcycling_reinitialises_the_gate_of_a_gated_mlp_too():
    """EVA-02 (split SwiGLU with a hidden norm): the gate rows and gate bias of the dropped neurons are fresh, from
    the dense gate's statistics; the hidden norm's per-neuron affine stays a copy."""
    kwargs = dict(embed_dim=32, depth=4, num_heads=2, num_classes=10, img_size=28)
    torch.manual_seed(0)
    pred = timm.create_model("eva02_base_patch14_224", **kwargs).eval()
    with torch.no_grad():
        for blk in pred.blocks:
            blk.mlp.fc1_g.weight.normal_(0.1, 0.05)
            blk.mlp.fc1_g.bias.normal_(0.5, 0.2)
    succ = dict(base="eva02_base_patch14_224", **kwargs, moe_layers=[2, 3], core_experts=2, univ_experts=4,
                univ_factor=1.0)
    state, report = recycle(pred, "jetmoe", succ, None, RecycleOptions(strategy="upcycle", drop_ratio=0.5))
    p = pred.state_dict()
    for key, info in report["moe_blocks"].items():
        name = info["name"]
        gate, gate_b, norm_w = (p[f"{name}.mlp.{k}"] for k in ("fc1_g.weight", "fc1_g.bias", "norm.weight"))
        fresh = []
        for path, attr in PATHS:
            q = f"{name}.mlp.{attr}."
            for e, (idx, pos) in enumerate(zip(report["neuron_indices"][key][path],
                                               report["drop_upcycling"]["reinit_positions"][key][path])):
                idx, pos = torch.tensor(idx), torch.tensor(pos)
                kept = torch.tensor([j for j in range(len(idx)) if j not in set(pos.tolist())])
                assert len(pos) == round(0.5 * 85) == 42
                assert torch.equal(state[q + "fc1_gate_weight"][e][kept], gate[idx[kept]])
                assert torch.equal(state[q + "fc1_gate_bias"][e][kept], gate_b[idx[kept]])
                assert torch.equal(state[q + "norm_weight"][e], norm_w[idx])
                assert not torch.isclose(state[q + "fc1_gate_weight"][e][pos], gate[idx[pos]]).any()
                fresh.append(state[q + "fc1_gate_weight"][e][pos].reshape(-1))
        values = torch.cat(fresh).double()
        assert values.mean().item() == pytest.approx(gate.double().mean().item(), abs=0.005)
        assert values.std().item() == pytest.approx(gate.double().std().item(), rel=0.05)
