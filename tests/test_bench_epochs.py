"""make bench-epochs' public data sets, as the recipes read them (fast: no training; the
bench itself trains for minutes and is not part of the suite)."""

import os

import pytest

from recipe_helpers import text_files
from recipes import bert
from recipes import image
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
