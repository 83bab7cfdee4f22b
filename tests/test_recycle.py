"""Checkpoint recycling on tiny random-init timm predecessors saved to files, with synthetic calibration images."""

import json

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import moejet  # noqa: F401  (registers the models)
from moejet.io.weights import build_from_checkpoint, save_model
from moejet.cli import main
from moejet.recycle import collect_stats, recycle
from moejet.recycle.graph import balance, part_size
from moejet.recycle.layout import blocks
from moejet.recycle.stats import percentile_threshold

STRATEGIES = ("importance", "graph", "uniform", "random", "upcycle")
PRED_VIT = dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=2, num_classes=10)
SUCC_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, moe_layers=(2, 3), core_experts=3,
                univ_experts=6, num_classes=10)
PRED_CNX = dict(dims=(16, 32, 64, 128), depths=(1, 1, 2, 1), num_classes=10)
SUCC_CNX = dict(dims=(8, 16, 32, 64), depths=(1, 1, 2, 1), moe_layers=(3, 4), core_experts=(0, 0, 2, 2),
                univ_experts=(0, 0, 4, 4), num_classes=10)
HOT_CHANNELS = list(range(1, 64, 2))  # norm2 scaled up: importance must pick exactly these


def make_predecessor(name, kwargs, seed=0):
    """A random-init predecessor whose odd channels and first-half neurons are clearly the important ones."""
    torch.manual_seed(seed)
    model = timm.create_model(name, **kwargs).eval()
    with torch.no_grad():
        for b in blocks(model):
            b.module.mlp.fc1.weight[: b.hidden // 2] *= 4.0
            if name.startswith("vit"):
                b.module.norm2.weight[HOT_CHANNELS] *= 10.0
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("recycle")
    vit, cnx = make_predecessor("vit_small_patch16_224", PRED_VIT), make_predecessor("convnext_tiny", PRED_CNX)
    save_file(vit.state_dict(), str(root / "vit.safetensors"))
    torch.save(cnx.state_dict(), root / "cnx.pth")
    torch.manual_seed(1)
    dense = timm.create_model("vit_small_patch16_224", **dict(PRED_VIT, embed_dim=32))
    save_file(dense.state_dict(), str(root / "vit_dense.safetensors"))
    return {"root": root, "vit": vit, "cnx": cnx, "vit_file": root / "vit.safetensors", "cnx_file": root / "cnx.pth",
            "dense_file": root / "vit_dense.safetensors"}


def args_of(kwargs, flag="--successor-arg"):
    out = []
    for k, v in kwargs.items():
        out += [flag, f"{k}={tuple(v) if isinstance(v, (list, tuple)) else v}"]
    return out


def run_cli(files, out, family="vit", strategy="importance", succ=None, extra=(), seed=0):
    pred = ["--predecessor", "vit_small_patch16_224", "--predecessor-checkpoint", str(files["vit_file"])]
    pred += args_of(dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=2), "--predecessor-arg")
    name = "vjetmoe_tiny_patch16_224"
    if family == "cnx":
        pred = ["--predecessor", "convnext_tiny", "--predecessor-checkpoint", str(files["cnx_file"]),
                *args_of(dict(dims=(16, 32, 64, 128), depths=(1, 1, 2, 1)), "--predecessor-arg"),
                "--calib-img-size", "32"]
        name = "cjetmoe_femto"
    succ = succ if succ is not None else (SUCC_VIT if family == "vit" else SUCC_CNX)
    argv = ["recycle", *pred, "--successor", name, *args_of(succ), "--strategy", strategy,
            "--calib-data", "synthetic:size=32", "--calib-images", "12", "--batch-size", "6", "--workers", "0",
            "--device", "cpu", "--seed", str(seed), "--graph-parts", "8", "--out", str(out), *extra]
    return main(argv)


def upcycle_args(family):
    if family == "vit":
        return dict(SUCC_VIT, embed_dim=64, univ_factor=1.0)
    return dict(SUCC_CNX, dims=(16, 32, 64, 128), univ_factor=1.0)


