"""Prefix tokens and position embeddings across ViT / EVA layouts.

timm's ViTs differ in the tokens in front of the patches (a class token or none, a distillation token, register
tokens), in whether those tokens get position rows (``no_embed_class``: DeiT-III, DINOv2 with registers, big_vision)
and in the patch grid. A token's input to the first block is its parameter plus its position row when the model
has one (timm's ``_pos_embed``), so a layout converts exactly by moving that sum:

- both add position rows, or neither: token and row are copied;
- only the predecessor does: the successor's token is ``token + row`` (the sum the predecessor fed its blocks);
- only the successor does: its token is copied and its row is zero;
- the patch grid differs: the grid rows are resampled with timm's ``resample_abs_pos_embed``.

A token only the successor has starts at the successor's own (timm) init, row included. A token only the
predecessor has, or a position table only one of them has, cannot be converted: a one-line UserError.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from timm.layers import resample_abs_pos_embed

from ..errors import UserError

TOKEN_KINDS = (("cls", "cls_token", "class token"), ("dist", "dist_token", "distillation token"),
               ("reg", "reg_token", "register tokens"))  # in timm's order in front of the patches


@dataclass(frozen=True)
class TokenLayout:
    """A ViT's prefix tokens and position table."""

    cls: int  # class tokens (0 or 1)
    dist: int  # distillation tokens (0 or 1)
    reg: int  # register tokens
    embed_prefix: bool  # the prefix tokens have position rows (False: timm's no_embed_class)
    grid: tuple[int, int] | None  # patch grid of the position table; None: no absolute position embedding

    def count(self, kind: str) -> int:
        return getattr(self, kind)

    @property
    def prefix_rows(self) -> int:
        return self.cls + self.dist + self.reg if self.embed_prefix else 0

    def describe(self) -> str:
        tokens = " + ".join(f"{n} {what}" for kind, _, what in TOKEN_KINDS if (n := self.count(kind)))
        if self.grid is None:
            return f"{tokens or 'no prefix tokens'}, no position embedding"
        rows = "" if not tokens else " with position rows" if self.embed_prefix else " without position rows"
        return f"{tokens or 'no prefix tokens'}{rows}, a {self.grid[0]}x{self.grid[1]} position grid"


def token_layout(model: nn.Module) -> TokenLayout:
    """The :class:`TokenLayout` of a timm VisionTransformer / Eva (its distilled subclass included)."""
    count = lambda attr: 0 if getattr(model, attr, None) is None else int(getattr(model, attr).shape[1])
    pos = getattr(model, "pos_embed", None)
    return TokenLayout(cls=count("cls_token"), dist=count("dist_token"), reg=count("reg_token"),
                       embed_prefix=not getattr(model, "no_embed_class", False),
                       grid=None if pos is None else tuple(int(n) for n in model.patch_embed.grid_size))


def state_token_layout(state: dict[str, torch.Tensor], like: TokenLayout, source: str) -> TokenLayout:
    """The :class:`TokenLayout` of a bare state dict, read from its token keys and position rows. A table
    that fits no grid is a UserError naming ``source``. Where both readings fit (tiny grids), the one with
    ``like``'s grid, then ``like``'s ``embed_prefix``, is taken."""
    count = lambda key: int(state[key].shape[1]) if key in state else 0
    cls, dist, reg = count("cls_token"), count("dist_token"), count("reg_token")
    pos = state.get("pos_embed")
    if pos is None:
        return TokenLayout(cls, dist, reg, like.embed_prefix, None)
    rows, prefix = int(pos.shape[1]), cls + dist + reg
    grid = lambda n: like.grid if like.grid and like.grid[0] * like.grid[1] == n else \
        (math.isqrt(n),) * 2 if n > 0 and math.isqrt(n) ** 2 == n else None
    readings = {embed: grid(rows - (prefix if embed else 0)) for embed in (True, False)}
    fits = [embed for embed, g in readings.items() if g is not None]
    if not fits:
        raise UserError(f"{source}: its pos_embed has {rows} rows, which fit no square patch grid with or without "
                        f"its {prefix} prefix tokens: pass a checkpoint of the successor's dense counterpart")
    fits.sort(key=lambda embed: (readings[embed] != like.grid, embed != like.embed_prefix))
    return TokenLayout(cls, dist, reg, fits[0], readings[fits[0]])


