"""Data at real sizes: a source is scanned once into a manifest and read from it after,
rescanned when it changes; the cache policy streams what does not fit its budget; an
unusable file met while loading is refused (named) or skipped (counted)."""

import os

import numpy as np
import pytest
import tensorflow as tf

from recipes import image
from test_image_data import make_folder, write_tfrecord
from toolkit import config as config_lib
from toolkit import data as data_lib
from toolkit import errors
from toolkit import manifests

pytestmark = pytest.mark.fast


def build(tmp_path, overrides, shard=data_lib.Shard()):
    config = config_lib.build(image.ImageConfig, {
        "batch_size_per_worker": "2", "cache_dir": str(tmp_path / "cache"), **overrides})
    return image.build_data(config, shard)


def manifest_files(tmp_path):
    folder = tmp_path / "cache" / "manifests"
    return sorted(os.listdir(folder)) if folder.exists() else []


def test_a_folder_is_scanned_once_then_read_from_its_manifest(tmp_path, monkeypatch):
    make_folder(str(tmp_path / "data"), per_class=5)
    options = {"data_dir": str(tmp_path / "data"), "validation_fraction": "0.2"}
    first = build(tmp_path, options)
    assert len(manifest_files(tmp_path)) == 1

    def no_file_may_be_opened(path):
        raise AssertionError(f"{path} was checked again")

    monkeypatch.setattr(image, "check_image", no_file_may_be_opened)
    again = build(tmp_path, options)
    assert again.class_names == first.class_names
    assert again.train_examples == first.train_examples == 12
    # A new file changes its folder: the folder is scanned again and the file is used.
    monkeypatch.undo()
    make_folder(str(tmp_path / "more"), per_class=1)
    os.rename(tmp_path / "more" / "coat" / "0.png", tmp_path / "data" / "coat" / "new.png")
    monkeypatch.setattr(image, "check_image", no_file_may_be_opened)
    with pytest.raises(AssertionError, match="was checked again"):
        build(tmp_path, options)
    monkeypatch.undo()
    assert build(tmp_path, options).train_examples == 13
    monkeypatch.setattr(image, "check_image", no_file_may_be_opened)
    assert build(tmp_path, options).train_examples == 13  # and that scan was kept
    # --rescan_data=true (make prepare-data) scans even when nothing seems changed.
    with pytest.raises(AssertionError, match="was checked again"):
        build(tmp_path, dict(options, rescan_data="true"))


def test_a_tfrecord_set_is_counted_once_and_again_when_a_file_changes(tmp_path, monkeypatch):
    paths = [str(tmp_path / f"part-{index}.tfrecord") for index in range(3)]
    for index, path in enumerate(paths):
        write_tfrecord(path, [label % 2 for label in range(4 + index)])
    options = {"train_files": str(tmp_path / "part-*.tfrecord"),
               "validation_files": paths[0], "num_classes": "2"}
    assert build(tmp_path, options).train.counts == [4, 5, 6]
    counted = []
    real_count = image._count_records
    monkeypatch.setattr(image, "_count_records",
                        lambda files: counted.append(files) or real_count(files))
    assert build(tmp_path, options).train.counts == [4, 5, 6]
    assert counted == []  # both sets read from their manifests
    write_tfrecord(paths[1], [0] * 9)
    assert build(tmp_path, options).train.counts == [4, 9, 6]
    assert counted == [paths]
    write_tfrecord(paths[2], [0, 1, 7])
    with pytest.raises(errors.DataError, match=r"part-2.tfrecord holds label 7, outside 0..1"):
        build(tmp_path, options)


def test_a_manifest_from_a_scan_is_written_whole(tmp_path):
    """An interrupted scan leaves no manifest: the next run scans again."""
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        manifests.load_or_scan(str(tmp_path), "test", {"a": 1}, lambda: 1, interrupted)
    content, scanned = manifests.load_or_scan(str(tmp_path), "test", {"a": 1}, lambda: 1,
                                              lambda: {"files": 3})
    assert scanned and content == {"files": 3}
    assert manifests.load_or_scan(str(tmp_path), "test", {"a": 1}, lambda: 1,
                                  lambda: {"files": 4}) == ({"files": 3}, False)


