"""Which channels and which hidden neurons each recycled layer takes: pure functions of statistics + a generator.

Every index set is returned sorted ascending, so selecting all of ``d`` channels (or ``h`` neurons) is the
identity and a narrower selection keeps the predecessor's order.
"""

from __future__ import annotations

import torch

from .graph import sample_part_unions


def evenly_spaced(n: int, k: int) -> torch.Tensor:
    """``floor(i * n / k)`` for ``i < k`` (paper Eq. 7): ``k`` of ``n`` positions, spread evenly."""
    return torch.arange(k, dtype=torch.int64) * n // k


def linspace_positions(n: int, k: int) -> torch.Tensor:
    """``round(linspace(0, n - 1, k))`` (released code, ``generate_uniform_indices``): first and last included."""
    return torch.round(torch.linspace(0, n - 1, k, dtype=torch.float64)).long()


def uniform_positions(n: int, k: int, rule: str = "shared") -> torch.Tensor:
    """``k`` evenly spread positions of ``n``: Eq. 7's floor (``shared``) or the release's linspace."""
    return linspace_positions(n, k) if rule == "linspace" else evenly_spaced(n, k)


def select_channels(strategy: str, d: int, d_out: int, importance: torch.Tensor | None,
                    gen: torch.Generator, uniform_rule: str = "shared") -> torch.Tensor:
    """``d_out`` of ``d`` residual channels, shared by every layer of a stage (paper Eq. 4, 7-9).

    ``importance`` (``graph`` too): the top-``d_out`` channels of the importance averaged over layers;
    ``uniform``: evenly spaced; ``random``: a random subset; ``upcycle``: all (``d_out == d``).
    """
    if d_out == d:
        return torch.arange(d)
    if strategy in ("importance", "graph"):
        return torch.topk(importance, d_out).indices.sort().values
    if strategy == "random":
        return torch.randperm(d, generator=gen)[:d_out].sort().values
    return uniform_positions(d, d_out, uniform_rule)


def select_expert_channels(strategy: str, num_experts: int, d: int, d_out: int, importance: torch.Tensor | None,
                           gen: torch.Generator, uniform_rule: str = "shared") -> torch.Tensor:
    """``(num_experts, d_out)`` channels per expert of one MoE layer (released code, ``expert_channels=per_expert``).

    The release draws each expert's input/output channels like its neurons: ``importance`` / ``graph`` sample
    ``d_out`` channels without replacement from ``P(c) ∝`` the layer's channel importance (the release's graph
    strategy partitions a channel co-activation graph instead, which moejet does not collect); ``random``: a random
    subset per expert; ``uniform``: the one evenly spaced set; ``upcycle`` (``d_out == d``): every channel.
    """
    if d_out == d:
        return torch.arange(d).expand(num_experts, d).contiguous()
    if strategy in ("importance", "graph"):
        p = sampling_weights(importance).expand(num_experts, d)
        idx = torch.multinomial(p, d_out, replacement=False, generator=gen)
    elif strategy == "random":
        idx = torch.rand(num_experts, d, generator=gen).argsort(dim=1)[:, :d_out]
    else:
        idx = uniform_positions(d, d_out, uniform_rule).expand(num_experts, d_out)
    return idx.sort(dim=1).values.contiguous()


def select_dense_neurons(strategy: str, h: int, h_out: int, importance: torch.Tensor | None,
                         gen: torch.Generator, uniform_rule: str = "shared") -> torch.Tensor:
    """``h_out`` of ``h`` hidden neurons for a *dense* block of a narrower successor: one deterministic MLP.

    ``importance`` / ``graph``: the top-``h_out`` by importance (no sampling: a dense block has a single MLP);
    ``uniform``: evenly spaced; ``random``: a random subset.
    """
    return select_channels(strategy, h, h_out, importance, gen, uniform_rule)


def sampling_weights(importance: torch.Tensor) -> torch.Tensor:
    """``P(h) ∝ A_h`` (paper Eq. 5), with a floor so dead neurons can still fill an expert that needs them."""
    p = importance.double().clamp_min(0)
    total = p.sum()
    if not torch.isfinite(total) or total <= 0:
        return torch.full_like(p, 1.0 / p.numel())
    p = p / total
    return p.clamp_min(1e-12)


def select_experts(
    strategy: str,
    num_experts: int,
    h: int,
    size: int,
    gen: torch.Generator,
    importance: torch.Tensor | None = None,
    parts: torch.Tensor | None = None,
    part_weights: torch.Tensor | None = None,
    uniform_rule: str = "shared",
) -> torch.Tensor:
    """``(num_experts, size)`` neuron indices into a dense layer of ``h`` neurons, one sorted row per expert.

    - ``importance``: each expert samples ``size`` neurons without replacement from ``P(h) ∝ A_h``;
    - ``graph``: each expert is a union of ``size / part_size`` METIS parts (``parts (k, part_size)``), sampled
      without replacement with probability ∝ ``part_weights`` (their internal co-activation);
    - ``uniform``: evenly spaced neurons (Eq. 7), one set shared by every expert (``uniform_rule="shared"``,
      the paper; ``"linspace"``: the release's rounding of the same idea);
    - ``random``: a uniformly random subset per expert;
    - ``upcycle``: every expert of the dense MLP's size is the whole layer; smaller (universal) experts are
      Eq. 7's evenly spaced neurons shifted by ``e mod floor(h / size)``, so each run of ``h / size`` consecutive
      experts partitions the MLP (Sparse Upcycling copies whole MLPs; the cut rule for the smaller experts is ours).
    """
    if strategy == "importance":
        p = sampling_weights(importance).expand(num_experts, h)
        idx = torch.multinomial(p, size, replacement=False, generator=gen)
    elif strategy == "graph":
        idx = sample_part_unions(parts, part_weights, num_experts, size, gen)
    elif strategy == "uniform":
        idx = uniform_positions(h, size, uniform_rule).expand(num_experts, size)
    elif strategy == "random":
        idx = torch.rand(num_experts, h, generator=gen).argsort(dim=1)[:, :size]
    elif strategy == "upcycle":
        shift = torch.arange(num_experts, dtype=torch.int64) % max(1, h // size)
        idx = evenly_spaced(h, size).unsqueeze(0) + shift.unsqueeze(1)
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    return idx.sort(dim=1).values.contiguous()


def select_reinit(num_experts: int, size: int, ratio: float, gen: torch.Generator) -> torch.Tensor:
    """Drop-Upcycling (Nakamura et al., ICLR 2025): ``(num_experts, round(ratio * size))`` hidden positions of each
    ``size``-neuron expert to re-initialise, a uniformly random subset drawn independently per expert, sorted."""
    k = round(ratio * size)
    rows = [torch.randperm(size, generator=gen)[:k].sort().values for _ in range(num_experts)]
    return torch.stack(rows) if rows else torch.zeros(0, k, dtype=torch.int64)


def subselect(core_draw: torch.Tensor, size: int) -> torch.Tensor:
    """Released-code universal experts: the same ``size`` linspace positions of each core-sized draw ``(E, h_core)``
    (``convert_vit_to_dualpath``: ``index_select`` with ``generate_uniform_indices(h_core, size)``)."""
    return core_draw[:, linspace_positions(core_draw.shape[1], size)]


def coverage(indices: list[torch.Tensor], h: int) -> float:
    """Fraction of the ``h`` predecessor neurons taken by at least one expert."""
    used = torch.zeros(h, dtype=torch.bool)
    for idx in indices:
        used[idx.reshape(-1)] = True
    return used.float().mean().item()
