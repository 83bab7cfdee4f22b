"""The contract timm's own tooling assumes of a model, checked on every registered moejet model and on ``jetmoe``
over a ViT (CLIP), an EVA-02 and a ConvNeXt base: it scripts, FX-traces (train and eval graphs) to the eager
outputs, carries its pretrained / data config through ``features_only``, ``reset_classifier`` and publishing, and
runs its forward on a fake CUDA device under autocast.

Models are built tiny (32 px, 4 ViT blocks / 5 ConvNeXt blocks, a handful of experts).
"""

from contextlib import nullcontext

import pytest
import timm
import torch
from timm.data import resolve_data_config
from timm.layers import set_layer_config
from timm.models import get_notrace_functions, get_notrace_modules, get_pretrained_cfg
from timm.models._builder import pretrained_cfg_for_features
from torch._subclasses.fake_tensor import FakeTensorMode
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from moejet.analysis.routing import capture_routing, expert_contributions, experts_of
from moejet.io.hub import load_published, write_folder
from moejet.io.weights import save_model
from moejet.models import MODEL_NAMES, moe_modules

from ..helpers.models import TINY_CONVNEXT, TINY_VIT, tiny_moe

IMAGES = (2, 3, 32, 32)
CLIP_BASE = "vit_base_patch16_clip_224.openai"
BASES = {"vit": CLIP_BASE, "eva": "eva02_tiny_patch14_224", "convnext": "convnext_atto"}
# case id -> (model name, what to build it with); jetmoe cases name their base family
CASES = {name: name for name in MODEL_NAMES if name != "jetmoe"}
CASES |= {"vjetmoe_tiny_patch16_224-release": "vjetmoe_tiny_patch16_224", "jetmoe-vit": "jetmoe",
          "jetmoe-eva": "jetmoe", "jetmoe-convnext": "jetmoe", "jetmoe-softmoe": "jetmoe"}
# the feature extractors timm builds for each family (its ViT / EVA cannot be wrapped as list / dict nets)
FEATURE_CLASSES = {"vit": ("getter", "hook", "fx"), "convnext": ("list", "dict", "hook", "fx", "getter")}


@pytest.fixture(scope="module")
def case_kwargs():
    """``case_kwargs(case)``: the kwargs that build ``CASES[case]`` tiny."""

    def kwargs(case):
        family = "convnext" if "convnext" in case or "cjetmoe" in case else "vit"
        if case == "convnext_femto_d18":
            return dict(TINY_CONVNEXT)
        if case.startswith("softmoe"):
            return dict(TINY_VIT, moe_layers=(2, 3), num_experts=4)
        if case == "jetmoe-softmoe":
            return dict(TINY_VIT, base=BASES["vit"], moe_type="soft", moe_layers=(2, 3), num_experts=4)
        out = tiny_moe(family, variant="release") if case.endswith("release") else tiny_moe(family)
        if case.startswith("jetmoe"):
            out.update(base=BASES[case.split("-")[1]], core_experts=2, univ_experts=4)
        return out

    return kwargs


def family(case):
    return "convnext" if "convnext" in case or "cjetmoe" in case else "vit"


def build(case, case_kwargs, **extra):
    torch.manual_seed(0)
    return timm.create_model(CASES[case], **case_kwargs(case), **extra)


def dense_base(case, case_kwargs):
    """The dense timm model a case is made from: jetmoe's base, built with the same non-MoE kwargs."""
    kwargs = {k: v for k, v in case_kwargs(case).items()
              if k not in ("base", "moe_type", "moe_layers", "core_experts", "univ_experts", "num_experts", "variant")}
    if CASES[case] == "jetmoe":
        return timm.create_model(case_kwargs(case)["base"], **kwargs)
    return None


def outputs(model, x, seed=0):
    torch.manual_seed(seed)  # the routing noise (training, and the release's eval-mode noise)
    out = model(x)
    return list(out.values())[-1] if isinstance(out, dict) else out


