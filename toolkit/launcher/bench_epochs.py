"""``make bench-epochs``: what the epochs rule does for a small data set of a user's.

    python -m toolkit.launcher.bench_epochs [--np=2] [--seeds=42] [--recipes=image,bert,speech]

The recipes' schedules were tuned on their demo sets (image: 12 epochs of Fashion-MNIST's
60,000 images; BERT: 1 epoch of 20,000 WordNet definitions; speech: 40 epochs of 4,800
generated clips). Given data of their own,
users get ``epochs=0``: the recipe chooses from the data (``choose_epochs``; the run's
first line says what and why). This trains each recipe on a public data set that a
package registry ships, not one of ours, twice per seed: with the demo set's epochs
(what a user got before the rule) and with the rule's; and reports the held-out accuracy
of each, the epochs and the training time. When the rule chooses the demo's epochs, the
one run stands for both.

* image: the handwritten digits bundled with scikit-learn (1,797 8x8 grey images, 10
  classes; PyPI ``scikit-learn``), written once as a folder of PNG files per class; the
  recipe holds out ``validation_fraction`` of each class.
* BERT: Debian's ``fortunes`` quotations in six of its categories (file names are the
  labels), split 80/20 by a hash of the text, as CSV files.
* speech: no package in PyPI or Debian that we found ships labelled spoken *words* from
  many speakers; Debian ships Asterisk's voice prompts, recorded by people (CC BY-SA
  3.0). Six of its WAV voices (8 kHz: the recipe resamples them) become a task of
  telling who speaks, in which language, from the middle second of a prompt: US English
  and Mexican Spanish (both Allison Smith), Canadian French, Russian, and two Italian
  speakers. The file name is the "speaker" the recipe splits by, so a held-out prompt is
  held out in every voice. The recipe's voice-invariance (band-mean normalisation,
  frequency warp) is turned off for it: here the voice is the label.

Results: ``bench/epochs/<time>/report.md`` and ``results.json``.
"""

import argparse
import csv
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

import toolkit
from toolkit.launcher import bench as bench_lib

PROJECT_ROOT = toolkit.PROJECT_ROOT
FORTUNES_DIR = "/usr/share/games/fortunes"  # Debian's fortunes package
FORTUNE_CATEGORIES = ("computers", "politics", "science", "work", "literature", "law")
ASTERISK_SOUNDS = "/usr/share/asterisk/sounds"  # Debian's asterisk-*-wav prompt packages
# Debian package -> the voice folder it installs.
ASTERISK_VOICES = {"asterisk-core-sounds-en-wav": "en_US_f_Allison",
                   "asterisk-core-sounds-es-wav": "es_MX_f_Allison",
                   "asterisk-core-sounds-fr-wav": "fr_CA_f_June",
                   "asterisk-core-sounds-it-wav": "it_IT_m_Carlo",
                   "asterisk-core-sounds-ru-wav": "ru_RU_f_IvrvoiceRU",
                   "asterisk-prompt-it-menardi-wav": "it_IT_f_Menardi"}
# The epochs each recipe's defaults use on its demo set (recipes' FASHION_MNIST_EPOCHS,
# bert's demo schedule, GENERATED_EPOCHS; a test keeps them equal).
DEMO_EPOCHS = {"image": 12, "bert": 1, "speech": 40}
# Options given to every run of a recipe here (the task's, not the rule's).
RECIPE_OPTIONS = {"speech": ["--band_normalisation=none", "--frequency_warp=0"]}


def digits_folder(root):
    """scikit-learn's digits as ``root/digits/<label>/<index>.png`` (written once)."""
    folder = os.path.join(root, "digits")
    if os.path.isdir(folder):
        return folder
    from PIL import Image
    from sklearn import datasets

    digits = datasets.load_digits()
    partial = folder + ".partial"
    for index, (image, label) in enumerate(zip(digits.images, digits.target)):
        os.makedirs(os.path.join(partial, str(label)), exist_ok=True)
        pixels = np.round(image * (255 / 16)).astype(np.uint8)  # 17 grey levels, 0..16
        Image.fromarray(pixels).save(os.path.join(partial, str(label), f"{index}.png"))
    os.replace(partial, folder)
    return folder


