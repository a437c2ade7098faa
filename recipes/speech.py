"""Keyword spotting: a small CNN on log-mel spectrograms of one-second clips.

Data (``--data_dir``): the Speech Commands layout, one folder per label of WAV clips up to
one second; ``validation_list.txt`` and ``testing_list.txt`` (paths relative to the
folder) are honoured when present, otherwise clips are split by speaker (the file-name
part before ``_nohash_``) with ``validation_fraction`` and ``test_fraction``;
``_background_noise_`` WAVs, when present, are mixed into training clips. Any sample rate
is accepted (clips are resampled to 16 kHz once, into ``cache_dir``). Clips that cannot be
decoded, are empty or are not mono are listed and skipped (``--bad_clips=skip``) or stop
the run (``--bad_clips=error``).

Default: a data set spoken by three text-to-speech engines, generated locally (see
recipes/speech_synthesis.py), split by speaker so that validation and test voices are never
heard in training. ``summary.json`` then reports test accuracy per engine.

Features are TensorFlow ops in the ``tf.data`` pipeline (``tf.audio.decode_wav``,
``tf.signal.stft``, a mel matrix, log), the same function the exported model runs on raw
waveforms. Training adds waveform augmentation (time shift, noise, gain) and SpecAugment
(frequency and time masks).
"""

import dataclasses
import hashlib
import os
import typing
import wave

import numpy as np
import tensorflow as tf
import tf_keras as keras

from recipe_helpers import class_folders
from recipe_helpers import classification
from recipe_helpers import speech_synthesis
from toolkit import config as config_lib
from toolkit import data as data_lib
from toolkit import errors
from toolkit import recipe as recipe_lib

SAMPLE_RATE = 16000
BACKGROUND_NOISE_FOLDER = "_background_noise_"