def test_the_cache_policy_streams_what_does_not_fit_its_budget(tmp_path):
    make_folder(str(tmp_path / "data"), per_class=10)
    options = {"data_dir": str(tmp_path / "data"), "image_size": "64", "channels": "3"}
    # 27 training images of 64 x 64 x 3 bytes (+ a 4-byte label) = 0.32 MB.
    assert build(tmp_path, dict(options, cache_budget_mb="1")).train.cache == "memory"
    streamed = build(tmp_path, dict(options, cache_budget_mb="0"))
    assert streamed.train.cache == "none"
    assert "streamed from the files (0 MB decoded would exceed cache_budget_mb=0)" in (
        streamed.train.cache_note)
    assert build(tmp_path, dict(options, cache="none")).train.cache == "none"
    assert data_lib.cache_mode("auto", 1024, 1_281_167, 224 * 224 * 3, "x")[0] == "none"


def test_examples_kept_in_memory_are_loaded_once_and_give_the_same_batches(tmp_path):
    loads = tf.Variable(0, dtype=tf.int64)

    def load(index):
        loads.assign_add(1)
        return tf.fill([3], tf.cast(index, tf.float32))

    config = config_lib.TrainConfig(batch_size_per_worker=4, seed=5)
    examples = data_lib.Examples(np.arange(40), count=40, load=load)
    kept = data_lib.training_stream(examples, shard=data_lib.Shard(), config=config)
    assert kept.cache == "memory"
    streamed = data_lib.training_stream(
        examples, shard=data_lib.Shard(),
        config=config_lib.TrainConfig(batch_size_per_worker=4, seed=5, cache="none"))
    batches = [batch.numpy().tolist() for batch in kept.batches(0, 0, 3)]
    assert loads.numpy() == 40  # three epochs, each example loaded once
    assert batches == [batch.numpy().tolist() for batch in streamed.batches(0, 0, 3)]


def truncated_image(path):
    """A PNG whose header is whole (the scan accepts it) but whose data is cut."""
    encoded = tf.io.encode_png(np.full((20, 24, 3), 128, np.uint8)).numpy()
    path.write_bytes(encoded[:60])


def refused_then_skipped(tmp_path, options, message):
    """Under --bad_images=error the training batches raise ``message``; under skip,
    return the data and its first epoch's batches (UNUSABLE_FILES emptied first)."""
    with pytest.raises(errors.DataError, match=message):
        with data_lib.unusable_files_as_data_errors():
            list(build(tmp_path, options).train.batches(0, 0, 1))
    data_lib.UNUSABLE_FILES.clear()
    data = build(tmp_path, dict(options, bad_images="skip"))
    return data, list(data.train.batches(0, 0, 1))


def test_a_file_found_unusable_while_loading_is_refused_or_skipped(tmp_path):
    make_folder(str(tmp_path / "data"), per_class=4)
    truncated_image(tmp_path / "data" / "coat" / "cut.png")
    options = {"data_dir": str(tmp_path / "data"), "validation_fraction": "0.25",
               "batch_size_per_worker": "10", "augment": "false"}
    # The scan's header check passes the file: loading finds it.
    data, batches = refused_then_skipped(
        tmp_path, options, r"image .*coat/cut.png cannot be decoded .*--bad_images=skip")
    assert len(batches) == data.train.steps_per_epoch == 1
    labels = batches[0][1]
    validation_count = sum(len(labels) for _, labels in data.validation)
    # 13 files: 3 held out, 10 to train; the cut file is dropped from its batch.
    assert len(labels) + validation_count == 12 and set(labels.numpy()) <= {0, 1, 2}
    assert len(data_lib.UNUSABLE_FILES) == 1 and "coat/cut.png" in data_lib.UNUSABLE_FILES[0]


