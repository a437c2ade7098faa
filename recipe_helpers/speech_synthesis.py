"""The speech recipe's built-in data set: spoken words from three text-to-speech engines.

No package registry ships spoken-word recordings, so the default data set is generated
locally by Debian's speech synthesisers, one "speaker" per voice:

* espeak-ng: 7 English accents (en-us, en-gb, Scottish, RP, Lancaster, West Midlands,
  Caribbean) combined with its voice variants, at a spread of speeds and pitches;
* flite: its built-in voices (kal, kal16, awb, rms, slt), each at several speeds and
  pitches (flite's duration_stretch and int_f0_target_mean);
* festival: the kal and ked diphone voices and the slt HTS voice, each at several pitches
  and tempos (applied with sox); and, for training only, Debian's Italian, Finnish,
  Czech, Catalan and Russian festival voices saying the words respelt in their
  language's spelling (RESPELLINGS), so that the model hears more than one diphone voice before it meets
  the unseen one (ked).

Models trained on one engine's voices do not transfer to another's, so every split mixes
all three engines, and the split is by speaker: a voice is in exactly one of train,
validation and test. Recordings of the same person in two engines (flite kal and
festival kal_diphone; flite slt and festival slt HTS) count as one speaker. Clips are
trimmed to the word (trim_to_word) and written as 16 kHz mono 16-bit WAV in the Speech
Commands layout (``<word>/<speaker>_nohash_<n>.wav`` plus ``validation_list.txt`` and
``testing_list.txt``). The same words, voices and seed give the same files.
"""

import concurrent.futures
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import wave

import numpy as np

from toolkit import errors
from toolkit import manifests

DEFAULT_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan",
                  "en-gb-x-gbcwmd", "en-029")
# Variants that do not sound like a person speaking (whispers, effects, test voices).
ESPEAK_EXCLUDED_VARIANTS = {"whisper", "female_whisper", "demonic", "fast_test", "croak",
                            "half-lifeannouncementsystem", "universalrobot"}
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
FESTIVAL_VOICES = {"kal": "voice_kal_diphone", "ked": "voice_ked_diphone",
                   "slt-hts": "voice_cmu_us_slt_arctic_hts"}
# Other languages' festival voices: (voice command, language, Debian package). They read
# text by their own language's rules, so English words are respelt for them (RESPELLINGS;
# a word without a respelling is read as written). Training only: they are accented
# speakers that widen what "a diphone voice" sounds like.
FOREIGN_FESTIVAL_VOICES = {
    "it-lp": ("voice_lp_diphone", "it", "festvox-italp16k"),
    "it-pc": ("voice_pc_diphone", "it", "festvox-itapc16k"),
    "fi-lj": ("voice_suo_fi_lj_diphone", "fi", "festvox-suopuhe-lj"),
    "fi-mv": ("voice_hy_fi_mv_diphone", "fi", "festvox-suopuhe-mv"),
    "cs-dita": ("voice_czech_dita", "cs", "festvox-czech-dita"),
    "cs-machac": ("voice_czech_machac", "cs", "festvox-czech-machac"),
    "cs-krb": ("voice_czech_krb", "cs", "festvox-czech-krb"),
    "cs-ph": ("voice_czech_ph", "cs", "festvox-czech-ph"),
    "ca-ona": ("voice_upc_ca_ona_hts", "ca", "festvox-ca-ona-hts"),
    "ru-nsh": ("voice_msu_ru_nsh_clunits", "ru", "festvox-ru"),
}
# English words as each language would spell their sound (our own approximations).
_COMMON_RESPELLING = {"no": "nou", "up": "ap", "down": "daun", "left": "left",
                      "right": "rait", "on": "on", "off": "of", "stop": "stop", "go": "gou"}