def check_experts(model, pred, report, strategy):
    """Every expert's W1/b1/W2/b2 are the predecessor's slices at the reported channel and neuron indices."""
    pred_state = pred.state_dict()
    state = model.state_dict()
    stages = report["channel_indices"]
    for key, paths in report["neuron_indices"].items():
        info = report["moe_blocks"][key]
        name = info["name"]
        stage = 0 if name.startswith("blocks") else int(name.split(".")[1])
        c = torch.tensor(stages[stage])
        w1, b1 = pred_state[f"{name}.mlp.fc1.weight"], pred_state[f"{name}.mlp.fc1.bias"]
        w2, b2 = pred_state[f"{name}.mlp.fc2.weight"], pred_state[f"{name}.mlp.fc2.bias"]
        for path, attr in (("core", "core_experts"), ("univ", "univ_experts")):
            for e, idx in enumerate(paths.get(path, [])):
                idx = torch.tensor(idx)
                assert len(set(idx.tolist())) == len(idx)
                p = f"{name}.mlp.{attr}."
                assert torch.equal(state[p + "fc1_weight"][e], w1[idx][:, c])
                assert torch.equal(state[p + "fc1_bias"][e], b1[idx])
                assert torch.equal(state[p + "fc2_weight"][e], w2[c][:, idx])
                assert torch.equal(state[p + "fc2_bias"][e], b2[c])
                if strategy == "upcycle":
                    assert torch.equal(state[p + "fc1_weight"][e], w1) and torch.equal(state[p + "fc2_weight"][e], w2)


