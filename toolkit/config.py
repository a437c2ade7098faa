"""One typed config object per run.

Every recipe's config is a dataclass that derives from :class:`TrainConfig`. Defaults sit
next to a one-line reason. ``--key=value`` overrides are parsed by the field's declared type;
an unknown key is an error that names the nearest valid key, and a value of the wrong type
names the key, the value and what would be valid.
"""

import dataclasses
import difflib
import json
import typing

from toolkit import errors

_TRUE_WORDS = ("true", "1", "yes", "on")
_FALSE_WORDS = ("false", "0", "no", "off")


@dataclasses.dataclass
class TrainConfig:
    """Settings every recipe shares; a recipe subclasses this and adds its own fields."""

    # Schedule. An epoch is one pass over the training set by all workers together.
    epochs: int = 10  # recipes override with what reaches their accuracy target
    batch_size_per_worker: int = 64  # global batch = this x world size
    global_batch_size: int = 0  # if set, fixed: each worker takes global / workers (elastic)
    max_steps_per_epoch: int = 0  # 0 = a full epoch; small values make smoke runs
    max_train_examples: int = 0  # 0 = all; cut the training set (tests, quick tries)
    max_validation_examples: int = 0  # 0 = all

    # Data at scale (README, "Large data sets").
    cache_dir: str = ".cache/toolkit"  # data manifests, prepared data, token and decode caches
    rescan_data: bool = False  # scan the data source again even if its manifest is fresh
    # Decoded training and validation examples: kept in memory, in files under cache_dir
    # (disk), or decoded again every time (none); auto = memory when they fit
    # cache_budget_mb (each of the two, per worker), else none.
    cache: typing.Literal["auto", "memory", "disk", "none"] = "auto"
    cache_budget_mb: int = 1024
    # TFRecords: records shuffled together after the files' order is shuffled each epoch.
    shuffle_buffer: int = 10_000

    # Warm start (README, "Warm starts"): a new run's model from an earlier run's weights.
    init_from: str = ""  # RUN_DIR or checkpoint path; "" = from scratch (or the pretrained)
    new_head: bool = False  # other classes than init_from's: a new classification head

    # Optimiser. The learning rate is for ONE worker; the toolkit scales it by world size.
    optimizer: typing.Literal["adam", "adamw", "sgd"] = "adam"
    base_learning_rate: float = 1e-3  # Adam's usual default, for one worker
    lr_scaling: typing.Literal["linear", "sqrt", "none"] = "linear"  # Goyal et al. 2017
    warmup_epochs: float = 1.0  # ramp from base to scaled LR, avoids early divergence
    lr_decay: typing.Literal["cosine", "linear", "none"] = "cosine"  # to 0 at the last step
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0  # AdamW only (decoupled), 0 leaves it off

    # Numerics and speed.
    seed: int = 42  # same on every rank: one data order, same initial weights; augmentation
    # draws from (seed, epoch, example), so it differs between examples and ranks
    # true: float16 on GPU, bfloat16 on CPU (mixed_precision_type); auto: bfloat16 where
    # the hardware computes in it natively (CPUs with AMX or AVX-512 BF16, GPUs of compute
    # capability 8.0 or later), float32 elsewhere; false: float32.
    mixed_precision: typing.Literal["auto", "true", "false"] = "auto"
    # auto: float16 with dynamic loss scaling on GPUs, bfloat16 on CPUs; float16 forces
    # the GPU path anywhere (slow on CPUs: the tests use it to run that path).
    mixed_precision_type: typing.Literal["auto", "float16", "bfloat16"] = "auto"
    jit_compile: bool = False  # XLA; off by default because it recompiles per shape
    intra_op_threads: int = 0  # 0 = CPU cores / local workers, so workers share cores
    inter_op_threads: int = 0  # 0 = 1 when a worker has one core, else 2

    # How workers agree (README, "Local SGD"): allreduce = gradients averaged every step;
    # local_sgd = each worker steps alone on its shard and the weights are averaged every
    # local_steps steps, after local_sgd_warmup_epochs of synchronous steps (post-local
    # SGD, Lin et al. 2020): local_steps times fewer all-reduces.
    sync: typing.Literal["allreduce", "local_sgd"] = "allreduce"
    local_steps: int = 16
    local_sgd_warmup_epochs: float = 0.0

    # Horovod allreduce knobs (see toolkit/worker/distributed.py).
    fp16_allreduce: bool = False  # halves allreduce bytes at some precision cost
    # >1: accumulate the gradients of this many batches locally, then all-reduce once and
    # update (an effective batch that many times larger; the learning rate follows it).
    # Steps count batches: steps per epoch and checkpoint_every_steps must be multiples of
    # it (elastic_commit_steps is rounded up to one), so that checkpoints and elastic
    # commits fall between updates.
    backward_passes_per_step: int = 1
    adasum: bool = False  # Adasum reduction instead of averaging
    # 1 = all gradients in one grouped allreduce, negotiated once per step (observed once,
    # 2026-11-26, make bench on a 2-core x86_64 machine: +15 % samples/s with 2 workers).
    # 0 = one request per gradient, fused by Horovod, which can overlap communication with
    # the backward pass of large models on GPUs.
    allreduce_groups: int = 1
    fusion_threshold_mb: float = 0.0  # tensor fusion buffer; 0 = Horovod's default (128 MB)
    # Wait between Horovod's coordination cycles; 0 = 5 ms on CPU workers (Horovod's 1 ms
    # polling costs them compute: see toolkit.worker.runtime), Horovod's 1 ms on GPU hosts.
    cycle_time_ms: float = 0.0
    autotune: bool = False  # let Horovod tune fusion and cycle time (log: autotune.csv)
    timeline: bool = False  # Horovod timeline, a chrome://tracing file: timeline.json
    pin_cpus: bool = False  # CPU: pin each worker to its own intra_op_threads cores

    # Outputs.
    log_every_steps: int = 50  # progress line and TensorBoard step scalars
    checkpoints_to_keep: int = 3  # older ones are pruned after a new one is complete
    checkpoint_every_steps: int = 0  # also checkpoint mid-epoch; 0 = at epoch ends only
    elastic_commit_steps: int = 20  # elastic runs: in-memory commit every N steps
    export: bool = True  # write a SavedModel with a raw-input signature at the end
    confusion_matrix: bool = True  # TensorBoard image after each validation (rank 0)
    profile_steps: str = ""  # "10,20": TensorFlow profiler trace of these steps (rank 0)

    # Safety.
    deterministic: bool = False  # seeded, deterministic ops: a resumed run matches exactly
    on_nonfinite: typing.Literal["stop", "skip"] = "stop"  # NaN/Inf gradients: stop or skip
    stall_check_seconds: int = 60  # warn when no batch has finished for this long
    stall_shutdown_seconds: int = 300  # ...and stop the job after this (0 = warn forever)

    def validate(self) -> None:
        """Check value ranges; raise ConfigError naming the key. Subclasses extend."""
        require(self, "epochs", self.epochs >= 0,
                "an integer >= 1, or 0 for the recipe's choice for the data")
        require(self, "batch_size_per_worker", self.batch_size_per_worker >= 1, "an integer >= 1")
        for key in ("max_steps_per_epoch", "max_train_examples", "max_validation_examples",
                    "intra_op_threads", "inter_op_threads"):
            require(self, key, getattr(self, key) >= 0, "an integer >= 0 (0 means no limit/auto)")
        require(self, "base_learning_rate", self.base_learning_rate > 0, "a number > 0")
        require(self, "warmup_epochs", self.warmup_epochs >= 0, "a number >= 0")
        require(self, "momentum", 0 <= self.momentum < 1, "a number in [0, 1)")
        require(self, "weight_decay", self.weight_decay >= 0, "a number >= 0")
        require(self, "backward_passes_per_step", self.backward_passes_per_step >= 1,
                "an integer >= 1")
        for key in ("max_steps_per_epoch", "checkpoint_every_steps"):
            require(self, key, getattr(self, key) % self.backward_passes_per_step == 0,
                    f"a multiple of backward_passes_per_step ({self.backward_passes_per_step})"
                    ": checkpoints are taken between updates, when no gradients are half "
                    "accumulated")
        require(self, "new_head", not self.new_head or bool(self.init_from),
                "false unless init_from names the run whose weights the new head goes on")
        require(self, "cache_budget_mb", self.cache_budget_mb >= 0, "an integer >= 0")
        require(self, "shuffle_buffer", self.shuffle_buffer >= 1, "an integer >= 1")
        require(self, "log_every_steps", self.log_every_steps >= 1, "an integer >= 1")
        require(self, "elastic_commit_steps", self.elastic_commit_steps >= 1, "an integer >= 1")
        require(self, "checkpoints_to_keep", self.checkpoints_to_keep >= 1, "an integer >= 1")
        for key in ("checkpoint_every_steps", "stall_check_seconds", "stall_shutdown_seconds",
                    "global_batch_size"):
            require(self, key, getattr(self, key) >= 0, "an integer >= 0")
        require(self, "allreduce_groups", self.allreduce_groups >= 0, "an integer >= 0")
        require(self, "local_steps", self.local_steps >= 1, "an integer >= 1")
        require(self, "local_sgd_warmup_epochs", self.local_sgd_warmup_epochs >= 0,
                "a number >= 0")
        if self.sync == "local_sgd":
            # Both change what is all-reduced every step, which local SGD does not do.
            require(self, "backward_passes_per_step", self.backward_passes_per_step == 1,
                    "1 with sync=local_sgd (its local steps already replace accumulation)")
            require(self, "adasum", not self.adasum,
                    "false with sync=local_sgd (the weights are averaged, not Adasum-combined)")
        for key in ("fusion_threshold_mb", "cycle_time_ms"):
            require(self, key, getattr(self, key) >= 0, "a number >= 0 (0 = the default)")
        if self.profile_steps:
            parts = self.profile_steps.split(",")
            if len(parts) != 2 or not all(part.isdigit() for part in parts) or not (
                    0 < int(parts[0]) <= int(parts[1])):
                raise errors.ConfigError(
                    f"config key 'profile_steps' got {self.profile_steps!r}; expected "
                    "'FIRST,LAST' steps, e.g. '10,20'")
        if self.stall_shutdown_seconds and self.stall_shutdown_seconds < self.stall_check_seconds:
            raise errors.ConfigError(
                "config key 'stall_shutdown_seconds' must be 0 (never) or at least "
                f"stall_check_seconds ({self.stall_check_seconds})")


