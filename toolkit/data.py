"""Data plumbing shared by the recipes: shards, the pipeline helper and what a recipe's
data builder hands back.

A recipe describes its examples in order (file paths, token rows, in-memory arrays: cheap
to list) and how to load and prepare one; :func:`make_pipeline` does the rest the same
way for every recipe: cut to ``max_*_examples``, take this worker's shard, load, cache,
shuffle (training), prepare, batch and prefetch.
"""

import dataclasses
import typing

import numpy as np
import tensorflow as tf

from toolkit import config as config_lib

Example = typing.Any  # one element of a tf.data pipeline: a tensor, tuple or dict of them
ExampleFunction = typing.Callable[..., Example]
BatchFunction = typing.Callable[[tf.data.Dataset, bool], tf.data.Dataset]


@dataclasses.dataclass(frozen=True)
class Shard:
    """This worker's share of a data set.

    Worker ``index`` of ``count`` takes elements ``index, index + count, ...``, cut to
    ``n // count`` elements so that every worker gets the same number. Shards are disjoint
    and, apart from the last ``n % count`` elements, cover the data.
    """

    index: int = 0
    count: int = 1

    def size(self, num_examples: int) -> int:
        """Elements per worker for a data set of ``num_examples``."""
        return num_examples // self.count

    def indices(self, num_examples: int) -> np.ndarray:
        """This worker's element indices, in increasing order."""
        return np.arange(self.index, self.size(num_examples) * self.count, self.count)

    def take(self, dataset: tf.data.Dataset, num_examples: int) -> tf.data.Dataset:
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


def limit(num_examples: int, maximum: int) -> int:
    """Apply a ``max_*_examples`` config value (0 means no limit)."""
    return num_examples if maximum == 0 else min(num_examples, maximum)


@dataclasses.dataclass(frozen=True)
class Examples:
    """A data set, listed cheaply in a fixed order, and how to load one of its examples.

    ``listing`` yields ``count`` elements that are cheap to produce (file paths with
    labels, row indices, in-memory arrays); ``load`` turns one into a model example
    (reads and decodes a file), or is None when the listing already is the examples.
    """

    listing: tf.data.Dataset
    count: int
    load: typing.Optional[ExampleFunction] = None


def make_pipeline(examples: Examples, *, shard: Shard, config: config_lib.TrainConfig,
                  training: bool, maximum: int = 0,
                  prepare: typing.Optional[ExampleFunction] = None,
                  batch: typing.Optional[BatchFunction] = None,
                  ) -> typing.Tuple[tf.data.Dataset, int]:
    """This worker's batches of ``examples``, and how many examples they hold.

    The first ``maximum`` examples (0 = all) are sharded over the workers on the
    listing, before anything expensive happens; then each example is loaded with
    ``examples.load`` (for training the result is cached in memory), shuffled when
    ``training`` (each worker with its own seed, reshuffled every pass), prepared with
    ``prepare`` (augmentation and features; after the cache, so random augmentation
    differs every epoch) and batched with ``batch_size_per_worker``. Training drops the
    last partial batch so every step has a full batch. ``batch(dataset, training)``
    replaces that batching (BERT pads batches by length).
    """
    count = limit(examples.count, maximum)
    dataset = shard.take(examples.listing.take(count), count)
    if examples.load is not None:
        dataset = dataset.map(examples.load, num_parallel_calls=tf.data.AUTOTUNE)
        if training:
            dataset = dataset.cache()
    if training:
        dataset = dataset.shuffle(max(shard.size(count), 1), seed=config.seed + shard.index,
                                  reshuffle_each_iteration=True)
    if prepare is not None:
        dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    if batch is not None:
        dataset = batch(dataset, training)
    else:
        dataset = dataset.batch(config.batch_size_per_worker, drop_remainder=training)
    if not training:
        # Validation is the same every epoch: keep the prepared batches.
        dataset = dataset.cache()
    return dataset.prefetch(tf.data.AUTOTUNE), shard.size(count)
