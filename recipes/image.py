"""Image classification: a small ResNet on Fashion-MNIST, an image folder or TFRecords.

Data, chosen by which config key is set:

* default: Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (IDX files in
  ``fashion_mnist_dir``; 60,000 training and 10,000 test images; the test set is the
  validation set);
* ``--data_dir=DIR``: one subfolder per class holding JPEG/PNG files. If ``DIR`` has a
  ``train/`` of class folders, it is the training split and the first of
  ``validation/``, ``val/`` and ``test/`` beside it the held-out one (see
  ``folder_layout``); otherwise ``validation_fraction`` of each class is held out, the
  same files every run;
* ``--train_files=GLOB --validation_files=GLOB``: TFRecord files of ``tf.train.Example``
  with an encoded image under ``image/encoded`` and an integer label under
  ``image/class/label``; set ``--num_classes``.
"""

import dataclasses
import glob
import gzip
import os
import typing

import numpy as np
import tensorflow as tf
import tf_keras as keras

from recipe_helpers import class_folders
from recipe_helpers import classification
from toolkit import config as config_lib
from toolkit import data as data_lib
from toolkit import errors
from toolkit import manifests
from toolkit import recipe as recipe_lib
from toolkit import record_stream

FASHION_MNIST_CLASSES = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal",
                         "shirt", "sneaker", "bag", "ankle boot"]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


@dataclasses.dataclass
class ImageConfig(classification.ClassifierConfig):
    # 0 = choose_epochs: 12 on Fashion-MNIST (0.93 test accuracy with NP=2 in ~4.5 min on
    # 2 CPU cores with AMX, in bfloat16); more for a small set of the user's.
    epochs: int = 0
    batch_size_per_worker: int = 64
    base_learning_rate: float = 2e-3  # Adam; x world size, warmed up over one epoch

    # Data (see the module docstring); the first of data_dir / train_files that is set wins.
    fashion_mnist_dir: str = "/usr/share/datasets/fashion-mnist"  # Debian's location
    data_dir: str = ""
    validation_fraction: float = 0.1  # held out per class when data_dir has no split
    train_files: str = ""
    validation_files: str = ""
    num_classes: int = 0  # TFRecords only; folders and Fashion-MNIST know theirs
    # 0 = from the data (see input_shape): Fashion-MNIST's 28 x 28 grey; a folder's or
    # TFRecord set's sampled images (the run's first line says what was chosen).
    image_size: int = 0  # images are resized to image_size x image_size
    channels: int = 0  # 1 = grayscale, 3 = RGB; inputs are converted
    augment: bool = True  # random flip and shift, training only
    # Largest random shift, as a fraction of the side; 0 = flips only; -1 = for the data:
    # 0 on Fashion-MNIST (shifts kept the model from fitting in the time: 12 epochs gave
    # 0.9308 with flips only, 8 epochs with shifts 0.9151, 2026-11-29), else 0.125.
    shift_fraction: float = -1.0
    bad_images: typing.Literal["skip", "error"] = "error"  # unreadable files in data_dir
    # Fashion-MNIST, NP=2, 12 epochs (2026-11-29, seeds 42/1/2): 0.9322/0.9318/0.9319 with
    # 0.1 against 0.9308/0.9290/0.9308 without (BERT and speech keep 0: speech's unseen
    # ked voice fell from 0.80 to 0.75 with 0.1, seed 1).
    label_smoothing: float = 0.1

    # Model: a ResNet of `stages` stages, each halving resolution and doubling width.
    width: int = 16  # filters in the first stage; 16 keeps an epoch near 35 s on 2 cores
    stages: int = 3
    blocks_per_stage: int = 1  # residual blocks (two 3x3 convs each) per stage

    def validate(self) -> None:
        super().validate()
        config_lib.require(self, "image_size", self.image_size == 0 or self.image_size >= 8,
                           "an integer >= 8, or 0 for the data's own")
        config_lib.require(self, "channels", self.channels in (0, 1, 3),
                           "1 (grey), 3 (colour), or 0 for the data's own")
        config_lib.require(self, "width", self.width >= 1, "an integer >= 1")
        config_lib.require(self, "shift_fraction",
                           self.shift_fraction == -1 or 0 <= self.shift_fraction < 0.5,
                           "a fraction of the side in [0, 0.5), or -1 for the data's")
        config_lib.require(self, "stages", self.stages >= 1, "an integer >= 1")
        config_lib.require(self, "blocks_per_stage", self.blocks_per_stage >= 1,
                           "an integer >= 1")
        config_lib.require(self, "validation_fraction", 0 < self.validation_fraction < 1,
                           "a number in (0, 1)")
        if self.train_files and not self.validation_files:
            raise errors.ConfigError("config key 'train_files' is set but "
                                     "'validation_files' is not; give both globs")
        if self.train_files and self.num_classes < 2:
            raise errors.ConfigError("config key 'num_classes' must be >= 2 with "
                                     "TFRecord data (train_files)")


