"""The speech recipe: generated data, features, bad clips, two workers, the export."""

import hashlib
import os
import re
import tempfile
import wave

import numpy as np
import pytest
import tensorflow as tf

from helpers import (PROJECT_ROOT, event_scalars, launch, predict_in_fresh_process, read_json,
                     tiny_arguments)
from recipe_helpers import speech_synthesis
from recipes import speech
from toolkit import config as config_lib
from toolkit import data as data_lib
from toolkit import errors

TINY = tiny_arguments("speech")


def write_wav(path, samples, rate=16000, channels=1):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = np.clip(np.round(np.asarray(samples) * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(data.tobytes())


def tone(frequency, seconds=0.5, rate=16000):
    times = np.arange(int(seconds * rate)) / rate
    return 0.5 * np.sin(2 * np.pi * frequency * times)


def file_digests(directory):
    digests = {}
    for root, _, files in os.walk(directory):
        for name in files:
            if name.endswith(".wav"):
                with open(os.path.join(root, name), "rb") as stream:
                    digests[os.path.relpath(os.path.join(root, name), directory)] = (
                        hashlib.sha256(stream.read()).hexdigest())
    return digests


@pytest.mark.timeout(240)
def test_generation_layout_audio_and_determinism(tmp_path, capsys):
    words = ["yes", "go"]
    first = speech_synthesis.generate(str(tmp_path / "a"), words, 10, 1, seed=7, workers=2,
                                      progress_every=0)
    # Progress while generating: what, then a count that grows with a rate, then the end.
    foreign = len(speech_synthesis.FOREIGN_FESTIVAL_VOICES)
    clips = 2 * (10 + 8 * speech_synthesis.SMALL_ENGINE_FACTOR
                 + foreign * speech_synthesis.FOREIGN_VOICE_FACTOR)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith(f"generating {clips} speech clips (2 words x ")
    counts = [int(line.split(": ")[1].split("/")[0]) for line in lines
              if line.startswith("speech clips generated: ") and "/s)" in line]
    assert counts == list(range(1, clips + 1)), lines
    assert re.fullmatch(rf"speech clips generated: {clips} done in \d+ s", lines[-1])
    second = speech_synthesis.generate(str(tmp_path / "b"), words, 10, 1, seed=7, workers=2)
    digests = file_digests(first)
    assert digests == file_digests(second)  # same seed, same bytes
    manifest = read_json(os.path.join(first, "generation.json"))
    engines = {info["engine"] for info in manifest["speakers"].values()}
    assert engines == {"espeak", "flite", "festival"}
    assert len(digests) == manifest["clips"] == clips
    for relative in list(digests)[:40]:
        with wave.open(os.path.join(first, relative)) as reader:
            assert (reader.getframerate(), reader.getnchannels(), reader.getsampwidth()) == (
                16000, 1, 2)
            samples = np.frombuffer(reader.readframes(reader.getnframes()), "<i2")
        assert 0.05 < len(samples) / 16000 < 1.0
        assert np.sqrt(np.mean((samples / 32768.0) ** 2)) > 0.02  # not silence
    # Speakers never cross splits, and every engine is in training.
    listed = {}
    for split, name in (("validation", "validation_list.txt"), ("test", "testing_list.txt")):
        with open(os.path.join(first, name)) as stream:
            for line in stream:
                listed[line.strip()] = split
    speakers = {}
    for relative in digests:
        speakers.setdefault(speech.speaker_of(os.path.basename(relative)), set()).add(
            listed.get(relative, "train"))
    assert all(len(splits) == 1 for splits in speakers.values())
    train_engines = {speaker.split("-")[0] for speaker, splits in speakers.items()
                     if splits == {"train"}}
    assert train_engines == {"espeak", "flite", "festival"}
    # Other languages' voices are accented speakers for training only.
    foreign_speakers = {f"festival-{name}" for name in speech_synthesis.FOREIGN_FESTIVAL_VOICES}
    assert {speaker: speakers[speaker] for speaker in foreign_speakers} == {
        speaker: {"train"} for speaker in foreign_speakers}


def test_trimming_keeps_a_quiet_final_consonant_and_drops_the_pauses():
    generator = np.random.default_rng(0)

    def noise(seconds, level_db):  # white noise at level_db below full scale (RMS)
        return generator.standard_normal(int(seconds * 16000)) * 10 ** (level_db / 20)

    # A diphone voice's pause floor (-45 dB), a 60 ms vowel, 20 ms of closure, a 30 ms
    # release 23 dB below the vowel (ked's "up"), then the floor again.
    vowel = tone(300, 0.06) * 2 * 10 ** (-3 / 20) / np.sqrt(2)
    signal = np.concatenate([noise(0.3, -48), vowel, noise(0.02, -48), noise(0.03, -26),
                             noise(0.3, -48)])
    kept = speech_synthesis.trim_to_word(signal)
    # the vowel, the closure and the release, plus 10 ms on each side
    assert abs(len(kept) / 16000 - 0.13) < 0.011, len(kept) / 16000
    assert np.array_equal(kept, signal[int(0.29 * 16000):int(0.29 * 16000) + len(kept)])


def test_a_generated_word_keeps_its_final_stop():
    # festival's ked voice says "up" as a 60 ms vowel and, 20 ms later, a quiet release;
    # trimmed by loudness alone the clip was 50 ms of vowel.
    voice = speech_synthesis.Voice("festival", "voice_ked_diphone", "festival-ked", "test",
                                   ((1.0, 1.0),))
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "up.wav")
        speech_synthesis._record(voice, "up", 0, path)
        with wave.open(path) as reader:
            samples = np.frombuffer(reader.readframes(reader.getnframes()), "<i2") / 32768.0
    assert len(samples) / 16000 > 0.12
    frames = samples[:len(samples) // 160 * 160].reshape(-1, 160)
    loudness = 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-12)
    # the release: after the vowel has ended (a frame past the loudest one more than 20 dB
    # down), a frame less than 30 dB down again
    peak = int(np.argmax(loudness))
    vowel_end = peak + np.flatnonzero(loudness[peak:] < loudness.max() - 20)
    assert vowel_end.size and loudness[vowel_end[0]:].max() > loudness.max() - 30
    assert np.max(np.abs(samples)) == pytest.approx(10 ** (-3 / 20), abs=0.01)


@pytest.mark.fast
def test_make_setup_installs_every_festival_voice_the_generator_uses():
    with open(os.path.join(PROJECT_ROOT, "Makefile")) as stream:
        makefile = stream.read().replace("\\\n", " ")
    line = next(line for line in makefile.splitlines() if line.startswith("SYSTEM_PACKAGES :="))
    packages = set(line.split(":=")[1].split())
    needed = {package for _, _, package in speech_synthesis.FOREIGN_FESTIVAL_VOICES.values()}
    assert needed <= packages, sorted(needed - packages)


@pytest.mark.fast
def test_a_pure_tone_lands_in_the_right_mel_band():
    config = speech.SpeechConfig()
    mel_edges = tf.signal.linear_to_mel_weight_matrix(
        num_mel_bins=config.mel_bands, num_spectrogram_bins=257, sample_rate=16000,
        lower_edge_hertz=20.0, upper_edge_hertz=7600.0).numpy()
    bin_hertz = np.arange(257) * 16000 / 512
    # Frequencies on FFT bin centres (multiples of 16000 / 512 Hz), so no bin straddles.
    for frequency in (312.5, 1000.0, 4000.0):
        features = speech.log_mel(tf.constant(tone(frequency, 1.0), tf.float32), config).numpy()
        assert features.shape == (98, 40)
        loudest_band = int(np.argmax(features.mean(axis=0)))
        # The band whose triangular filter weighs the tone's frequency most.
        expected = int(np.argmax(mel_edges[int(round(frequency / (16000 / 512)))]))
        assert loudest_band == expected, (frequency, loudest_band, expected)
        peak_hertz = bin_hertz[np.argmax(mel_edges[:, loudest_band])]
        assert abs(peak_hertz - frequency) < 0.15 * frequency


@pytest.mark.fast
def test_band_mean_normalisation_removes_a_voice_or_channel_colouring():
    """A recording through a filter (here a first-order high-pass, like a thin
    microphone or a brighter voice) scales each frequency's power by the same factor in
    every frame: after band_mean normalisation the features barely change."""
    rng = np.random.default_rng(0)
    samples = np.zeros(16000)
    for start, frequency in ((2000, 300.0), (6000, 1200.0), (10000, 3000.0)):
        samples[start:start + 3000] += tone(frequency, 3000 / 16000)
    samples += 0.01 * rng.standard_normal(16000)
    coloured = np.append(samples[0], samples[1:] - 0.9 * samples[:-1])

    def features(waveform, setting):
        config = speech.SpeechConfig(band_normalisation=setting)
        return speech.normalised(speech.log_mel(tf.constant(waveform, tf.float32), config),
                                 config).numpy()

    plain = np.abs(features(samples, "none") - features(coloured, "none")).mean()
    normalised = np.abs(features(samples, "band_mean") - features(coloured, "band_mean")).mean()
    assert normalised < plain / 10, (normalised, plain)


@pytest.mark.fast
def test_the_time_shift_moves_a_short_word_without_cutting_it():
    # A word trimmed tight, as the generated clips are: training's time shift of up to
    # 0.1 s either way must keep all of it in the window.
    config = config_lib.build(speech.SpeechConfig, {"noise_probability": "0", "gain_db": "0"})
    word = tone(440, 0.3)
    fitted = speech.fit_length(tf.constant(word, tf.float32), 16000)
    shifts = set()
    for seed in range(40):
        shifted = speech.augment_waveform(fitted, None, config, tf.constant([seed, 0], tf.int64))
        shifted = shifted.numpy()
        assert np.sum(shifted ** 2) == pytest.approx(np.sum(word ** 2), rel=1e-4), seed
        shifts.add(int(np.flatnonzero(shifted)[0]))
    assert len(shifts) > 20 and max(shifts) - min(shifts) > 2400  # it did move


@pytest.mark.fast
def test_strided_blocks_halve_the_maps_the_later_blocks_work_on():
    def last_map(strided_blocks):
        config = config_lib.build(speech.SpeechConfig, {"strided_blocks": str(strided_blocks)})
        model = speech.build_model(config, data_lib.Data(
            train=None, validation=None, validation_examples=0, class_names=["a", "b"],
            description=""))
        pooled = next(layer for layer in model.layers
                      if type(layer).__name__ == "GlobalAveragePooling2D")
        return tuple(pooled.input.shape[1:3])

    # The first convolution's stride 2 makes 49 x 20 maps of the 98 x 40 log-mel.
    assert [last_map(count) for count in (0, 1, 2)] == [(49, 20), (25, 10), (13, 5)]
    with pytest.raises(errors.ConfigError, match="strided_blocks"):
        config_lib.build(speech.SpeechConfig, {"blocks": "2", "strided_blocks": "3"})


def make_folder(root, words=("up", "down"), speakers=4):
    for word_index, word in enumerate(words):
        for speaker in range(speakers):
            write_wav(root / word / f"s{speaker}_nohash_0.wav",
                      tone(300 + 400 * word_index + 20 * speaker, 0.6))


def config_for(folder, **overrides):
    values = {"data_dir": str(folder), "batch_size_per_worker": "2", **overrides}
    return config_lib.build(speech.SpeechConfig, values)


@pytest.mark.fast
def test_bad_clips_are_reported_and_skipped_or_rejected(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "up" / "corrupt_nohash_0.wav").write_bytes(b"RIFF\x00\x00not a wave file")
    write_wav(tmp_path / "up" / "stereo_nohash_0.wav", np.zeros(3200), channels=2)
    write_wav(tmp_path / "down" / "empty_nohash_0.wav", [])
    clips, labels, _, report = speech.scan_folder(config_for(tmp_path), str(tmp_path))
    assert labels == ["down", "up"] and len(clips) == 8
    assert report["skipped"] == 3
    assert any("corrupt_nohash_0.wav cannot be decoded" in line
               for line in report["skipped_examples"])
    assert any("stereo_nohash_0.wav has 2 channels, not mono" in line
               for line in report["skipped_examples"])
    assert any("empty_nohash_0.wav is empty" in line for line in report["skipped_examples"])
    with pytest.raises(errors.DataError, match="3 unusable clips in .*--bad_clips=skip"):
        speech.scan_folder(config_for(tmp_path, bad_clips="error"), str(tmp_path))


@pytest.mark.fast
def test_a_missing_festival_voice_is_named_by_its_package_before_launch(tmp_path, monkeypatch):
    assert speech_synthesis.missing_tools() == []  # the setup installs every voice
    voices = tmp_path / "voices"
    os.makedirs(voices / "italian" / "lp_diphone")
    monkeypatch.setattr(speech_synthesis, "FESTIVAL_VOICE_DIRS", str(voices))
    with pytest.raises(errors.DataError) as raised:
        speech.check_data(config_lib.build(speech.SpeechConfig, {}))
    message = str(raised.value)
    assert "festvox-itapc16k" in message and "festvox-czech-ph" in message
    assert "festvox-italp16k" not in message
    # The command that installs them (make setup does nothing on a checkout already set up).
    assert "make system-packages" in message


@pytest.mark.fast
def test_empty_label_folder_is_an_error_naming_it(tmp_path):
    make_folder(tmp_path)
    os.makedirs(tmp_path / "left")
    with pytest.raises(errors.DataError, match=f"label folder {tmp_path}/left has no clips"):
        speech.scan_folder(config_for(tmp_path), str(tmp_path))


@pytest.mark.fast
def test_other_sample_rates_are_resampled(tmp_path):
    make_folder(tmp_path)
    write_wav(tmp_path / "up" / "slow_nohash_0.wav", tone(1000, 0.5, rate=8000), rate=8000)
    config = config_for(tmp_path, cache_dir=str(tmp_path / "cache"))
    clips, _, _, report = speech.scan_folder(config, str(tmp_path))
    assert report["resampled"] == 1
    resampled = next(clip.path for clip in clips if clip.relative == "up/slow_nohash_0.wav")
    with wave.open(resampled) as reader:
        assert reader.getframerate() == 16000 and reader.getnframes() == 8000  # 0.5 s
    features = speech.log_mel(tf.constant(speech.fit_length(
        tf.audio.decode_wav(tf.io.read_file(resampled))[0][:, 0], 16000)), config).numpy()
    reference = speech.log_mel(tf.constant(tone(1000, 1.0), tf.float32), config).numpy()
    assert np.argmax(features.mean(axis=0)) == np.argmax(reference.mean(axis=0))


@pytest.mark.fast
def test_long_clips_are_centre_cropped_short_ones_padded_and_the_run_says_so(tmp_path):
    make_folder(tmp_path)  # 0.6 s clips
    # 3 s: silence, a tone, silence; the middle second is what the model hears.
    middle = np.concatenate([np.zeros(16000), tone(700, 1.0), np.zeros(16000)])
    write_wav(tmp_path / "up" / "long_nohash_0.wav", middle)
    config = config_for(tmp_path)
    clips, _, _, report = speech.scan_folder(config, str(tmp_path))
    assert (report["sampled_clips"], report["sampled_longer"], report["sampled_shorter"]) == (
        9, 1, 8)
    assert ("1 of 9 sampled clips are longer than 1 s (up to 3 s): their middle 1 s is used"
            in speech.lengths_note(report, config))
    three_seconds = config_for(tmp_path, clip_seconds="3")
    _, _, _, report = speech.scan_folder(three_seconds, str(tmp_path))
    assert report["sampled_longer"] == 0 and speech.lengths_note(report, three_seconds) == ""
    path = next(clip.path for clip in clips if clip.relative == "up/long_nohash_0.wav")
    kept = speech.fit_length(tf.audio.decode_wav(tf.io.read_file(path))[0][:, 0], 16000)
    assert float(tf.sqrt(tf.reduce_mean(kept ** 2))) > 0.3  # the tone, not the silence
    short = next(clip.path for clip in clips if clip.relative == "up/s0_nohash_0.wav")
    samples = tf.audio.decode_wav(tf.io.read_file(short))[0][:, 0].numpy()
    padded = speech.fit_length(tf.constant(samples), 16000).numpy()
    # centred: 0.2 s of zeros on each side, so a time shift does not cut the word off
    assert padded.shape == (16000,) and np.array_equal(padded[3200:12800], samples)
    assert not np.any(padded[:3200]) and not np.any(padded[12800:])


@pytest.mark.fast
def test_split_by_speaker_without_list_files(tmp_path):
    make_folder(tmp_path, speakers=40)
    config = config_for(tmp_path)
    clips, _, _, _ = speech.scan_folder(config, str(tmp_path))
    splits = speech.split_clips(clips, str(tmp_path), config)
    speakers = {split: {clip.speaker for clip in members} for split, members in splits.items()}
    assert not speakers["train"] & speakers["validation"]
    assert not speakers["train"] & speakers["test"]
    assert speakers["validation"] and speakers["test"]


def read_wav(path):
    with wave.open(path) as reader:
        return np.frombuffer(reader.readframes(reader.getnframes()), "<i2") / 32768.0


@pytest.mark.multiprocess
@pytest.mark.timeout(400)
def test_tiny_model_on_two_workers_learns_unseen_voices_and_its_export_agrees(tmp_path):
    run_dir = str(tmp_path / "tiny")
    launch(["--recipe=speech", "--np=2", f"--run_dir={run_dir}", *TINY, "--epochs=6",
            "--base_learning_rate=0.005", "--width=16", "--noise_probability=0"])
    summary = read_json(os.path.join(run_dir, "summary.json"))
    assert summary["weights_identical_on_all_ranks"] and summary["world_size"] == 2
    losses = event_scalars(run_dir, "train", "epoch_loss")
    assert len(losses) == 6 and losses[-1] < losses[0], losses
    report = summary["reports"]
    assert set(report["test_accuracy_by_group"]) == {"espeak", "flite", "festival"}
    # Two words: chance is 0.5. Voices never heard in training must be recognised well
    # above it.
    assert report["test_accuracy"] >= 0.75, report

    # The export, in a fresh process, on the raw waveforms of the same unseen voices.
    config = config_lib.build(speech.SpeechConfig, dict(
        item[2:].split("=", 1) for item in TINY))
    data_dir, _ = speech.resolve_data_dir(config)
    clips, labels, _, _ = speech.scan_folder(config, data_dir)
    test = speech.split_clips(clips, data_dir, config)["test"]
    waves = [read_wav(clip.path) for clip in test]
    batch = np.zeros((len(waves), max(len(wave_) for wave_ in waves)), np.float32)
    for row, samples in enumerate(waves):
        batch[row, :len(samples)] = samples
    np.save(tmp_path / "waves.npy", batch)
    answer = predict_in_fresh_process(PREDICT, os.path.join(run_dir, "export", "1"),
                                      str(tmp_path / "waves.npy"), cwd=str(tmp_path))
    expected = [labels[clip.label] for clip in test]
    accuracy = np.mean([got == want for got, want in zip(answer["labels"], expected)])
    assert accuracy == pytest.approx(report["test_accuracy"], abs=2 / len(test))
    assert np.allclose(answer["sums"], 1.0, atol=1e-4) and answer["dtype"] == "float32"


PREDICT = r"""
import json, sys
import numpy as np
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
# Raw 16 kHz waveforms of different lengths, padded into one batch with zeros.
out = model.signatures["serving_default"](waveform=tf.constant(np.load(sys.argv[2])))
print("RESULT " + json.dumps({"labels": [x.decode() for x in out["label"].numpy()],
                              "sums": out["probabilities"].numpy().sum(axis=1).tolist(),
                              "dtype": out["probabilities"].dtype.name}))
"""