RESPELLINGS = {
    "it": {**_COMMON_RESPELLING, "yes": "ies"},
    "fi": {**_COMMON_RESPELLING, "yes": "jes"},
    "cs": {**_COMMON_RESPELLING, "yes": "jes", "right": "rajt"},
    "ca": {**_COMMON_RESPELLING, "yes": "iès"},
    "ru": {"yes": "йес", "no": "ноу", "up": "ап", "down": "даун", "left": "лефт",
           "right": "райт", "on": "он", "off": "оф", "stop": "стоп", "go": "гоу"},
}
# Held-out people for the flite and festival engines (few voices each, so chosen by hand:
# every engine keeps voices in training and has an unseen one to test on).
FLITE_SPLIT = {"kal": "train", "kal16": "train", "slt": "train", "awb": "validation",
               "rms": "test"}
FESTIVAL_SPLIT = {"kal": "train", "slt-hts": "train", "ked": "test"}
SAMPLE_RATE = 16000
SMALL_ENGINE_FACTOR = 6
# Variations per foreign festival voice, x variations_per_speaker: 4 (160 clips a voice)
# rather than 2 (80), with the Russian voice added, and the model's strided_blocks: see
# recipes/speech.py for what that measured.
FOREIGN_VOICE_FACTOR = 4
GENERATOR_VERSION = 5  # part of the cache key: bump when the generated audio changes


@dataclasses.dataclass(frozen=True)
class Voice:
    """One speaker: an engine, a voice and how it is varied (speed, pitch)."""

    engine: str  # espeak, flite or festival
    name: str  # engine-specific voice name
    speaker: str  # file-name speaker id, e.g. "espeak-en-gb-scotland-m3"
    split: str  # train, validation or test
    variations: tuple  # ((speed factor, pitch factor), ...) recorded for this speaker
    language: str = "en"  # a key of RESPELLINGS for the foreign festival voices


def espeak_variants():
    """espeak-ng's voice variants, minus the ones in ESPEAK_EXCLUDED_VARIANTS."""
    listing = subprocess.run(["espeak-ng", "--voices=variant"], capture_output=True, text=True,
                             check=True).stdout
    names = []
    for line in listing.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 5 and fields[4].startswith("!v/"):
            name = fields[4][len("!v/"):]
            if name.lower() not in ESPEAK_EXCLUDED_VARIANTS:
                names.append(name)
    return sorted(set(names))


def plan_voices(espeak_speakers, variations_per_speaker, seed):
    """The speakers to record: ``espeak_speakers`` espeak voices with
    ``variations_per_speaker`` (speed, pitch) settings each, plus every flite and festival
    voice with SMALL_ENGINE_FACTOR times as many, so that the engines with few voices still
    contribute a fair share of the clips."""
    generator = random.Random(seed)

    def variations(count, low=0.85, high=1.2):
        return tuple((round(generator.uniform(low, high), 2),
                      round(generator.uniform(low, high), 2)) for _ in range(count))

    combinations = [(accent, variant) for accent in ESPEAK_ACCENTS
                    for variant in espeak_variants()]
    generator.shuffle(combinations)
    voices = []
    for index, (accent, variant) in enumerate(combinations[:espeak_speakers]):
        # 70 % train, 15 % validation, 15 % test, interleaved so that every split gets
        # a spread of accents.
        position = index % 20
        split = ("validation" if position in (3, 10, 16) else
                 "test" if position in (7, 13, 19) else "train")
        voices.append(Voice("espeak", f"{accent}+{variant}", f"espeak-{accent}-{variant}",
                            split, variations(variations_per_speaker)))
    # Few real voices: more, and wider, variations stand in for more speakers.
    small = variations_per_speaker * SMALL_ENGINE_FACTOR
    for name in FLITE_VOICES:
        voices.append(Voice("flite", name, f"flite-{name}", FLITE_SPLIT[name],
                            variations(small, 0.8, 1.3)))
    for name, command in FESTIVAL_VOICES.items():
        voices.append(Voice("festival", command, f"festival-{name}", FESTIVAL_SPLIT[name],
                            variations(small, 0.8, 1.3)))
    for name, (command, language, _) in FOREIGN_FESTIVAL_VOICES.items():
        voices.append(Voice("festival", command, f"festival-{name}", "train",
                            variations(variations_per_speaker * FOREIGN_VOICE_FACTOR,
                                       0.8, 1.3), language))
    return voices