# ----------------------------------------------------------------------------- data


def build_data(config: ImageConfig, shard: data_lib.Shard) -> data_lib.Data:
    """This worker's shard of the configured data, batched (see module docstring)."""
    config, shape_note = resolved(config)
    def prepare_for_training(image, label, seed):
        image = to_model_input(image, config.image_size, config.channels)
        return (augment(image, seed, config.shift_fraction) if config.augment else image), label

    train_stream = None
    if config.data_dir:
        train, validation, class_names, description = _folder_examples(config)
    elif config.train_files:
        train_stream, validation, description = _tfrecord_streams(config, shard,
                                                                  prepare_for_training)
        class_names = [str(label) for label in range(config.num_classes)]
    else:
        train, validation, class_names, description = _fashion_mnist_examples(config)
    if train_stream is None:
        train_stream = data_lib.training_stream(train, shard=shard, config=config,
                                                maximum=config.max_train_examples,
                                                prepare=prepare_for_training)

    def prepare_for_validation(image, label):
        return to_model_input(image, config.image_size, config.channels), label

    validation_batches, validation_count = data_lib.evaluation_pipeline(
        validation, shard=shard, config=config, maximum=config.max_validation_examples,
        prepare=prepare_for_validation)
    return data_lib.Data(train=train_stream, validation=validation_batches,
                         validation_examples=validation_count,
                         class_names=class_names, description=description + shape_note)


# Pillow modes without colour.
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
SAMPLED_IMAGES = 200  # images that decide a size or channels not given
LARGEST_SIZE = 224  # a size taken from the data is capped here (set image_size to pass it)


SHIFT_FRACTION = 0.125  # shift_fraction=-1 on data of the user's


def resolved(config: ImageConfig) -> typing.Tuple[ImageConfig, str]:
    """``config`` with ``image_size`` and ``channels`` filled in from the data where they
    are 0 (and ``shift_fraction`` where it is -1), and a note for the run's description
    saying what was chosen and why."""
    if config.shift_fraction < 0:
        fashion_mnist = not (config.data_dir or config.train_files)
        config = dataclasses.replace(config,
                                     shift_fraction=0.0 if fashion_mnist else SHIFT_FRACTION)
    if config.image_size and config.channels:
        return config, ""
    source = (config.data_dir, config.train_files, config.validation_fraction, config.seed,
              config.fashion_mnist_dir)
    if source not in _SHAPES:  # every entry point asks; the data is looked at once
        _SHAPES[source] = input_shape(config)
    size, channels, note = _SHAPES[source]
    return dataclasses.replace(config, image_size=config.image_size or size,
                               channels=config.channels or channels), note


_SHAPES: typing.Dict[tuple, typing.Tuple[int, int, str]] = {}


