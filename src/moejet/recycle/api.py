"""``recycle()``: a dense predecessor + a successor architecture -> the successor's initial weights and a report.

Steps (paper §3.1; docs/method.md, "Checkpoint recycling"): check the pair fits, gather calibration statistics
in one pass, select channels (shared by every layer of a stage) and per-expert neurons, assemble the state dict,
and load it strictly into the successor.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import timm
import torch
import torch.nn as nn

from ..device import resolve_device
from ..errors import UserError
from ..layers.experts import skip_expert_init
from ..models.common import BUILD_ERRORS
from ..options import OptionError, RecycleContext, RecycleOptions
from .align import collect_alignment, fold_affine
from .build import Selection, build_state, mlp_tensors, pool_sets, reinit_stats, select_heads
from .graph import part_size, part_weights, partition
from .layout import (
    Block,
    attention_shape,
    axis_roles,
    blocks,
    expert_banks,
    family,
    final_norm_alias,
    pool_shape,
    stage_dims,
    tiered_stem,
)
from .router import KMEANS_ITERS, KMEANS_MAX_TOKENS, KeyCollector, spherical_kmeans
from .select import (
    coverage,
    select_channels,
    select_dense_neurons,
    select_expert_channels,
    select_experts,
    select_reinit,
    subselect,
)
from .stats import CalibStats, collect_stats
from .tokens import convert_tokens, token_layout


def mixed_sources(pair: Pair, dense_state: dict[str, torch.Tensor] | None, mixed: str
                  ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, tuple[str, int]]]:
    """``--mixed``: per MoE block the dense checkpoint's MLP (:func:`~moejet.recycle.build.mlp_tensors`) and
    ``(upcycled path, its hidden size)``. ``core_upcycled`` copies the whole dense MLP into every core expert
    (Sparse Upcycling), so the core experts must be as wide; ``univ_upcycled`` cuts the universal experts from it
    by the upcycle rule of :func:`~moejet.recycle.select.select_experts`. Raises :class:`OptionError`."""
    if mixed == "none" or dense_state is None:  # RecycleOptions.check: mixed needs a dense checkpoint
        return {}, {}
    path = mixed.split("_")[0]
    mlps, upcycled = {}, {}
    for b in pair.moe_blocks:
        banks = {p: hidden for p, _, _, hidden in expert_banks(b.module.mlp)}
        if set(banks) != {"core", "univ"}:
            raise OptionError("mixed", mixed, f"block {b.index} has no {'universal' if 'core' in banks else 'core'} "
                                              "experts: mixing sources needs both banks (a dual-path MoE)")
        pb = pair.pred_blocks[b.name]
        if not any(k.startswith(f"{b.name}.mlp.") for k in dense_state):
            raise OptionError("mixed", mixed, f"the dense checkpoint has no MLP in block {b.index}: pass one of the "
                                              "successor's dense twin")
        try:
            mlp = mlp_tensors(dense_state, Block(b.name, b.index, b.stage, b.dim, pb.hidden, pb.module, pb.kind))
        except (AttributeError, KeyError):
            mlp = {}
        if "fc1" not in mlp or "fc2" not in mlp or mlp["fc1"].shape[1] != b.dim:
            raise OptionError("mixed", mixed, f"the dense checkpoint's block {b.index} MLP is not a {pb.kind} MLP of "
                                              f"width {b.dim}: pass a checkpoint of the successor's dense twin")
        h = mlp["fc1"].shape[0]
        if path == "core" and banks["core"] != h:
            raise OptionError("mixed", mixed, f"core experts copy block {b.index}'s dense MLP ({h} neurons) but have "
                                              f"{banks['core']}: set mlp_ratio so core experts are as wide")
        if banks[path] > h:
            raise OptionError("mixed", mixed, f"block {b.index}'s universal experts need {banks[path]} neurons but "
                                              f"the dense MLP has {h}: lower univ_factor")
        mlps[b.name], upcycled[b.name] = mlp, (path, h)
    return mlps, upcycled


@dataclass(frozen=True)
class Pair:
    """A checked predecessor -> successor pairing."""

    family: str
    pred_dims: list[int]
    succ_dims: list[int]
    pred_blocks: dict[str, Block]
    succ_blocks: list[Block]

    @property
    def moe_blocks(self) -> list[Block]:
        return [b for b in self.succ_blocks if b.hidden is None]


def build_successor(name: str, kwargs: dict[str, Any], seed: int) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` with a seeded init (routers are fresh but reproducible).

    Expert weights are left uninitialised (``torch.empty``): :func:`recycle` overwrites all of them.
    """
    if not timm.is_model(name):
        raise UserError(f"unknown successor model {name!r}: see `moejet models` for the registered names")
    with torch.random.fork_rng(devices=[]), skip_expert_init():
        torch.manual_seed(seed)
        try:
            return timm.create_model(name, **kwargs)
        except BUILD_ERRORS as err:
            raise UserError(f"cannot build successor {name} with {kwargs}: {err}; check --successor-arg") from None