def _check(src: TokenLayout, dst: TokenLayout, fix: str, name: str) -> None:
    if (src.grid is None) != (dst.grid is None):
        has, lacks = (name, "successor") if dst.grid is None else ("successor", name)
        raise UserError(f"the {has} has an absolute position embedding and the {lacks} none ({name}: "
                        f"{src.describe()}; successor: {dst.describe()}): give both the same pos_embed, {fix}")
    for kind, _, what in TOKEN_KINDS:
        if src.count(kind) > dst.count(kind):
            raise UserError(f"the successor drops the {name}'s {what} ({name}: {src.describe()}; "
                            f"successor: {dst.describe()}): its patch tokens were trained attending to them; "
                            f"build the successor with the same tokens (class_token, reg_tokens), {fix}")


def convert_tokens(state: dict[str, torch.Tensor], src: TokenLayout, dst: TokenLayout,
                   fix: str = "or pass --dense-checkpoint", name: str = "predecessor"
                   ) -> tuple[dict[str, torch.Tensor], dict[str, list[int]], dict]:
    """``state`` (the predecessor's, at its width) with its prefix tokens and position table in ``dst``'s layout.

    Returns ``(state, fresh, report)``: ``fresh`` maps a key to the positions along its token axis (axis 1) that
    must keep the successor's own init (tokens the predecessor lacks; they are zeros here), and ``report`` says
    what became of each token kind and of the grid (``recycle.json``'s ``tokens``). ``fix`` ends the one-line
    errors of layouts that cannot be converted (:func:`_check`), which call the source ``name``."""
    _check(src, dst, fix, name)
    state = dict(state)
    like = next(state[k] for k in ("pos_embed", "cls_token", "dist_token", "reg_token", "blocks.0.norm1.weight")
                if k in state)  # any tensor of the model's width
    width, dtype = like.shape[-1], like.dtype
    pos = state.get("pos_embed")
    src_rows = _split_rows(pos, src) if pos is not None else {}
    dst_rows, fresh, actions = {}, {}, {}
    for kind, key, _ in TOKEN_KINDS:
        n_src, n_dst = src.count(kind), dst.count(kind)
        if not n_dst:
            state.pop(key, None)
            continue
        token = torch.zeros(1, n_dst, width, dtype=dtype)
        row = torch.zeros_like(token)
        if n_src:
            token[:, :n_src] = state[key]
            if kind in src_rows and not dst.embed_prefix:
                token[:, :n_src] += src_rows[kind]  # the sum the predecessor fed its blocks
            elif kind in src_rows:
                row[:, :n_src] = src_rows[kind]
        if n_dst > n_src:
            fresh[key] = list(range(n_src, n_dst))
        state[key] = token
        dst_rows[kind] = row
        actions[kind] = _action(n_src, n_dst, src.embed_prefix and pos is not None, dst.embed_prefix and
                                dst.grid is not None)
    report = {"predecessor": src.describe(), "successor": dst.describe(), "tokens": actions, "grid": None}
    if pos is None:
        return state, fresh, report
    grid = pos[:, src.prefix_rows:]
    if src.grid != dst.grid:
        grid = resample_abs_pos_embed(grid, new_size=list(dst.grid), old_size=list(src.grid), num_prefix_tokens=0)
        report["grid"] = f"resampled {src.grid[0]}x{src.grid[1]} -> {dst.grid[0]}x{dst.grid[1]} (timm's " \
                         "resample_abs_pos_embed)"
    else:
        report["grid"] = "copied"
    rows = [dst_rows[kind] for kind, _, _ in TOKEN_KINDS if dst.embed_prefix and kind in dst_rows]
    offset = 0
    for kind, key, _ in TOKEN_KINDS:
        if dst.embed_prefix and kind in dst_rows and key in fresh:
            fresh.setdefault("pos_embed", []).extend(offset + i for i in fresh[key])
        offset += dst_rows[kind].shape[1] if dst.embed_prefix and kind in dst_rows else 0
    state["pos_embed"] = torch.cat([*rows, grid.to(pos.dtype)], dim=1)
    return state, fresh, report


def _split_rows(pos: torch.Tensor, layout: TokenLayout) -> dict[str, torch.Tensor]:
    """The position rows ``(1, n, d)`` of each prefix token kind of ``layout`` that has them."""
    out, start = {}, 0
    for kind, _, _ in TOKEN_KINDS:
        n = layout.count(kind) if layout.embed_prefix else 0
        if n:
            out[kind] = pos[:, start:start + n]
        start += n
    return out


def _action(n_src: int, n_dst: int, src_rows: bool, dst_rows: bool) -> str:
    if not n_src:
        return "fresh (the successor's timm init, position rows included)"
    copied = "copied" if n_src == n_dst else f"{n_src} copied, {n_dst - n_src} fresh (timm init)"
    if src_rows and not dst_rows:
        return copied + ", each with its position row added (the successor gives prefix tokens no position rows)"
    if dst_rows and not src_rows:
        return copied + ", position rows zero (the predecessor gives prefix tokens none)"
    return copied