@pytest.mark.parametrize("source", ["folder", "tfrecords"])
def test_a_run_started_at_any_step_gets_the_batches_of_the_uninterrupted_run(tmp_path, source):
    """The image recipe's loaded and augmented batches, not just the indices."""
    if source == "folder":
        make_folder(str(tmp_path / "data"), per_class=12)
        options = {"data_dir": str(tmp_path / "data"), "image_size": "8"}
    else:
        for index in range(5):
            write_tfrecord(str(tmp_path / f"part-{index}.tfrecord"),
                           [label % 2 for label in range(4 + index % 3)])
        options = {"train_files": str(tmp_path / "part-*.tfrecord"),
                   "validation_files": str(tmp_path / "part-0.tfrecord"), "num_classes": "2",
                   "shuffle_buffer": "7", "image_size": "8"}
    for rank in range(2):
        train = build(tmp_path, options, data_lib.Shard(rank, 2)).train
        steps = train.steps_per_epoch
        full = [images.numpy() for images, _ in train.batches(0, 0, 3)]
        assert len(full) == 3 * steps and steps >= 4
        for epoch, step in [(0, 3), (1, 1), (2, steps - 1)]:
            resumed = [images.numpy() for images, _ in train.batches(epoch, step, 3)]
            assert len(resumed) == len(full) - epoch * steps - step
            for got, expected in zip(resumed, full[epoch * steps + step:]):
                np.testing.assert_array_equal(got, expected)


def test_a_damaged_record_is_refused_naming_it_or_skipped(tmp_path):
    good = tf.io.encode_png(np.full((10, 10, 1), 90, np.uint8)).numpy()
    path = str(tmp_path / "part-0.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for index in range(6):
            encoded = good[:50] if index == 2 else good
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
                "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(
                    value=[index % 2]))})).SerializeToString())
    options = {"train_files": path, "validation_files": path, "num_classes": "2",
               "batch_size_per_worker": "6", "augment": "false"}
    data, [(images, labels)] = refused_then_skipped(
        tmp_path, options, r"image .*part-0.tfrecord record 2 cannot be decoded")
    assert len(labels) == 5
    assert len(data_lib.UNUSABLE_FILES) == 1
    assert data_lib.UNUSABLE_FILES[0].startswith(f"{path} record 2 cannot be decoded")
    assert sum(len(labels) for _, labels in data.validation) == 5


def test_examples_kept_on_disk_are_loaded_once_across_runs_and_give_the_same_batches(tmp_path):
    loads = tf.Variable(0, dtype=tf.int64)

    def load(index):
        loads.assign_add(1)
        return tf.fill([3], tf.cast(index, tf.float32)), tf.cast(index % 4, tf.int32)

    def stream(cache):
        config = config_lib.TrainConfig(batch_size_per_worker=4, seed=5, cache=cache,
                                         cache_dir=str(tmp_path / "cache"))
        return data_lib.training_stream(data_lib.Examples(np.arange(40), count=40, load=load),
                                        shard=data_lib.Shard(), config=config)

    expected = [batch[0].numpy().tolist() for batch in stream("none").batches(0, 0, 2)]
    loads.assign(0)
    on_disk = stream("disk")
    assert on_disk.cache == "disk"
    assert [batch[0].numpy().tolist() for batch in on_disk.batches(0, 0, 2)] == expected
    assert loads.numpy() == 40  # two epochs, each example loaded once
    # Another run (a new stream, as a new worker builds) reads them all from the files.
    assert [batch[0].numpy().tolist() for batch in stream("disk").batches(1, 0, 2)] == (
        expected[10:])
    assert loads.numpy() == 40
    assert len(os.listdir(tmp_path / "cache" / "decoded")) == 1


def test_validation_examples_kept_on_disk_are_the_ones_decoded(tmp_path):
    make_folder(str(tmp_path / "data"), per_class=6)
    options = {"data_dir": str(tmp_path / "data"), "validation_fraction": "0.5",
               "image_size": "12", "augment": "false"}
    expected = [images.numpy() for images, _ in build(tmp_path, options).validation]
    for _ in range(2):  # the second build reads the files the first wrote
        kept = [images.numpy() for images, _ in build(tmp_path, dict(options, cache="disk"))
                .validation]
        assert len(kept) == len(expected)
        for got, want in zip(kept, expected):
            np.testing.assert_array_equal(got, want)
    assert len(os.listdir(tmp_path / "cache" / "decoded")) == 1  # one set of files, reused
