"""The image recipe's three data sources, and its errors on bad data."""

import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from helpers import read_json, train_single
from recipes import image
from toolkit import config as config_lib
from toolkit import data as data_lib
from toolkit import errors

CLASSES = ["boot", "coat", "shirt"]


def make_folder(root, per_class=6, size=20, mode="RGB", extension="png"):
    generator = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for index in range(per_class):
            shape = (size, size + 4, 3) if mode == "RGB" else (size, size + 4)
            # Each class has its own brightness so that a model can tell them apart.
            pixels = np.clip(generator.normal(60 + 70 * label, 20, shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode).save(os.path.join(root, name, f"{index}.{extension}"))


def build(overrides, shard=data_lib.Shard()):
    config = config_lib.build(image.ImageConfig, {"batch_size_per_worker": "2", **overrides})
    return image.build_data(config, shard)


@pytest.mark.fast
def test_folder_with_held_out_split(tmp_path):
    make_folder(str(tmp_path), per_class=10)
    data = build({"data_dir": str(tmp_path), "validation_fraction": "0.2", "channels": "3",
                  "image_size": "16"})
    assert data.class_names == CLASSES
    assert (data.train_examples, data.validation_examples) == (24, 6)
    images, labels = next(iter(data.train.batches(0, 0, 1)))
    assert images.shape == (2, 16, 16, 3) and images.dtype == tf.float32
    assert float(tf.reduce_max(images)) <= 1.0 and float(tf.reduce_min(images)) >= 0.0
    assert set(labels.numpy()) <= {0, 1, 2}


@pytest.mark.fast
def test_folder_with_train_and_validation_subfolders_sharded(tmp_path):
    make_folder(str(tmp_path / "train"), per_class=5, mode="L", extension="jpg")
    make_folder(str(tmp_path / "validation"), per_class=2, mode="L", extension="jpg")
    shards = [build({"data_dir": str(tmp_path)}, data_lib.Shard(index, 2)) for index in (0, 1)]
    assert [shard.train_examples for shard in shards] == [7, 7]  # 15 // 2
    assert [shard.validation_examples for shard in shards] == [3, 3]


@pytest.mark.fast
@pytest.mark.parametrize("held_out", ["validation", "val", "test"])
def test_a_train_folder_with_any_held_out_folder_is_a_split(tmp_path, held_out):
    make_folder(str(tmp_path / "train"), per_class=4)
    make_folder(str(tmp_path / held_out), per_class=1)
    data = build({"data_dir": str(tmp_path)})
    assert data.class_names == CLASSES
    assert (data.train_examples, data.validation_examples) == (12, 3)
    assert f"train/ for training, {held_out}/ held out" in data.description


@pytest.mark.fast
def test_ambiguous_folder_layouts_say_what_was_understood(tmp_path):
    # validation/ and test/ both present: validation/ is held out, test/ left out.
    both = tmp_path / "both"
    for name, count in (("train", 4), ("validation", 2), ("test", 1)):
        make_folder(str(both / name), per_class=count)
    data = build({"data_dir": str(both)})
    assert data.validation_examples == 6
    assert "validation/ held out, test/ not used" in data.description
    # train/ alone: part of it is held out.
    alone = tmp_path / "alone"
    make_folder(str(alone / "train"), per_class=10)
    data = build({"data_dir": str(alone), "validation_fraction": "0.2"})
    assert (data.train_examples, data.validation_examples) == (24, 6)
    assert "validation_fraction of train/ held out" in data.description
    # A class that happens to be called "train" (it holds images) is a class.
    classes = tmp_path / "classes"
    for name in ("train", "bus"):
        os.makedirs(classes / name)
        for index in range(5):
            Image.new("L", (12, 12), 40 * index).save(classes / name / f"{index}.png")
    data = build({"data_dir": str(classes), "validation_fraction": "0.2"})
    assert data.class_names == ["bus", "train"]


@pytest.mark.fast
def test_size_and_channels_not_given_are_taken_from_the_images(tmp_path):
    # All grey, all 24 wide and 20 high: grey, resized to the shorter side.
    make_folder(str(tmp_path / "grey"), per_class=4, mode="L")
    data = build({"data_dir": str(tmp_path / "grey")})
    assert "input 20x20x1 from 12 sampled images" in data.description
    assert "grey, the rest colour" not in data.description
    images, _ = next(iter(data.train.batches(0, 0, 1)))
    assert images.shape[1:] == (20, 20, 1)
    config, _ = image.resolved(config_lib.build(image.ImageConfig,
                                                {"data_dir": str(tmp_path / "grey")}))
    assert image.build_model(config, data).input_shape == (None, 20, 20, 1)
    # Colour squares of one size, with a few grey ones and a larger one among them.
    mixed = tmp_path / "mixed"
    make_folder(str(mixed), per_class=4, size=32, mode="RGB")
    Image.new("L", (32, 32), 80).save(mixed / "boot" / "grey.png")
    Image.new("RGB", (64, 48), 80).save(mixed / "coat" / "large.png")
    data = build({"data_dir": str(mixed)})
    assert "input 32x32x3 from 14 sampled images" in data.description
    assert "1 of 14 are grey, the rest colour: all are read as colour" in data.description
    assert "32-64 wide, 32-48 high" in data.description
    # Given values win, and nothing is said.
    data = build({"data_dir": str(mixed), "image_size": "16", "channels": "1"})
    assert "input" not in data.description
    assert next(iter(data.train.batches(0, 0, 1)))[0].shape[1:] == (16, 16, 1)
    # Fashion-MNIST's own shape, and a TFRecord set's.
    assert image.resolved(config_lib.build(image.ImageConfig, {}))[0].image_size == 28
    path = str(tmp_path / "part.tfrecord")
    write_tfrecord(path, [0, 1, 2])
    config, note = image.resolved(config_lib.build(image.ImageConfig, {
        "train_files": path, "validation_files": path, "num_classes": "3"}))
    assert (config.image_size, config.channels) == (10, 1), note


def write_tfrecord(path, labels):
    with tf.io.TFRecordWriter(path) as writer:
        for index, label in enumerate(labels):
            encoded = tf.io.encode_png(np.full((10, 10, 1), index * 30, np.uint8)).numpy()
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
                "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
            })).SerializeToString())


