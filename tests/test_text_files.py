"""Text classification files and the built-in WordNet topics data set."""

import json

import pytest

from recipe_helpers import text_files
from recipe_helpers import wordnet_topics
from toolkit import errors

pytestmark = pytest.mark.fast


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_csv_with_string_labels_and_quoted_commas(tmp_path):
    path = write(tmp_path / "train.csv", 'text,label\n"a dog, barking",animal\nan oak tree,plant\n')
    examples = text_files.read(path)
    assert examples.texts == ["a dog, barking", "an oak tree"]
    assert examples.text_pairs is None
    assert examples.labels == ["animal", "plant"]
    assert text_files.label_names(examples.labels) == ["animal", "plant"]


def test_csv_fields_spanning_lines_keep_their_newlines_and_later_line_numbers(tmp_path):
    path = write(tmp_path / "multi.csv",
                 'text,label\n"first line\nsecond line",a\nplain,b\nbroken,\n')
    with pytest.raises(errors.DataError, match=r"multi.csv:5: empty 'label'"):
        text_files.read(path)
    path = write(tmp_path / "multi.csv", 'text,label\n"first line\nsecond line",a\nplain,7\n')
    examples = text_files.read(path)
    assert examples.texts == ["first line\nsecond line", "plain"]
    assert examples.labels == ["a", "7"] and examples.lines == [3, 4]


def test_tsv_sentence_pairs_with_integer_labels(tmp_path):
    path = write(tmp_path / "dev.tsv",
                 "text\ttext_pair\tlabel\nA man eats.\tSomeone eats.\t1\nIt rains.\tA cat.\t10\n"
                 "Hi.\tHello.\t2\n")
    examples = text_files.read(path)
    assert examples.text_pairs == ["Someone eats.", "A cat.", "Hello."]
    names = text_files.label_names(examples.labels)
    assert names == ["1", "2", "10"]  # integers in numeric order
    assert text_files.label_ids(examples, names) == [0, 2, 1]


def test_jsonl_with_custom_columns(tmp_path):
    rows = [{"sentence": "good film", "y": 1}, {"sentence": "bad film", "y": 0}]
    path = write(tmp_path / "x.jsonl", "\n".join(json.dumps(row) for row in rows) + "\n\n")
    examples = text_files.read(path, text_column="sentence", label_column="y")
    assert examples.texts == ["good film", "bad film"] and examples.labels == ["1", "0"]
    assert examples.lines == [1, 2]


@pytest.mark.parametrize("name, content, message", [
    ("a.csv", "sentence,label\nhi,x\n", "a.csv:2: missing column 'text'; found columns "
     "['label', 'sentence']"),
    ("b.csv", "", "b.csv: no examples"),
    ("c.csv", "text,label\n", "c.csv: no examples"),
    ("d.jsonl", '{"text": "a", "label": 1}\n{oops\n', "d.jsonl:2: not valid JSON"),
    ("e.csv", "text,label\nhi,\n", "e.csv:2: empty 'label'"),
    ("f.txt", "text,label\nhi,x\n", "unknown text file type '.txt'"),
    ("g.csv", "text,label\nhi,x,extra\n", "g.csv:2: more fields than the header"),
])
def test_bad_files_name_file_and_line(tmp_path, name, content, message):
    with pytest.raises(errors.DataError) as error:
        text_files.read(write(tmp_path / name, content))
    assert message in str(error.value)


def test_validation_label_not_in_the_label_map(tmp_path):
    validation = text_files.read(write(tmp_path / "dev.csv", "text,label\na,cat\nb,fish\n"))
    with pytest.raises(errors.DataError, match=r"dev.csv:3: label 'fish' is not in the label "
                       r"map \['cat', 'dog'\]"):
        text_files.label_ids(validation, ["cat", "dog"])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(errors.DataError, match="cannot read text data file .*nope.csv"):
        text_files.read(str(tmp_path / "nope.csv"))


def test_wordnet_topics_are_real_definitions_with_a_fixed_split(tmp_path):
    paths = wordnet_topics.prepare("/usr/share/wordnet", wordnet_topics.DEFAULT_TOPICS,
                                   str(tmp_path / "a"))
    train, validation = text_files.read(paths["train"]), text_files.read(paths["validation"])
    assert len(train.texts) > 30000 and len(validation.texts) > 3000
    assert sorted(set(train.labels)) == sorted(wordnet_topics.DEFAULT_TOPICS)
    assert not set(train.texts) & set(validation.texts)  # no definition in both splits
    assert all('"' not in text for text in train.texts[:1000])  # usage examples stripped
    again = wordnet_topics.prepare("/usr/share/wordnet", wordnet_topics.DEFAULT_TOPICS,
                                   str(tmp_path / "b"))
    for split in ("train", "validation"):
        with open(paths[split]) as first, open(again[split]) as second:
            assert first.read() == second.read()
    with pytest.raises(errors.DataError, match="unknown WordNet topics \\['weather'\\]"):
        wordnet_topics.prepare("/usr/share/wordnet", ["weather"], str(tmp_path / "c"))