@pytest.mark.parametrize("case", CASES)
def test_scripted_model_gives_the_eager_outputs(case, case_kwargs):
    with set_layer_config(scriptable=True):  # as timm's own tests script its models
        model = build(case, case_kwargs).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(*IMAGES)
    with torch.no_grad():
        torch.testing.assert_close(outputs(scripted, x), outputs(model, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_fx_feature_extractor_gives_the_eager_outputs_in_train_and_eval(case, case_kwargs):
    model = build(case, case_kwargs)
    tracer = {"leaf_modules": get_notrace_modules(), "autowrap_functions": get_notrace_functions()}  # timm's way
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer)
    traced = create_feature_extractor(model, train_return_nodes=train_nodes[-1:], eval_return_nodes=eval_nodes[-1:],
                                      tracer_kwargs=tracer)
    x = torch.randn(*IMAGES)
    for mode in (True, False):
        model.train(mode), traced.train(mode)
        torch.testing.assert_close(outputs(traced, x), outputs(model, x), atol=0, rtol=0)
    if moe_modules(model):  # a backbone's features, taken from a block after the MoE ones
        block = "stages.3" if family(case) == "convnext" else "blocks.3"
        features = create_feature_extractor(model.eval(), return_nodes=[block], tracer_kwargs=tracer)
        assert features(x)[block].shape[0] == 2


@pytest.mark.parametrize("case", CASES)
def test_pretrained_cfg_is_carried_through_features_and_classifier_reset(case, case_kwargs):
    name = CASES[case]
    assert get_pretrained_cfg(name) is not None and get_pretrained_cfg(name).architecture == name
    model = build(case, case_kwargs)
    cfg = model.pretrained_cfg
    assert cfg["architecture"] == name and model.default_cfg == cfg
    data = resolve_data_config(model=model)
    for feature_cls in FEATURE_CLASSES[family(case)]:
        features = build(case, case_kwargs, features_only=True, feature_cls=feature_cls)
        assert features.pretrained_cfg == pretrained_cfg_for_features(cfg), feature_cls
        assert resolve_data_config(model=features) == data, feature_cls
    model.reset_classifier(3)
    assert model.pretrained_cfg == cfg and resolve_data_config(model=model) == data


# the dense timm model each registered one is made from (the recycling predecessor of paper Tables 1-4)
DENSE_COUNTERPARTS = {"vjetmoe_tiny_patch16_224": "vit_tiny_patch16_224", "softmoe_vit_tiny_patch16_224":
                      "vit_tiny_patch16_224", "vjetmoe_small_patch16_224": "vit_small_patch16_224",
                      "softmoe_vit_small_patch16_224": "vit_small_patch16_224", "cjetmoe_femto": "convnext_femto",
                      "convnext_femto_d18": "convnext_femto"}


def test_registered_models_normalise_as_their_dense_counterparts():
    assert DENSE_COUNTERPARTS.keys() == set(MODEL_NAMES) - {"jetmoe"}
    for name, dense in DENSE_COUNTERPARTS.items():
        config = resolve_data_config(get_pretrained_cfg(name).to_dict())
        assert config == resolve_data_config(get_pretrained_cfg(dense).to_dict()), name


@pytest.mark.parametrize("case", [case for case in CASES if CASES[case] == "jetmoe"])
def test_jetmoe_data_config_is_its_base(case, case_kwargs):
    model = build(case, case_kwargs)
    base = dense_base(case, case_kwargs)
    assert resolve_data_config(model=model) == resolve_data_config(model=base)
    assert {k: v for k, v in model.pretrained_cfg.items() if k != "architecture"} == {
        **{k: v for k, v in base.pretrained_cfg.items() if k != "architecture"},
        "base_architecture": base.pretrained_cfg["architecture"]}


def test_jetmoe_on_clip_normalises_as_clip_through_features_and_publishing(case_kwargs, tmp_path, monkeypatch):
    kwargs = case_kwargs("jetmoe-vit")
    model = build("jetmoe-vit", case_kwargs)
    features = build("jetmoe-vit", case_kwargs, features_only=True)
    save_model(model, tmp_path / "model.safetensors", "jetmoe", kwargs)
    folder = write_folder(tmp_path / "model.safetensors", tmp_path / "published", macs=False)
    loaded = load_published(str(folder))  # local-dir:
    loaded_features = load_published(str(folder), features_only=True)
    # hf-hub: the Hub serves the published folder's files
    monkeypatch.setattr(timm.models._hub, "hf_hub_download",
                        lambda *args, **kwargs: str(folder / (args[1] if len(args) > 1 else kwargs["filename"])))
    from_hub = load_published("you/jetmoe-clip")
    x = torch.randn(*IMAGES)
    with torch.no_grad():  # the Hub's weights, not a fresh model
        torch.testing.assert_close(from_hub.eval()(x), model.eval()(x), atol=0, rtol=0)
    for m in (model, features, loaded, loaded_features, from_hub):
        config = resolve_data_config(model=m)
        assert config["mean"] == pytest.approx((0.4815, 0.4578, 0.4082), abs=1e-4), type(m).__name__
        assert (config["crop_pct"], config["interpolation"]) == (0.9, "bicubic")
    assert loaded.pretrained_cfg["architecture"] == from_hub.pretrained_cfg["architecture"] == "jetmoe"


@pytest.fixture
def fake_cuda(monkeypatch):
    """A FakeTensorMode for a fake ``cuda`` device, with torch.autocast allowed to switch on for CUDA (it refuses
    when no GPU is present)."""
    monkeypatch.setattr(torch.cuda.amp.common, "amp_definitely_not_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    return FakeTensorMode()


@pytest.mark.parametrize("case", CASES)
def test_forward_runs_on_a_fake_cuda_device_under_autocast(case, case_kwargs, fake_cuda):
    # built outside the fake mode (timm's drop-path schedule calls .item()), with every random drop switched on
    sphero = not ("softmoe" in case or case == "convnext_femto_d18")
    model = build(case, case_kwargs, drop_path_rate=0.1, **({"expert_drop_rate": 0.25} if sphero else {}))
    layers = moe_modules(model)
    with fake_cuda:
        model._apply(lambda t: fake_cuda.from_tensor(t).to("cuda"))
        x = torch.randn(*IMAGES, device="cuda")
        for dtype in (torch.float16, torch.bfloat16):
            for training in (True, False):
                model.train(training)
                record = capture_routing(model) if layers else nullcontext({})
                with torch.autocast("cuda", dtype=dtype), record as routing:
                    assert torch.is_autocast_enabled("cuda")
                    logits = model(x)
                assert logits.device.type == "cuda" and logits.dtype == dtype and logits.shape == (2, 10)
                assert routing.keys() == layers.keys()
                for name, r in routing.items():  # the routing telemetry's tensors, on the device
                    contributions = expert_contributions(r, experts_of(layers[name]))
                    assert contributions.device.type == "cuda" and contributions.shape[0] == 2
                    assert r.dispatch.dtype == torch.float32  # the router runs in fp32 under autocast
