"""Data plumbing shared by the recipes: shards, the training stream, the pipelines and
what a recipe's data builder hands back.

A recipe describes its examples in order (file paths, token rows, in-memory arrays: cheap
to list) and how to load and prepare one; :func:`training_stream` and
:func:`evaluation_pipeline` do the rest the same way for every recipe.

Training data is one stream of global batches that does not depend on the number of
workers. Each epoch puts the listed examples in an order drawn from (seed, epoch) and cuts
it into global batches of ``batch_size_per_worker * workers`` examples; worker ``r`` of
``W`` takes places ``r * b`` to ``(r + 1) * b - 1`` of every global batch. With a fixed
``global_batch_size`` a global batch therefore holds the same examples on any number of
workers, so a run resumed (or an elastic run reset) on another number of workers goes on
with exactly the batches the uninterrupted run would have used. Random augmentation draws
from a seed made of (run seed, epoch, the example's place in the listing): it differs from
example to example, and so from rank to rank, and is the same again on a resume.
"""

import contextlib
import dataclasses
import functools
import hashlib
import os
import typing

import numpy as np
import tensorflow as tf

from toolkit import config as config_lib
from toolkit import errors

Example = typing.Any  # one element of a tf.data pipeline: a tensor, tuple or dict of them
ExampleFunction = typing.Callable[..., Example]
BatchFunction = typing.Callable[[tf.data.Dataset, bool], tf.data.Dataset]


@dataclasses.dataclass(frozen=True)
class Shard:
    """This worker's share of a data set (validation data; and its place in each global
    batch of the training stream).

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


def limit(num_examples: int, maximum: int) -> int:
    """Apply a ``max_*_examples`` config value (0 means no limit)."""
    return num_examples if maximum == 0 else min(num_examples, maximum)


@dataclasses.dataclass(frozen=True)
class Examples:
    """A data set, listed cheaply in a fixed order, and how to load one of its examples.

    ``listing`` holds ``count`` elements that are cheap to keep in memory (file paths
    with labels, row indices, small in-memory arrays): a numpy array, or a tuple or dict
    of them, each ``count`` long in its first dimension. Training reaches them by index,
    so a per-epoch order is arithmetic on indices and nothing is read to skip ahead.
    ``load`` turns one element into a model example (reads and decodes a file), or is
    None when the listing already is the examples. ``length``, if given, maps a batch of
    listing elements to the lengths of the examples they stand for (tokens of a text):
    training then puts examples of similar length in the same global batch, which saves
    padding (see :meth:`TrainingStream.global_batches`).
    """

    listing: Example  # or, for evaluation data only, a tf.data.Dataset of the elements
    count: int
    load: typing.Optional[ExampleFunction] = None
    length: typing.Optional[ExampleFunction] = None
    # Given a loaded batch, which of its examples are usable: files found unreadable
    # while loading under a "skip" policy are loaded as placeholders that this marks
    # False, and they are dropped from their batch (see note_unusable_file).
    usable: typing.Optional[ExampleFunction] = None

    def loaded_bytes(self) -> typing.Optional[int]:
        """Bytes of one loaded example when every loaded example has the same fixed
        size (decoded images, fixed-length waveforms), else None."""
        if self.load is None:
            return None
        spec = self.dataset(1).map(plain(self.load)).element_spec
        sizes = []
        for part in tf.nest.flatten(spec):
            if not part.shape.is_fully_defined() or part.dtype == tf.string:
                return None
            sizes.append(part.shape.num_elements() * part.dtype.size)
        return sum(sizes)

    def dataset(self, count: typing.Optional[int] = None) -> tf.data.Dataset:
        """The first ``count`` (default all) listing elements as a tf.data stream."""
        count = self.count if count is None else count
        if isinstance(self.listing, tf.data.Dataset):  # records: evaluation data only
            return self.listing.take(count)
        return tf.data.Dataset.from_tensor_slices(
            tf.nest.map_structure(lambda array: array[:count], self.listing))


# Unusable files met while loading, under a "skip" policy, in this process: "<path> <why>".
UNUSABLE_FILES: typing.List[str] = []
# Marks the message of an error raised inside a pipeline for an unusable file under the
# "error" policy, so that the trainer can report it as the user's DataError.
DATA_ERROR_MARK = "[toolkit data error] "


def plain(function: typing.Callable) -> typing.Callable:
    """``function`` traced for tf.data as it is written, without autograph's conversion.
    The pipeline functions here, and the recipes' load and prepare functions they call,
    use no Python control flow on tensors (tf.cond where they branch), and converting
    them cost about 3 s of every worker's start (measured with cProfile, 2026-11-28)."""
    return tf.autograph.experimental.do_not_convert(function)


