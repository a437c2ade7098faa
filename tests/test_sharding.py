"""Shards and the training stream: global batches that do not depend on the number of
workers, a stream that starts anywhere, evaluation data sharded before loading."""

import numpy as np
import pytest
import tensorflow as tf

from toolkit import config as config_lib
from toolkit import data

pytestmark = pytest.mark.fast


@pytest.mark.parametrize("num_examples, workers", [(10, 1), (10, 2), (10, 3), (60000, 7)])
def test_shards_are_disjoint_equal_and_cover_all_but_the_remainder(num_examples, workers):
    shards = [data.Shard(index, workers).indices(num_examples) for index in range(workers)]
    sizes = {len(shard) for shard in shards}
    assert sizes == {num_examples // workers}
    union = np.concatenate(shards)
    assert len(np.unique(union)) == len(union)  # disjoint
    assert len(union) == num_examples - num_examples % workers  # covers all but remainder


def test_stream_sharding_matches_index_sharding():
    dataset = tf.data.Dataset.range(11)
    for index in range(3):
        shard = data.Shard(index, 3)
        taken = [int(value) for value in shard.take(dataset, 11)]
        assert taken == list(shard.indices(11))


def validation_values(shard, maximum=0, count=23):
    config = config_lib.TrainConfig(batch_size_per_worker=4, seed=7)

    def load(index):
        # Sharding happens on the listing, before anything is loaded: loading another
        # worker's example fails.
        tf.debugging.assert_equal(index % shard.count, tf.cast(shard.index, tf.int64))
        return index * 10

    examples = data.Examples(np.arange(count), count=count, load=load)
    batches, size = data.evaluation_pipeline(examples, shard=shard, config=config,
                                             maximum=maximum)
    return [batch.numpy().tolist() for batch in batches], size


def test_validation_loads_only_this_workers_examples_and_keeps_their_order():
    validation = [validation_values(data.Shard(index, 3)) for index in range(3)]
    # 23 examples over 3 workers: 7 each, the last 2 left out.
    assert [size for _, size in validation] == [7, 7, 7]
    union = sorted(value for batches, _ in validation for batch in batches for value in batch)
    assert union == [10 * index for index in range(21)]
    assert validation[0][0] == [[0, 30, 60, 90], [120, 150, 180]]
    limited, size = validation_values(data.Shard(0, 1), maximum=10)
    assert size == 10 and sum(limited, []) == [10 * index for index in range(10)]


def stream(workers, rank, count=100, global_batch=12, max_steps=0, prepare=None):
    config = config_lib.TrainConfig(batch_size_per_worker=global_batch // workers, seed=7,
                                     max_steps_per_epoch=max_steps)
    examples = data.Examples(np.arange(count), count=count,
                             load=lambda index: index * 10)
    return data.training_stream(examples, shard=data.Shard(rank, workers), config=config,
                                prepare=prepare)


def global_batches(workers, epoch=0, step=0, end_epoch=2, **options):
    """Each step's examples over all workers, in rank order, as loaded (index * 10)."""
    per_rank = [[batch.numpy().tolist() for batch in
                 stream(workers, rank, **options).batches(epoch, step, end_epoch)]
                for rank in range(workers)]
    return [sum(step_batches, []) for step_batches in zip(*per_rank)]


def test_a_global_batch_holds_the_same_examples_on_any_number_of_workers():
    one = global_batches(1)
    assert len(one) == 2 * (100 // 12)  # full global batches only, two epochs
    for workers in (2, 3, 4, 6):
        assert global_batches(workers) == one, f"{workers} workers"


def test_an_epoch_is_a_seeded_shuffle_without_repeats():
    first, second = global_batches(1)[:8], global_batches(1)[8:]
    for epoch in (first, second):
        seen = sum(epoch, [])
        assert len(set(seen)) == len(seen) == 96  # 100 // 12 batches, no example twice
    assert sum(first, []) != sorted(sum(first, []))  # shuffled
    assert first != second  # reshuffled every epoch
    assert global_batches(1) == global_batches(1)  # seeded


def test_the_stream_starts_anywhere_without_replaying_the_steps_before():
    full = global_batches(2)
    assert global_batches(3, epoch=0, step=5) == full[5:]
    assert global_batches(3, epoch=1, step=2) == full[8 + 2:]
    limited = global_batches(2, max_steps=3)
    assert len(limited) == 6 and limited[:3] == full[:3] and limited[3:] == full[8:11]


def test_the_worker_ids_are_the_ones_its_batches_hold():
    worker = stream(3, 1)
    ids = [batch.numpy().tolist() for batch in worker.example_ids(1, 3, 2)]
    loaded = [batch.numpy().tolist() for batch in worker.batches(1, 3, 2)]
    assert [[10 * index for index in batch] for batch in ids] == loaded


def test_augmentation_seeds_differ_per_example_and_not_with_the_number_of_workers():
    def seed_of(index, seed):
        return seed[1]

    one = global_batches(1, prepare=seed_of)
    assert one == global_batches(4, prepare=seed_of)
    seeds = sum(one, [])
    assert len(set(seeds)) == len(seeds)  # one stream per example and epoch


def test_grouping_by_length_keeps_global_batches_and_cuts_padding():
    lengths = np.random.default_rng(0).integers(5, 100, size=600)

    def worker_batches(workers, grouped=True):
        config = config_lib.TrainConfig(batch_size_per_worker=24 // workers, seed=7)
        examples = data.Examples(np.arange(600), count=600, length=(
            (lambda index: tf.gather(lengths, index)) if grouped else None))
        return [[batch.numpy().tolist() for batch in data.training_stream(
            examples, shard=data.Shard(rank, workers), config=config).example_ids(0, 0, 1)]
            for rank in range(workers)]

    def padding(per_rank):
        """Mean padding when each worker pads its batch to its longest example."""
        return np.mean([max(lengths[batch]) - np.mean(lengths[batch])
                        for rank in per_rank for batch in rank])

    def global_batches(per_rank):
        return [sum(step, []) for step in zip(*per_rank)]

    one, two = worker_batches(1), worker_batches(2)
    assert global_batches(one) == global_batches(two) and len(global_batches(one)) == 25
    assert len(set(sum(global_batches(one), []))) == 600  # every example once
    assert padding(two) < padding(worker_batches(2, grouped=False)) / 3


def test_grouped_by_length_a_stream_started_at_any_step_goes_on_as_the_full_one():
    lengths = np.random.default_rng(1).integers(5, 100, size=300)
    config = config_lib.TrainConfig(batch_size_per_worker=6, seed=7)
    examples = data.Examples(np.arange(300), count=300,
                             length=lambda index: tf.gather(lengths, index))
    worker = data.training_stream(examples, shard=data.Shard(1, 2), config=config)
    full = [batch.numpy().tolist() for batch in worker.example_ids(0, 0, 2)]
    assert [batch.numpy().tolist() for batch in worker.example_ids(0, 9, 2)] == full[9:]
    assert [batch.numpy().tolist() for batch in worker.example_ids(1, 3, 2)] == full[25 + 3:]
