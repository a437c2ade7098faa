import numpy as np
import pytest
import tensorflow as tf

from toolkit import data


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