def note_unusable_file(path: str, why: str) -> None:
    """Record an unusable file met while loading (reported in summary.json)."""
    UNUSABLE_FILES.append(f"{path} {why}")


def data_error_message(error: Exception) -> typing.Optional[str]:
    """The message of a DATA_ERROR_MARK error raised inside a pipeline, else None."""
    text = str(error)
    if DATA_ERROR_MARK not in text:
        return None
    return text.split(DATA_ERROR_MARK, 1)[1].splitlines()[0]


@contextlib.contextmanager
def unusable_files_as_data_errors():
    """Turn the error a pipeline raises for an unusable file (DATA_ERROR_MARK) into the
    user's DataError, which names the file."""
    try:
        yield
    except tf.errors.OpError as error:
        message = data_error_message(error)
        if message is None:
            raise
        raise errors.DataError(message) from None


def drop_unusable(dataset: tf.data.Dataset, usable: typing.Optional[ExampleFunction]
                   ) -> tf.data.Dataset:
    """Batches without the examples ``usable`` marks False (a batch may get smaller)."""
    if usable is None:
        return dataset

    def kept(*batch):
        batch = batch[0] if len(batch) == 1 else batch
        mask = apply(usable, batch)
        return tf.nest.map_structure(lambda part: tf.boolean_mask(part, mask), batch)

    return dataset.map(plain(kept))


class DiskStore:
    """Decoded examples kept in files, by listing index: one file per part of an example
    (``[count, *shape]`` of its dtype, created sparse) and one byte per index saying
    whether its place is filled. The workers of a host share the files: whichever loads
    an example first writes it (its data, then its flag) and the others read it from then
    on, in this run and the next ones. The folder is named by the listing (every
    element's bytes) and the loaded example's shapes and dtypes, which is what the
    recipes' decoding depends on (image size and channels, clip length)."""

    def __init__(self, cache_dir: str, listing: Example, spec: Example):
        self.spec = spec
        self.parts = tf.nest.flatten(spec)
        digest = hashlib.sha256(repr([(part.shape.as_list(), part.dtype.name)
                                      for part in self.parts]).encode())
        for array in tf.nest.flatten(listing):
            digest.update(np.ascontiguousarray(array).tobytes())
        count = len(tf.nest.flatten(listing)[0])
        self.directory = os.path.join(cache_dir, "decoded", digest.hexdigest()[:24])
        os.makedirs(self.directory, exist_ok=True)
        self.arrays = [self._open(f"part-{number}.{part.dtype.name}",
                                  part.dtype.as_numpy_dtype, (count, *part.shape))
                       for number, part in enumerate(self.parts)]
        self.filled = self._open("filled.uint8", np.uint8, (count,))

    def _open(self, name: str, dtype, shape) -> np.memmap:
        path = os.path.join(self.directory, name)
        if not os.path.exists(path):
            temporary = f"{path}.partial-{os.getpid()}"
            with open(temporary, "wb") as stream:
                stream.truncate(int(np.prod(shape)) * np.dtype(dtype).itemsize)
            try:
                os.link(temporary, path)  # fails if another worker made it first
            except FileExistsError:
                pass
            os.remove(temporary)
        return np.memmap(path, dtype, mode="r+", shape=shape)

    def _read(self, index):
        index = int(index)
        if not self.filled[index]:
            return [False] + [np.zeros(part.shape, part.dtype.as_numpy_dtype)
                              for part in self.parts]
        return [True] + [np.array(array[index]) for array in self.arrays]

    def _write(self, index, *values):
        index = int(index)
        for array, value in zip(self.arrays, values):
            array[index] = value
        self.filled[index] = 1
        return np.int64(index)

    def load(self, index: tf.Tensor, load: typing.Callable[[], Example]) -> Example:
        """The example at ``index``: read from the files, or ``load()`` ed and written."""
        found, *kept = tf.numpy_function(self._read, [index],
                                         [tf.bool] + [part.dtype for part in self.parts])
        kept = [tf.ensure_shape(value, part.shape) for value, part in zip(kept, self.parts)]

        def load_and_write():
            values = tf.nest.flatten(load())
            written = tf.numpy_function(self._write, [index, *values], tf.int64)
            with tf.control_dependencies([written]):
                return [tf.identity(value) for value in values]

        return tf.nest.pack_sequence_as(self.spec, tf.cond(found, lambda: kept,
                                                           load_and_write))


