"""The BERT recipe: real pretrained weights, fine-tuning, two workers, the export."""

import json
import os

import numpy as np
import pytest

from helpers import (event_scalars, launch, predict_in_fresh_process, read_json,
                     tiny_arguments, train_single)
from recipe_helpers import text_files
from recipes import bert
from toolkit import config as config_lib
from toolkit import data as data_lib
from toolkit import errors

TINY = tiny_arguments("bert")


def sentence_embeddings(model, tokenizer, sentences):
    """Mean-pooled last hidden states of the BERT encoder inside the classifier."""
    transformer = next(layer for layer in model.layers if hasattr(layer, "bert"))
    encoded = tokenizer(sentences, padding=True, return_tensors="np")
    hidden = transformer.bert(dict(encoded), training=False).last_hidden_state.numpy()
    mask = encoded["attention_mask"][..., None]
    pooled = (hidden * mask).sum(axis=1) / mask.sum(axis=1)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


SIMILARITY_TRIPLETS = [  # (anchor, paraphrase, unrelated)
    ("A man is eating food.", "A man is eating a piece of bread.",
     "The stock market fell sharply."),
    ("The cat sleeps on the sofa.", "A kitten is napping on the couch.",
     "He repaired the engine."),
    ("It is raining heavily today.", "There is a downpour this afternoon.",
     "She plays the violin."),
]


def paraphrase_ranking_holds(model, tokenizer):
    for anchor, paraphrase, unrelated in SIMILARITY_TRIPLETS:
        embeddings = sentence_embeddings(model, tokenizer, [anchor, paraphrase, unrelated])
        if not embeddings[0] @ embeddings[1] > embeddings[0] @ embeddings[2] + 0.2:
            return False
    return True


@pytest.mark.timeout(200)
def test_default_weights_are_the_real_pretrained_minilm():
    config = bert.BertConfig()
    tokenizer = bert.load_tokenizer(bert.resolve_model_dir(config.model))
    classes = data_lib.Data(train=None, validation=None, validation_examples=0,
                            class_names=["a", "b"], description="")
    pretrained = bert.build_model(config, classes)
    # Only trained sentence encoders rank paraphrases far above unrelated sentences.
    assert paraphrase_ranking_holds(pretrained, tokenizer)
    random = bert.build_model(bert.BertConfig(pretrained=False), classes)
    assert not paraphrase_ranking_holds(random, tokenizer)


@pytest.mark.timeout(200)
def test_export_tokenizer_matches_the_training_tokenizer():
    import tensorflow as tf
    import tensorflow_text

    config = bert.BertConfig()
    tokenizer = bert.load_tokenizer(bert.resolve_model_dir(config.model))
    vocabulary = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    in_graph = tensorflow_text.FastBertTokenizer(
        vocab=[token for token, _ in vocabulary], token_out_type=tf.int32,
        lower_case_nfd_strip_accents=True)
    paths = bert.data_files(config)
    texts = text_files.read(paths[1]).texts + ["Café déjà vu: naïve façade!", "日本語 text"]
    expected = [ids[1:-1] for ids in tokenizer(texts)["input_ids"]]
    got = in_graph.tokenize(tf.constant(texts)).to_list()
    mismatches = [text for text, a, b in zip(texts, expected, got) if a != b]
    assert len(mismatches) <= len(texts) // 1000, mismatches[:5]


@pytest.mark.fast
def test_config_errors():
    with pytest.raises(errors.ConfigError, match="need --pretrained=false"):
        config_lib.build(bert.BertConfig, {"num_hidden_layers": "2"})
    with pytest.raises(errors.ConfigError, match="set both config keys"):
        config_lib.build(bert.BertConfig, {"train_file": "x.csv"})
    with pytest.raises(errors.DataError, match="model folder ./nowhere does not exist"):
        bert.resolve_model_dir("./nowhere")


@pytest.mark.multiprocess
@pytest.mark.timeout(400)
def test_tiny_bert_on_two_workers_learns_and_stays_identical(tmp_path):
    run_dir = str(tmp_path / "tiny")
    launch(["--recipe=bert", "--np=2", f"--run_dir={run_dir}", *TINY, "--epochs=3",
            "--max_train_examples=1024", "--base_learning_rate=0.001", "--warmup_epochs=0.2"])
    summary = read_json(os.path.join(run_dir, "summary.json"))
    assert summary["weights_identical_on_all_ranks"] and summary["world_size"] == 2
    losses = event_scalars(run_dir, "train", "epoch_loss")
    assert len(losses) == 3 and losses[-1] < losses[0] - 0.05, losses


