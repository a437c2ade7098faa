"""The BERT recipe's built-in data set: WordNet definitions labelled with their topic.

WordNet (Debian package ``wordnet-base``) sorts every noun synset into a "lexicographer
file" such as noun.animal or noun.food, and gives each synset an English definition (its
gloss). Classifying a definition into its topic is a real text classification task with
tens of thousands of examples:

    "a domestic animal kept for companionship"  ->  animal

:func:`prepare` writes it as ``train.csv`` and ``validation.csv`` (``text,label``), the
same format a user would supply. The split is fixed by a checksum of the definition text
(one in ten goes to validation; WordNet repeats a few definitions, and a repeated text
always lands in the same split), and rows are shuffled with a fixed seed (WordNet's file
order groups topics together, so that a prefix would hold one topic only); both are the
same everywhere.
"""

import os
import random
import zlib

from recipe_helpers import text_files
from toolkit import errors

# Lexicographer file numbers of the noun topics, from WordNet's lexnames(5WN) table.
NOUN_TOPICS = {"animal": 5, "artifact": 6, "food": 13, "location": 15, "person": 18, "plant": 20}
SHUFFLE_SEED = 20061206  # any fixed number; changing it changes the prepared files
DEFAULT_TOPICS = ("animal", "artifact", "food", "location", "person", "plant")


def definition(gloss):
    """The definition part of a gloss: text before the first quoted usage example."""
    text = gloss.split('"', 1)[0].strip().rstrip(";").strip()
    return " ".join(text.split())


def read_glosses(data_noun_path, topics):
    """Yield (topic, definition) for noun synsets of the given topics."""
    number_to_topic = {NOUN_TOPICS[topic]: topic for topic in topics}
    try:
        stream = open(data_noun_path, encoding="utf-8", errors="replace")
    except OSError as error:
        raise errors.DataError(f"cannot read {data_noun_path}: {error.strerror}; install the "
                               "Debian package wordnet-base (make setup does) or set "
                               "--wordnet_dir") from None
    with stream:
        for line in stream:
            if line.startswith("  ") or "|" not in line:
                continue  # the licence header, or a malformed line
            fields, gloss = line.split("|", 1)
            lexicographer_file = fields.split()[1]
            topic = number_to_topic.get(int(lexicographer_file))
            text = definition(gloss)
            if topic and len(text) >= 3:
                yield topic, text


def prepare(wordnet_dir, topics, output_dir):
    """Write ``train.csv`` and ``validation.csv`` to ``output_dir`` unless already there."""
    unknown = [topic for topic in topics if topic not in NOUN_TOPICS]
    if unknown:
        raise errors.DataError(f"unknown WordNet topics {unknown}; valid: "
                               + ", ".join(sorted(NOUN_TOPICS)))
    paths = {split: os.path.join(output_dir, f"{split}.csv") for split in ("train", "validation")}
    if all(os.path.exists(path) for path in paths.values()):
        return paths
    os.makedirs(output_dir, exist_ok=True)
    splits = {"train": ([], []), "validation": ([], [])}
    for topic, text in read_glosses(os.path.join(wordnet_dir, "data.noun"), topics):
        texts, labels = splits["validation" if zlib.crc32(text.encode()) % 10 == 0 else "train"]
        texts.append(text)
        labels.append(topic)
    for split, (texts, labels) in splits.items():
        order = list(range(len(texts)))
        random.Random(SHUFFLE_SEED).shuffle(order)
        text_files.write_csv(paths[split], [texts[i] for i in order], [labels[i] for i in order])
    return paths