@pytest.mark.parametrize("family", ["vit", "cnx"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_gives_predecessor_slices(files, tmp_path, capsys, family, strategy):
    succ = upcycle_args(family) if strategy == "upcycle" else None
    assert run_cli(files, tmp_path / "out", family, strategy, succ, extra=["--quiet"] if family == "cnx" else []) == 0
    model, name, kwargs = build_from_checkpoint(tmp_path / "out" / "model.safetensors")  # strict load
    assert name == ("vjetmoe_tiny_patch16_224" if family == "vit" else "cjetmoe_femto")
    report = json.loads((tmp_path / "out" / "recycle.json").read_text())
    assert report["strategy"] == strategy
    assert set(report["neuron_indices"]) == ({"2", "3"} if family == "vit" else {"3", "4"})
    check_experts(model, files[family], report, strategy)
    for info in report["moe_blocks"].values():
        assert 0 < info["coverage"] <= 1
    if family == "vit":
        assert "recycled vit_small_patch16_224 -> vjetmoe_tiny_patch16_224" in capsys.readouterr().out


def test_dense_part_is_selected_with_one_channel_set(files, tmp_path):
    """Without a dense checkpoint every dense weight is the predecessor's at the same channel indices."""
    assert run_cli(files, tmp_path / "out", strategy="importance", extra=["--quiet"]) == 0
    model, _, _ = build_from_checkpoint(tmp_path / "out" / "model.safetensors")
    report = json.loads((tmp_path / "out" / "recycle.json").read_text())
    c = torch.tensor(report["channel_indices"][0])
    assert c.tolist() == HOT_CHANNELS  # Eq. 4: the top channels of the importance averaged over layers
    assert report["head_indices"] == {"heads": [0, 1], "head_channels": list(range(0, 32, 2))}
    attn = torch.tensor([h * 32 + j for h in (0, 1) for j in range(0, 32, 2)])
    qkv = torch.cat([attn, attn + 64, attn + 128])
    p, s = files["vit"].state_dict(), model.state_dict()
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


def test_dense_checkpoint_supplies_the_non_moe_weights(files, tmp_path):
    assert run_cli(files, tmp_path / "out", extra=["--dense-checkpoint", str(files["dense_file"]), "--quiet"]) == 0
    model, _, _ = build_from_checkpoint(tmp_path / "out" / "model.safetensors")
    report = json.loads((tmp_path / "out" / "recycle.json").read_text())
    dense = load_file(str(files["dense_file"]))
    for key, value in model.state_dict().items():
        if not key.startswith(("blocks.2.mlp.", "blocks.3.mlp.")):
            assert torch.equal(value, dense[key]), key
    check_experts(model, files["vit"], report, "importance")


def test_same_seed_is_byte_identical_and_another_seed_differs(files, tmp_path):
    for out, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert run_cli(files, tmp_path / out, seed=seed, extra=["--quiet"]) == 0
    read = lambda out: (tmp_path / out / "model.safetensors").read_bytes()
    neurons = lambda out: json.loads((tmp_path / out / "recycle.json").read_text())["neuron_indices"]
    assert read("a") == read("b")
    assert neurons("a") == neurons("b") and neurons("a") != neurons("c")


def calib_batches(seed=0, n=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(6, 3, 32, 32, generator=g) for _ in range(n)]


def test_stats_match_a_reference_computation(files):
    model, loader = files["vit"], calib_batches()
    bl = blocks(model)
    stats = collect_stats(model, bl, loader, torch.device("cpu"), coact_blocks=["blocks.3"], percentile=90.0)
    seen = {"in": [], "act": []}
    hooks = [model.blocks[3].norm2.register_forward_hook(lambda m, a, o: seen["in"].append(o)),
             model.blocks[3].mlp.act.register_forward_hook(lambda m, a, o: seen["act"].append(o))]
    with torch.no_grad():
        for x in loader:
            model(x)
    for h in hooks:
        h.remove()
    x_in, act = torch.cat(seen["in"]).flatten(0, 1), torch.cat(seen["act"]).flatten(0, 1)
    torch.testing.assert_close(stats.channel["blocks.3"], x_in.abs().mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats.neuron["blocks.3"], act.abs().mean(0), rtol=1e-5, atol=1e-6)
    first = seen["act"][0].flatten(0, 1)
    threshold = torch.quantile(first.flatten(), 0.9, interpolation="higher")
    assert stats.thresholds["blocks.3"] == pytest.approx(float(threshold), abs=1e-6)
    m = (act > percentile_threshold(first, 90.0)).double()
    assert torch.equal(stats.coact["blocks.3"], m.t() @ m)
    assert set(stats.coact) == {"blocks.3"} and stats.images == 18


def test_importance_picks_more_important_neurons_than_random(files):
    model, loader = files["vit"], calib_batches()
    stats = collect_stats(model, blocks(model), loader, torch.device("cpu"))
    means = {}
    for strategy in ("importance", "random"):
        _, report = recycle(model, "vjetmoe_tiny_patch16_224", SUCC_VIT, strategy, loader)
        means[strategy] = torch.stack([
            stats.neuron[f"blocks.{k}"][torch.tensor(sum(p["core"] + p["univ"], []))].mean()
            for k, p in report["neuron_indices"].items()]).mean()
    assert means["importance"] > 1.2 * means["random"]


def test_uniform_rules_and_universal_modes(files):
    """shared (Eq. 7): one floor(i*h/k) set for every expert; shifted: expert e starts at e mod (h/k); linspace
    (release): round(linspace(0, h-1, k)); subselect: the same linspace positions of each core-sized draw."""
    i = torch.arange(32)
    floor, lin = lambda n, k: (torch.arange(k) * n // k), lambda n, k: torch.linspace(0, n - 1, k).round().long()
    cases = {
        ("shared", "draw"): ([floor(256, 128)] * 3, [floor(256, 32)] * 6),
        ("shifted", "draw"): ([2 * torch.arange(128) + e % 2 for e in range(3)], [8 * i + e % 8 for e in range(6)]),
        ("linspace", "draw"): ([lin(256, 128)] * 3, [lin(256, 32)] * 6),
        ("shared", "subselect"): ([floor(256, 128)] * 3, [floor(256, 128)[lin(128, 32)]] * 6),
        ("shifted", "subselect"): ([2 * torch.arange(128) + e % 2 for e in range(3)],
                                   [(2 * torch.arange(128) + e % 2)[lin(128, 32)] for e in range(6)]),
    }
    for (rule, mode), (core, univ) in cases.items():
        _, report = recycle(files["vit"], "vjetmoe_tiny_patch16_224", SUCC_VIT, "uniform", None, univ_mode=mode,
                            uniform_rule=rule)
        assert report["switches"]["uniform_rule"] == rule and report["switches"]["univ_mode"] == mode
        for paths in report["neuron_indices"].values():
            assert paths["core"] == torch.stack(core).tolist(), (rule, mode)
            assert paths["univ"] == torch.stack(univ).tolist(), (rule, mode)
        assert report["calibration"] is None
    assert lin(256, 32)[:4].tolist() == [0, 8, 16, 25] and lin(256, 32)[-1] == 255


def test_variant_sets_every_switch_and_explicit_values_win(files):
    from moejet.variants import RECYCLE_SWITCHES

    _, paper = recycle(files["vit"], "vjetmoe_tiny_patch16_224", SUCC_VIT, "uniform", None)
    assert paper["variant"] == "paper" and paper["switches"] == {
        "importance_metric": "mean_abs", "expert_channels": "shared", "uniform_rule": "shared",
        "query_norm": "inherit", "univ_mode": "draw", "final_norm": "copy"}
    _, release = recycle(files["vit"], "vjetmoe_tiny_patch16_224", SUCC_VIT, "uniform", None, variant="release",
                         query_norm="inherit")
    assert release["switches"] == {s.name: s.release for s in RECYCLE_SWITCHES} | {"query_norm": "inherit"}
    assert release["switches"]["univ_mode"] == "subselect" and release["switches"]["importance_metric"] == "l2"


def test_upcycle_fills_the_default_dual_path_architecture(files):
    """Sparse Upcycling onto the same architecture as importance recycling: core experts are the whole dense MLP;
    universal expert e is every 4th neuron from offset e mod 4, so 4 consecutive experts partition the MLP."""
    torch.manual_seed(1)
    same_width = timm.create_model("vit_small_patch16_224", **dict(PRED_VIT, embed_dim=32)).eval()
    up, up_report = recycle(same_width, "vjetmoe_tiny_patch16_224", SUCC_VIT, "upcycle", None)
    rec, _ = recycle(files["vit"], "vjetmoe_tiny_patch16_224", SUCC_VIT, "importance", calib_batches())
    assert {k: v.shape for k, v in up.items()} == {k: v.shape for k, v in rec.items()}
    assert up_report["successor"]["kwargs"] == SUCC_VIT
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


def test_vjetmoe_s_experts_from_the_larger_predecessor(files, tmp_path):
    """V-JetMoE-S ratios at tiny scale: experts from a B-like predecessor (64 ch, 4 heads, hidden 256), dense part
    from an S-like checkpoint (32 ch, 2 heads): channels 64 -> 32, hidden 256 -> core 128 / universal 32."""
    b_like = dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4)
    s_like = dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, num_classes=10)
    succ = dict(s_like, moe_layers=(2, 3), core_experts=3, univ_experts=6)
    torch.manual_seed(2)
    save_file(make_predecessor("vit_base_patch16_224", dict(b_like, num_classes=10)).state_dict(),
              str(tmp_path / "b.safetensors"))
    save_file(timm.create_model("vit_small_patch16_224", **s_like).state_dict(), str(tmp_path / "s.safetensors"))
    argv = ["recycle", "--predecessor", "vit_base_patch16_224",
            "--predecessor-checkpoint", str(tmp_path / "b.safetensors"), *args_of(b_like, "--predecessor-arg"),
            "--dense-checkpoint", str(tmp_path / "s.safetensors"),
            "--successor", "vjetmoe_small_patch16_224", *args_of(succ), "--calib-data", "synthetic:size=32",
            "--calib-images", "12", "--batch-size", "6", "--workers", "0", "--device", "cpu", "--quiet",
            "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    model, name, _ = build_from_checkpoint(tmp_path / "out" / "model.safetensors")
    report = json.loads((tmp_path / "out" / "recycle.json").read_text())
    assert name == "vjetmoe_small_patch16_224" and report["predecessor"]["dims"] == [64]
    assert report["moe_blocks"]["2"]["experts"] == {"core": [3, 128], "univ": [6, 32]}
    assert report["channel_indices"][0] == HOT_CHANNELS
    dense = load_file(str(tmp_path / "s.safetensors"))
    for key, value in model.state_dict().items():
        if not key.startswith(("blocks.2.mlp.", "blocks.3.mlp.")):
            assert torch.equal(value, dense[key]), key
    pred = timm.create_model("vit_base_patch16_224", **dict(b_like, num_classes=10))
    pred.load_state_dict(load_file(str(tmp_path / "b.safetensors")))
    check_experts(model, pred, report, "importance")


def test_full_size_vjetmoe_s_pairs_with_vit_b():
    """The real V-JetMoE-S / ViT-B pair passes every check (built on the meta device: no memory)."""
    from moejet.recycle import check_pair
    from moejet.recycle.layout import expert_banks

    with torch.device("meta"):
        pred = timm.create_model("vit_base_patch16_224", num_classes=21843)
        succ = timm.create_model("vjetmoe_small_patch16_224", num_classes=1000)
    pair = check_pair(pred, succ, "importance", dense=True)
    assert pair.pred_dims == [768] and pair.succ_dims == [384]
    assert [b.index for b in pair.moe_blocks] == [6, 7, 8, 9, 10, 11]
    banks = expert_banks(pair.moe_blocks[0].module.mlp)
    assert [(path, n, h) for path, _, n, h in banks] == [("core", 98, 1536), ("univ", 196, 384)]


@pytest.mark.parametrize("final_norm", ["copy", "fresh"])
@pytest.mark.parametrize("dense", [False, True])
def test_avg_pooled_successor_takes_the_final_norm_into_fc_norm(files, tmp_path, final_norm, dense):
    """A token-pooled source (final ``norm``) into a global_pool='avg' successor (``fc_norm``, norm = Identity)."""
    succ = dict(SUCC_VIT, global_pool="avg")
    extra = ["--final-norm", final_norm, "--quiet"]
    extra += ["--dense-checkpoint", str(files["dense_file"])] if dense else []
    assert run_cli(files, tmp_path / "out", succ=succ, extra=extra) == 0
    model, _, kwargs = build_from_checkpoint(tmp_path / "out" / "model.safetensors")
    report = json.loads((tmp_path / "out" / "recycle.json").read_text())
    assert kwargs["global_pool"] == "avg" and "norm.weight" not in model.state_dict()
    if dense:
        source = load_file(str(files["dense_file"]))
        expected = {k: source[f"norm.{k}"] for k in ("weight", "bias")}
    else:
        c, p = torch.tensor(report["channel_indices"][0]), files["vit"].state_dict()
        expected = {k: p[f"norm.{k}"][c] for k in ("weight", "bias")}
    got = {k: model.state_dict()[f"fc_norm.{k}"] for k in ("weight", "bias")}
    if final_norm == "copy":
        assert all(torch.equal(got[k], expected[k]) for k in got)
        assert "fc_norm.weight" not in report["fresh_keys"]
    else:
        assert torch.equal(got["weight"], torch.ones(32)) and torch.equal(got["bias"], torch.zeros(32))
        assert {"fc_norm.weight", "fc_norm.bias"} <= set(report["fresh_keys"])


def header_cli(out, pred_args, extra=()):
    return main(["recycle", *pred_args, "--successor", "vjetmoe_tiny_patch16_224", *args_of(SUCC_VIT),
                 "--calib-data", "synthetic:size=32", "--calib-images", "12", "--batch-size", "6", "--workers", "0",
                 "--device", "cpu", "--quiet", "--out", str(out), *extra])


def test_moejet_files_name_their_model(files, tmp_path, capsys):
    """A moejet safetensors predecessor needs no --predecessor / --predecessor-arg; explicit args win; a moejet
    dense checkpoint is rebuilt from its header."""
    pred_kwargs = dict(PRED_VIT, drop_path_rate=0.0)
    save_model(files["vit"], tmp_path / "pred.safetensors", "vit_small_patch16_224", pred_kwargs)
    torch.manual_seed(1)
    dense = timm.create_model("vit_small_patch16_224", **dict(PRED_VIT, embed_dim=32, num_classes=7))
    save_model(dense, tmp_path / "dense.safetensors", "vit_small_patch16_224",
               dict(PRED_VIT, embed_dim=32, num_classes=7))
    assert run_cli(files, tmp_path / "plain", extra=["--quiet"]) == 0
    pred = ["--predecessor-checkpoint", str(tmp_path / "pred.safetensors")]
    assert header_cli(tmp_path / "header", pred + ["--predecessor-arg", "drop_path_rate=0.1"]) == 0
    report = json.loads((tmp_path / "header" / "recycle.json").read_text())
    assert report["predecessor"]["name"] == "vit_small_patch16_224"
    assert report["predecessor"]["kwargs"] == dict(pred_kwargs, drop_path_rate=0.1)
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("plain", "header"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert header_cli(tmp_path / "dense", pred + ["--dense-checkpoint", str(tmp_path / "dense.safetensors")]) == 0
    model, _, _ = build_from_checkpoint(tmp_path / "dense" / "model.safetensors")
    ref = dense.state_dict()
    for key, value in model.state_dict().items():
        if not key.startswith(("blocks.2.mlp.", "blocks.3.mlp.", "head.")):
            assert torch.equal(value, ref[key]), key
    report = json.loads((tmp_path / "dense" / "recycle.json").read_text())
    assert {"head.weight", "head.bias"} <= set(report["fresh_keys"])  # 7 classes there, 10 here
    capsys.readouterr()
    cases = [
        (["--predecessor", "convnext_tiny", *pred], "--predecessor convnext_tiny contradicts checkpoint"),
        (["--predecessor-checkpoint", str(files["vit_file"])], "name the predecessor: pass --predecessor MODEL"),
        ([*pred, "--dense-checkpoint", str(tmp_path / "pred.safetensors")],
         "the dense checkpoint lacks or mis-shapes"),
    ]
    for i, (args, message) in enumerate(cases):
        assert header_cli(tmp_path / f"bad{i}", args) == 2
        err = capsys.readouterr().err
        assert err.startswith("moejet recycle: error: ") and err.count("\n") == 1 and message in err, err
        assert not (tmp_path / f"bad{i}").exists()


def test_cli_variant_flag_and_explicit_switch(files, tmp_path):
    extra = ["--variant", "release", "--univ-mode", "draw", "--quiet"]
    assert run_cli(files, tmp_path / "out", extra=extra) == 0
    report = json.loads((tmp_path / "out" / "recycle.json").read_text())
    assert report["variant"] == "release" and report["switches"] == {
        "importance_metric": "l2", "expert_channels": "per_expert", "uniform_rule": "linspace",
        "query_norm": "fresh", "univ_mode": "draw", "final_norm": "fresh"}
    model, _, _ = build_from_checkpoint(tmp_path / "out" / "model.safetensors")
    fresh = model.state_dict()["blocks.2.mlp.query_norm.weight"]
    assert "blocks.2.mlp.query_norm.weight" in report["fresh_keys"] and torch.equal(fresh, torch.ones_like(fresh))


def test_l2_metric_matches_the_release_computation(files):
    """Per batch ||a||_2 over (images, tokens), not squared, averaged over batches (release feature_analysis)."""
    model, loader = files["vit"], calib_batches()
    stats = collect_stats(model, blocks(model), loader, torch.device("cpu"), metric="l2")
    seen = {"in": [], "act": []}
    hooks = [model.blocks[1].norm2.register_forward_hook(lambda m, a, o: seen["in"].append(o)),
             model.blocks[1].mlp.act.register_forward_hook(lambda m, a, o: seen["act"].append(o))]
    with torch.no_grad():
        for x in loader:
            model(x)
    for h in hooks:
        h.remove()
    ref = lambda outs: torch.stack([o.double().pow(2).sum(dim=(0, 1)).sqrt() for o in outs]).mean(0).float()
    torch.testing.assert_close(stats.channel["blocks.1"], ref(seen["in"]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats.neuron["blocks.1"], ref(seen["act"]), rtol=1e-5, atol=1e-6)
    assert stats.metric == "l2"


@pytest.mark.parametrize("strategy", ["importance", "random", "uniform"])
def test_per_expert_channels_reproduce_the_expert_weights(files, strategy):
    """Release: expert e reads/writes its own channels c_e: W1[idx][:, c_e], W2[c_e][:, idx], b2[c_e]; the
    residual stream (norms, attention) keeps the shared channel set."""
    pred = files["vit"]
    state, report = recycle(pred, "vjetmoe_tiny_patch16_224", SUCC_VIT, strategy, calib_batches(),
                            expert_channels="per_expert")
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
    assert (len(distinct) == 1) == (strategy == "uniform")
    if strategy == "importance":  # ConvNeXt (1x1-conv MLPs, per-stage channels) under the release variant
        cnx = files["cnx"]
        state, report = recycle(cnx, "cjetmoe_femto", SUCC_CNX, strategy, [x[:, :, :32, :32] for x in calib_batches()],
                                variant="release")
        p = cnx.state_dict()
        w1 = p["stages.2.blocks.1.mlp.fc1.weight"].flatten(1)
        idx, ch = (torch.tensor(report[k]["3"]["univ"][1]) for k in ("neuron_indices", "expert_channel_indices"))
        assert len(ch) == 32 and torch.equal(state["stages.2.blocks.1.mlp.univ_experts.fc1_weight"][1], w1[idx][:, ch])
    if strategy == "importance":  # sampled ∝ importance: the hot channels dominate
        hot = sum(len(set(ch) & set(HOT_CHANNELS)) for ch in distinct) / len(distinct)
        assert hot > 20


def test_graph_experts_are_unions_of_metis_parts(files):
    _, report = recycle(files["vit"], "vjetmoe_tiny_patch16_224", SUCC_VIT, "graph", calib_batches(), graph_parts=32)
    for key, paths in report["neuron_indices"].items():
        graph = report["moe_blocks"][key]["graph"]
        parts = [set(p) for p in graph["parts"]]
        assert graph["part_size"] == 8 and len(parts) == 32 and all(len(p) == 8 for p in parts)
        assert len(set().union(*parts)) == 256  # disjoint, covering the layer
        for expert in paths["core"] + paths["univ"]:
            expert = set(expert)
            used = [p for p in parts if p & expert]
            assert all(p <= expert for p in used) and set().union(*used) == expert


def test_balance_makes_equal_parts_keeping_strong_members():
    w = torch.zeros(6, 6, dtype=torch.float64)
    w[0, 1] = w[1, 0] = w[0, 2] = w[2, 0] = 5.0  # 0,1,2 tight; 3 weakly tied to part 0, strongly to 4
    w[3, 4] = w[4, 3] = 3.0
    w[3, 0] = w[0, 3] = 1.0
    labels = balance(w, torch.tensor([0, 0, 0, 0, 1, 1]), k=2, g=3)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert part_size(1536, [768, 192], 32) == 48 and part_size(256, [128, 32], 8) == 32


@pytest.mark.parametrize("family", ["vit", "cnx"])
def test_dense_successor_from_same_width_predecessor_reproduces_logits(files, tmp_path, family):
    succ = dict(PRED_VIT, moe_layers=()) if family == "vit" else dict(PRED_CNX, moe_layers=())
    assert run_cli(files, tmp_path / "out", family, succ=succ, extra=["--quiet"]) == 0
    model, _, _ = build_from_checkpoint(tmp_path / "out" / "model.safetensors")
    x = calib_batches()[0]
    with torch.no_grad():
        assert torch.equal(model.eval()(x), files[family](x))


def bad_files(root):
    (root / "trunc.safetensors").write_bytes((root / "vit.safetensors").read_bytes()[:500])
    (root / "trunc.pth").write_bytes((root / "cnx.pth").read_bytes()[:500])
    return root


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(succ=dict(SUCC_VIT, embed_dim=128)), "successor width 128 is larger than the predecessor's 64"),
        (dict(succ=dict(SUCC_VIT, depth=6, moe_layers=(4, 5))), "successor MoE block 4 (blocks.4) is beyond the "
                                                                 "predecessor's depth (4 blocks)"),
        (dict(succ=dict(SUCC_VIT, univ_factor=3.0)), "block 2's univ experts need 384 hidden neurons but the "
                                                     "predecessor's MLP has 256"),
        (dict(strategy="upcycle"), "upcycle copies whole MLPs, so it needs the same width"),
        (dict(strategy="upcycle", succ=dict(SUCC_VIT, embed_dim=64, mlp_ratio=2.0)),
         "upcycle makes every core expert a full copy of the dense MLP (256 neurons) but block 2's core experts "
         "have 128"),
        (dict(strategy="magic"), "unknown strategy 'magic': choose one of importance, graph, uniform, random, upcycle"),
        (dict(ckpt="missing.safetensors"), "does not exist: check the path"),
        (dict(ckpt="trunc.safetensors"), "it may be truncated or not a weights file"),
        (dict(ckpt="trunc.pth"), "it may be truncated or not a weights file"),
        (dict(ckpt="cnx.pth"), "does not match the model architecture"),
        (dict(dense="cnx.pth"), "does not match the model architecture"),
        (dict(extra=["--expert-channels", "mixed"]), "unknown --expert-channels 'mixed': choose one of shared, "
                                                     "per_expert"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(files, tmp_path, capsys, change, message):
    root = bad_files(files["root"])
    out = tmp_path / "out"
    extra = ["--dense-checkpoint", str(root / change["dense"])] if "dense" in change else []
    extra += change.get("extra", [])
    if "ckpt" in change:
        saved, files = files["vit_file"], dict(files, vit_file=root / change["ckpt"])
    rc = run_cli(files, out, strategy=change.get("strategy", "importance"), succ=change.get("succ"), extra=extra)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("moejet recycle: error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()
    if "ckpt" in change:
        assert saved.exists()
