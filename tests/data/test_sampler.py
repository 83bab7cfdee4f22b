"""The global-batch sampler: every step is exactly the global batch, split over any number of processes."""

import pytest

from moejet.configs import PACKAGED_DIR
from moejet.data.sampler import GlobalBatchSampler, shares, split
from moejet.train.config import batch_plan, load_config

CONFIGS = sorted(PACKAGED_DIR.glob("*.yaml"))
PROCESSES = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64)


@pytest.mark.parametrize("processes", PROCESSES)
def test_every_config_has_a_batch_plan_at_common_process_counts(processes):
    assert len(CONFIGS) == 87
    for path in CONFIGS:
        config = load_config(path)
        batch, limit = config.train.batch_size, config.train.micro_batch_size
        micro, accum = batch_plan(config, processes)
        per_rank = shares(batch, processes)
        assert sum(per_rank) == batch and max(per_rank) - min(per_rank) <= 1, path.name
        for share in per_rank:
            sizes = split(share, accum)
            assert sum(sizes) == share and max(sizes) <= micro, (path.name, processes, share, sizes)
        if limit is not None:
            assert micro <= limit


@pytest.mark.parametrize("num_images,batch,processes,micro", [(20, 8, 3, 2), (20, 8, 1, 8), (37, 10, 4, 3),
                                                               (9, 8, 3, 4), (64, 16, 16, 1)])
def test_an_epoch_is_one_permutation_shared_out_step_by_step(num_images, batch, processes, micro):
    samplers = [GlobalBatchSampler(num_images, batch, processes, rank, micro, seed=3) for rank in range(processes)]
    for sampler in samplers:
        sampler.set_epoch(5)
    order = samplers[0].order().tolist()
    steps = samplers[0].steps
    dropped = num_images - (num_images // batch) * batch if num_images % batch < processes else 0
    batches = [list(s) for s in samplers]
    seen = sorted(i for rank in batches for micro_batch in rank for i in micro_batch)
    assert seen == sorted(order[:num_images - dropped])  # every image once (a too-small remainder aside)
    for sampler, rank_batches in zip(samplers, batches):
        assert [len(b) for b in rank_batches] == [n for step in range(steps) for n in sampler.micro_sizes(step)]
        assert all(0 < len(b) <= micro for b in rank_batches)
    for step in range(steps):  # the step's global batch is the permutation's next slice
        images = samplers[0].step_images(step)
        taken = sorted(i for s in samplers for i in _step_indices(s, step))
        assert taken == sorted(order[step * batch: step * batch + images])


def _step_indices(sampler, step):
    sampler.start_step = step
    first = sampler.micro_sizes(step)
    out, it = [], iter(sampler)
    for _ in first:
        out += next(it)
    sampler.start_step = 0
    return out


def test_a_resumed_epoch_skips_exactly_the_steps_done():
    sampler = GlobalBatchSampler(50, 8, 3, 1, 2, seed=0)
    sampler.set_epoch(2)
    whole = list(sampler)
    done = sum(len(sampler.micro_sizes(step)) for step in range(3))
    sampler.start_step = 3
    assert list(sampler) == whole[done:] and len(sampler) == len(whole) - done


def test_one_process_keeps_the_distributed_sampler_order():
    from torch.utils.data import DistributedSampler

    reference = list(DistributedSampler(range(23), num_replicas=1, rank=0, shuffle=True, seed=4))
    sampler = GlobalBatchSampler(23, 8, 1, 0, 8, seed=4)
    assert [i for b in sampler for i in b] == reference  # runs on one process train as before
