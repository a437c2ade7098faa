"""The training stream of a TFRecord set: each worker reads its own files.

Records cannot be reached by index, so the stream of :mod:`toolkit.data` (global batches
cut from a permutation of a listing) would make every worker read every record. Here,
with at least as many files as workers, worker ``r`` of ``W`` reads only files ``r, r + W,
...`` of the sorted list (*file sharding*); with fewer files, every worker reads them all
and keeps every ``W``-th record (*record sharding*, said in the run's description).

One epoch of the records a worker reads, its *stream*, is made of (all seeded by the run
seed and the epoch, so a resumed run rebuilds it exactly):

1. the files in an order drawn for the epoch;
2. taken ``CYCLE_FILES`` at a time, read in parallel and merged in a random order of
   their records (a group's merge order is a shuffle of its files' record counts);
3. shuffled in consecutive windows of ``shuffle_buffer`` records, each window by its own
   permutation: memory holds one window, never the shard.

Every worker takes the same number of steps per epoch: the smallest worker's records
divided by the batch size (the few records beyond that differ from epoch to epoch).

Resuming at step ``s`` is arithmetic on the record counts of the manifest: the window
holding the first record to train on is found, then the merge group holding that window's
start, and how many records of each of that group's files come before it; those files are
opened there (skipping raw records of at most ``CYCLE_FILES`` files, nothing parsed) and
the earlier groups are not opened at all. The cost does not grow with ``s``.

A stream depends on the number of workers (which files are whose): a run resumed on
another number of workers restarts the interrupted epoch (see
toolkit.worker.checkpoints.convert).
"""

import dataclasses
import typing

import numpy as np
import tensorflow as tf

from toolkit import data as data_lib

# Files read and merged at once by a worker.
CYCLE_FILES = 4
# Records read ahead from each open file, in the background.
READ_AHEAD = 64