@pytest.mark.fast
def test_tfrecords(tmp_path):
    path = str(tmp_path / "train.tfrecord")
    write_tfrecord(path, [index % 2 for index in range(8)])
    data = build({"train_files": path, "validation_files": path, "num_classes": "2"},
                 data_lib.Shard(1, 2))
    assert (data.train_examples, data.validation_examples) == (4, 4)
    assert sorted(int(label) for _, labels in data.validation for label in labels) == [1, 1, 1, 1]
    bad = str(tmp_path / "bad.tfrecord")
    write_tfrecord(bad, [0, 1, 5])
    with pytest.raises(errors.DataError, match="label 5, outside 0..1"):
        build({"train_files": bad, "validation_files": path, "num_classes": "2"})


@pytest.mark.fast
def test_empty_class_folder_is_named(tmp_path):
    make_folder(str(tmp_path))
    os.makedirs(tmp_path / "dress")
    with pytest.raises(errors.DataError, match=f"class folder {tmp_path}/dress has no images"):
        build({"data_dir": str(tmp_path)})


@pytest.mark.fast
def test_missing_paths_are_named(tmp_path):
    with pytest.raises(errors.DataError, match=f"image folder {tmp_path}/nope does not exist"):
        build({"data_dir": str(tmp_path / "nope")})
    with pytest.raises(errors.DataError, match="no TFRecord files match"):
        build({"train_files": str(tmp_path / "*.tfrecord"), "validation_files": "x",
               "num_classes": "3"})
    with pytest.raises(errors.DataError, match="install the Debian package"):
        build({"fashion_mnist_dir": str(tmp_path)})


@pytest.mark.fast
def test_unreadable_images_are_refused_or_skipped_and_reported(tmp_path):
    make_folder(str(tmp_path), per_class=4)
    (tmp_path / "coat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(errors.DataError, match=r"1 unusable images in .*--bad_images=skip"):
        build({"data_dir": str(tmp_path)})
    data = build({"data_dir": str(tmp_path), "bad_images": "skip", "validation_fraction": "0.25"})
    assert (data.train_examples, data.validation_examples) == (9, 3)
    assert "skipped 1 unusable files" in data.description
    assert "coat/broken.png cannot be read as an image" in data.description


@pytest.mark.fast
def test_truncated_idx_file_is_rejected(tmp_path):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 8, 1]) + (100).to_bytes(4, "big") + bytes(10))
    with pytest.raises(errors.DataError, match="truncated"):
        image.read_idx(str(path))


