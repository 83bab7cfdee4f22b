"""``--align affine``: fold ridge-fitted affine maps between the dense model's and the predecessor's bases into
the recycled experts.

Experts cut from a larger predecessor read the predecessor's ``norm2`` output on the selected channels and write
in the predecessor's residual basis, but in the successor they sit between the dense checkpoint's blocks. Per MoE
block, on the calibration images (both models see the same images, hence the same tokens):

- input map: ``x_pred[c] ≈ A x_dense + b`` (``x``: the MLP input, ``norm2`` output; ConvNeXt ``norm``), folded
  into every expert's fc1 (and gate): ``W1' = W1 A``, ``b1' = W1 b + b1``;
- output map: ``y_dense ≈ B y_pred[c] + beta`` (``y``: the MLP output), folded into fc2: ``W2' = B W2``,
  ``b2' = B b2 + beta``.

Both are affine, so they commute with the convex token mixes a soft router forms (dispatch and combine weights
sum to one). Each is ridge-regularised: ``min sum ||y - M x - m||^2 + ridge * n * ||M||_F^2`` over ``n`` tokens
(the offset unpenalised), solved from streamed sufficient statistics in float64; ``R^2`` is recorded.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

from ..errors import UserError
from .layout import Block


class Moments:
    """Streamed ``n``, ``sum x``, ``sum y``, ``sum x x^T``, ``sum x y^T``, ``sum ||y||^2`` of token pairs."""

    def __init__(self, d_in: int, d_out: int) -> None:
        self.n = 0
        self.sx, self.sy = torch.zeros(d_in, dtype=torch.float64), torch.zeros(d_out, dtype=torch.float64)
        self.sxx = torch.zeros(d_in, d_in, dtype=torch.float64)
        self.sxy = torch.zeros(d_in, d_out, dtype=torch.float64)
        self.syy = 0.0

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """``x (n, d_in)``, ``y (n, d_out)``: the same tokens."""
        x, y = x.double().cpu(), y.double().cpu()
        self.n += x.shape[0]
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.sxx += x.t() @ x
        self.sxy += x.t() @ y
        self.syy += float((y * y).sum())

    def fit(self, ridge: float) -> tuple[torch.Tensor, torch.Tensor, float]:
        """``(M (d_out, d_in), m (d_out,), R^2)`` of ``y ≈ M x + m`` (ridge as in the module docstring); ``R^2`` is
        ``1 - SS_res / SS_tot`` summed over output channels."""
        n = self.n
        mx, my = self.sx / n, self.sy / n
        cxx = self.sxx - n * torch.outer(mx, mx)
        cxy = self.sxy - n * torch.outer(mx, my)
        sol = torch.linalg.solve(cxx + ridge * n * torch.eye(cxx.shape[0], dtype=cxx.dtype), cxy)  # (d_in, d_out)
        total = self.syy - n * float(my @ my)
        residual = total - 2 * float((sol * cxy).sum()) + float((sol * (cxx @ sol)).sum())
        r2 = 1.0 - residual / total if total > 0 else float("nan")
        return sol.t().contiguous(), my - sol.t() @ mx, r2


class _Tap:
    """Hooks on one MLP: its input and output tokens ``(n, d)`` of the last forward."""

    def __init__(self, mlp: nn.Module) -> None:
        self.conv = isinstance(getattr(mlp, "fc1", None), nn.Conv2d)
        self.x = self.y = None
        self.handles = [mlp.register_forward_pre_hook(self.pre), mlp.register_forward_hook(self.post)]

    def flat(self, t: torch.Tensor) -> torch.Tensor:
        t = t.movedim(1, -1) if self.conv else t
        return t.detach().reshape(-1, t.shape[-1])

    def pre(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self.x = self.flat(args[0])

    def post(self, module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        self.y = self.flat(out)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def collect_alignment(predecessor: nn.Module, dense: nn.Module, pairs: list[tuple[Block, Block, torch.Tensor]],
                      loader: Iterable, device: torch.device) -> dict[str, tuple[Moments, Moments]]:
    """One pass of ``loader`` through both models; per MoE block ``(pred block, dense block, channels c (d',))``
    the moments of the input map (dense ``x`` -> predecessor ``x[c]``) and the output map (predecessor ``y[c]`` ->
    dense ``y``). Both models must be on ``device``. A block whose token count differs between the two is a
    UserError (the maps pair tokens: same patch grid and prefix tokens needed)."""
    taps = [(_Tap(p.module.mlp), _Tap(d.module.mlp)) for p, d, _ in pairs]
    out = {d.name: (Moments(len(c), len(c)), Moments(len(c), len(c))) for _, d, c in pairs}
    modes = predecessor.training, dense.training
    predecessor.eval()
    dense.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                x = x.to(device)
                predecessor(x)
                dense(x)
                for (pt, dt), (_, d, c) in zip(taps, pairs):
                    if pt.x.shape[0] != dt.x.shape[0]:
                        raise UserError(
                            f"--align affine pairs tokens, but block {d.index} sees {pt.x.shape[0]} tokens in the "
                            f"predecessor and {dt.x.shape[0]} in the dense model: both need the same patch grid "
                            "(image size, patch size, prefix tokens)")
                    c_dev = c.to(pt.x.device)
                    fit_in, fit_out = out[d.name]
                    fit_in.add(dt.x, pt.x.index_select(1, c_dev))
                    fit_out.add(pt.y.index_select(1, c_dev), dt.y)
    finally:
        for pt, dt in taps:
            pt.remove()
            dt.remove()
        predecessor.train(modes[0])
        dense.train(modes[1])
    return out


def fold_affine(tensors: dict[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor, big_b: torch.Tensor,
                beta: torch.Tensor) -> dict[str, torch.Tensor]:
    """``BatchedExperts`` tensors with the input map ``x -> A x + b`` folded into fc1 (and the gate) and the output
    map ``y -> B y + beta`` into fc2: ``fc1 (E, h, d')``: ``W1 A``, ``b1 + W1 b``; ``fc2 (E, d', h)``: ``B W2``,
    ``B b2 + beta``. Computed in float64, returned in the tensors' dtype."""
    out = dict(tensors)
    a, b, big_b, beta = (t.double() for t in (a, b, big_b, beta))
    for w, bias in (("fc1_weight", "fc1_bias"), ("fc1_gate_weight", "fc1_gate_bias")):
        if w in tensors:
            w1 = tensors[w].double()
            out[w] = (w1 @ a).to(tensors[w].dtype)
            out[bias] = (tensors[bias].double() + w1 @ b).to(tensors[bias].dtype)
    w2 = tensors["fc2_weight"].double()
    out["fc2_weight"] = (big_b @ w2).to(tensors["fc2_weight"].dtype)
    out["fc2_bias"] = (tensors["fc2_bias"].double() @ big_b.t() + beta).to(tensors["fc2_bias"].dtype)
    return out
