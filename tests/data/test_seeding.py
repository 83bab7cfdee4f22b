"""data.seeding: per-sample random streams."""

import numpy as np
import torch

import moejet  # noqa: F401  (registers the models)


def test_seeded_samples_draw_from_seed_epoch_and_index_only_and_leave_the_callers_rng_alone():
    import random

    from moejet.data import SeededSamples

    class Draws(torch.utils.data.Dataset):  # one draw from each RNG a transform may use
        def __len__(self):
            return 6

        def __getitem__(self, index):
            return torch.rand(1).item(), float(np.random.rand()), random.random()

    samples = SeededSamples(Draws(), seed=3)
    first = [samples[i] for i in range(6)]
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    assert [samples[i] for i in reversed(range(6))] == first[::-1]  # order and earlier draws change nothing
    assert samples.__getitems__([4, 1]) == [first[4], first[1]]
    after = (torch.get_rng_state(), np.random.get_state()[1], random.getstate())
    assert torch.equal(before[0], after[0]) and np.array_equal(before[1], after[1]) and before[2] == after[2]
    assert len({x for sample in first for x in sample}) == 18  # every sample and RNG its own stream
    samples.set_epoch(1)
    assert all(samples[i] != first[i] for i in range(6))
    assert SeededSamples(Draws(), seed=4)[0] != first[0]
    loader = torch.utils.data.DataLoader(SeededSamples(Draws(), seed=3), batch_size=4, num_workers=2)
    assert [tuple(x.item() for x in draw) for batch in loader for draw in zip(*batch)] == first