def test_training_on_an_image_folder_end_to_end(tmp_path, run_dir):
    make_folder(str(tmp_path / "data"), per_class=12)
    train_single(run_dir, "image", [f"--data_dir={tmp_path}/data", "--channels=3",
                                    "--image_size=16", "--width=8", "--stages=2",
                                    "--batch_size_per_worker=4", "--max_steps_per_epoch=3"])
    summary = read_json(os.path.join(run_dir, "summary.json"))
    # No --epochs: a small set of the user's gets 2,000 steps, here capped at 60 epochs.
    assert summary["epochs"] == image.MAX_EPOCHS
    assert summary["global_steps"] == image.MAX_EPOCHS * 3
    chosen = read_json(os.path.join(run_dir, "config.json"))["epochs_chosen"]
    assert chosen.startswith("60 epochs: 3 steps per epoch; a data set of your own"), chosen
    labels = read_json(os.path.join(run_dir, "export", "1", "labels.json"))
    assert labels["class_names"] == CLASSES


@pytest.mark.fast
def test_two_ranks_augment_the_same_image_differently(tmp_path):
    """Every file holds the same picture, so any difference between batches is the
    random flip and shift; each example draws its own, whichever rank takes it."""
    pixels = np.zeros((16, 16), np.uint8)
    pixels[2:14, 2:6] = 255  # a bar near the left edge: flips and shifts both show
    for name in CLASSES:
        os.makedirs(tmp_path / name)
        for index in range(4):
            Image.fromarray(pixels, "L").save(tmp_path / name / f"{index}.png")
    options = {"data_dir": str(tmp_path), "validation_fraction": "0.25", "image_size": "16",
               "augment": "true"}
    first_batches = [next(iter(build(options, data_lib.Shard(rank, 2)).train.batches(0, 0, 1)))
                     [0].numpy() for rank in (0, 1)]
    for rank_0, rank_1 in zip(*first_batches):  # the k-th example of each rank
        assert not np.array_equal(rank_0, rank_1)


@pytest.mark.fast
def test_shift_fraction_zero_augments_by_flips_alone():
    """--shift_fraction=0: each augmented image is the original or its mirror, and both
    occur; the default also shifts (by up to an eighth of the side)."""
    pixels = np.zeros((16, 16, 1), np.float32)
    pixels[2:14, 2:6] = 1.0  # a bar near the left edge
    seeds = [tf.constant([7, index], tf.int64) for index in range(32)]
    flipped = pixels[:, ::-1]
    only_flips = [image.augment(tf.constant(pixels), seed, 0.0).numpy() for seed in seeds]
    assert all(np.array_equal(out, pixels) or np.array_equal(out, flipped) for out in only_flips)
    assert any(np.array_equal(out, flipped) for out in only_flips)
    assert any(np.array_equal(out, pixels) for out in only_flips)
    shifted = [image.augment(tf.constant(pixels), seed, 0.125).numpy() for seed in seeds]
    assert not all(np.array_equal(out, pixels) or np.array_equal(out, flipped)
                   for out in shifted)


@pytest.mark.fast
def test_shift_fraction_minus_one_is_flips_only_on_fashion_mnist_and_shifts_elsewhere(tmp_path):
    for name in CLASSES:
        os.makedirs(tmp_path / name)
        for index in range(2):
            Image.fromarray(np.zeros((16, 16), np.uint8), "L").save(tmp_path / name / f"{index}.png")
    chosen = {
        source: image.resolved(config_lib.build(image.ImageConfig, overrides))[0].shift_fraction
        for source, overrides in {
            "fashion-mnist": {}, "folder": {"data_dir": str(tmp_path)},
            "given": {"data_dir": str(tmp_path), "shift_fraction": "0.05"}}.items()}
    assert chosen == {"fashion-mnist": 0.0, "folder": image.SHIFT_FRACTION, "given": 0.05}
