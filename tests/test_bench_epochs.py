"""make bench-epochs' public data sets, as the recipes read them (fast: no training; the
bench itself trains for minutes and is not part of the suite)."""

import os

import numpy as np
import pytest
from scipy.io import wavfile

from recipe_helpers import text_files
from recipes import bert
from recipes import image
from recipes import speech
from toolkit import config as config_lib
from toolkit.launcher import bench_epochs

pytestmark = pytest.mark.fast


def test_scikit_learns_digits_become_a_folder_the_image_recipe_takes_as_8x8_grey(tmp_path):
    folder = bench_epochs.digits_folder(str(tmp_path))
    counts = {label: len(os.listdir(os.path.join(folder, label))) for label in os.listdir(folder)}
    assert sorted(counts) == [str(digit) for digit in range(10)]
    assert sum(counts.values()) == 1797 and min(counts.values()) > 150
    config = config_lib.build(image.ImageConfig, {"data_dir": folder,
                                                  "cache_dir": str(tmp_path / "cache")})
    image.check_data(config)
    chosen, _ = image.resolved(config)
    assert (chosen.image_size, chosen.channels) == (8, 1)
    assert bench_epochs.digits_folder(str(tmp_path)) == folder  # written once


def test_fortunes_become_csv_files_labelled_by_category_and_split_by_text(tmp_path):
    fortunes = tmp_path / "fortunes"
    fortunes.mkdir()
    quotes = {"computers": [f"Bug {index}, said the \"compiler\",\nover two lines."
                            for index in range(40)],
              "law": [f"Statute {index}: no, in triplicate." for index in range(40)]}
    for category, texts in quotes.items():
        (fortunes / category).write_text("\n%\n".join(texts) + "\n%\n")
    train, validation = bench_epochs.fortunes_files(str(tmp_path / "out"), str(fortunes),
                                                    ("computers", "law"))
    config = config_lib.build(bert.BertConfig, {"train_file": train,
                                                "validation_file": validation,
                                                "cache_dir": str(tmp_path / "cache")})
    train_summary, validation_summary, names, _ = bert.read_examples(config)
    assert names == ["computers", "law"]
    assert train_summary.rows + validation_summary.rows == 80
    assert 5 <= validation_summary.rows <= 30  # one in five, by a hash of the text
    texts = text_files.read(train).texts + text_files.read(validation).texts
    assert sorted(texts) == sorted(quotes["computers"] + quotes["law"])  # quotes and lines kept


def test_the_demo_epochs_compared_are_what_each_recipe_trains_its_demo_set_for():
    for name, module, config_class in (("image", image, image.ImageConfig),
                                       ("bert", bert, bert.BertConfig),
                                       ("speech", speech, speech.SpeechConfig)):
        epochs, _ = module.choose_epochs(config_lib.build(config_class, {}), None, 1)
        assert bench_epochs.DEMO_EPOCHS[name] == epochs, name


def _write_prompt(path, seconds, rate=8000):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    samples = (np.sin(np.arange(int(seconds * rate)) * 0.3) * 8000).astype(np.int16)
    wavfile.write(path, rate, samples)


def test_asterisks_voices_become_a_speech_folder_split_by_prompt_across_voices(tmp_path):
    sounds = tmp_path / "sounds"
    voices = ("en_US_f_Allison", "it_IT_m_Carlo")
    prompts = ([f"digits/{digit}.wav" for digit in range(10)]
               + [f"letters/{letter}.wav" for letter in "abcdefghijklmnopqrstuvwxyz"]
               + [f"prompt-{index}.wav" for index in range(24)])
    for voice in voices:
        for prompt in prompts:
            _write_prompt(str(sounds / voice / prompt), seconds=2.5)
        _write_prompt(str(sounds / voice / "silence" / "1.wav"), seconds=1.0)
    folder = bench_epochs.voices_folder(str(tmp_path / "out"), str(sounds), voices)
    assert sorted(os.listdir(folder)) == sorted(voices)
    assert sorted(os.listdir(os.path.join(folder, voices[0]))) == sorted(
        prompt.replace("/", "-") for prompt in prompts)  # flattened; silence left out
    config = config_lib.build(speech.SpeechConfig, {"data_dir": folder,
                                                    "cache_dir": str(tmp_path / "cache")})
    speech.check_data(config)
    clips, names, _, report = speech.scan_folder(config, folder)
    assert names == sorted(voices) and report["clips"] == 2 * len(prompts)
    assert report["resampled"] == len(clips) and report["sampled_longer"] > 0  # 8 kHz, 2.5 s
    splits = speech.split_clips(clips, folder, config)
    split_of = {(names[clip.label], clip.speaker): split
                for split, members in splits.items() for clip in members}
    assert all(splits.values())
    for prompt in prompts:  # a held-out prompt is held out in every voice
        speaker = prompt.replace("/", "-")[:-len(".wav")]
        assert split_of[(voices[0], speaker)] == split_of[(voices[1], speaker)]
    assert bench_epochs.voices_folder(str(tmp_path / "out"), str(sounds), voices) == folder


def test_make_bench_epochs_installs_the_voices_it_reads():
    with open(os.path.join(bench_epochs.PROJECT_ROOT, "Makefile")) as stream:
        makefile = stream.read().replace("\\\n", " ")
    line = next(line for line in makefile.splitlines()
                if line.startswith("ASTERISK_VOICE_PACKAGES :="))
    assert sorted(line.split(":=")[1].split()) == sorted(bench_epochs.ASTERISK_VOICES)