@dataclasses.dataclass
class SpeechConfig(classification.ClassifierConfig):
    # 0 = choose_epochs: 40 for the generated clips (4,800 training clips; 7.5-10 s an
    # epoch with NP=2 on 2 CPU cores in float32, depending on the machine's day). Before
    # the foreign voices and band normalisation, 80 epochs over half the clips (2
    # variations) gave 0.863 and 0.919 against 0.902 for 40 over all: more voice
    # variation for the same steps is steadier.
    epochs: int = 0
    batch_size_per_worker: int = 32
    base_learning_rate: float = 2e-3  # Adam, for one worker; x world size
    warmup_epochs: float = 2.0
    # float32, not the toolkit's auto (bfloat16 where the CPU or GPU has it): on an AMX
    # CPU, seed 42, bfloat16 reached 0.910 on the unseen voices (festival's ked 0.69)
    # against 0.961 (ked 0.89) in float32 (2026-11-29).
    mixed_precision: typing.Literal["auto", "true", "false"] = "false"

    # Data. Empty data_dir = the generated text-to-speech data set.
    data_dir: str = ""
    words: str = ""  # comma-separated labels to use; "" = every label folder
    validation_fraction: float = 0.15  # of speakers, when the folder has no list files
    test_fraction: float = 0.15
    bad_clips: typing.Literal["skip", "error"] = "skip"
    tts_words: str = ",".join(speech_synthesis.DEFAULT_WORDS)  # words the generator speaks
    tts_espeak_speakers: int = 70  # espeak accent x variant voices (flite, festival: all)
    tts_variations: int = 4  # speed/pitch settings per espeak voice (4x for the others)
    tts_seed: int = 42  # the same seed gives the same clips

    # Features: 25 ms windows every 10 ms, 40 mel bands from 20 Hz to 7.6 kHz.
    clip_seconds: float = 1.0
    window_samples: int = 400
    hop_samples: int = 160
    mel_bands: int = 40
    # band_mean: each mel band's mean over the clip is subtracted (cepstral mean
    # normalisation on the mel scale), which removes what a voice or a channel adds to
    # every frame alike (spectral tilt, microphone colour): festival's unseen ked voice
    # went from 0.57 to 0.89 with it. none: the plain log-mel.
    band_normalisation: typing.Literal["band_mean", "none"] = "band_mean"
    # Augmentation (training only).
    time_shift_seconds: float = 0.1  # random shift of the clip within its window
    noise_probability: float = 0.8  # chance of mixing in noise
    max_noise_level: float = 0.1  # noise amplitude relative to full scale
    gain_db: float = 6.0  # random gain in [-gain_db, +gain_db]
    frequency_warp: float = 0.15  # random mel-axis stretch, +-15 %, mimics other speakers
    frequency_masks: int = 2  # SpecAugment masks of up to 8 mel bands
    time_masks: int = 2  # SpecAugment masks of up to 10 frames

    # Model.
    model: typing.Literal["dscnn", "cnn"] = "dscnn"  # depthwise-separable or plain CNN
    width: int = 64  # filters per layer
    blocks: int = 4  # separable (or plain) conv blocks after the first conv
    # The first strided_blocks blocks halve time and frequency again (stride 2), so the
    # rest work on 25 x 10 maps instead of 49 x 20: 94 ms a step instead of 161 (NP=2,
    # this 2-core machine); over seeds 42, 1 and 2 the unseen-voice accuracy was the same
    # within the spread of seeds (README, speech).
    strided_blocks: int = 1
    dropout: float = 0.2

    def validate(self) -> None:
        super().validate()
        for key in ("validation_fraction", "test_fraction"):
            config_lib.require(self, key, 0 <= getattr(self, key) < 0.5, "a number in [0, 0.5)")
        config_lib.require(self, "clip_seconds", 0.1 <= self.clip_seconds <= 10,
                           "a number of seconds from 0.1 to 10")
        config_lib.require(self, "mel_bands", 8 <= self.mel_bands <= 128, "8 to 128")
        config_lib.require(self, "width", self.width >= 4, "an integer >= 4")
        config_lib.require(self, "blocks", self.blocks >= 1, "an integer >= 1")
        config_lib.require(self, "strided_blocks", 0 <= self.strided_blocks <= self.blocks,
                           f"an integer from 0 to blocks ({self.blocks})")
        config_lib.require(self, "dropout", 0 <= self.dropout < 1, "a number in [0, 1)")
        config_lib.require(self, "frequency_warp", 0 <= self.frequency_warp < 0.5,
                           "a number in [0, 0.5)")
        config_lib.require(self, "tts_espeak_speakers", self.tts_espeak_speakers >= 10,
                           "an integer >= 10")
        config_lib.require(self, "tts_variations", self.tts_variations >= 1, "an integer >= 1")


# -------------------------------------------------------------------------- features


def clip_samples(config):
    return int(round(config.clip_seconds * SAMPLE_RATE))