def input_shape(config: ImageConfig) -> typing.Tuple[int, int, str]:
    """(size, channels, note) of the data: Fashion-MNIST is 28 x 28 grey; otherwise up to
    SAMPLED_IMAGES training images (headers only for files), evenly spread, decide.
    Channels: 1 if all are grey, else 3 (the note counts grey ones, which are converted).
    Size: the images' own when they are all one square size, else the median shorter
    side (the note gives the range); never below 8 nor above LARGEST_SIZE."""
    if config.data_dir:
        (paths, _), *_ = _folder_split(config)
        shapes = [_header_shape(path) for path in _evenly(list(paths))]
        source = "sampled images"
    elif config.train_files:
        files, counts = _scan_tfrecords(config.train_files, config)
        name = next(name for name, count in zip(files, counts) if count)
        shapes = [shape for shape in map(_record_shape, _first_records(name)) if shape]
        if not shapes:
            raise errors.DataError(f"no image in the first records of {name} can be decoded; "
                                   "set --image_size and --channels")
        source = "sampled records"
    else:
        return 28, 1, ""
    grey = sum(mode in GREY_MODES for _, _, mode in shapes)
    channels = 1 if grey == len(shapes) else 3
    sides = sorted(min(width, height) for width, height, _ in shapes)
    sizes = {(width, height) for width, height, _ in shapes}
    size = min(max(sides[len(sides) // 2], 8), LARGEST_SIZE)
    note = f"; input {size}x{size}x{channels} from {len(shapes)} {source}"
    if len(sizes) > 1 or sides[0] != max(max(pair) for pair in sizes):
        widths, heights = zip(*sizes)
        note += (f" ({min(widths)}-{max(widths)} wide, {min(heights)}-{max(heights)} high: "
                 f"resized to their median shorter side; set --image_size to choose)")
    if 0 < grey < len(shapes):
        note += (f" ({grey} of {len(shapes)} are grey, the rest colour: all are read as "
                 "colour; set --channels=1 to read all as grey)")
    return size, channels, note


def _evenly(items, count=SAMPLED_IMAGES):
    """Up to ``count`` items spread evenly over ``items`` (the same ones every run)."""
    step = max(1, len(items) // count)
    return items[::step][:count]


def _header_shape(path):
    """(width, height, Pillow mode) from an image file's header."""
    from PIL import Image

    with Image.open(path) as image:
        return image.size[0], image.size[1], image.mode


def _record_shape(record):
    """(width, height, Pillow-like mode) of a parsed record's image; None if it cannot be
    decoded (the bad_images policy deals with it in the pipeline)."""
    try:
        height, width, channels = tf.io.decode_image(record["image/encoded"],
                                                     expand_animations=False).shape
    except tf.errors.InvalidArgumentError:
        return None
    return width, height, "L" if channels in (1, 2) else "RGB"


def _first_records(name, count=64):
    """The first ``count`` parsed records of the TFRecord file ``name``."""
    dataset = tf.data.TFRecordDataset(name).take(count)
    return [tf.io.parse_single_example(record, TFRECORD_FEATURES) for record in dataset]


FASHION_MNIST_EPOCHS = 12  # with flips only: 0.9308 in 254 s of training (see shift_fraction)
# A set of the user's trains at least this many steps (and 8 epochs, at most 60), so that
# the learning rate's warm-up and decay both take effect on a small set.
MIN_STEPS, MIN_EPOCHS, MAX_EPOCHS = 2000, 8, 60


def choose_epochs(config: ImageConfig, data: data_lib.Data,
                  steps_per_epoch: int) -> typing.Tuple[int, str]:
    if not (config.data_dir or config.train_files):
        return FASHION_MNIST_EPOCHS, "tuned for Fashion-MNIST's 60,000 images"
    epochs = min(max(-(-MIN_STEPS // steps_per_epoch), MIN_EPOCHS), MAX_EPOCHS)
    return epochs, (f"{steps_per_epoch} steps per epoch; a data set of your own trains at "
                    f"least {MIN_EPOCHS} epochs and {MIN_STEPS:,} steps (at most "
                    f"{MAX_EPOCHS} epochs) so that the learning rate's warm-up and decay "
                    "both take effect; --epochs=N to choose")


def read_idx(path):
    """Read an IDX file (optionally gzipped), the format of MNIST and Fashion-MNIST."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as stream:
        content = stream.read()
    if len(content) < 4 or content[0] != 0 or content[1] != 0 or content[2] != 0x08:
        raise errors.DataError(f"{path} is not an unsigned-byte IDX file")
    dimensions = content[3]
    shape = tuple(int.from_bytes(content[4 + 4 * i:8 + 4 * i], "big") for i in range(dimensions))
    array = np.frombuffer(content, np.uint8, offset=4 + 4 * dimensions)
    if array.size != int(np.prod(shape)):
        raise errors.DataError(f"{path} is truncated: header says {shape}, "
                               f"found {array.size} bytes of data")
    return array.reshape(shape)


def fashion_mnist_split(directory, prefix):
    """(images, labels) of one Fashion-MNIST split: prefix "train" or "t10k" (test)."""
    paths = {}
    for part, kind in (("images", "idx3"), ("labels", "idx1")):
        candidates = [os.path.join(directory, f"{prefix}-{part}-{kind}-ubyte{suffix}")
                      for suffix in (".gz", "")]
        found = [path for path in candidates if os.path.exists(path)]
        if not found:
            raise errors.DataError(
                f"Fashion-MNIST file {candidates[0]} not found; install the Debian package "
                "dataset-fashion-mnist (make setup does) or set --fashion_mnist_dir")
        paths[part] = found[0]
    return read_idx(paths["images"]), read_idx(paths["labels"])


def _fashion_mnist_examples(config):
    """In-memory uint8 images (with a channel axis) and int32 labels; the test set
    is the validation set."""
    splits = []
    for prefix in ("train", "t10k"):
        images, labels = fashion_mnist_split(config.fashion_mnist_dir, prefix)
        splits.append(data_lib.Examples((images[..., None], labels.astype(np.int32)),
                                        count=len(labels)))
    return (splits[0], splits[1], list(FASHION_MNIST_CLASSES),
            f"Fashion-MNIST from {config.fashion_mnist_dir}")


IMAGE_FOLDERS = class_folders.FolderKind(
    data="image", items="images", class_word="class", extensions=IMAGE_EXTENSIONS,
    policy_key="bad_images")


def check_image(path):
    """``path`` if it can be read as an image (the header only), else UnusableFile."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.format not in ("JPEG", "PNG", "GIF", "BMP"):
                raise class_folders.UnusableFile(f"is {image.format}, not JPEG/PNG/GIF/BMP")
    except (OSError, UnidentifiedImageError) as error:
        raise class_folders.UnusableFile(
            f"cannot be read as an image ({str(error).splitlines()[0][:120]})") from None
    return path


def list_image_folder(directory, config):
    """The checked files and class names of a folder of class subfolders (from its
    manifest when the folder has not changed since the last scan)."""
    return class_folders.scan(directory, IMAGE_FOLDERS, check_image,
                              bad_files=config.bad_images, cache_dir=config.cache_dir,
                              check_name="image-header", rescan=config.rescan_data)


# Held-out split folders beside train/, in order of preference.
HELD_OUT_FOLDERS = ("validation", "val", "test")


def folder_layout(data_dir):
    """(training folder, held-out folder or None, what was understood).

    ``data_dir/train/`` holding class folders is a split layout: its held-out part is the
    first of validation/, val/ and test/ present (the others are left out, and the note
    says so); with none of them, ``validation_fraction`` of train/ is held out. Without
    such a train/ (a class may be called "train": then it holds images, not folders),
    ``data_dir``'s subfolders are the classes."""
    train_dir = os.path.join(data_dir, "train")
    if not (os.path.isdir(train_dir) and any(entry.is_dir() for entry in os.scandir(train_dir))):
        return data_dir, None, ""
    present = [name for name in HELD_OUT_FOLDERS if os.path.isdir(os.path.join(data_dir, name))]
    if not present:
        return train_dir, None, ("; train/ has no validation/, val/ or test/ beside it: "
                                 "validation_fraction of train/ held out")
    unused = "".join(f", {name}/ not used" for name in present[1:])
    return (train_dir, os.path.join(data_dir, present[0]),
            f"; train/ for training, {present[0]}/ held out{unused}")


def _folder_split(config):
    """Training and validation files as (paths, labels) arrays, the class names, and a note
    on the layout understood and skipped files."""
    train_dir, validation_dir, layout = folder_layout(config.data_dir)
    if validation_dir:
        train = list_image_folder(train_dir, config)
        validation = list_image_folder(validation_dir, config)
        if validation.class_names != train.class_names:
            raise errors.DataError(
                f"{train_dir} and {validation_dir} have different class folders: "
                f"{train.class_names} vs {validation.class_names}")
        return ((np.array(train.paths), train.labels),
                (np.array(validation.paths), validation.labels), train.class_names,
                layout + train.problems_note() + validation.problems_note())
    listing = list_image_folder(train_dir, config)
    # Hold out the same files every run: a seeded permutation within each class.
    generator = np.random.default_rng(config.seed)
    held_out = np.zeros(len(listing.labels), bool)
    for label in range(len(listing.class_names)):
        members = np.flatnonzero(listing.labels == label)
        count = int(round(len(members) * config.validation_fraction))
        held_out[generator.permutation(members)[:count]] = True
    paths = np.array(listing.paths)
    return ((paths[~held_out], listing.labels[~held_out]),
            (paths[held_out], listing.labels[held_out]), listing.class_names,
            layout + listing.problems_note())


def _folder_examples(config):
    train_files, validation_files, class_names, problems = _folder_split(config)

    def load(path, label):
        image, usable = decode_checked(tf.io.read_file(path), path, config.image_size,
                                       config.channels, config.bad_images)
        return image, tf.where(usable, label, -1)

    def examples(files):
        return data_lib.Examples(files, count=len(files[1]), load=load, usable=_usable)

    return (examples(train_files), examples(validation_files), class_names,
            f"image folder {config.data_dir}{problems}")


TFRECORD_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
}


def _scan_tfrecords(pattern, config):
    """The sorted files matching ``pattern`` and the records each holds, with every label
    checked: read from the set's manifest while the files are unchanged (one scan, on the
    first run or by make prepare-data), else counted and checked now."""
    files = sorted(glob.glob(pattern))
    if not files:
        raise errors.DataError(f"no TFRecord files match {pattern!r}")
    content, _ = manifests.load_or_scan(
        config.cache_dir, "tfrecords", {"files": [os.path.abspath(name) for name in files]},
        lambda: manifests.file_stamps(files), lambda: _count_records(files),
        rescan=config.rescan_data)
    for name, low, high in zip(files, content["lowest_labels"], content["highest_labels"]):
        for label in (low, high):
            if label is not None and not 0 <= label < config.num_classes:
                raise errors.DataError(
                    f"TFRecord file {name} holds label {label}, outside 0..{config.num_classes - 1}"
                    f" (num_classes={config.num_classes})")
    if sum(content["counts"]) == 0:
        raise errors.DataError(f"TFRecord files {pattern!r} hold no records")
    return files, content["counts"]


def _count_records(files):
    """Records and lowest and highest label of each file, read in parallel."""
    names = tf.constant(files)

    def labels_of(index):
        labels = tf.data.TFRecordDataset(names[index]).map(
            lambda record: tf.io.parse_single_example(
                record, {"image/class/label": TFRECORD_FEATURES["image/class/label"]}
            )["image/class/label"]).batch(1 << 16)
        return labels.map(lambda batch: (index, tf.size(batch, tf.int64),
                                         tf.reduce_min(batch), tf.reduce_max(batch)))

    counts, lowest, highest = [0] * len(files), [None] * len(files), [None] * len(files)
    progress = manifests.Progress(f"counting the records of {len(files)} TFRecord files")
    parts = tf.data.Dataset.range(len(files)).interleave(
        labels_of, cycle_length=4, num_parallel_calls=4, deterministic=False)
    try:
        for index, count, low, high in parts.as_numpy_iterator():
            counts[index] += int(count)
            lowest[index] = int(low) if lowest[index] is None else min(lowest[index], int(low))
            highest[index] = int(high) if highest[index] is None else max(highest[index],
                                                                         int(high))
            progress.advance(int(count))
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
        for index, name in enumerate(files):  # which one: read them one by one
            try:
                for _ in labels_of(index):
                    pass
            except (tf.errors.DataLossError, tf.errors.InvalidArgumentError):
                break
        raise errors.DataError(f"TFRecord file {name} cannot be read as tf.train.Example "
                               "records with an integer image/class/label: "
                               f"{error.message.splitlines()[0][:300]}") from None
    progress.finish()
    return {"counts": counts, "lowest_labels": lowest, "highest_labels": highest}


def _parse_example(record, config, name):
    """(image, label) of a serialized record; ``name`` says which record it is, for the
    bad-image policy (label -1 marks an undecodable image under --bad_images=skip)."""
    features = tf.io.parse_single_example(record, TFRECORD_FEATURES)
    image, usable = decode_checked(features["image/encoded"], name, config.image_size,
                                   config.channels, config.bad_images)
    return image, tf.where(usable, tf.cast(features["image/class/label"], tf.int32), -1)


def _usable(images, labels):
    return labels >= 0


def _tfrecord_streams(config, shard, prepare):
    """The training stream (each worker reads its own files: toolkit.record_stream) and
    the validation examples (sharded by record) of a TFRecord set."""
    files, counts = _scan_tfrecords(config.train_files, config)
    train = record_stream.RecordStream(
        files, counts, lambda record, name: _parse_example(record, config, name), shard,
        config.batch_size_per_worker, config.seed, config.shuffle_buffer,
        config.max_steps_per_epoch, prepare, steps_per_update=config.backward_passes_per_step,
        usable=_usable)
    validation_files, validation_counts = _scan_tfrecords(config.validation_files, config)
    validation = data_lib.Examples(tf.data.TFRecordDataset(validation_files),
                                   count=sum(validation_counts),
                                   load=lambda record: _parse_example(
                                       record, config, f"a record of {config.validation_files}"),
                                   usable=_usable)
    return train, validation, f"TFRecords {config.train_files} ({train.layout})"


def decode_checked(encoded, name, image_size, channels, bad_images):
    """(uint8 image, True) for encoded image bytes. Bytes cut short (the usual damage: a
    truncated copy or download; see is_complete) are unusable: with
    ``bad_images="error"`` an error that names them (``name``: the file, or the record),
    with ``"skip"`` (a blank image, False), and ``name`` noted for summary.json. Decoding
    stays in the graph: going through Python for every image cost 2.5 ms an image
    (measured, make bench-data), Python is called only for the unusable ones. Bytes
    damaged in the middle fail inside TensorFlow's decoder, without the file's name."""
    def unusable(name_tensor):
        name = name_tensor.numpy().decode()
        why = "cannot be decoded (cut short: no end-of-image marker)"
        if bad_images == "error":
            raise ValueError(f"{data_lib.DATA_ERROR_MARK}image {name} {why}; "
                             "--bad_images=skip leaves such files out")
        data_lib.note_unusable_file(name, why)
        return tf.zeros([image_size, image_size, channels], tf.uint8), False

    def placeholder():
        image, usable = tf.py_function(unusable, [name], (tf.uint8, tf.bool))
        return (tf.ensure_shape(image, [image_size, image_size, channels]),
                tf.ensure_shape(usable, []))

    return tf.cond(is_complete(encoded),
                   lambda: (decode_image(encoded, image_size, channels), tf.constant(True)),
                   placeholder)


def is_complete(encoded):
    """False for PNG bytes that do not end with the IEND chunk and for JPEG bytes with no
    end-of-image marker (FF D9) in their last 64 bytes (some writers add bytes after it);
    True for anything else (GIF, BMP are left to the decoder)."""
    length = tf.strings.length(encoded)
    png = tf.strings.substr(encoded, 0, 8) == b"\x89PNG\r\n\x1a\n"
    png_end = tf.strings.substr(encoded, tf.maximum(length - 8, 0), 8) == b"IEND\xaeB`\x82"
    jpeg = tf.strings.substr(encoded, 0, 2) == b"\xff\xd8"
    tail = tf.strings.bytes_split(tf.strings.substr(encoded, tf.maximum(length - 64, 0), 64))
    jpeg_end = tf.reduce_any(tf.logical_and(tail[:-1] == b"\xff", tail[1:] == b"\xd9"))
    return tf.where(png, png_end, tf.where(jpeg, jpeg_end, True))


def decode_image(encoded, image_size, channels):
    """Encoded JPEG/PNG bytes to a uint8 ``image_size`` square with ``channels`` channels."""
    image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
    image = tf.image.resize(image, (image_size, image_size), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def to_model_input(images, image_size, channels):
    """uint8 images of any size and channel count to the model's float input in [0, 1]."""
    images = tf.convert_to_tensor(images)
    if images.shape[-1] != channels:
        images = (tf.image.grayscale_to_rgb(images) if channels == 3
                  else tf.image.rgb_to_grayscale(images))
    images = tf.cast(images, tf.float32)
    if images.shape[-3] != image_size or images.shape[-2] != image_size:
        images = tf.image.resize(images, (image_size, image_size), antialias=True)
    return images / 255.0


def augment(image, seed, shift_fraction):
    """Random horizontal flip and a shift of up to ``shift_fraction`` of the side (pad,
    then crop), drawn from ``seed`` (one per example, see toolkit.data.TrainingStream)."""
    size = image.shape[0]
    pad = max(int(size * shift_fraction), 1) if shift_fraction else 0
    flip_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    if pad == 0:
        return image
    image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    return tf.image.stateless_random_crop(image, (size, size, image.shape[-1]), crop_seed)


def check_data(config: ImageConfig) -> None:
    """Before launch: the configured data exists and its labels and files are valid."""
    resolved(config)
    if config.data_dir:
        _folder_split(config)
    elif config.train_files:
        _scan_tfrecords(config.train_files, config)
        _scan_tfrecords(config.validation_files, config)
    else:
        fashion_mnist_split(config.fashion_mnist_dir, "t10k")


# ---------------------------------------------------------------------------- model


def _batch_norm():
    # Momentum 0.9 rather than Keras' 0.99: the moving statistics then track the weights
    # within a few dozen steps, so validation early in a short run is meaningful.
    return keras.layers.BatchNormalization(momentum=0.9)


def _residual_block(inputs, filters, stride):
    """Two 3x3 conv/batch-norm layers with an identity (or 1x1 projection) shortcut."""
    shortcut = inputs
    if stride != 1 or inputs.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(filters, 1, strides=stride, use_bias=False)(inputs)
        shortcut = _batch_norm()(shortcut)
    x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(inputs)
    x = _batch_norm()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
    x = _batch_norm()(x)
    return keras.layers.ReLU()(x + shortcut)


def build_model(config: ImageConfig, data: data_lib.Data) -> keras.Model:
    config, _ = resolved(config)
    inputs = keras.Input((config.image_size, config.image_size, config.channels), name="image")
    x = keras.layers.Conv2D(config.width, 3, padding="same", use_bias=False)(inputs)
    x = _batch_norm()(x)
    x = keras.layers.ReLU()(x)
    for stage in range(config.stages):
        for block in range(config.blocks_per_stage):
            # The first block of every stage but the first halves the resolution.
            stride = 2 if stage > 0 and block == 0 else 1
            x = _residual_block(x, config.width * 2 ** stage, stride)
    x = keras.layers.GlobalAveragePooling2D()(x)
    # float32 logits even under mixed precision, for a stable softmax and loss.
    logits = keras.layers.Dense(len(data.class_names), dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name="resnet")


# --------------------------------------------------------------------------- export


class ImageServing(classification.ClassifierServing):
    """Serving functions: encoded image files, or uint8 pixel arrays of any size."""

    def __init__(self, config, model, class_names):
        super().__init__(model, class_names)
        self.image_size = config.image_size
        self.channels = config.channels

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve_encoded(self, images):
        """JPEG/PNG/GIF/BMP file contents, one per example."""
        decoded = tf.map_fn(lambda encoded: decode_image(encoded, self.image_size, self.channels),
                            images, fn_output_signature=tf.uint8)
        return self.classify(to_model_input(decoded, self.image_size, self.channels))

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, None], tf.uint8,
                                                name="pixels")])
    def serve_pixels(self, pixels):
        """uint8 images, batch x height x width x (1 or 3) channels; resized as needed."""
        images = tf.image.resize(tf.cast(pixels, tf.float32), (self.image_size, self.image_size),
                                 antialias=True)
        images = tf.cast(tf.round(images), tf.uint8)
        images = tf.cond(tf.shape(images)[-1] == self.channels,
                         lambda: tf.cast(images, tf.float32),
                         lambda: self._convert_channels(images))
        images = tf.ensure_shape(images / 255.0,
                                 [None, self.image_size, self.image_size, self.channels])
        return self.classify(images)

    def _convert_channels(self, images):
        if self.channels == 3:
            return tf.cast(tf.image.grayscale_to_rgb(images[..., :1]), tf.float32)
        return tf.cast(tf.image.rgb_to_grayscale(images[..., :3]), tf.float32)

    def signatures(self):
        return {"serving_default": self.serve_encoded, "serving_pixels": self.serve_pixels}


def build_serving(config: ImageConfig, model: keras.Model, data: data_lib.Data) -> ImageServing:
    config, _ = resolved(config)
    return ImageServing(config, model, data.class_names)


RECIPE = recipe_lib.Recipe(
    name="image",
    description="image classification with a small ResNet (default: Fashion-MNIST)",
    config_class=ImageConfig,
    build_data=build_data,
    build_model=build_model,
    build_loss=classification.build_loss,
    build_metrics=classification.build_metrics,
    build_serving=build_serving,
    check_data=check_data,
    choose_epochs=choose_epochs,
    tiny_overrides={"width": "8", "stages": "2", "batch_size_per_worker": "32",
                    "max_train_examples": "512", "max_validation_examples": "128"},
)