def require(config: "TrainConfig", key: str, condition: bool, valid: str) -> None:
    """Raise ConfigError naming ``key``, its value and ``valid`` unless ``condition``."""
    if not condition:
        raise errors.ConfigError(f"config key '{key}' has invalid value "
                                 f"{getattr(config, key)!r}: it must be {valid}")


ConfigT = typing.TypeVar("ConfigT", bound=TrainConfig)


def field_types(config_class: typing.Type[TrainConfig]) -> typing.Dict[str, typing.Any]:
    """Map each field name of a config dataclass to its resolved type."""
    hints = typing.get_type_hints(config_class)
    return {field.name: hints[field.name] for field in dataclasses.fields(config_class)}


def parse_value(key: str, text: str, value_type: typing.Any) -> typing.Any:
    """Convert the string ``text`` to ``value_type``; raise ConfigError naming ``key``."""
    if typing.get_origin(value_type) is typing.Literal:
        choices = typing.get_args(value_type)
        if text not in choices:
            raise errors.ConfigError(f"config key '{key}' got {text!r}; valid values: "
                                     + ", ".join(repr(choice) for choice in choices))
        return text
    if value_type is bool:
        if text.lower() in _TRUE_WORDS:
            return True
        if text.lower() in _FALSE_WORDS:
            return False
        raise errors.ConfigError(
            f"config key '{key}' expects a boolean (true/false), got {text!r}")
    if value_type in (int, float):
        try:
            return value_type(text)
        except ValueError:
            kind = "an integer" if value_type is int else "a number"
            raise errors.ConfigError(
                f"config key '{key}' expects {kind}, got {text!r}") from None
    if value_type is str:
        return text
    raise TypeError(f"config key '{key}' has unsupported type {value_type!r}")