def fortunes_files(root, fortunes_dir=FORTUNES_DIR, categories=FORTUNE_CATEGORIES):
    """(train.csv, validation.csv) of the fortunes of ``categories``, labelled by their
    category file; one in five held out by a hash of its text (the same every run)."""
    train, validation = (os.path.join(root, f"fortunes-{name}.csv")
                         for name in ("train", "validation"))
    if os.path.exists(train) and os.path.exists(validation):
        return train, validation
    os.makedirs(root, exist_ok=True)
    rows = {"train": [], "validation": []}
    for category in categories:
        path = os.path.join(fortunes_dir, category)
        if not os.path.exists(path):
            raise SystemExit(f"{path} is missing: install Debian's fortunes package "
                             "(make bench-epochs does)")
        with open(path, encoding="utf-8", errors="replace") as stream:
            quotes = [quote.strip() for quote in stream.read().split("\n%\n")]
        for quote in filter(None, quotes):
            held_out = hashlib.sha256(quote.encode()).digest()[0] % 5 == 0
            rows["validation" if held_out else "train"].append((quote, category))
    for name, path in (("train", train), ("validation", validation)):
        with open(path + ".partial", "w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(["text", "label"])
            writer.writerows(rows[name])
        os.replace(path + ".partial", path)
    return train, validation


def voices_folder(root, sounds_dir=ASTERISK_SOUNDS, voices=tuple(ASTERISK_VOICES.values())):
    """``root/voices/<voice>/<prompt>.wav``: a copy of every prompt of each voice, its
    path flattened (``digits/1.wav`` -> ``digits-1.wav``, a name the same in every
    voice); the ``silence/`` clips, which no voice speaks, are left out. Written once."""
    folder = os.path.join(root, "voices")
    if os.path.isdir(folder):
        return folder
    partial = folder + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    for voice in voices:
        source = os.path.join(sounds_dir, voice)
        if not os.path.isdir(source):
            raise SystemExit(f"{source} is missing: install Debian's "
                             f"{' '.join(ASTERISK_VOICES)} (make bench-epochs does)")
        os.makedirs(os.path.join(partial, voice))
        for directory, subdirectories, files in os.walk(source):
            subdirectories[:] = sorted(name for name in subdirectories if name != "silence")
            for name in sorted(files):
                if name.lower().endswith(".wav"):
                    relative = os.path.relpath(os.path.join(directory, name), source)
                    shutil.copyfile(os.path.join(directory, name),
                                    os.path.join(partial, voice, relative.replace(os.sep, "-")))
    os.replace(partial, folder)
    return folder


def train(recipe, data_arguments, epochs, seed, workers, run_dir):
    """One run to the end; its summary and config (epochs chosen), and the wall time."""
    command = [sys.executable, "-m", "toolkit.launcher.launch", f"--recipe={recipe}",
               f"--np={workers}", f"--run_dir={run_dir}", *data_arguments,
               *RECIPE_OPTIONS.get(recipe, []),
               f"--epochs={epochs}", f"--seed={seed}", "--export=false"]
    started = time.monotonic()
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True,
                            env=bench_lib.environment(), timeout=3600)
    if result.returncode != 0:
        return {"error": (result.stdout + result.stderr)[-2000:]}
    with open(os.path.join(run_dir, "summary.json")) as stream:
        summary = json.load(stream)
    with open(os.path.join(run_dir, "config.json")) as stream:
        chosen = json.load(stream)
    return {"accuracy": summary["validation"]["accuracy"], "epochs": chosen["epochs"],
            "epochs_chosen": chosen["epochs_chosen"], "global_steps": summary["global_steps"],
            "training_seconds": summary["training_seconds"],
            "wall_seconds": time.monotonic() - started}