def check_pair(predecessor: nn.Module, successor: nn.Module, strategy: str, dense: bool) -> Pair:
    """Everything that must hold before any work; each failure is a one-line UserError."""
    fam = family(predecessor, "predecessor")
    if family(successor, "successor") != fam:
        raise UserError(f"predecessor is a {fam} but the successor is a {family(successor, 'successor')}: recycle "
                        "within one family (ViT, EVA, BEiT, ViT with relative position, or ConvNeXt); --successor "
                        "auto builds the matching one")
    pred_dims, succ_dims = stage_dims(predecessor), stage_dims(successor)
    if len(pred_dims) != len(succ_dims):
        raise UserError(f"predecessor has {len(pred_dims)} stages, successor {len(succ_dims)}: they must match")
    for s, (d, d_out) in enumerate(zip(pred_dims, succ_dims)):
        where = "" if fam == "vit" else f" in stage {s}"
        if d_out > d:
            raise UserError(
                f"successor width {d_out} is larger than the predecessor's {d}{where}: recycling only narrows; "
                "pick a wider predecessor or a narrower successor"
            )
        if strategy == "upcycle" and d_out != d:
            raise UserError(
                f"upcycle copies whole MLPs, so it needs the same width, but the successor has {d_out} channels and "
                f"the predecessor {d}{where}: use another strategy or a successor of width {d}"
            )
    if fam == "convnext" and not dense:
        check_stems(predecessor, successor)
    pred_blocks = {b.name: b for b in blocks(predecessor)}
    if any(b.hidden is None for b in pred_blocks.values()):
        raise UserError("the predecessor already has MoE blocks: recycle from a dense checkpoint")
    succ_blocks = blocks(successor)
    depth = len(pred_blocks)
    for b in succ_blocks:
        pb = pred_blocks.get(b.name)
        if b.hidden is None:
            if pb is None:
                raise UserError(
                    f"successor MoE block {b.index} ({b.name}) is beyond the predecessor's depth ({depth} blocks): "
                    "set moe_layers (0-based) within the predecessor's blocks or use a deeper predecessor"
                )
            for path, _, _, hidden in expert_banks(b.module.mlp):
                if strategy == "upcycle" and path == "core" and hidden != pb.hidden:
                    raise UserError(
                        f"upcycle makes every core expert a full copy of the dense MLP ({pb.hidden} neurons) but "
                        f"block {b.index}'s core experts have {hidden}: use another strategy, or set mlp_ratio so "
                        "core experts are as wide as the predecessor's MLP"
                    )
                if hidden > pb.hidden:
                    raise UserError(
                        f"block {b.index}'s {path} experts need {hidden} hidden neurons but the predecessor's MLP has "
                        f"{pb.hidden}: lower mlp_ratio / univ_factor or use a wider predecessor"
                    )
        elif not dense:
            if pb is None:
                raise UserError(
                    f"successor block {b.index} ({b.name}) is beyond the predecessor's depth ({depth} blocks): "
                    "pass --dense-checkpoint for the dense part or use a shallower successor"
                )
            if b.hidden > pb.hidden:
                raise UserError(
                    f"successor block {b.index} has an MLP of {b.hidden} neurons, more than the predecessor's "
                    f"{pb.hidden}: lower mlp_ratio or pass --dense-checkpoint"
                )
    if fam != "convnext" and not dense:
        (h, hd), (h_out, hd_out) = attention_shape(predecessor), attention_shape(successor)
        if h_out > h or hd_out > hd:
            raise UserError(
                f"successor attention has {h_out} heads of {hd_out} channels but the predecessor only {h} of {hd}: "
                "pick num_heads so both fit, or pass --dense-checkpoint"
            )
        if hd_out != hd and getattr(predecessor, "rope", None) is not None:
            raise UserError(
                f"the predecessor's rotary position embedding pairs the {hd} channels of each head, so a narrower "
                f"successor must keep whole heads, but its heads have {hd_out}: set num_heads = embed_dim / {hd}, "
                "or pass --dense-checkpoint"
            )
        pools = pool_shape(predecessor), pool_shape(successor)
        if (pools[0] is None) != (pools[1] is None):
            which = "successor" if pools[0] is None else "predecessor"
            raise UserError(
                f"only the {which} has a MAP attention-pool head (global_pool='map'): give both the same "
                "global_pool, or pass --dense-checkpoint"
            )
        if pools[0] is not None and (pools[1][0] > pools[0][0] or pools[1][1] > pools[0][1]):
            raise UserError(
                f"the successor's pool head has {pools[1][0]} heads of {pools[1][1]} channels but the predecessor's "
                f"only {pools[0][0]} of {pools[0][1]}: pick num_heads so both fit, or pass --dense-checkpoint"
            )
    return Pair(fam, pred_dims, succ_dims, pred_blocks, succ_blocks)


