"""``make bench-epochs``: what the epochs rule does for a small data set of a user's.

    python -m toolkit.launcher.bench_epochs [--np=2] [--seeds=42] [--recipes=image,bert]

The recipes' schedules were tuned on their demo sets (image: 8 epochs of Fashion-MNIST's
60,000 images; BERT: 1 epoch of 20,000 WordNet definitions). Given data of their own,
users get ``epochs=0``: the recipe chooses from the data (``choose_epochs``; the run's
first line says what and why). This trains each recipe on a public data set that a
package registry ships, not one of ours, twice per seed: with the demo set's epochs
(what a user got before the rule) and with the rule's; and reports the held-out accuracy
of each, the epochs and the training time.

* image: the handwritten digits bundled with scikit-learn (1,797 8x8 grey images, 10
  classes; PyPI ``scikit-learn``), written once as a folder of PNG files per class; the
  recipe holds out ``validation_fraction`` of each class.
* BERT: Debian's ``fortunes`` quotations in six of its categories (file names are the
  labels), split 80/20 by a hash of the text, as CSV files.
* speech: no package in PyPI or Debian that we found ships labelled spoken words, so it
  is not measured here.

Results: ``bench/epochs/<time>/report.md`` and ``results.json``.
"""

import argparse
import csv
import datetime
import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np

import toolkit
from toolkit.launcher import bench as bench_lib

PROJECT_ROOT = toolkit.PROJECT_ROOT
FORTUNES_DIR = "/usr/share/games/fortunes"  # Debian's fortunes package
FORTUNE_CATEGORIES = ("computers", "politics", "science", "work", "literature", "law")
# The epochs each recipe's defaults were tuned to on its demo set, before the rule.
DEMO_EPOCHS = {"image": 8, "bert": 1}


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


def train(recipe, data_arguments, epochs, seed, workers, run_dir):
    """One run to the end; its summary and config (epochs chosen), and the wall time."""
    command = [sys.executable, "-m", "toolkit.launcher.launch", f"--recipe={recipe}",
               f"--np={workers}", f"--run_dir={run_dir}", *data_arguments,
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
            f"{rule['accuracy'] - demo['accuracy']:+.4f} |")
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
    parser.add_argument("--recipes", default="image,bert", help="comma-separated")
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
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    directory = os.path.join(options.output_root, "epochs", stamp)
    os.makedirs(directory)
    results = {"started": stamp, "workers": options.np, "recipes": recipes, "runs": []}
    for seed in [int(seed) for seed in options.seeds.split(",")]:
        for recipe in recipes:
            name, arguments = data[recipe]
            row = {"recipe": recipe, "data": name, "seed": seed}
            for part, epochs in (("demo", DEMO_EPOCHS[recipe]), ("rule", 0)):
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