def write_pairs(path, count, separator):
    """Paraphrase-or-not pairs: label 1 when both halves name the same animal."""
    animals = ["dog", "cat", "horse", "goose", "whale", "spider"]
    generator = np.random.default_rng(1)
    rows = []
    for _ in range(count):
        first, second = generator.choice(animals, 2)
        same = generator.random() < 0.5
        second = first if same else second
        rows.append((f"the {first} runs", f"a {second} sleeps", "same" if first == second
                     else "different"))
    with open(path, "w") as stream:
        stream.write(separator.join(["text", "text_pair", "label"]) + "\n")
        stream.writelines(separator.join(row) + "\n" for row in rows)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("switches", [["--mixed_precision=true"], ["--jit_compile=true"]])
def test_sentence_pairs_with_mixed_precision_and_xla(tmp_path, run_dir, switches):
    write_pairs(tmp_path / "train.tsv", 96, "\t")
    write_pairs(tmp_path / "dev.tsv", 32, "\t")
    train_single(run_dir, "bert", TINY + switches + [
        f"--train_file={tmp_path}/train.tsv", f"--validation_file={tmp_path}/dev.tsv",
        f"--cache_dir={tmp_path}/cache", "--epochs=1", "--max_steps_per_epoch=4"])
    summary = read_json(os.path.join(run_dir, "summary.json"))
    assert summary["global_steps"] == 4
    assert np.isfinite(summary["validation"]["loss"])
    labels = read_json(os.path.join(run_dir, "export", "1", "labels.json"))
    assert labels["class_names"] == ["different", "same"]
    if "--mixed_precision=true" in switches:  # bfloat16 here, on a CPU
        # The export computes in float32: a server without bfloat16 arithmetic would
        # emulate it, and round a text differently depending on its batch.
        graph = predict_in_fresh_process(GRAPH_TYPES, os.path.join(run_dir, "export", "1"),
                                         cwd=str(tmp_path))
        assert graph["float32"] and not graph["bfloat16"], graph


GRAPH_TYPES = r"""
import json, sys
import tensorflow as tf
import tensorflow_text  # registers the tokenizer ops the export uses
model = tf.saved_model.load(sys.argv[1])
graph = str(model.signatures["serving_default"].graph.as_graph_def())  # with its functions
print("RESULT " + json.dumps({"bfloat16": graph.count("DT_BFLOAT16"),
                              "float32": graph.count("DT_FLOAT")}))
"""


PREDICT = r"""
import json, sys
import numpy as np
import tensorflow as tf
import tensorflow_text  # registers the tokenizer ops the export uses
model = tf.saved_model.load(sys.argv[1])
texts = json.loads(sys.argv[2])
single = model.signatures["serving_default"](text=tf.constant(texts))
pairs = model.signatures["serving_pairs"](text=tf.constant(texts), text_pair=tf.constant(texts))
alone = [model.signatures["serving_default"](text=tf.constant([text]))["probabilities"][0]
         for text in texts[:30]]
print("RESULT " + json.dumps({
    "batch_vs_alone": float(np.abs(single["probabilities"][:30] - np.array(alone)).max()),
    "labels": [label.decode() for label in single["label"].numpy()],
    "sums": single["probabilities"].numpy().sum(axis=1).tolist(),
    "dtype": single["probabilities"].dtype.name,
    "pair_shape": list(pairs["probabilities"].shape)}))
"""


