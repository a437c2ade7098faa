"""Shards: disjoint, equal, covering all but the remainder; the pipeline helper."""

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


def pipeline_values(shard, training, maximum=0, count=23):
    config = config_lib.TrainConfig(batch_size_per_worker=4, seed=7)

    def load(index):
        # Sharding happens on the listing, before anything is loaded: loading another
        # worker's example fails.
        tf.debugging.assert_equal(index % shard.count, tf.cast(shard.index, tf.int64))
        return index * 10

    examples = data.Examples(tf.data.Dataset.range(count), count=count, load=load)
    batches, size = data.make_pipeline(examples, shard=shard, config=config,
                                       training=training, maximum=maximum)
    return [batch.numpy().tolist() for batch in batches], size


def test_pipeline_loads_only_this_workers_examples_and_batches_them():
    shards = [data.Shard(index, 3) for index in range(3)]
    validation = [pipeline_values(shard, training=False) for shard in shards]
    # 23 examples over 3 workers: 7 each, the last 2 left out; validation keeps order.
    assert [size for _, size in validation] == [7, 7, 7]
    union = sorted(value for batches, _ in validation for batch in batches for value in batch)
    assert union == [10 * index for index in range(21)]
    assert [len(batch) for batch in validation[0][0]] == [4, 3]
    training, size = pipeline_values(shards[1], training=True)
    assert size == 7 and [len(batch) for batch in training] == [4]  # full batches only
    assert set(training[0]) <= {10 * index for index in range(1, 21, 3)}


def test_pipeline_limit_and_shuffle():
    limited, size = pipeline_values(data.Shard(0, 1), training=False, maximum=10)
    assert size == 10 and sorted(sum(limited, [])) == [10 * index for index in range(10)]
    first, _ = pipeline_values(data.Shard(0, 1), training=True)
    again, _ = pipeline_values(data.Shard(0, 1), training=True)
    assert first == again  # seeded
    assert sum(first, []) != sorted(sum(first, []))  # shuffled