def fit_length(waveform, length):
    """Centre a 1-D waveform in ``length`` samples: zero-pad both sides or crop both ends.

    Centred, not padded at the end: a word trimmed tight (the generated clips are) then
    sits in the middle of the window, where training's time shift (up to
    ``time_shift_seconds``) moves it without cutting its beginning off.
    """
    size = tf.shape(waveform)[0]
    start = tf.maximum((size - length) // 2, 0)
    waveform = waveform[start:start + length]
    missing = length - tf.shape(waveform)[0]
    return tf.ensure_shape(tf.pad(waveform, [[missing // 2, missing - missing // 2]]), [length])


def log_mel(waveforms, config):
    """Log-mel spectrogram of float waveforms in [-1, 1]: [..., samples] -> [..., frames,
    mel_bands]. TensorFlow ops only, so the same code runs in tf.data and in the export."""
    fft_length = 1 << (config.window_samples - 1).bit_length()
    spectrum = tf.signal.stft(waveforms, frame_length=config.window_samples,
                              frame_step=config.hop_samples, fft_length=fft_length)
    power = tf.math.square(tf.abs(spectrum))
    mel_matrix = tf.signal.linear_to_mel_weight_matrix(
        num_mel_bins=config.mel_bands, num_spectrogram_bins=fft_length // 2 + 1,
        sample_rate=SAMPLE_RATE, lower_edge_hertz=20.0, upper_edge_hertz=7600.0)
    return tf.math.log(tf.tensordot(power, mel_matrix, 1) + 1e-6)


def normalised(features, config):
    """``features`` [..., frames, bands] after ``band_normalisation``; applied after any
    augmentation, in training, validation and the export alike."""
    if config.band_normalisation == "band_mean":
        return features - tf.reduce_mean(features, axis=-2, keepdims=True)
    return features


def frequency_warp(features, max_warp, seed):
    """Stretch or squeeze the mel axis by a random factor in [1 - max_warp, 1 + max_warp].

    A cheap stand-in for vocal tract length perturbation (Jaitly & Hinton, 2013): a longer
    or shorter vocal tract moves formants up or down in frequency, so this makes one voice
    sound like several speakers.
    """
    bands = features.shape[-1]
    factor = tf.random.stateless_uniform([], seed, 1.0 - max_warp, 1.0 + max_warp)
    warped_bands = tf.cast(tf.round(bands * factor), tf.int32)
    warped = tf.image.resize(features[..., None], [tf.shape(features)[0], warped_bands])[..., 0]
    warped = warped[:, :bands]
    padding = bands - tf.shape(warped)[1]
    # Bands pushed past the top are dropped; missing top bands repeat the highest one.
    warped = tf.concat([warped, tf.repeat(warped[:, -1:], padding, axis=1)], axis=1)
    return tf.ensure_shape(warped, features.shape)


def spec_augment(features, config, seed):
    """SpecAugment (Park et al., 2019): zero random bands of mel bins and of frames, after
    a random frequency warp; the random numbers come from ``seed``."""
    seeds = iter(tf.unstack(tf.random.experimental.stateless_split(
        seed, 1 + config.frequency_masks + config.time_masks)))
    warp_seed = next(seeds)
    if config.frequency_warp:
        features = frequency_warp(features, config.frequency_warp, warp_seed)
    frames, bands = tf.shape(features)[0], tf.shape(features)[1]
    for _ in range(config.frequency_masks):
        features = _mask(features, bands, 8, axis=1, seed=next(seeds))
    for _ in range(config.time_masks):
        features = _mask(features, frames, 10, axis=0, seed=next(seeds))
    return features


def _mask(features, size, max_width, axis, seed):
    width_seed, start_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    width = tf.random.stateless_uniform([], width_seed, 0, max_width + 1, tf.int32)
    start = tf.random.stateless_uniform([], start_seed, 0, tf.maximum(size - width, 1),
                                        tf.int32)
    positions = tf.range(size)
    keep = tf.logical_or(positions < start, positions >= start + width)
    keep = tf.cast(keep, features.dtype)
    return features * (keep[:, None] if axis == 0 else keep[None, :])


def augment_waveform(waveform, noises, config, seed):
    """Random time shift, noise mixing and gain on one clip of fixed length; the random
    numbers come from ``seed``."""
    shift_seed, noise_seed, level_seed, mix_seed, gain_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 5))
    length = tf.shape(waveform)[0]
    limit = int(config.time_shift_seconds * SAMPLE_RATE)
    shift = tf.random.stateless_uniform([], shift_seed, -limit, limit + 1, tf.int32)
    waveform = tf.roll(waveform, shift, axis=0)
    # Zero what wrapped around, so a shift moves the word instead of rotating it.
    positions = tf.range(length)
    waveform *= tf.cast(tf.logical_and(positions >= shift, positions < length + shift),
                        tf.float32)
    if noises is not None:
        noise = _noise_segment(noises, length, noise_seed)
    else:
        noise = tf.random.stateless_normal([length], noise_seed)
    level = tf.random.stateless_uniform([], level_seed, 0, config.max_noise_level)
    mix = tf.cast(tf.random.stateless_uniform([], mix_seed) < config.noise_probability,
                  tf.float32)
    waveform += mix * level * noise / (tf.math.reduce_std(noise) + 1e-6) * 0.3
    gain = 10.0 ** (tf.random.stateless_uniform([], gain_seed, -config.gain_db,
                                                config.gain_db) / 20.0)
    return tf.clip_by_value(waveform * gain, -1.0, 1.0)


def _noise_segment(noises, length, seed):
    """A random ``length``-sample window of a random background-noise recording."""
    index_seed, start_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    index = tf.random.stateless_uniform([], index_seed, 0, noises.nrows(), tf.int64)
    noise = noises[index]
    start = tf.random.stateless_uniform([], start_seed, 0,
                                        tf.maximum(tf.shape(noise)[0] - length, 1), tf.int32)
    return fit_length(noise[start:], length)


# ----------------------------------------------------------------------------- data


@dataclasses.dataclass
class Clip:
    relative: str  # <label>/<file>.wav, as the list files name it
    path: str  # the file to decode (a resampled copy for other sample rates)
    label: int
    speaker: str


def speaker_of(file_name):
    """Speech Commands names clips ``<speaker>_nohash_<n>.wav``; else the whole stem."""
    stem = os.path.splitext(file_name)[0]
    return stem.split("_nohash_")[0]


def inspect_wav(path):
    """Return (problem or None, sample rate, frames) from the WAV header and size."""
    try:
        with wave.open(path, "rb") as reader:
            channels, rate, frames = (reader.getnchannels(), reader.getframerate(),
                                      reader.getnframes())
            width = reader.getsampwidth()
            reader.readframes(min(frames, 16))
    except (wave.Error, EOFError, OSError) as error:
        return f"cannot be decoded ({error})", 0, 0
    if frames == 0:
        return "is empty", rate, 0
    if channels != 1:
        return f"has {channels} channels, not mono", rate, frames
    if width != 2:
        return f"has {8 * width}-bit samples; 16-bit PCM is supported", rate, frames
    return None, rate, frames


def resampled_path(path, rate, cache_dir):
    """A 16 kHz copy of the clip at ``path`` (made once, in ``cache_dir``)."""
    status = os.stat(path)
    key = hashlib.sha256(f"{os.path.abspath(path)}:{status.st_size}:{status.st_mtime_ns}"
                         .encode()).hexdigest()[:20]
    target = os.path.join(cache_dir, "resampled-16k", key + ".wav")
    if os.path.exists(target):
        return target
    import math

    from scipy import signal
    from scipy.io import wavfile

    _, samples = wavfile.read(path)
    divisor = math.gcd(SAMPLE_RATE, rate)
    resampled = signal.resample_poly(samples.astype(np.float64), SAMPLE_RATE // divisor,
                                     rate // divisor)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    temporary = f"{target}.partial-{os.getpid()}.wav"
    wavfile.write(temporary, SAMPLE_RATE, np.clip(np.round(resampled), -32768, 32767)
                  .astype(np.int16))
    os.replace(temporary, target)
    return target


SPEECH_FOLDERS = class_folders.FolderKind(
    data="speech", items="clips", class_word="label", extensions=(".wav",),
    policy_key="bad_clips")


def usable_clip(path, cache_dir):
    """The 16 kHz clip to read for ``path`` (a resampled copy for other rates), or
    UnusableFile saying why it cannot be used."""
    problem, rate, _ = inspect_wav(path)
    if problem:
        raise class_folders.UnusableFile(problem)
    return path if rate == SAMPLE_RATE else resampled_path(path, rate, cache_dir)


def scan_folder(config, data_dir):
    """List the labelled clips of a Speech Commands-style folder, checking each one.

    Returns (clips, label names, background noise paths, report). Problem clips are
    listed in the report and skipped, or raise with ``--bad_clips=error``.
    """
    wanted = [word.strip() for word in config.words.split(",") if word.strip()]
    listing = class_folders.scan(
        data_dir, SPEECH_FOLDERS, lambda path: usable_clip(path, config.cache_dir),
        bad_files=config.bad_clips, classes=wanted, ignore={BACKGROUND_NOISE_FOLDER},
        cache_dir=config.cache_dir, check_name=f"clip-16k-{SAMPLE_RATE}",
        rescan=config.rescan_data)
    clips = [Clip(relative, path, int(label), speaker_of(os.path.basename(relative)))
             for relative, path, label in zip(listing.relative, listing.paths, listing.labels)]
    resampled = sum(1 for clip in clips if clip.path != os.path.join(data_dir, clip.relative))
    noise_dir = os.path.join(data_dir, BACKGROUND_NOISE_FOLDER)
    noises = []
    if os.path.isdir(noise_dir):
        for entry in sorted(os.listdir(noise_dir)):
            if not entry.lower().endswith(".wav"):
                continue
            try:
                noises.append(usable_clip(os.path.join(noise_dir, entry), config.cache_dir))
            except class_folders.UnusableFile:
                continue  # a broken noise file only means less noise variety
    report = {"clips": len(clips), "skipped": len(listing.problems),
              "skipped_examples": listing.problems[:5], "resampled": resampled,
              "background_noise_files": len(noises),
              **clip_lengths([clip.path for clip in clips], clip_samples(config))}
    return clips, listing.class_names, noises, report


SAMPLED_CLIPS = 500  # clips whose headers tell how many are longer or shorter than a clip


def clip_lengths(paths, length):
    """How many of up to SAMPLED_CLIPS clips, evenly spread over ``paths`` (16 kHz), are
    longer than ``length`` samples (they are centre-cropped to it) or shorter (zero-padded
    at the end), and the longest."""
    sample = paths[::max(1, len(paths) // SAMPLED_CLIPS)][:SAMPLED_CLIPS]
    frames = []
    for path in sample:
        with wave.open(path, "rb") as reader:
            frames.append(reader.getnframes())
    return {"sampled_clips": len(frames),
            "sampled_longer": sum(count > length for count in frames),
            "sampled_shorter": sum(count < length for count in frames),
            "longest_seconds": round(max(frames, default=0) / SAMPLE_RATE, 2)}


def lengths_note(report, config):
    """What happens to clips that are not ``clip_seconds`` long, for the description."""
    if not report["sampled_longer"]:
        return ""
    return (f"; {report['sampled_longer']} of {report['sampled_clips']} sampled clips are "
            f"longer than {config.clip_seconds:g} s (up to {report['longest_seconds']:g} s): "
            f"their middle {config.clip_seconds:g} s is used (set --clip_seconds to keep more)")


def split_clips(clips, data_dir, config):
    """Split into train/validation/test by the list files, or by speaker."""
    lists = {}
    for split, name in (("validation", "validation_list.txt"), ("test", "testing_list.txt")):
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            with open(path) as stream:
                lists[split] = {line.strip() for line in stream if line.strip()}
    splits = {"train": [], "validation": [], "test": []}
    for clip in clips:
        relative = clip.relative
        if lists:
            split = ("validation" if relative in lists.get("validation", ()) else
                     "test" if relative in lists.get("test", ()) else "train")
        else:
            # A stable function of the speaker only: the same speaker is never in two splits.
            position = int(hashlib.sha256(clip.speaker.encode()).hexdigest()[:8], 16) / 2 ** 32
            split = ("validation" if position < config.validation_fraction else
                     "test" if position < config.validation_fraction + config.test_fraction
                     else "train")
        splits[split].append(clip)
    return splits


def resolve_data_dir(config):
    """The user's folder, or the generated TTS data set (generated on first use)."""
    if config.data_dir:
        return config.data_dir, f"speech folder {config.data_dir}"
    words = [word.strip() for word in config.tts_words.split(",") if word.strip()]
    directory = speech_synthesis.dataset_dir(config.cache_dir, words, config.tts_espeak_speakers,
                                             config.tts_variations, config.tts_seed)
    speech_synthesis.generate(directory, words, config.tts_espeak_speakers, config.tts_variations,
                              config.tts_seed, workers=len(os.sched_getaffinity(0)))
    return directory, f"generated text-to-speech clips in {directory}"


def clip_examples(clips, config):
    """The clips as pipeline examples: (path, label) listed, decoded to fixed-length
    float waveforms on load."""
    length = clip_samples(config)

    def load(path, label):
        audio, _ = tf.audio.decode_wav(tf.io.read_file(path), desired_channels=1)
        return fit_length(audio[:, 0], length), label

    listing = (np.array([clip.path for clip in clips]),
               np.array([clip.label for clip in clips], np.int32))
    return data_lib.Examples(listing, count=len(clips), load=load)


def _noise_tensor(noise_paths):
    if not noise_paths:
        return None
    decoded = [tf.audio.decode_wav(tf.io.read_file(path), desired_channels=1)[0][:, 0]
               for path in noise_paths]
    return tf.ragged.stack(decoded)


def _features(waveform, label, config):
    return normalised(log_mel(waveform, config), config)[..., None], label


def _required_splits(splits, data_dir):
    for split in ("train", "validation"):
        if not splits[split]:
            raise errors.DataError(f"{data_dir}: the {split} split is empty; add clips or "
                                   "list files, or change validation_fraction")


def build_data(config: SpeechConfig, shard: data_lib.Shard) -> data_lib.Data:
    data_dir, source = resolve_data_dir(config)
    clips, labels, noise_paths, report = scan_folder(config, data_dir)
    splits = split_clips(clips, data_dir, config)
    _required_splits(splits, data_dir)
    noises = _noise_tensor(noise_paths)

    def train_example(waveform, label, seed):
        waveform_seed, features_seed = tf.unstack(
            tf.random.experimental.stateless_split(seed, 2))
        waveform = augment_waveform(waveform, noises, config, waveform_seed)
        features = normalised(spec_augment(log_mel(waveform, config), config, features_seed),
                              config)
        return features[..., None], label

    train = data_lib.training_stream(
        clip_examples(splits["train"], config), shard=shard, config=config,
        maximum=config.max_train_examples, prepare=train_example)
    validation, validation_count = data_lib.evaluation_pipeline(
        clip_examples(splits["validation"], config), shard=shard, config=config,
        maximum=config.max_validation_examples,
        prepare=lambda waveform, label: _features(waveform, label, config))
    skipped = (f"; skipped {report['skipped']} bad clips, e.g. "
               + "; ".join(report["skipped_examples"][:3])) if report["skipped"] else ""
    return data_lib.Data(
        train=train, validation=validation, validation_examples=validation_count,
        class_names=labels,
        description=(f"{source}: {len(splits['train'])} train / {len(splits['validation'])} "
                     f"validation / {len(splits['test'])} test clips, "
                     f"{report['resampled']} resampled, {report['background_noise_files']} "
                     f"noise files{lengths_note(report, config)}{skipped}"),
    )


def check_data(config: SpeechConfig) -> None:
    """Before launch: the folder's labels and clips are usable (or the generator's tools
    are installed, for the default data set)."""
    if not config.data_dir:
        missing = speech_synthesis.missing_tools()
        if missing:
            raise errors.DataError(
                "generating the default speech data set needs espeak-ng, flite, festival and "
                f"sox; missing: {', '.join(missing)}. Run make system-packages (a checkout "
                "set up before these voices were added needs it too), or pass --data_dir")
        return
    clips, _, _, _ = scan_folder(config, config.data_dir)
    _required_splits(split_clips(clips, config.data_dir, config), config.data_dir)


# ---------------------------------------------------------------------------- model


def build_model(config: SpeechConfig, data: data_lib.Data) -> keras.Model:
    frames = 1 + (clip_samples(config) - config.window_samples) // config.hop_samples
    inputs = keras.Input((frames, config.mel_bands, 1), name="log_mel")
    # Per-utterance normalisation inside the model, so the export needs no statistics.
    x = keras.layers.LayerNormalization(axis=[1, 2, 3], name="normalise")(inputs)
    x = keras.layers.Conv2D(config.width, (10, 4), strides=2, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    x = keras.layers.ReLU()(x)
    for index in range(config.blocks):
        strides = 2 if index < config.strided_blocks else 1
        if config.model == "dscnn":
            # Depthwise-separable block (Zhang et al., 2017, "Hello Edge").
            x = keras.layers.DepthwiseConv2D(3, strides=strides, padding="same",
                                             use_bias=False)(x)
            x = keras.layers.BatchNormalization(momentum=0.9)(x)
            x = keras.layers.ReLU()(x)
            x = keras.layers.Conv2D(config.width, 1, use_bias=False)(x)
        else:
            x = keras.layers.Conv2D(config.width, 3, strides=strides, padding="same",
                                    use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=0.9)(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(config.dropout)(x)
    logits = keras.layers.Dense(len(data.class_names), dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name=f"kws_{config.model}")


# ---------------------------------------------------------------- reports and export


def test_report(config: SpeechConfig, model: keras.Model,
                data: data_lib.Data) -> typing.Dict[str, typing.Any]:
    """Accuracy on the held-out test speakers, overall and per group (engine for the
    generated data set: the part of the speaker id before the first '-')."""
    data_dir, _ = resolve_data_dir(config)
    clips, _, _, _ = scan_folder(config, data_dir)
    test = split_clips(clips, data_dir, config)["test"]
    if not test:
        return {}
    features, _ = data_lib.evaluation_pipeline(
        clip_examples(test, config), shard=data_lib.Shard(), config=config,
        prepare=lambda waveform, label: _features(waveform, label, config))
    predictions = np.argmax(model.predict(features, verbose=0), axis=-1)
    labels = np.array([clip.label for clip in test])
    groups = np.array([clip.speaker.split("-")[0] for clip in test])
    report = {"test_clips": len(test), "test_accuracy": float(np.mean(predictions == labels)),
              "test_speakers": len({clip.speaker for clip in test})}
    if len(set(groups)) > 1 or not config.data_dir:
        report["test_accuracy_by_group"] = {
            group: float(np.mean(predictions[groups == group] == labels[groups == group]))
            for group in sorted(set(groups))}
    return report


class SpeechServing(classification.ClassifierServing):
    """Raw 16 kHz float32 waveforms in [-1, 1], [batch, samples] of any length (padded or
    centre-cropped to ``clip_seconds``); label names and probabilities out."""

    def __init__(self, config, model, class_names):
        super().__init__(model, class_names)
        self.config = config

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="waveform")])
    def serve(self, waveform):
        length = clip_samples(self.config)
        fitted = tf.map_fn(lambda one: fit_length(one, length), waveform)
        return self.classify(normalised(log_mel(fitted, self.config), self.config)[..., None])

    def signatures(self):
        return {"serving_default": self.serve}


def build_serving(config: SpeechConfig, model: keras.Model,
                  data: data_lib.Data) -> SpeechServing:
    return SpeechServing(config, model, data.class_names)


# Whole words, centred (fit_length, trim_to_word): at 40 epochs seeds 42, 1, 2, 3 and 4
# reached 0.964-0.978 on the unseen voices, no engine under 0.90, in 348-361 s of
# training alone at seed 42; 50 epochs took 505 s on a slow day (README, speech).
GENERATED_EPOCHS = 40
# A folder of the user's trains at least MIN_STEPS steps, within these epochs.
MIN_STEPS, MIN_EPOCHS, MAX_EPOCHS = 2000, 10, 40


def choose_epochs(config: SpeechConfig, data: data_lib.Data,
                  steps_per_epoch: int) -> typing.Tuple[int, str]:
    if not config.data_dir:
        return GENERATED_EPOCHS, "tuned for the generated clips"
    epochs = min(max(-(-MIN_STEPS // steps_per_epoch), MIN_EPOCHS), MAX_EPOCHS)
    return epochs, (f"{steps_per_epoch} steps per epoch; a folder of your own trains at "
                    f"least {MIN_EPOCHS} epochs and {MIN_STEPS:,} steps (at most "
                    f"{MAX_EPOCHS} epochs); --epochs=N to choose")


RECIPE = recipe_lib.Recipe(
    name="speech",
    description="keyword spotting on log-mel spectrograms (default: generated TTS words)",
    config_class=SpeechConfig,
    build_data=build_data,
    build_model=build_model,
    build_loss=classification.build_loss,
    build_metrics=classification.build_metrics,
    build_serving=build_serving,
    build_reports=test_report,
    check_data=check_data,
    choose_epochs=choose_epochs,
    tiny_overrides={"tts_words": "yes,no", "tts_espeak_speakers": "10", "tts_variations": "1",
                    "width": "8", "blocks": "1", "strided_blocks": "0",
                    "batch_size_per_worker": "4"},
)