def write_report(directory, results):
    lines = [f"# make bench-epochs, {results['started']}", "",
             f"{results['workers']} workers; held-out accuracy at the end of training. "
             "Demo epochs: the recipe's schedule for its own demo set; rule: epochs=0, the "
             "recipe's choice for this data.", "",
             "| recipe | data | seed | demo epochs: accuracy (steps, s) | rule: epochs, "
             "accuracy (steps, s) | gain |", "|---|---|---|---|---|---|"]
    for row in results["runs"]:
        demo, rule = row["demo"], row["rule"]
        if "error" in demo or "error" in rule:
            lines.append(f"| {row['recipe']} | {row['data']} | {row['seed']} | failed | "
                         f"failed | |")
            continue
        lines.append(
            f"| {row['recipe']} | {row['data']} | {row['seed']} | {demo['epochs']}: "
            f"{demo['accuracy']:.4f} ({demo['global_steps']}, "
            f"{demo['training_seconds']:.0f}) | {rule['epochs']}: {rule['accuracy']:.4f} "
            f"({rule['global_steps']}, {rule['training_seconds']:.0f}) | "
            + ("the same run |" if demo.get("same_run_as_rule")
               else f"{rule['accuracy'] - demo['accuracy']:+.4f} |"))
    lines += ["", "Why the rule chose what it did (the runs' first line):", ""]
    lines += [f"- {row['recipe']}: {row['rule'].get('epochs_chosen', row['rule'].get('error'))}"
              for row in results["runs"][:len(results["recipes"])]]
    failures = [(row["recipe"], part, row[part]["error"]) for row in results["runs"]
                for part in ("demo", "rule") if "error" in row[part]]
    lines += ["", *[f"failed: {recipe} ({part}):\n\n    {error[-600:]}"
                    for recipe, part, error in failures]]
    with open(os.path.join(directory, "report.md"), "w") as stream:
        stream.write("\n".join(lines) + "\n")
    with open(os.path.join(directory, "results.json"), "w") as stream:
        json.dump(results, stream, indent=2)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m toolkit.launcher.bench_epochs",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--np", type=int, default=2)
    parser.add_argument("--seeds", default="42", help="comma-separated")
    parser.add_argument("--recipes", default="image,bert,speech", help="comma-separated")
    parser.add_argument("--output_root", default=os.path.join(PROJECT_ROOT, "bench"))
    options = parser.parse_args(argv)
    root = os.path.join(PROJECT_ROOT, ".cache", "bench-epochs")
    os.makedirs(root, exist_ok=True)
    recipes = options.recipes.split(",")
    unknown = sorted(set(recipes) - set(DEMO_EPOCHS))
    if unknown:
        parser.error(f"--recipes: {', '.join(unknown)} not measured here; choose from "
                     f"{', '.join(DEMO_EPOCHS)}")
    data = {}
    if "image" in recipes:
        data["image"] = ("scikit-learn digits", [f"--data_dir={digits_folder(root)}"])
    if "bert" in recipes:
        train_file, validation_file = fortunes_files(root)
        data["bert"] = (f"Debian fortunes ({len(FORTUNE_CATEGORIES)} categories)",
                        [f"--train_file={train_file}", f"--validation_file={validation_file}"])
    if "speech" in recipes:
        data["speech"] = (f"Asterisk's prompts ({len(ASTERISK_VOICES)} voices)",
                          [f"--data_dir={voices_folder(root)}"])
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    directory = os.path.join(options.output_root, "epochs", stamp)
    os.makedirs(directory)
    results = {"started": stamp, "workers": options.np, "recipes": recipes, "runs": []}
    for seed in [int(seed) for seed in options.seeds.split(",")]:
        for recipe in recipes:
            name, arguments = data[recipe]
            row = {"recipe": recipe, "data": name, "seed": seed}
            for part, epochs in (("rule", 0), ("demo", DEMO_EPOCHS[recipe])):
                if part == "demo" and row["rule"].get("epochs") == epochs:
                    row[part] = dict(row["rule"], same_run_as_rule=True)
                    continue
                print(f"[bench-epochs] {recipe} on {name}, seed {seed}, "
                      f"{'epochs=0 (the rule)' if not epochs else f'{epochs} epochs'}",
                      flush=True)
                row[part] = train(recipe, arguments, epochs, seed, options.np,
                                  os.path.join(directory, "runs", f"{recipe}-{seed}-{part}"))
            results["runs"].append(row)
    write_report(directory, results)
    bench_lib.show_report(directory)
    return 0 if not any("error" in row[part] for row in results["runs"]
                        for part in ("demo", "rule")) else 1


if __name__ == "__main__":
    sys.exit(main())