def _synthesise(voice, word, speed, pitch, raw_path):
    """Write the engine's own output for ``word`` to ``raw_path``."""
    if voice.engine == "espeak":
        subprocess.run(["espeak-ng", "-v", voice.name, "-s", str(round(160 * speed)),
                        "-p", str(round(50 * pitch)), "-w", raw_path, word],
                       check=True, capture_output=True)
    elif voice.engine == "flite":
        subprocess.run(["flite", "-voice", voice.name, "--setf",
                        f"duration_stretch={1 / speed:.3f}", "--setf",
                        f"int_f0_target_mean={round(110 * pitch)}", "-t", word, "-o", raw_path],
                       check=True, capture_output=True)
    else:
        word = RESPELLINGS.get(voice.language, {}).get(word, word)
        script = (f'({voice.name})\n(utt.save.wave (utt.synth (Utterance Text "{word}")) '
                  f'"{raw_path}" \'riff)\n')
        subprocess.run(["festival", "--pipe"], input=script, text=True, check=True,
                       capture_output=True)


def _record(voice, word, variation_index, output_path):
    """One clip: synthesise, then with sox convert to 16 kHz mono 16-bit and apply the
    voice variation (festival's pitch and tempo); then trim to the word (trim_to_word)
    and normalise its peak to -3 dB full scale."""
    speed, pitch = voice.variations[variation_index]
    with tempfile.TemporaryDirectory() as scratch:
        raw_path = os.path.join(scratch, "raw.wav")
        converted_path = os.path.join(scratch, "converted.wav")
        _synthesise(voice, word, speed, pitch, raw_path)
        effects = []
        if voice.engine == "festival":
            effects += ["pitch", str(round(1200 * math.log2(pitch))), "tempo", str(speed)]
        # -D: no dither, which sox otherwise adds at random when it reduces bit depth, so
        # that the same seed gives the same bytes.
        subprocess.run(["sox", "-D", raw_path, "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16",
                        converted_path, *effects], check=True, capture_output=True)
        with wave.open(converted_path, "rb") as reader:
            samples = np.frombuffer(reader.readframes(reader.getnframes()), np.int16)
    samples = trim_to_word(samples.astype(np.float64))
    peak = np.max(np.abs(samples)) if samples.size else 0.0
    scaled = samples * (32767 * 10 ** (-3 / 20) / peak) if peak else samples
    with wave.open(output_path, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(SAMPLE_RATE)
        writer.writeframes(np.round(scaled).astype(np.int16).tobytes())


# A frame belongs to the word when its loudness is within WORD_RANGE_DB of the loudest
# frame's. The engines' pauses are digital silence or, for festival's diphone voices, a
# floor 35-55 dB below the word; a quiet final stop (the release of ked's "up" sits 23 dB
# below its vowel, after 20 ms of closure) is inside the range. sox's silence effect
# (20 ms above 0.5 % of full scale), used before, cut such releases: ked's "up" kept 50
# ms of its vowel, kal's 114 ms.
WORD_RANGE_DB = 30.0
FRAME_SECONDS = 0.01
WORD_MARGIN_SECONDS = 0.01  # kept before the first and after the last frame of the word


def trim_to_word(samples):
    """``samples`` from the first to the last 10 ms frame within WORD_RANGE_DB of the
    loudest frame, with WORD_MARGIN_SECONDS on each side."""
    frame = int(SAMPLE_RATE * FRAME_SECONDS)
    count = len(samples) // frame
    if count == 0:
        return samples
    power = np.mean(samples[:count * frame].reshape(count, frame) ** 2, axis=1)
    loud = np.flatnonzero(power >= np.max(power) * 10 ** (-WORD_RANGE_DB / 10))
    margin = int(SAMPLE_RATE * WORD_MARGIN_SECONDS)
    start = max(loud[0] * frame - margin, 0)
    end = min((loud[-1] + 1) * frame + margin, len(samples))
    return samples[start:end]


FESTIVAL_VOICE_DIRS = "/usr/share/festival/voices"


def missing_tools():
    """The programs and festival voice packages the generator needs that are not here."""
    missing = [tool for tool in ("espeak-ng", "flite", "festival", "sox")
               if not shutil.which(tool)]
    installed = set()
    if os.path.isdir(FESTIVAL_VOICE_DIRS):
        for language in os.listdir(FESTIVAL_VOICE_DIRS):
            if os.path.isdir(os.path.join(FESTIVAL_VOICE_DIRS, language)):
                installed.update(os.listdir(os.path.join(FESTIVAL_VOICE_DIRS, language)))
    for command, _, package in FOREIGN_FESTIVAL_VOICES.values():
        if command[len("voice_"):] not in installed:
            missing.append(package)
    return missing


def generate(output_dir, words, espeak_speakers, variations_per_speaker, seed, workers,
             progress_every=5.0):
    """Generate the data set into ``output_dir`` (idempotent, safe across processes).

    The first process to take the lock generates into a temporary folder and renames it
    into place, with progress lines on stderr every ``progress_every`` seconds; others
    say that they wait, wait for the lock and then find the finished folder.
    """
    done_marker = os.path.join(output_dir, "generation.json")
    if os.path.exists(done_marker):
        return output_dir
    missing = missing_tools()
    if missing:
        raise errors.DataError(
            "generating the speech data set needs the Debian packages espeak-ng, flite, "
            f"festival (with festvox voices) and sox; missing: {', '.join(missing)}. Run "
            "make system-packages, or pass --data_dir with your own recordings")
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    with open(os.path.join(parent, ".generate.lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process generating the speech clips in {parent}",
                  file=sys.stderr, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(done_marker):
            return output_dir
        staging = tempfile.mkdtemp(prefix=".generating-", dir=parent)
        try:
            manifest = _generate_into(staging, words, espeak_speakers, variations_per_speaker,
                                      seed, workers, progress_every)
            with open(os.path.join(staging, "generation.json"), "w") as stream:
                json.dump(manifest, stream, indent=2)
            shutil.rmtree(output_dir, ignore_errors=True)
            os.replace(staging, output_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def _generate_into(directory, words, espeak_speakers, variations_per_speaker, seed, workers,
                   progress_every):
    voices = plan_voices(espeak_speakers, variations_per_speaker, seed)
    jobs, lists = [], {"validation": [], "test": []}
    for word in words:
        os.makedirs(os.path.join(directory, word), exist_ok=True)
        for voice in voices:
            for index in range(len(voice.variations)):
                relative = f"{word}/{voice.speaker}_nohash_{index}.wav"
                jobs.append((voice, word, index, os.path.join(directory, relative)))
                if voice.split in lists:
                    lists[voice.split].append(relative)
    print(f"generating {len(jobs):,} speech clips ({len(words)} words x {len(voices)} voices "
          f"of espeak-ng, flite and festival) with {workers} processes; once, then cached",
          file=sys.stderr, flush=True)
    progress = manifests.Progress("speech clips generated", len(jobs), every=progress_every)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for future in concurrent.futures.as_completed(
                [pool.submit(_record, *job) for job in jobs]):
            future.result()
            progress.advance()
    progress.finish()
    for split, name in (("validation", "validation_list.txt"), ("test", "testing_list.txt")):
        with open(os.path.join(directory, name), "w") as stream:
            stream.writelines(f"{relative}\n" for relative in sorted(lists[split]))
    return {"words": list(words), "seed": seed, "clips": len(jobs),
            "speakers": {voice.speaker: {"engine": voice.engine, "split": voice.split,
                                         "variations": voice.variations} for voice in voices}}


def dataset_dir(cache_dir, words, espeak_speakers, variations_per_speaker, seed):
    """Where the data set for these settings lives; settings change the folder name."""
    key = hashlib.sha256(json.dumps([GENERATOR_VERSION, list(words), espeak_speakers,
                                     variations_per_speaker, seed]).encode()).hexdigest()[:12]
    return os.path.join(cache_dir, "speech-tts", key)