@pytest.mark.timeout(400)
def test_short_pretrained_fine_tune_beats_chance_and_its_export_answers_raw_strings(tmp_path):
    run_dir = str(tmp_path / "finetune")
    train_single(run_dir, "bert", ["--max_train_examples=1600", "--max_validation_examples=400",
                                   "--base_learning_rate=1e-4", "--log_every_steps=10"],
                 timeout=380)
    summary = read_json(os.path.join(run_dir, "summary.json"))
    validation = text_files.read(bert.data_files(bert.BertConfig())[1])
    majority = max(validation.labels.count(name) for name in set(validation.labels)) / len(
        validation.labels)
    assert summary["validation"]["accuracy"] > majority + 0.3, (summary["validation"], majority)

    texts, labels = validation.texts[:100], validation.labels[:100]
    answer = predict_in_fresh_process(PREDICT, os.path.join(run_dir, "export", "1"),
                                      json.dumps(texts), cwd=str(tmp_path))
    assert np.allclose(answer["sums"], 1.0, atol=1e-4) and answer["dtype"] == "float32"
    assert answer["pair_shape"] == [100, 6]
    # The export runs a batch sorted by length in chunks: each text answered as alone.
    assert answer["batch_vs_alone"] < 1e-5, answer["batch_vs_alone"]
    accuracy = np.mean([a == b for a, b in zip(answer["labels"], labels)])
    assert accuracy > majority + 0.3, accuracy


@pytest.mark.timeout(300)
def test_local_folder_with_tensorflow_weights(tmp_path, run_dir):
    """A Hugging Face folder holding tf_model.h5 is loaded, and then fine-tuned."""
    import transformers

    folder = str(tmp_path / "tiny-bert")
    tokenizer = bert.load_tokenizer(bert.default_model_dir())
    tokenizer.save_pretrained(folder)
    saved = transformers.TFBertModel(transformers.BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64))
    saved(saved.dummy_inputs)
    saved.save_pretrained(folder)
    assert os.path.exists(os.path.join(folder, "tf_model.h5"))

    loaded = bert.build_transformer(bert.BertConfig(model=folder), num_labels=6)
    np.testing.assert_array_equal(loaded.bert.embeddings.weight.numpy(),
                                  saved.bert.embeddings.weight.numpy())
    train_single(run_dir, "bert", [f"--model={folder}", "--max_train_examples=64",
                                   "--max_validation_examples=32", "--batch_size_per_worker=8",
                                   "--max_length=32", "--epochs=1", "--max_steps_per_epoch=2"])
    assert read_json(os.path.join(run_dir, "summary.json"))["global_steps"] == 2


@pytest.mark.fast
def test_a_hub_id_that_cannot_be_downloaded_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import importlib

    import huggingface_hub.constants

    importlib.reload(huggingface_hub.constants)
    with pytest.raises(errors.DataError, match="could not download model 'no-such/model'"):
        bert.resolve_model_dir("no-such/model")


@pytest.mark.fast
def test_text_is_read_and_tokenised_in_chunks_into_a_cache_read_by_index(tmp_path, monkeypatch):
    """Files larger than memory: rows are parsed and tokenised a chunk at a time (7 here),
    written to a memory-mapped cache, and read back by index exactly as tokenising the
    whole file at once would; an error in a later chunk still names its line."""
    rows = [(f"text number {index} " + "word " * (index % 9), ["cat", "dog", "eel"][index % 3])
            for index in range(40)]
    path = tmp_path / "train.csv"
    text_files.write_csv(str(path), [text for text, _ in rows], [label for _, label in rows])
    monkeypatch.setattr(text_files, "CHUNK_ROWS", 7)
    config = bert.BertConfig(cache_dir=str(tmp_path / "cache"), max_length=16)
    tokenizer = bert.load_tokenizer(bert.resolve_model_dir(config.model))
    chunks = list(text_files.read_chunks(str(path)))
    assert [len(chunk.texts) for chunk in chunks] == [7] * 5 + [5]
    tokens = bert.tokenize(str(path), ["cat", "dog", "eel"], tokenizer, config)
    assert isinstance(tokens["ids"], np.memmap)
    examples = bert.token_examples(tokens)
    whole = tokenizer([text for text, _ in rows], truncation=True, max_length=16)
    for index in (0, 13, 39):
        features, label = examples.load(np.int64(index))
        assert features["input_ids"].numpy().tolist() == whole["input_ids"][index]
        assert int(label) == index % 3
    assert examples.count == 40
    with open(path, "a") as stream:
        stream.write("a late row,horse\n")
    with pytest.raises(errors.DataError, match=r"train.csv:42: label 'horse' is not in the "
                                               r"label map"):
        bert.tokenize(str(path), ["cat", "dog", "eel"], tokenizer, config)