def cache_mode(choice: str, budget_mb: int, examples: int,
               example_bytes: typing.Optional[int], what: str) -> typing.Tuple[str, str]:
    """("memory" | "disk" | "none", why) for keeping ``examples`` decoded examples of
    ``example_bytes`` each (None: not of a fixed size, or nothing to decode)."""
    if example_bytes is None:
        return "none", ""
    size_mb = examples * example_bytes / 2 ** 20
    if choice == "auto":
        if size_mb <= budget_mb:
            return "memory", (f"{what} decoded once and kept in memory ({size_mb:,.0f} MB "
                              f"<= cache_budget_mb={budget_mb})")
        return "none", (f"{what} streamed from the files ({size_mb:,.0f} MB decoded would "
                        f"exceed cache_budget_mb={budget_mb})")
    return choice, f"{what}: cache={choice} ({size_mb:,.0f} MB decoded)"


def apply(function: ExampleFunction, element: Example, **keywords) -> Example:
    """``function(*element)`` for a tuple element (tf.data's convention), else
    ``function(element)``."""
    if isinstance(element, tuple):
        return function(*element, **keywords)
    return function(element, **keywords)


# Examples loaded at once by a worker. Loading is mostly waiting for the file system (a
# file not in the page cache, a network file system), and tf.data's AUTOTUNE would run as
# many loads as the worker has cores: one, with one core per worker. Measured on a
# 200,000-file folder not in the page cache (2026-11-28): 400 images/s with AUTOTUNE.
LOADS_IN_FLIGHT = 16

# Examples with a ``length`` are sorted by it within windows of this many global batches.
LENGTH_WINDOW_BATCHES = 16


