"""Co-activation graph partitioning (paper Eq. 6) with METIS, into equal-sized parts experts can be built from.

An expert of ``size`` neurons must be an exact union of parts, so every part has the same size ``g``, a divisor
of every expert size of the layer (``part_size``). METIS balances parts only approximately; :func:`balance`
then moves the least-attached neurons of oversized parts to the undersized parts they co-activate with most.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pymetis
import torch

EDGE_WEIGHT_MAX = 100  # METIS takes integer weights; 100 levels keep the total well inside int32


def part_size(h: int, expert_sizes: list[int], target_parts: int) -> int:
    """The largest divisor ``g`` of every expert size with at least ``target_parts`` parts of ``g`` in ``h``."""
    common = math.gcd(*expert_sizes)
    fits = [g for g in range(1, common + 1) if common % g == 0 and h // g >= target_parts]
    return max(fits) if fits else 1


def partition(coact: torch.Tensor, importance: torch.Tensor, g: int, seed: int) -> torch.Tensor:
    """``(k, g)`` neuron indices: ``k = h // g`` parts of exactly ``g`` co-activated neurons (rows sorted).

    The ``h - k*g`` least important neurons are left out first so the rest splits exactly.
    """
    h = coact.shape[0]
    k = h // g
    keep = torch.topk(importance, k * g).indices.sort().values
    w = coact[keep][:, keep].double()
    w.fill_diagonal_(0)
    if k == 1:
        return keep.unsqueeze(0)
    labels = torch.as_tensor(np.asarray(_metis(w, k, seed)), dtype=torch.int64)
    labels = balance(w, labels, k, g)
    order = torch.argsort(labels * (k * g) + torch.arange(k * g), stable=True)  # group by part, keep index order
    return keep[order].reshape(k, g)


def _metis(w: torch.Tensor, k: int, seed: int) -> list[int]:
    """METIS k-way partition of the weighted graph ``w (n, n)`` (symmetric, zero diagonal)."""
    n = w.shape[0]
    top = w.max()
    if top <= 0:  # nothing co-activates: any balanced split is as good as another
        return (torch.arange(n) % k).tolist()
    weights = torch.ceil(w / top * EDGE_WEIGHT_MAX).to(torch.int64)
    nz = weights > 0
    xadj = torch.zeros(n + 1, dtype=torch.int64)
    xadj[1:] = nz.sum(dim=1).cumsum(0)
    adjncy = nz.nonzero()[:, 1].numpy()
    eweights = weights[nz].numpy()
    options = pymetis.Options()
    options.seed = seed
    options.ufactor = 1  # 0.1% imbalance: parts come out (nearly) equal
    if hasattr(pymetis, "CSRAdjacency"):
        graph = pymetis.CSRAdjacency(xadj.numpy(), adjncy)
        result = pymetis.part_graph(k, graph, eweights=eweights, options=options)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            result = pymetis.part_graph(k, xadj=xadj.numpy(), adjncy=adjncy, eweights=eweights, options=options)
    return list(result[1])


def balance(w: torch.Tensor, labels: torch.Tensor, k: int, g: int) -> torch.Tensor:
    """Make every part exactly ``g`` neurons: overflow (least attached to its part first) moves to the
    undersized part it co-activates with most."""
    labels = labels.clone()
    onehot = torch.nn.functional.one_hot(labels, k).double()
    affinity = w @ onehot  # (n, k): co-activation of each neuron with each part
    sizes = torch.bincount(labels, minlength=k)
    moved = []
    for p in torch.nonzero(sizes > g).flatten().tolist():
        members = torch.nonzero(labels == p).flatten()
        weakest = members[torch.argsort(affinity[members, p], stable=True)[: int(sizes[p]) - g]]
        moved.append(weakest)
        sizes[p] = g
    if not moved:
        return labels
    moved = torch.cat(moved)
    for n in moved[torch.argsort(affinity[moved].max(dim=1).values, descending=True, stable=True)].tolist():
        room = sizes < g
        target = int(torch.where(room, affinity[n], torch.tensor(-1.0, dtype=affinity.dtype)).argmax())
        labels[n] = target
        sizes[target] += 1
    return labels


def part_weights(coact: torch.Tensor, parts: torch.Tensor) -> torch.Tensor:
    """``(k,)`` internal co-activation of each part (sum over its distinct neuron pairs)."""
    w = coact.double()
    return torch.stack([(w[p][:, p].sum() - w[p, p].sum()) / 2 for p in parts])


def sample_part_unions(parts: torch.Tensor, weights: torch.Tensor, num_experts: int, size: int,
                       gen: torch.Generator) -> torch.Tensor:
    """``(num_experts, size)``: each expert the union of ``size / g`` distinct parts sampled ∝ ``weights``."""
    k, g = parts.shape
    if size % g:
        raise ValueError(f"expert size {size} is not a multiple of the part size {g}")
    p = weights.double().clamp_min(0)
    p = p / p.sum() if p.sum() > 0 else torch.full_like(p, 1.0 / k)
    chosen = torch.multinomial(p.clamp_min(1e-12).expand(num_experts, k), size // g, replacement=False, generator=gen)
    return parts[chosen].reshape(num_experts, size)
