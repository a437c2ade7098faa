"""Text classification files: CSV, TSV and JSON Lines with ``text``, ``text_pair``, ``label``.

The format is picked by the file extension (``.csv``, ``.tsv``, ``.jsonl``/``.json``).
CSV and TSV files have a header row. ``text_pair`` is optional (GLUE-style sentence
pairs); labels may be strings or integers. Every error names the file, the line and what
would be valid.
"""

import csv
import dataclasses
import json
import os
import typing

from toolkit import errors

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}


@dataclasses.dataclass
class Examples:
    """Parsed rows of one file, in file order."""

    path: str
    texts: typing.List[str]
    text_pairs: typing.Optional[typing.List[str]]  # None when the file has no pair column
    labels: typing.List[str]  # as written in the file; mapped to ids with a label map
    lines: typing.List[int]  # the line each example came from, for error messages


def _rows(path):
    """Yield (line number, dict of column -> value) for each data row of ``path``."""
    extension = os.path.splitext(path)[1].lower()
    if extension not in FORMATS:
        raise errors.DataError(f"{path}: unknown text file type {extension!r}; use one of "
                               + ", ".join(sorted(FORMATS)))
    try:
        stream = open(path, newline="", encoding="utf-8")
    except OSError as error:
        raise errors.DataError(f"cannot read text data file {path}: {error.strerror}") from None
    with stream:
        if FORMATS[extension] == "jsonl":
            for number, line in enumerate(stream, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as error:
                    raise errors.DataError(f"{path}:{number}: not valid JSON ({error})") from None
                if not isinstance(row, dict):
                    raise errors.DataError(f"{path}:{number}: expected a JSON object per line")
                yield number, row
        else:
            reader = csv.DictReader(stream, delimiter="," if FORMATS[extension] == "csv" else "\t")
            for row in reader:
                if None in row:
                    raise errors.DataError(f"{path}:{reader.line_num}: more fields than the "
                                           f"header has columns ({len(reader.fieldnames)})")
                yield reader.line_num, row


# Rows parsed at once by read_chunks: a chunk's texts are in memory, the file's are not.
CHUNK_ROWS = 50_000


def read_chunks(path, text_column="text", text_pair_column="text_pair", label_column="label",
                rows=None):
    """Yield the file's examples ``rows`` at a time (each an Examples of consecutive
    rows), so that files larger than memory can be read; raise DataError naming file and
    line on problems."""
    rows = rows or CHUNK_ROWS
    texts, pairs, labels, lines = [], [], [], []
    has_pair, count = None, 0
    for number, row in _rows(path):
        for column in (text_column, label_column):
            if row.get(column) is None:
                raise errors.DataError(
                    f"{path}:{number}: missing column {column!r}; found columns "
                    f"{sorted(row)}; the text and label columns are set by config keys "
                    "text_column and label_column")
        if has_pair is None:
            has_pair = text_pair_column in row
        text = str(row[text_column])
        if not text.strip():
            raise errors.DataError(f"{path}:{number}: empty {text_column!r}")
        label = row[label_column]
        if isinstance(label, float) and label.is_integer():
            label = int(label)
        label = str(label).strip()
        if not label:
            raise errors.DataError(f"{path}:{number}: empty {label_column!r}")
        texts.append(text)
        labels.append(label)
        lines.append(number)
        if has_pair:
            if row.get(text_pair_column) is None:
                raise errors.DataError(f"{path}:{number}: missing column "
                                       f"{text_pair_column!r}, which earlier rows have")
            pairs.append(str(row[text_pair_column]))
        if len(texts) == rows:
            count += len(texts)
            yield Examples(path=path, texts=texts, text_pairs=pairs if has_pair else None,
                           labels=labels, lines=lines)
            texts, pairs, labels, lines = [], [], [], []
    if texts or not count:
        if not texts:
            raise errors.DataError(f"{path}: no examples; expected a header and rows with "
                                   f"columns {text_column!r}, optional {text_pair_column!r}, "
                                   f"{label_column!r}")
        yield Examples(path=path, texts=texts, text_pairs=pairs if has_pair else None,
                       labels=labels, lines=lines)


def read(path, text_column="text", text_pair_column="text_pair", label_column="label"):
    """Read a whole text classification file (see read_chunks)."""
    chunks = list(read_chunks(path, text_column, text_pair_column, label_column))
    return Examples(path=path, texts=sum((chunk.texts for chunk in chunks), []),
                    text_pairs=(None if chunks[0].text_pairs is None
                                else sum((chunk.text_pairs for chunk in chunks), [])),
                    labels=sum((chunk.labels for chunk in chunks), []),
                    lines=sum((chunk.lines for chunk in chunks), []))


@dataclasses.dataclass
class Summary:
    """What one pass over a file found, without keeping its texts."""

    path: str
    rows: int
    labels: typing.Set[str]
    has_pair: bool


def summarise(path, text_column="text", text_pair_column="text_pair", label_column="label",
              known_labels=None):
    """Check every row of ``path`` (chunk by chunk); with ``known_labels``, also that every
    label is one of them (naming the file and line of the first that is not)."""
    rows, labels, has_pair = 0, set(), False
    for chunk in read_chunks(path, text_column, text_pair_column, label_column):
        if known_labels is not None:
            label_ids(chunk, known_labels)
        rows += len(chunk.labels)
        labels.update(chunk.labels)
        has_pair = chunk.text_pairs is not None
    return Summary(path=path, rows=rows, labels=labels, has_pair=has_pair)


def label_names(labels):
    """The label map's names in id order: integers numerically, other strings sorted."""
    unique = set(labels)
    if all(label.lstrip("-").isdigit() for label in unique):
        return [str(value) for value in sorted(int(label) for label in unique)]
    return sorted(unique)


def label_ids(examples, names):
    """Map ``examples.labels`` to ids of ``names``; raise naming the first unknown label."""
    index = {name: position for position, name in enumerate(names)}
    ids = []
    for label, line in zip(examples.labels, examples.lines):
        if label not in index:
            raise errors.DataError(
                f"{examples.path}:{line}: label {label!r} is not in the label map "
                f"{names} (taken from the training file)")
        ids.append(index[label])
    return ids


def write_csv(path, texts, labels):
    """Write a ``text,label`` CSV atomically (the format ``read`` takes)."""
    temporary = f"{path}.partial-{os.getpid()}"
    with open(temporary, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["text", "label"])
        writer.writerows(zip(texts, labels))
    os.replace(temporary, path)