def check_stems(predecessor: nn.Module, successor: nn.Module) -> None:
    """timm's tiered ConvNeXt stem has a hidden conv no selection rule narrows: refused by name."""
    for role, model in (("predecessor", predecessor), ("successor", successor)):
        if (hidden := tiered_stem(model)) is not None:
            raise UserError(
                f"the {role} has timm's tiered stem (stem_type 'overlap_tiered', convnext_*_ols: two stacked "
                f"convolutions, the first {hidden} channels wide), which recycling's selection rules do not read: "
                "pass --dense-checkpoint for the dense part (stem included), or use ConvNeXts with a patch or "
                "overlapping stem"
            )


def select_all(pair: Pair, predecessor: nn.Module, successor: nn.Module, strategy: str, stats: CalibStats | None,
               seed: int, dense: bool, graph_parts: int, switches: dict[str, str], drop_ratio: float = 0.0,
               gen: torch.Generator | None = None,
               upcycled: dict[str, tuple[str, int]] | None = None) -> tuple[Selection, dict[str, Any]]:
    """Every index set, drawn from one generator (``gen``, else one seeded with ``seed``) in a fixed order
    (channels, dense neurons, experts, then Drop-Upcycling's re-initialised neurons of every expert).

    ``upcycled`` (``--mixed``): MoE block name -> ``(path, h)``: that bank is cut by the upcycle rule from the dense
    checkpoint's MLP of ``h`` neurons (its indices point there); the other bank is recycled by ``strategy``."""
    univ_mode, rule = switches["univ_mode"], switches["uniform_rule"]
    gen = gen if gen is not None else torch.Generator().manual_seed(seed)
    channels = []
    for s, (d, d_out) in enumerate(zip(pair.pred_dims, pair.succ_dims)):
        importance = None
        if stats is not None:
            per_block = [stats.channel[b.name] for b in pair.pred_blocks.values() if b.stage == s]
            importance = torch.stack(per_block).mean(0) if per_block else None  # Eq. 4: averaged over layers
        channels.append(select_channels(strategy, d, d_out, importance, gen, rule))
    sel = Selection(channels=channels)
    if pair.family != "convnext" and not dense:
        sel.pred_heads = attention_shape(predecessor)
        sel.heads, sel.head_channels = select_heads(sel.pred_heads, attention_shape(successor))
        if pool_shape(predecessor) is not None:
            sel.pool = pool_sets(pool_shape(predecessor), pool_shape(successor),
                                 predecessor.attn_pool.mlp.fc1.out_features, successor.attn_pool.mlp.fc1.out_features)
    if not dense:
        for b in pair.succ_blocks:
            if b.hidden is not None:
                h = pair.pred_blocks[b.name].hidden
                importance = stats.neuron[b.name] if stats is not None else None
                sel.dense_neurons[b.name] = select_dense_neurons(strategy, h, b.hidden, importance, gen, rule)
    graph_info = {}
    upcycled = upcycled or {}
    for b in pair.moe_blocks:
        h = pair.pred_blocks[b.name].hidden
        importance = stats.neuron[b.name] if stats is not None else None
        up_path, h_dense = upcycled.get(b.name, (None, 0))
        if up_path is not None:
            sel.upcycled[b.name] = up_path
        banks = expert_banks(b.module.mlp)
        recycled = [bank for bank in banks if bank[0] != up_path]
        core_hidden = next((hidden for path, _, _, hidden in banks if path == "core"), None)
        subselecting = univ_mode == "subselect" and core_hidden is not None  # no core path: universal draw
        parts = weights = None
        if strategy == "graph":
            sizes = [core_hidden] if subselecting else [hidden for _, _, _, hidden in recycled]
            g = part_size(h, sizes, graph_parts)
            parts = partition(stats.coact[b.name], importance, g, seed)
            weights = part_weights(stats.coact[b.name], parts)
            graph_info[str(b.index)] = {"part_size": g, "parts": parts.tolist(),
                                        "threshold": stats.thresholds[b.name]}
        sel.experts[b.name] = {}
        for path, _, num, hidden in banks:
            if path == up_path:  # --mixed: cut from the dense checkpoint's MLP by the upcycle rule
                sel.experts[b.name][path] = select_experts("upcycle", num, h_dense, hidden, gen)
            elif path == "univ" and subselecting:
                draw = select_experts(strategy, num, h, core_hidden, gen, importance, parts, weights, rule)
                sel.experts[b.name][path] = subselect(draw, hidden)
            else:
                sel.experts[b.name][path] = select_experts(strategy, num, h, hidden, gen, importance, parts, weights,
                                                           rule)
        if switches["expert_channels"] == "per_expert":
            d, d_out = pair.pred_dims[b.stage], pair.succ_dims[b.stage]
            channel_importance = stats.channel[b.name] if stats is not None else None
            sel.expert_channels[b.name] = {
                path: select_expert_channels(strategy, num, d, d_out, channel_importance, gen, rule)
                for path, _, num, _ in recycled}
    if drop_ratio > 0:
        for b in pair.moe_blocks:
            sel.dropped[b.name] = {path: select_reinit(num, hidden, drop_ratio, gen)
                                   for path, _, num, hidden in expert_banks(b.module.mlp)}
    return sel, graph_info