@dataclasses.dataclass(frozen=True)
class RecordStream:
    """This worker's part of the training stream of a TFRecord set (module docstring).

    ``parse(record, name)`` makes a loaded example of a serialized record (``name``,
    "<file> record <n>", is for its error messages); ``prepare``, ``batch`` and
    ``usable`` are as for :class:`toolkit.data.TrainingStream` and ``Examples``.
    """

    files: typing.Sequence[str]  # sorted, as the manifest lists them
    counts: typing.Sequence[int]  # records per file
    parse: data_lib.ExampleFunction
    shard: data_lib.Shard
    batch_size: int  # per worker
    seed: int
    shuffle_buffer: int
    max_steps_per_epoch: int = 0
    prepare: typing.Optional[data_lib.ExampleFunction] = None
    batch: typing.Optional[data_lib.BatchFunction] = None
    steps_per_update: int = 1
    usable: typing.Optional[data_lib.ExampleFunction] = None

    depends_on_workers = True
    cache_note = ""  # records are always streamed

    @property
    def by_file(self) -> bool:
        return len(self.files) >= self.shard.count

    @property
    def num_examples(self) -> int:
        return int(sum(self.counts))

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.shard.count

    @property
    def layout(self) -> str:
        """How the records are shared out, for the run's description."""
        if self.shard.count == 1:
            return f"{len(self.files)} files read by the one worker"
        if self.by_file:
            return f"sharded by file: {len(self.files)} files over {self.shard.count} workers"
        return (f"sharded by record: {len(self.files)} files, fewer than the "
                f"{self.shard.count} workers, so every worker reads them all")

    def _files_of(self, rank: int) -> np.ndarray:
        if self.by_file:
            return np.arange(rank, len(self.files), self.shard.count)
        return np.arange(len(self.files))

    def _records_of(self, rank: int) -> int:
        """Records in the stream of worker ``rank`` (before record sharding)."""
        return int(np.asarray(self.counts, np.int64)[self._files_of(rank)].sum())

    @property
    def steps_per_epoch(self) -> int:
        if self.by_file:
            per_worker = min(self._records_of(rank) for rank in range(self.shard.count))
        else:
            per_worker = self.num_examples // self.shard.count
        steps = data_lib.limit(per_worker // self.batch_size, self.max_steps_per_epoch)
        return steps - steps % self.steps_per_update

    # -------------------------------------------------------------- the stream

    def _seed(self, *parts) -> tf.Tensor:
        return tf.stack([tf.cast(self.seed, tf.int64),
                         sum(tf.cast(part, tf.int64) * (1 << (20 * place))
                             for place, part in enumerate(parts))])

    def _epoch_files(self, epoch: tf.Tensor) -> typing.Tuple[tf.Tensor, tf.Tensor]:
        """This worker's file indices and their record counts in epoch ``epoch``'s order,
        padded with empty slots to whole groups of CYCLE_FILES."""
        mine = tf.constant(self._files_of(self.shard.index), tf.int64)
        order = tf.gather(mine, tf.random.experimental.stateless_shuffle(
            tf.range(tf.size(mine, out_type=tf.int64)), self._seed(epoch, 1)))
        counts = tf.gather(tf.constant(np.asarray(self.counts, np.int64)), order)
        padding = -tf.size(order) % CYCLE_FILES
        return (tf.pad(order, [[0, padding]]), tf.pad(counts, [[0, padding]]))

    def _merge_order(self, epoch, group, counts) -> tf.Tensor:
        """The slot (0..CYCLE_FILES-1) each record of a group comes from, in order."""
        return tf.random.experimental.stateless_shuffle(
            tf.repeat(tf.range(CYCLE_FILES, dtype=tf.int64), counts), self._seed(epoch, 2, group))

    def _group(self, epoch, group, files, counts, start) -> tf.data.Dataset:
        """Records ``start, start + 1, ...`` of merge group ``group``, as (record id,
        serialized record); the record id is the record's place in the whole set."""
        order = self._merge_order(epoch, group, counts)
        before = tf.math.bincount(tf.cast(order[:start], tf.int32), minlength=CYCLE_FILES,
                                  maxlength=CYCLE_FILES, dtype=tf.int64)
        names = tf.constant(list(self.files))
        first_ids = tf.constant(np.concatenate([[0], np.cumsum(self.counts)[:-1]]), tf.int64)

        def read(slot):
            skip = before[slot]
            records = tf.data.TFRecordDataset(names[files[slot]]).skip(skip).take(
                counts[slot] - skip)
            return records.enumerate(start=first_ids[files[slot]] + skip).prefetch(READ_AHEAD)

        return tf.data.Dataset.choose_from_datasets(
            [read(slot) for slot in range(CYCLE_FILES)],
            tf.data.Dataset.from_tensor_slices(order[start:]))

    def _stream(self, epoch_tensor: tf.Tensor, position: tf.Tensor) -> tf.data.Dataset:
        """This worker's stream of epoch ``epoch_tensor`` (before record sharding) from
        stream position ``position``, as (record id, serialized record)."""
        files, counts = self._epoch_files(epoch_tensor)
        groups = tf.reshape(files, [-1, CYCLE_FILES])
        group_counts = tf.reshape(counts, [-1, CYCLE_FILES])
        window = self.shuffle_buffer
        window_index = position // window
        group_starts = tf.concat([[0], tf.cumsum(tf.reduce_sum(group_counts, 1))], 0)
        # The group holding the window's first record, and that record's place in it.
        first_group = tf.searchsorted(group_starts, [window_index * window], side="right",
                                      out_type=tf.int64)[0] - 1
        into_group = window_index * window - tf.gather(group_starts, first_group)

        def from_group(group):
            start = tf.where(group == first_group, into_group, tf.constant(0, tf.int64))
            return self._group(epoch_tensor, group, groups[group], group_counts[group], start)

        records = tf.data.Dataset.range(first_group, tf.shape(groups, out_type=tf.int64)[0]
                                        ).flat_map(data_lib.plain(from_group))

        def shuffled(index, window_records):
            size = tf.shape(window_records[0])[0]
            permutation = tf.random.experimental.stateless_shuffle(
                tf.range(size), self._seed(epoch_tensor, 3, window_index + index))
            return tf.nest.map_structure(lambda part: tf.gather(part, permutation),
                                         window_records)

        return records.batch(window).enumerate().map(data_lib.plain(shuffled)).unbatch().skip(
            position - window_index * window)

    def _epoch(self, epoch: tf.Tensor, step: typing.Union[int, tf.Tensor] = 0
               ) -> tf.data.Dataset:
        """This worker's (epoch, record id, record) for steps ``step..`` of ``epoch``."""
        epoch, step = tf.cast(epoch, tf.int64), tf.cast(step, tf.int64)
        per_worker = self.steps_per_epoch * self.batch_size
        if self.by_file:
            stream = self._stream(epoch, step * self.batch_size)
        else:  # every worker reads all, and keeps every count-th record from its place
            position = step * self.batch_size * self.shard.count + self.shard.index
            stream = self._stream(epoch, position).shard(self.shard.count, 0)
        return stream.take(per_worker - step * self.batch_size).map(
            data_lib.plain(lambda record_id, record: (epoch, record_id, record)))

    def _records(self, epoch: int, step: int, end_epoch: int) -> tf.data.Dataset:
        return self._epoch(epoch, step).concatenate(
            tf.data.Dataset.range(epoch + 1, max(end_epoch, epoch + 1)).flat_map(
                data_lib.plain(self._epoch)))

    def example_ids(self, epoch: int, step: int, end_epoch: int) -> tf.data.Dataset:
        """The record ids (place in the whole set) of each of this worker's batches."""
        return self._records(epoch, step, end_epoch).map(
            data_lib.plain(lambda epochs, record_id, record: record_id)).batch(self.batch_size,
                                                               drop_remainder=True)

    def batches(self, epoch: int, step: int, end_epoch: int) -> tf.data.Dataset:
        """This worker's batches from step ``step`` of ``epoch`` to the end of epoch
        ``end_epoch - 1``: parsed, prepared, batched and prefetched."""
        count = self.num_examples

        def parse_and_prepare(epoch_number, record_id, record):
            example = self.parse(record, self._record_name(record_id))
            if self.prepare is None:
                return example
            seed = tf.stack([tf.cast(self.seed, tf.int64), epoch_number * count + record_id])
            return data_lib.apply(self.prepare, example, seed=seed)

        dataset = self._records(epoch, step, end_epoch).map(
            data_lib.plain(parse_and_prepare), num_parallel_calls=tf.data.AUTOTUNE)
        if self.batch is not None:
            dataset = self.batch(dataset, True)
        else:
            dataset = dataset.batch(self.batch_size, drop_remainder=True)
        return data_lib.drop_unusable(dataset, self.usable).prefetch(tf.data.AUTOTUNE)

    def _record_name(self, record_id: tf.Tensor) -> tf.Tensor:
        """"<file> record <n>" (n counted from 0 in its file) for a record id."""
        starts = tf.constant(np.concatenate([[0], np.cumsum(self.counts)[:-1]]), tf.int64)
        file_index = tf.searchsorted(starts, [record_id], side="right")[0] - 1
        return tf.strings.join([tf.gather(tf.constant(list(self.files)), file_index),
                                " record ",
                                tf.strings.as_string(record_id - tf.gather(starts, file_index))])
