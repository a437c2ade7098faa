"""Data plumbing shared by the recipes: shards and the datasets a recipe hands back."""

import dataclasses
import typing

import numpy as np
import tensorflow as tf


class DataError(ValueError):
    """The user's data cannot be used as given."""


@dataclasses.dataclass(frozen=True)
class Shard:
    """This worker's share of a data set.

    Worker ``index`` of ``count`` takes elements ``index, index + count, ...``, cut to
    ``n // count`` elements so that every worker gets the same number. Shards are disjoint
    and, apart from the last ``n % count`` elements, cover the data.
    """

    index: int = 0
    count: int = 1

    def size(self, num_examples):
        """Elements per worker for a data set of ``num_examples``."""
        return num_examples // self.count

    def indices(self, num_examples):
        """This worker's element indices, in increasing order."""
        return np.arange(self.index, self.size(num_examples) * self.count, self.count)

    def take(self, dataset, num_examples):
        """Shard a ``tf.data`` stream whose length is ``num_examples``."""
        return dataset.shard(self.count, self.index).take(self.size(num_examples))


@dataclasses.dataclass
class Data:
    """What a recipe's data builder returns, already sharded for this worker.

    ``train`` is one pass over the worker's training shard, shuffled and batched with
    ``batch_size_per_worker``; the trainer repeats it and runs
    ``train_examples // batch_size_per_worker`` steps per epoch on every worker, so
    recipes may pad or bucket batches freely. ``validation`` is the worker's validation
    shard, batched. Counts are per worker and equal on all workers.
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset
    train_examples: int
    validation_examples: int
    class_names: typing.List[str]
    description: str  # one line for logs and config.json, e.g. "Fashion-MNIST (Debian)"


def limit(num_examples, maximum):
    """Apply a ``max_*_examples`` config value (0 means no limit)."""
    return num_examples if maximum == 0 else min(num_examples, maximum)
