"""The TFRecord training stream: each worker reads its own files (or, with fewer files
than workers, every worker keeps its share of the records), the order is shuffled per
epoch within a bounded buffer, and a stream started at any step holds exactly the
batches the uninterrupted stream has from there."""

import numpy as np
import pytest
import tensorflow as tf

from toolkit import data
from toolkit import record_stream

pytestmark = pytest.mark.fast


def write_records(directory, counts):
    """TFRecord files holding, in order, the record numbers 0, 1, 2, ... as text."""
    files, number = [], 0
    for index, count in enumerate(counts):
        path = str(directory / f"part-{index:03d}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for _ in range(count):
                writer.write(str(number).encode())
                number += 1
        files.append(path)
    return files


def stream(files, counts, rank, workers, batch=4, buffer=16):
    return record_stream.RecordStream(
        files, counts, lambda record, name: tf.strings.to_number(record, tf.int64),
        data.Shard(rank, workers), batch, seed=3, shuffle_buffer=buffer)


def ids(records, epoch=0, step=0, end_epoch=1):
    return [batch.numpy().tolist() for batch in records.example_ids(epoch, step, end_epoch)]


def loaded(records, epoch=0, step=0, end_epoch=1):
    return [batch.numpy().tolist() for batch in records.batches(epoch, step, end_epoch)]


COUNTS = [23, 17, 30, 9, 25, 20, 14, 28, 19]


def test_files_are_shared_out_disjoint_and_read_only_by_their_worker(tmp_path):
    files = write_records(tmp_path, COUNTS)
    starts = np.concatenate([[0], np.cumsum(COUNTS)])
    per_rank = [sum(ids(stream(files, COUNTS, rank, 2)), []) for rank in range(2)]
    assert stream(files, COUNTS, 0, 2).by_file
    for rank, seen in enumerate(per_rank):
        owned = set().union(*(range(starts[f], starts[f + 1])
                              for f in range(rank, len(COUNTS), 2)))
        assert set(seen) <= owned and len(set(seen)) == len(seen)
    assert not set(per_rank[0]) & set(per_rank[1])
    # Both take the smaller worker's records, whole batches: rank 1 owns 17+9+20+28 = 74.
    assert len(per_rank[0]) == len(per_rank[1]) == 72
    # Ids are what the records hold: the batches are these records, loaded.
    assert loaded(stream(files, COUNTS, 1, 2)) == ids(stream(files, COUNTS, 1, 2))


def test_one_worker_covers_every_record_each_epoch_in_a_new_order(tmp_path):
    files = write_records(tmp_path, COUNTS)
    one = stream(files, COUNTS, 0, 1, batch=5)
    epochs = [sum(ids(one, epoch, 0, epoch + 1), []) for epoch in range(2)]
    total = sum(COUNTS) - sum(COUNTS) % 5
    for order in epochs:
        assert len(set(order)) == total and max(order) < sum(COUNTS)
    assert epochs[0] != epochs[1] and epochs[0] != sorted(epochs[0])
    # Shuffled across files, not file after file: the first 40 records come from several.
    starts = np.cumsum(COUNTS)
    assert len({int(np.searchsorted(starts, record, side="right"))
                for record in epochs[0][:40]}) >= 3


def test_fewer_files_than_workers_shard_by_record(tmp_path):
    files = write_records(tmp_path, [50, 41])
    per_rank = [sum(ids(stream(files, [50, 41], rank, 3)), []) for rank in range(3)]
    assert not stream(files, [50, 41], 0, 3).by_file
    assert "by record" in stream(files, [50, 41], 0, 3).layout
    assert all(len(seen) == 28 for seen in per_rank)  # 91 // 3 = 30, in whole batches
    union = sum(per_rank, [])
    assert len(set(union)) == len(union)


@pytest.mark.parametrize("workers", [2, 3])
def test_a_stream_started_at_any_step_goes_on_as_the_uninterrupted_one(tmp_path, workers):
    counts = COUNTS if workers < 3 else [20, 30]  # 3 workers, 2 files: by record
    files = write_records(tmp_path, counts)
    for rank in range(workers):
        records = stream(files, counts, rank, workers, batch=3, buffer=10)
        full = ids(records, 0, 0, 3)
        steps = records.steps_per_epoch
        for epoch, step in [(0, min(7, steps - 1)), (1, steps - 1), (2, 2)]:
            assert ids(records, epoch, step, 3) == full[epoch * steps + step:], (
                f"rank {rank} from epoch {epoch} step {step}")
        if rank == 0:
            assert loaded(records, 1, 4, 2) == full[steps + 4:2 * steps]
