"""recycle.api: option checks, variants and their switches, predecessor / successor pairing."""

import inspect
import re
from pathlib import Path

import pytest
import timm
import torch

import moejet  # noqa: F401  (registers the models)
from moejet.recycle import OptionError, RecycleOptions, recycle

from ..helpers.recycling import RECIPE


def test_variant_sets_every_switch_and_explicit_values_win(recycle_files):
    _, paper = recycle(recycle_files["vit"], "vjetmoe_tiny_patch16_224", RECIPE.succ_vit, None,
                       RecycleOptions(strategy="uniform"))
    assert paper["variant"] == "paper" and paper["switches"] == {
        "importance_metric": "mean_abs", "expert_channels": "shared", "uniform_rule": "shared",
        "query_norm": "inherit", "univ_mode": "draw", "final_norm": "copy"}
    _, release = recycle(recycle_files["vit"], "vjetmoe_tiny_patch16_224", RECIPE.succ_vit, None,
                         RecycleOptions(strategy="uniform", variant="release", query_norm="inherit"))
    assert release["switches"] == {  # query_norm: the explicit value wins over the variant's "fresh"
        "importance_metric": "l2", "expert_channels": "per_expert", "uniform_rule": "linspace",
        "query_norm": "inherit", "univ_mode": "subselect", "final_norm": "fresh"}


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


@pytest.mark.parametrize(("options", "message"), [
    (dict(strategy="magic"), "recycle option strategy = 'magic' is invalid: use one of importance, graph, uniform, "
                             "random, upcycle"),
    (dict(variant="mine"), "recycle option variant = 'mine' is invalid: use one of paper, release"),
    (dict(uniform_rule="shifted"), "recycle option uniform_rule = 'shifted' is invalid: use one of shared, linspace"),
    (dict(key_proj="linear"), "recycle option key_proj = 'linear' is invalid: not a recycling option"),
    (dict(graph_parts=0), "recycle option graph_parts = 0 is invalid: must be an integer >= 1"),
    (dict(coact_percentile=100.0), "recycle option coact_percentile = 100.0 is invalid: must be in (0, 100)"),
])
def test_check_names_the_bad_option_in_one_message(options, message):
    options = {"strategy": "importance", **options}
    with pytest.raises(OptionError) as err:
        RecycleOptions.from_dict(options).check()
    assert str(err.value).startswith(message), str(err.value)
    name = next(iter(k for k in options if k != "strategy")) if len(options) > 1 else "strategy"
    assert (err.value.option, err.value.value) == (name, options[name])


def test_check_resolves_the_variant_and_explicit_switches_win():
    assert RecycleOptions(strategy="uniform", variant="release", univ_mode="draw").check() == {
        "importance_metric": "l2", "expert_channels": "per_expert", "uniform_rule": "linspace",
        "query_norm": "fresh", "univ_mode": "draw", "final_norm": "fresh"}


def test_recycle_takes_one_options_object_and_each_option_is_named_in_three_source_files_at_most():
    """RecycleOptions is the one source of every recycling option: recycle() takes it whole (at most 8
    parameters), and an option's name appears only where it is defined, used and reported."""
    assert len(inspect.signature(recycle).parameters) <= 8
    src = Path(moejet.__file__).parent
    for name in ("align_ridge", "drop_ratio", "router_init", "graph_parts", "coact_percentile"):
        files = sorted(str(p.relative_to(src)) for p in src.rglob("*.py") if re.search(rf"\b{name}\b", p.read_text()))
        assert 1 <= len(files) <= 3, (name, files)