def read_file(path: str) -> typing.Tuple[typing.Optional[str], typing.Dict[str, str]]:
    """A config file: a run's ``config.json`` (``{"recipe": ..., "config": {...}}``) or one
    written by hand, JSON or YAML (``.yaml``/``.yml``), either that shape or the keys at the
    top level with an optional ``recipe``. Returns (recipe name or None, the keys as
    override strings); ConfigError naming the file (and line) when it cannot be used."""
    try:
        with open(path) as stream:
            text = stream.read()
    except OSError as error:
        raise errors.ConfigError(f"config file {path} cannot be read: {error.strerror}") from None
    if path.lower().endswith((".yaml", ".yml")):
        import yaml

        try:
            content = yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise errors.ConfigError(f"config file {path}{where} is not valid YAML: "
                                     f"{getattr(error, 'problem', None) or error}") from None
    else:
        try:
            content = json.loads(text)
        except ValueError as error:
            raise errors.ConfigError(f"config file {path} line {error.lineno} is not valid "
                                     f"JSON: {error.msg}") from None
    if not isinstance(content, dict):
        raise errors.ConfigError(f"config file {path} must hold a mapping of config keys "
                                 f"(and optionally 'recipe'), not {type(content).__name__}")
    recipe = content.get("recipe")
    keys = content["config"] if isinstance(content.get("config"), dict) else {
        key: value for key, value in content.items() if key != "recipe"}
    if recipe is not None and not isinstance(recipe, str):
        raise errors.ConfigError(f"config file {path}: 'recipe' must be a recipe name, "
                                 f"got {recipe!r}")
    overrides = {}
    for key, value in keys.items():
        if isinstance(value, (dict, list)) or value is None:
            raise errors.ConfigError(f"config file {path}: key '{key}' must be a single "
                                     f"value, got {value!r}")
        overrides[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return recipe, overrides


def split_overrides(arguments: typing.Iterable[str]) -> typing.Dict[str, str]:
    """Turn ``["--key=value", ...]`` into an ordered dict; reject anything else."""
    overrides = {}
    for argument in arguments:
        if not argument.startswith("--") or "=" not in argument:
            raise errors.ConfigError(
                f"config override {argument!r} is not of the form --key=value")
        key, value = argument[2:].split("=", 1)
        overrides[key.replace("-", "_")] = value
    return overrides


def build(config_class: typing.Type[ConfigT], overrides: typing.Mapping[str, str]) -> ConfigT:
    """Make a validated ``config_class`` from defaults plus string ``overrides``."""
    types = field_types(config_class)
    values = {}
    for key, text in overrides.items():
        if key not in types:
            raise errors.ConfigError(_unknown_key_message(key, config_class, types))
        values[key] = parse_value(key, text, types[key])
    config = config_class(**values)
    config.validate()
    return config


def _unknown_key_message(key, config_class, types):
    message = f"unknown config key '{key}' for {config_class.__name__}"
    nearest = difflib.get_close_matches(key, types, n=1, cutoff=0.6)
    if nearest:
        message += f"; did you mean '{nearest[0]}'?"
    return message + " Valid keys: " + ", ".join(sorted(types))


def describe(config_class: typing.Type[TrainConfig]) -> typing.List[str]:
    """Lines listing each key with its type and default, for ``--help``."""
    lines = []
    defaults = config_class()
    for key, value_type in field_types(config_class).items():
        if typing.get_origin(value_type) is typing.Literal:
            type_name = "|".join(typing.get_args(value_type))
        else:
            type_name = value_type.__name__
        lines.append(f"  --{key}={getattr(defaults, key)!r}  ({type_name})")
    return lines


def to_dict(config: TrainConfig) -> typing.Dict[str, typing.Any]:
    return dataclasses.asdict(config)


def to_json(config: TrainConfig) -> str:
    return json.dumps(to_dict(config), indent=2, sort_keys=True)