@dataclasses.dataclass(frozen=True)
class TrainingStream:
    """This worker's part of the training data's stream of global batches (see the module
    docstring): build the batches from any point of the plan with :meth:`batches`.

    ``prepare(*example, seed=seed)`` augments one loaded example; ``seed`` is a shape-[2]
    int64 tensor for ``tf.random.stateless_*`` ops, unique to (run seed, epoch, example).
    ``batch(dataset, training)`` replaces the plain batching; it must keep the order and
    make batches of exactly ``batch_size`` examples (BERT pads each batch).
    """

    examples: Examples  # its count is the number of examples used (after max_train_examples)
    shard: Shard
    batch_size: int  # per worker
    seed: int
    max_steps_per_epoch: int = 0  # 0: every full global batch of the epoch
    prepare: typing.Optional[ExampleFunction] = None
    batch: typing.Optional[BatchFunction] = None
    # Gradient accumulation: an epoch is a whole number of updates of this many batches.
    steps_per_update: int = 1
    # "memory": each loaded example is kept (by listing index) the first time any epoch
    # loads it, and never loaded again; "disk": the same in files under cache_dir
    # (DiskStore); "none": loaded every time (see cache_mode).
    cache: str = "none"
    cache_note: str = ""  # the choice and why, for the run's description
    cache_dir: str = ""

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.shard.count

    @property
    def num_examples(self) -> int:
        """Training examples of an epoch, all workers together."""
        return self.examples.count

    # The stream is the same on any number of workers (toolkit.record_stream's is not).
    depends_on_workers = False

    @property
    def steps_per_epoch(self) -> int:
        steps = limit(self.examples.count // self.global_batch_size, self.max_steps_per_epoch)
        return steps - steps % self.steps_per_update

    def _epoch_order(self, epoch: tf.Tensor) -> tf.Tensor:
        """The listing indices of the global batches of ``epoch``, shape [steps_per_epoch,
        global_batch_size]: a permutation of the listing drawn from (seed, epoch), cut to
        whole global batches; with example lengths, grouped by length
        (:meth:`_grouped_by_length`). Pure arithmetic on indices."""
        count, size, steps = self.examples.count, self.global_batch_size, self.steps_per_epoch
        seed = tf.stack([tf.cast(self.seed, tf.int64), tf.cast(epoch, tf.int64)])
        order = tf.random.experimental.stateless_shuffle(tf.range(count, dtype=tf.int64),
                                                         seed)[:steps * size]
        if self.examples.length is not None:
            order = self._grouped_by_length(order, seed)
        return tf.reshape(order, [steps, size])

    def _grouped_by_length(self, order: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """``order`` sorted by example length within windows of LENGTH_WINDOW_BATCHES
        global batches; the global batches cut from it are then put in a random order
        within their window, so that a batch holds texts of similar length but the
        lengths do not follow a pattern from step to step."""
        size = self.global_batch_size
        lengths = tf.cast(apply(self.examples.length, self._listing_at(order)), tf.int64)
        position = tf.range(tf.size(order, out_type=tf.int64))
        window = position // (size * LENGTH_WINDOW_BATCHES)
        order = tf.gather(order, tf.argsort(window * (1 << 32) + lengths, stable=True))
        batches = tf.reshape(order, [-1, size])
        batch_window = tf.range(tf.shape(batches, out_type=tf.int64)[0]) // LENGTH_WINDOW_BATCHES
        draw = tf.random.stateless_uniform(tf.shape(batch_window), seed + [0, 1 << 20],
                                           dtype=tf.float64)
        return tf.reshape(tf.gather(batches, tf.argsort(tf.cast(batch_window, tf.float64)
                                                        + draw, stable=True)), [-1])

    def _listing_at(self, indices: tf.Tensor) -> Example:
        return tf.nest.map_structure(lambda tensor: tf.gather(tensor, indices),
                                     self._listing_tensors)

    @functools.cached_property
    def _listing_tensors(self) -> Example:
        with tf.init_scope():  # made once, eagerly, even when first asked inside a pipeline
            return tf.nest.map_structure(tf.convert_to_tensor, self.examples.listing)

    def global_batches(self, epoch: int, step: int, end_epoch: int) -> tf.data.Dataset:
        """The global batches from step ``step`` of ``epoch`` to the end of epoch
        ``end_epoch - 1``, each ``(epochs, listing indices, listing elements)`` of
        ``global_batch_size`` examples. Nothing is loaded, and the batches before
        ``step`` are not even listed: starting late costs what starting early does."""
        size = self.global_batch_size

        def one_epoch(epoch_number, first_step=0):
            batches = tf.data.Dataset.from_tensor_slices(
                self._epoch_order(epoch_number)[first_step:])
            return batches.map(plain(lambda indices: (
                tf.fill([size], tf.cast(epoch_number, tf.int64)), indices,
                self._listing_at(indices))))

        first = one_epoch(tf.constant(epoch, tf.int64), step)
        return first.concatenate(
            tf.data.Dataset.range(epoch + 1, max(end_epoch, epoch + 1)).flat_map(
                plain(one_epoch)))

    def _mine(self, global_batches: tf.data.Dataset) -> tf.data.Dataset:
        start = self.shard.index * self.batch_size
        return global_batches.map(plain(lambda *parts: tf.nest.map_structure(
            lambda tensor: tensor[start:start + self.batch_size], parts)))

    def example_ids(self, epoch: int, step: int, end_epoch: int) -> tf.data.Dataset:
        """The listing indices of the examples in each of this worker's batches, in the
        order :meth:`batches` yields them."""
        return self._mine(self.global_batches(epoch, step, end_epoch)).map(
            plain(lambda epochs, indices, elements: indices))

    def batches(self, epoch: int, step: int, end_epoch: int) -> tf.data.Dataset:
        """This worker's batches from step ``step`` of ``epoch`` to the end of epoch
        ``end_epoch - 1``: loaded, prepared, batched and prefetched."""
        count = self.examples.count
        dataset = self._mine(self.global_batches(epoch, step, end_epoch)).unbatch()
        if self.cache == "memory":
            load = self._kept_load
        elif self.cache == "disk":
            load = lambda index, element: self._disk_store.load(  # noqa: E731
                index, lambda: apply(self.examples.load, element))
        else:
            load = lambda index, element: apply(self.examples.load, element)  # noqa: E731

        def load_and_prepare(epoch_number, index, element):
            example = element if self.examples.load is None else load(index, element)
            if self.prepare is None:
                return example
            seed = tf.stack([tf.cast(self.seed, tf.int64), epoch_number * count + index])
            return apply(self.prepare, example, seed=seed)

        dataset = dataset.map(plain(load_and_prepare), num_parallel_calls=LOADS_IN_FLIGHT)
        if self.batch is not None:
            dataset = self.batch(dataset, True)
        else:
            dataset = dataset.batch(self.batch_size, drop_remainder=True)
        return drop_unusable(dataset, self.examples.usable).prefetch(tf.data.AUTOTUNE)

    @functools.cached_property
    def _disk_store(self) -> DiskStore:
        spec = self.examples.dataset(1).map(plain(self.examples.load)).element_spec
        return DiskStore(self.cache_dir, self.examples.listing, spec)

    @functools.cached_property
    def _kept(self) -> typing.Tuple[Example, tf.Variable]:
        """Variables holding every loaded example by listing index, and which are filled."""
        spec = self.examples.dataset(1).map(plain(self.examples.load)).element_spec
        with tf.init_scope():
            store = tf.nest.map_structure(lambda part: tf.Variable(
                tf.zeros([self.examples.count, *part.shape], part.dtype), trainable=False),
                spec)
            return store, tf.Variable(tf.zeros([self.examples.count], tf.bool),
                                      trainable=False)

    def _kept_load(self, index: tf.Tensor, element: Example) -> Example:
        """Load the example at ``index`` the first time, from memory afterwards (workers
        load different examples at different times; filling a place twice is harmless)."""
        store, filled = self._kept

        def load_and_keep():
            example = apply(self.examples.load, element)
            writes = [variable.scatter_nd_update([[index]], [part]) for variable, part in
                      zip(tf.nest.flatten(store), tf.nest.flatten(example))]
            with tf.control_dependencies(writes):
                with tf.control_dependencies([filled.scatter_nd_update([[index]], [True])]):
                    return tf.nest.map_structure(tf.identity, example)

        # tf.gather reads one place; indexing (variable[index]) would copy the variable.
        return tf.cond(tf.gather(filled, index),
                       lambda: tf.nest.map_structure(lambda variable: tf.gather(variable, index),
                                                     store),
                       load_and_keep)


def training_stream(examples: Examples, *, shard: Shard, config: config_lib.TrainConfig,
                    maximum: int = 0, prepare: typing.Optional[ExampleFunction] = None,
                    batch: typing.Optional[BatchFunction] = None) -> TrainingStream:
    """The training stream of the first ``maximum`` examples (0 = all) for this worker."""
    examples = dataclasses.replace(examples, count=limit(examples.count, maximum))
    cache, note = cache_mode(config.cache, config.cache_budget_mb, examples.count,
                             examples.loaded_bytes(), "training examples")
    return TrainingStream(examples, shard, config.batch_size_per_worker, config.seed,
                          config.max_steps_per_epoch, prepare, batch,
                          config.backward_passes_per_step, cache, note, config.cache_dir)


def evaluation_pipeline(examples: Examples, *, shard: Shard, config: config_lib.TrainConfig,
                        maximum: int = 0, prepare: typing.Optional[ExampleFunction] = None,
                        batch: typing.Optional[BatchFunction] = None,
                        ) -> typing.Tuple[tf.data.Dataset, int]:
    """This worker's batches of ``examples`` for evaluation, and how many examples they
    hold: the first ``maximum`` (0 = all) sharded over the workers on the listing, before
    anything expensive happens, then loaded, prepared (``prepare(*example)``, no
    randomness), batched with ``batch_size_per_worker`` (or by ``batch(dataset, False)``)
    and kept in memory, since they are the same every epoch, if they fit (``cache``,
    ``cache_budget_mb``)."""
    count = limit(examples.count, maximum)
    bytes_each = examples.loaded_bytes() if examples.load is not None else 0
    cache, _ = cache_mode(config.cache, config.cache_budget_mb, shard.size(count),
                          bytes_each, "validation examples")
    if cache == "disk" and isinstance(examples.listing, tf.data.Dataset):
        cache = "none"  # records cannot be reached by index
    dataset = shard.take(examples.dataset(count), count)
    if examples.load is not None and cache == "disk":
        store = DiskStore(config.cache_dir, tf.nest.map_structure(
            lambda array: array[:count], examples.listing),
            examples.dataset(1).map(plain(examples.load)).element_spec)
        indices = shard.take(tf.data.Dataset.range(count), count)
        dataset = tf.data.Dataset.zip((indices, dataset)).map(plain(
            lambda index, element: store.load(index, lambda: apply(examples.load, element))),
            num_parallel_calls=tf.data.AUTOTUNE)
    elif examples.load is not None:
        dataset = dataset.map(plain(examples.load), num_parallel_calls=tf.data.AUTOTUNE)
    if prepare is not None:
        dataset = dataset.map(plain(prepare), num_parallel_calls=tf.data.AUTOTUNE)
    if batch is not None:
        dataset = batch(dataset, False)
    else:
        dataset = dataset.batch(config.batch_size_per_worker)
    dataset = drop_unusable(dataset, examples.usable)
    if cache == "memory" or bytes_each == 0:  # 0: already in memory, batched once
        dataset = dataset.cache()
    return dataset.prefetch(tf.data.AUTOTUNE), shard.size(count)


@dataclasses.dataclass
class Data:
    """What a recipe's data builder returns, for this worker.

    ``train`` is this worker's part of the training stream (:func:`training_stream`, or
    toolkit.record_stream for TFRecords);
    the trainer builds its batches from wherever the run stands. ``validation`` is the
    worker's validation shard, batched (:func:`evaluation_pipeline`). Counts are per
    worker and equal on all workers.
    """

    train: typing.Any  # TrainingStream, or record_stream.RecordStream
    validation: tf.data.Dataset
    validation_examples: int
    class_names: typing.List[str]
    description: str  # one line for logs and config.json, e.g. "Fashion-MNIST (Debian)"

    @property
    def train_examples(self) -> int:
        """Training examples per worker and epoch."""
        return self.train.num_examples // self.train.shard.count
