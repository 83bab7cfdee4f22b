"""``--router-init kmeans``: slot queries from spherical k-means centroids of the tokens that reach each router.

Precedent: LLaMA-MoE (Zhu et al., 2024) builds experts and gates from clusters of the dense model's hidden
states, and cluster-aware upcycling (Wang et al., "Cluster-Aware Upcycling", 2025) initialises each router row
with the centroid of a cluster of the block's inputs, so each slot starts out claiming a coherent group of tokens.

Keys are the MoE block's MLP input (``norm2`` output; ConvNeXt: ``norm``) of the predecessor on the successor's
channels, L2-normalised as the router normalises them before comparing; k = the number of slots.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layout import Block

KMEANS_ITERS = 20  # Lloyd iterations after k-means++ (fixed: the result is a function of tokens and seed)
KMEANS_MAX_TOKENS = 16384  # tokens kept per block: the first ones in calibration order


class KeyCollector:
    """Forward pre-hooks on the MLPs of ``blocks`` keeping their input tokens ``(n, d)`` (on the CPU, float32)
    up to ``max_tokens`` each; they fire during the calibration pass (:func:`~moejet.recycle.stats.collect_stats`)."""

    def __init__(self, blocks: list[Block], max_tokens: int = KMEANS_MAX_TOKENS) -> None:
        self.max_tokens = max_tokens
        self.keys: dict[str, list[torch.Tensor]] = {b.name: [] for b in blocks}
        self.kept = dict.fromkeys(self.keys, 0)
        self.handles = [b.module.mlp.register_forward_pre_hook(self._hook(b)) for b in blocks]

    def _hook(self, block: Block):
        conv = isinstance(getattr(block.module.mlp, "fc1", None), nn.Conv2d)

        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            left = self.max_tokens - self.kept[block.name]
            if left <= 0:
                return
            x = args[0].movedim(1, -1) if conv else args[0]
            x = x.detach().reshape(-1, x.shape[-1])[:left].float().cpu()
            self.keys[block.name].append(x)
            self.kept[block.name] += x.shape[0]

        return hook

    def remove(self) -> dict[str, torch.Tensor]:
        """Remove the hooks; the tokens of each block, ``(n, d)``."""
        for handle in self.handles:
            handle.remove()
        return {name: torch.cat(parts) if parts else torch.zeros(0, 0) for name, parts in self.keys.items()}


def spherical_kmeans(x: torch.Tensor, k: int, gen: torch.Generator,
                     iters: int = KMEANS_ITERS) -> tuple[torch.Tensor, float]:
    """Spherical k-means of the rows of ``x (n, d)`` (L2-normalised here): ``(centroids (k, d) unit rows, mean
    cosine of each token to its centroid)``.

    k-means++ seeding from ``gen``: the first centre is ``randint(n)``, each next one a ``multinomial`` draw
    weighted by ``1 - max cos`` to the centres so far (half the squared distance on the sphere; uniform once every
    token is a centre); then ``iters`` Lloyd steps: assign each token to its most similar centroid (argmax, the
    lowest index on ties) and set each centroid to its members' normalised sum (an empty cluster keeps its centre).
    Computed in float64.
    """
    x = F.normalize(x.double(), dim=-1)
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=gen))
    centres = [x[first]]
    gap = (1.0 - x @ centres[0]).clamp_min(0)
    for _ in range(1, k):
        weights = gap if gap.sum() > 0 else torch.ones_like(gap)
        pick = int(torch.multinomial(weights, 1, generator=gen))
        centres.append(x[pick])
        gap = torch.minimum(gap, (1.0 - x @ x[pick]).clamp_min(0))
    c = torch.stack(centres)
    for _ in range(iters):
        assign = (x @ c.t()).argmax(dim=1)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        norms = sums.norm(dim=1, keepdim=True)
        c = torch.where(norms > 0, sums / norms.clamp_min(1e-300), c)
    fit = float((x @ c.t()).max(dim=1).values.mean())
    return c, fit