def recycle(
    predecessor: nn.Module,
    successor: str,
    successor_kwargs: dict[str, Any] | None = None,
    calib_loader: Iterable | None = None,
    options: RecycleOptions | None = None,
    dense_state: dict[str, torch.Tensor] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Recycle dense ``predecessor`` (a timm ViT / EVA / ConvNeXt with its weights loaded) into ``successor``.

    Args:
        successor / successor_kwargs: ``timm.create_model`` name and kwargs of the MoE (or dense) successor;
            without ``num_classes`` it takes the predecessor's, and keeps its head (``report["head"]``).
        calib_loader: batches of images (or ``(images, labels)``) preprocessed for the predecessor; required by
            the ``importance`` and ``graph`` strategies; with others it only adds importance figures to the report.
        options: the strategy, seed, variant and switches, and every other recycling option
            (:class:`moejet.options.RecycleOptions`, one field each, with its help; docs/recycling.md); default:
            ``RecycleOptions()``, the paper's importance-based recycling.
        dense_state: weights of a same-width dense model for everything outside the MoE MLPs (keys as the
            successor's; see :func:`moejet.recycle.load.load_dense_state`).

    Returns:
        ``(state_dict, report)``: a state dict that loads into the successor with ``strict=True``, and the
        JSON-able report written as ``recycle.json`` (docs/recycling.md).
    """
    t_start = time.perf_counter()
    successor_kwargs = dict(successor_kwargs or {})
    options = options or RecycleOptions()
    switches = options.check(RecycleContext(dense=dense_state is not None, calibration=calib_loader is not None))
    strategy, seed = options.strategy, options.seed
    head_given = "num_classes" in successor_kwargs
    if not head_given:  # the one head rule: without num_classes the successor keeps the predecessor's head
        successor_kwargs["num_classes"] = int(getattr(predecessor, "num_classes", 0))
    model = build_successor(successor, successor_kwargs, seed)
    pair = check_pair(predecessor, model, strategy, dense_state is not None)
    if options.router_init == "kmeans":
        no_queries = [b.index for b in pair.moe_blocks if not isinstance(getattr(b.module.mlp, "queries", None),
                                                                         nn.Parameter)]
        if no_queries:
            raise OptionError("router_init", options.router_init, f"MoE block {no_queries[0]} has no slot queries")
    if dense_state is not None:
        moe_prefixes = tuple(f"{b.name}.mlp." for b in pair.moe_blocks)
        is_head = lambda k: (axis_roles(k, pair.family) or (None,))[0] == "cls"  # absent: keeps its fresh init
        wrong = [k for k, v in model.state_dict().items() if not k.startswith(moe_prefixes)
                 and (dense_state[k].shape != v.shape if k in dense_state
                      else not is_head(k) and final_norm_alias(k, dense_state) is None)]
        if wrong:
            raise UserError(f"the dense checkpoint lacks or mis-shapes {len(wrong)} successor keys (e.g. {wrong[0]}): "
                            "pass a checkpoint of the successor's dense counterpart")
    dense_mlps, upcycled = mixed_sources(pair, dense_state, options.mixed)

    timings = {}
    pred_state = {k: v.detach().to("cpu", copy=True) for k, v in predecessor.state_dict().items()}
    fresh_rows, tokens = {}, None
    if pair.family != "convnext" and dense_state is None:  # before calibration: a layout refused costs nothing
        pred_state, fresh_rows, tokens = convert_tokens(pred_state, token_layout(predecessor), token_layout(model))
    stats, keys = None, {}
    if calib_loader is not None:
        dev = resolve_device(device)
        home = next(predecessor.parameters()).device
        t = time.perf_counter()
        predecessor.to(dev)
        collector = KeyCollector([pair.pred_blocks[b.name] for b in pair.moe_blocks]) \
            if options.router_init == "kmeans" else None
        try:
            coact = [b.name for b in pair.moe_blocks] if strategy == "graph" else []
            batches = len(calib_loader) if hasattr(calib_loader, "__len__") else None  # the progress bar's total
            stats = collect_stats(predecessor, list(pair.pred_blocks.values()), calib_loader, dev, coact,
                                  options.coact_percentile, progress, batches, switches["importance_metric"])
        finally:
            predecessor.to(home)
            keys = collector.remove() if collector is not None else {}
        if stats.images == 0:
            raise UserError("the calibration data gave no images: point --calib-data at a non-empty dataset")
        timings["calibration_s"] = time.perf_counter() - t

    t = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    sel, graph_info = select_all(pair, predecessor, model, strategy, stats, seed, dense_state is not None,
                                 options.graph_parts, switches, options.drop_ratio, gen, upcycled)
    timings["selection_s"] = time.perf_counter() - t
    t = time.perf_counter()
    state, fresh = build_state(pred_state, model, pair.family, pair.succ_blocks, pair.pred_blocks, sel, dense_state,
                               switches["query_norm"], switches["final_norm"], gen, dense_mlps)
    keep_fresh_tokens(state, fresh, model, fresh_rows)
    router_info = None
    if options.router_init == "kmeans":
        router_info = kmeans_queries(state, fresh, pair, sel, keys, gen)
    align_info = None
    if options.align == "affine":
        align_info = align_experts(state, pair, sel, predecessor, model, successor, successor_kwargs, dense_state,
                                   calib_loader, resolve_device(device), options.align_ridge, seed)
    check_loadable(model, state)
    timings["build_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_start

    report = make_report(pair, sel, stats, fresh, graph_info, timings, predecessor, model, dense_mlps, dict(
        predecessor=_model_name(predecessor), successor=successor, successor_kwargs=successor_kwargs,
        options=options, switches=switches, router=router_info, align_info=align_info, dense=dense_state is not None))
    report["tokens"] = tokens
    report["head"] = head_report(predecessor, model, fresh, pair.family, head_given, dense_state is not None)
    return state, report


def head_report(predecessor: nn.Module, successor: nn.Module, fresh: list[str], fam: str, given: bool,
                dense: bool) -> dict[str, Any]:
    """What became of the classifier: the successor keeps its source's head (the predecessor's, or the dense
    checkpoint's) when the class counts match, else a fresh one, listed in ``fresh_keys``."""
    classes = int(getattr(successor, "num_classes", 0))
    heads = [k for k in successor.state_dict() if (axis_roles(k, fam) or (None,))[0] == "cls"]
    kept = classes > 0 and not any(k in fresh for k in heads)
    return {"predecessor_classes": int(getattr(predecessor, "num_classes", 0)), "successor_classes": classes,
            "num_classes": "given" if given else "the predecessor's", "kept": kept,
            "source": "dense checkpoint" if dense else "predecessor"}


def keep_fresh_tokens(state: dict[str, torch.Tensor], fresh: list[str], model: nn.Module,
                      fresh_rows: dict[str, list[int]]) -> None:
    """Tokens the predecessor lacks (:func:`~moejet.recycle.tokens.convert_tokens`) and their position rows take
    the successor's own init, in ``state``; a key left wholly at its init joins ``fresh``."""
    own = model.state_dict()
    for key, rows in fresh_rows.items():
        state[key][:, rows] = own[key][:, rows]
        if len(rows) == own[key].shape[1]:
            fresh.append(key)


def kmeans_queries(state: dict[str, torch.Tensor], fresh: list[str], pair: Pair, sel: Selection,
                   keys: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, Any]:
    """``--router-init kmeans``: each MoE block's ``queries (S, d')`` := spherical k-means centroids
    (:func:`~moejet.recycle.router.spherical_kmeans`, drawn from ``gen`` after every other draw) of the block's
    calibration keys ``keys[name] (n, d)`` at the successor's channels; in ``state``, in place. Returns the report:
    tokens per block, the k-means fit (mean cosine of a token to its centroid) and, where the router has a query
    LayerNorm, ``query_alignment`` (mean cosine of a centroid to the query the router actually compares with:
    ``normalize(query_norm(c))``, 1 without one)."""
    info = {"iterations": KMEANS_ITERS, "max_tokens": KMEANS_MAX_TOKENS, "blocks": {}}
    for b in pair.moe_blocks:
        key = f"{b.name}.mlp.queries"
        x = keys[b.name][:, sel.channels[b.stage]]
        k = state[key].shape[0]
        if x.shape[0] < k:
            raise UserError(f"--router-init kmeans: block {b.index} has {k} slots but the calibration data gave only "
                            f"{x.shape[0]} tokens: pass more calibration images")
        centroids, fit = spherical_kmeans(x, k, gen)
        state[key] = centroids.to(state[key].dtype)
        if key in fresh:
            fresh.remove(key)
        norm = b.module.mlp.query_norm if hasattr(b.module.mlp, "query_norm") else None
        alignment = 1.0
        if norm is not None:
            w, bias = state.get(f"{b.name}.mlp.query_norm.weight"), state.get(f"{b.name}.mlp.query_norm.bias")
            q = torch.nn.functional.layer_norm(centroids, (centroids.shape[1],), None if w is None else w.double(),
                                               None if bias is None else bias.double(), norm.eps)
            alignment = float(torch.nn.functional.cosine_similarity(q, centroids, dim=1).mean())
        info["blocks"][str(b.index)] = {"tokens": x.shape[0], "slots": k, "mean_cosine": fit,
                                        "query_alignment": alignment}
    return info


def align_experts(state: dict[str, torch.Tensor], pair: Pair, sel: Selection, predecessor: nn.Module,
                  model: nn.Module, successor: str, successor_kwargs: dict[str, Any],
                  dense_state: dict[str, torch.Tensor], loader: Iterable, device: torch.device, ridge: float,
                  seed: int) -> dict[str, Any]:
    """``--align affine`` (:mod:`moejet.recycle.align`): the dense model (the successor's dense twin with
    ``dense_state``) and the predecessor see the calibration images; per MoE block the two ridge maps are fitted and
    folded into every bank cut from the predecessor (a ``--mixed`` bank upcycled from the dense MLP is already in
    the dense basis), in ``state``. Returns the report: ridge, and per block tokens and both maps' ``R^2``."""
    twin_kwargs = dict(successor_kwargs, moe_layers=()) if getattr(model, "moe_layers", None) is not None \
        else dict(successor_kwargs)
    dense = build_successor(successor, twin_kwargs, seed)
    dense.load_state_dict(dense_state, strict=False)
    dense_blocks = {b.name: b for b in blocks(dense)}
    pairs = [(pair.pred_blocks[b.name], dense_blocks[b.name], sel.channels[b.stage]) for b in pair.moe_blocks]
    home = next(predecessor.parameters()).device
    predecessor.to(device)
    dense.to(device)
    try:
        moments = collect_alignment(predecessor, dense, pairs, loader, device)
    finally:
        predecessor.to(home)
    info = {"ridge": ridge, "blocks": {}}
    for b in pair.moe_blocks:
        fit_in, fit_out = moments[b.name]
        a, shift, r2_in = fit_in.fit(ridge)
        big_b, beta, r2_out = fit_out.fit(ridge)
        for path, attr, _, _ in expert_banks(b.module.mlp):
            if sel.upcycled.get(b.name) == path:
                continue
            prefix = f"{b.name}.mlp.{attr}."
            names = [k[len(prefix):] for k in state if k.startswith(prefix)]
            folded = fold_affine({k: state[prefix + k] for k in names}, a, shift, big_b, beta)
            state.update({prefix + k: v.contiguous() for k, v in folded.items()})
        info["blocks"][str(b.index)] = {"tokens": fit_in.n, "input_r2": r2_in, "output_r2": r2_out}
    return info


def check_loadable(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """What ``load_state_dict(strict=True)`` checks (same keys, same shapes), without copying a billion floats."""
    own = model.state_dict()
    bad = [k for k in own.keys() | state.keys() if k not in own or k not in state or own[k].shape != state[k].shape]
    if bad:
        raise RuntimeError(f"recycled state does not fit {type(model).__name__}: {sorted(bad)[:3]}")


def _model_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(model).__name__


def _mean_share(importance: torch.Tensor, indices: list[torch.Tensor]) -> float:
    """Mean importance of the selected neurons (with multiplicity) over the layer's mean importance."""
    picked = torch.cat([i.reshape(-1) for i in indices])
    mean = importance.mean()
    return float(importance[picked].mean() / mean) if mean > 0 else math.nan


def _drop_report(pair: Pair, sel: Selection, predecessor: nn.Module, dense_mlps: dict[str, dict[str, torch.Tensor]],
                 ratio: float) -> dict[str, Any] | None:
    """Drop-Upcycling's record: the ratio, each expert's re-initialised hidden positions (into the expert, i.e.
    into its row of ``neuron_indices``) and, per path, the ``[mean, std]`` of every dense tensor the new values
    came from (the predecessor's MLP, or the dense checkpoint's for a ``--mixed`` upcycled bank)."""
    if not sel.dropped:
        return None
    pred_state = predecessor.state_dict()
    stats = {}
    for b in pair.moe_blocks:
        pred = reinit_stats(mlp_tensors(pred_state, pair.pred_blocks[b.name]))
        dense = reinit_stats(dense_mlps[b.name]) if b.name in dense_mlps else {}
        stats[str(b.index)] = {path: {k: list(v) for k, v in (dense if sel.upcycled.get(b.name) == path
                                                               else pred).items()} for path in sel.dropped[b.name]}
    return {
        "ratio": ratio,
        "reinit_positions": {str(b.index): {path: idx.tolist() for path, idx in sel.dropped[b.name].items()}
                             for b in pair.moe_blocks},
        "dense_stats": stats,
    }


def _mixed_report(pair: Pair, sel: Selection, mixed: str) -> dict[str, Any] | None:
    """``--mixed``: which bank came from the dense checkpoint and its neuron indices into that checkpoint's MLP."""
    if not sel.upcycled:
        return None
    return {
        "mode": mixed,
        "upcycled_path": next(iter(sel.upcycled.values())),
        "source": "dense checkpoint",
        "neuron_indices": {str(b.index): sel.experts[b.name][sel.upcycled[b.name]].tolist() for b in pair.moe_blocks},
    }


def make_report(pair: Pair, sel: Selection, stats: CalibStats | None, fresh: list[str], graph_info: dict,
                timings: dict[str, float], predecessor: nn.Module, successor: nn.Module,
                dense_mlps: dict[str, dict[str, torch.Tensor]], run: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able recycle report (``recycle.json``, docs/recycling.md); neuron and channel indices point into the
    predecessor (a ``--mixed`` bank upcycled from the dense checkpoint is in ``mixed``, not ``neuron_indices``)."""
    neuron_indices, blocks_info = {}, {}
    for b in pair.moe_blocks:
        h = pair.pred_blocks[b.name].hidden
        experts = {path: idx for path, idx in sel.experts[b.name].items() if sel.upcycled.get(b.name) != path}
        key = str(b.index)
        neuron_indices[key] = {path: experts[path].tolist() for path in ("core", "univ") if path in experts}
        info = {
            "name": b.name,
            "predecessor_block": pair.pred_blocks[b.name].index,
            "hidden_size": h,
            "experts": {path: list(idx.shape) for path, idx in sel.experts[b.name].items()},
            "coverage": coverage(list(experts.values()), h),
            **{f"{path}_coverage": coverage([experts[path]], h) for path in experts},
        }
        if stats is not None:
            info["importance_share"] = _mean_share(stats.neuron[b.name], list(experts.values()))
        if key in graph_info:
            info["graph"] = graph_info[key]
        blocks_info[key] = info
    coverages = [i["coverage"] for i in blocks_info.values()]
    options, switches = run["options"], run["switches"]
    n_params = sum(v.numel() for v in successor.state_dict().values())
    return {
        "predecessor": {
            "name": run["predecessor"],
            "family": pair.family,
            "dims": pair.pred_dims,
            "depth": len(pair.pred_blocks),
            "hidden_sizes": {str(b.index): pair.pred_blocks[b.name].hidden for b in pair.moe_blocks},
        },
        "successor": {"name": run["successor"], "kwargs": run["successor_kwargs"], "dims": pair.succ_dims,
                      "depth": len(pair.succ_blocks), "moe_blocks": [b.index for b in pair.moe_blocks],
                      "params": n_params},
        "strategy": options.strategy,
        "seed": options.seed,
        "variant": options.variant,
        "switches": run["switches"],
        "options": {k: v for k, v in options.report().items() if k not in ("strategy", "seed", "variant", *switches)},
        "align": run["align_info"],
        "router_init": run["router"],
        "drop_upcycling": _drop_report(pair, sel, predecessor, dense_mlps, options.drop_ratio),
        "mixed": _mixed_report(pair, sel, options.mixed),
        "dense_part": "dense checkpoint" if run["dense"] else "selected from the predecessor",
        "calibration": None if stats is None else {"images": stats.images,
                                                    "tokens_per_block": max(stats.tokens.values(), default=0)},
        "channel_indices": [c.tolist() for c in sel.channels],
        "head_indices": None if sel.heads is None else {"heads": sel.heads.tolist(),
                                                        "head_channels": sel.head_channels.tolist()},
        "dense_neuron_indices": {str(next(b.index for b in pair.succ_blocks if b.name == name)): idx.tolist()
                                 for name, idx in sel.dense_neurons.items()},
        "neuron_indices": neuron_indices,
        "expert_channel_indices": {str(next(b.index for b in pair.succ_blocks if b.name == name)):
                                   {path: idx.tolist() for path, idx in paths.items()}
                                   for name, paths in sel.expert_channels.items()} or None,
        "moe_blocks": blocks_info,
        "coverage": sum(coverages) / len(coverages) if coverages else None,
        "fresh_keys": fresh,
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "versions": {"torch": torch.__version__, "timm": timm.__version__},
    }
