"""The run folder: what a run writes, and whether an existing one may be resumed.

Layout of ``RUN_DIR`` (default ``runs/<recipe>/<timestamp>/``)::

    config.json    recipe, resolved config, world size, hosts, library versions
    tensorboard/   train/ and validation/ event files (make tensorboard)
    checkpoints/   tf.train checkpoints, one per epoch, the newest few kept
    export/        TF Serving base path: 1/, 2/, ... each a SavedModel taking raw inputs,
                   with its labels.json
    summary.json   final validation metrics, epochs, steps, speed, weight hashes
    timeline.json  Horovod timeline (--timeline=true)
    autotune.csv   Horovod autotuning log (--autotune=true)

Only the chief (rank 0) writes here. Folders are created with the user's umask.
"""

import dataclasses
import datetime
import json
import os
import tempfile
import typing

from toolkit import errors

# Keys that may differ when a run is resumed: they change how long it runs or what it
# logs, not what the checkpoint holds. Any other difference means a different experiment.
RESUMABLE_CHANGES = frozenset({
    "epochs", "log_every_steps", "export", "checkpoints_to_keep", "checkpoint_every_steps",
    "intra_op_threads", "inter_op_threads", "max_validation_examples", "on_nonfinite",
    "stall_check_seconds", "stall_shutdown_seconds", "elastic_commit_steps",
    "fusion_threshold_mb", "cycle_time_ms", "autotune", "timeline", "pin_cpus",
    "confusion_matrix", "profile_steps", "init_from", "new_head"})


def default_path(runs_root: str, recipe_name: str,
                 now: typing.Optional[datetime.datetime] = None) -> str:
    stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
    return os.path.join(runs_root, recipe_name, stamp)


@dataclasses.dataclass(frozen=True)
class RunPaths:
    """Where each part of a run lives inside its run folder (see the module docstring)."""

    run_dir: str
    config: str
    summary: str
    tensorboard: str
    checkpoints: str
    export: str
    timeline: str
    autotune: str

    @classmethod
    def of(cls, run_dir: str) -> "RunPaths":
        return cls(run_dir=run_dir,
                   config=os.path.join(run_dir, "config.json"),
                   summary=os.path.join(run_dir, "summary.json"),
                   tensorboard=os.path.join(run_dir, "tensorboard"),
                   checkpoints=os.path.join(run_dir, "checkpoints"),
                   export=os.path.join(run_dir, "export"),
                   timeline=os.path.join(run_dir, "timeline.json"),
                   autotune=os.path.join(run_dir, "autotune.csv"))


def read_json(path):
    with open(path) as stream:
        return json.load(stream)


def write_json(path, content):
    """Write JSON atomically: a reader sees the old file or the new one, never half."""
    directory = os.path.dirname(path) or "."
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(descriptor, "w") as stream:
            json.dump(content, stream, indent=2, sort_keys=True, default=str)
            stream.write("\n")
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _umask():
    current = os.umask(0)
    os.umask(current)
    return current


def previous_config(run_dir: str) -> typing.Dict[str, typing.Any]:
    """The config of the run ``run_dir`` holds ({} if none, or if unreadable: the checks
    before launch report that)."""
    try:
        return read_json(RunPaths.of(run_dir).config).get("config", {})
    except (OSError, ValueError, AttributeError):
        return {}


def check_resumable(run_dir: str, recipe_name: str,
                    config_dict: typing.Dict[str, typing.Any]) -> bool:
    """Raise RunFolderError if ``run_dir`` holds a run this one must not resume or overwrite.

    Returns True when there is an earlier run to resume, False for a new folder.
    """
    config_path = RunPaths.of(run_dir).config
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise errors.RunFolderError(f"RUN_DIR {run_dir} exists and is not a folder")
    if not os.path.exists(config_path):
        # Horovod creates timeline.json / autotune.csv at init, before this check.
        ours = {"timeline.json", "autotune.csv"}
        if os.path.isdir(run_dir) and any(not name.startswith(".") and name not in ours
                                          for name in os.listdir(run_dir)):
            raise errors.RunFolderError(
                f"RUN_DIR {run_dir} is not empty and holds no config.json, so it is not a run "
                "of this toolkit; choose a new or empty folder")
        return False
    try:
        previous = read_json(config_path)
    except (OSError, ValueError) as error:
        raise errors.RunFolderError(f"cannot read {config_path}: {error}; refusing to reuse "
                                    f"RUN_DIR {run_dir}") from None
    if previous.get("recipe") != recipe_name:
        raise errors.RunFolderError(
            f"RUN_DIR {run_dir} holds a run of recipe {previous.get('recipe')!r}, not "
            f"{recipe_name!r}; choose another RUN_DIR (nothing was changed)")
    old_config = previous.get("config", {})
    # Keys only one side knows (a toolkit upgrade added or removed one) are not compared.
    changed = sorted(key for key in set(old_config) & set(config_dict)
                     if key not in RESUMABLE_CHANGES
                     and old_config.get(key) != config_dict.get(key))
    if changed:
        details = ", ".join(f"{key}: {old_config.get(key)!r} -> {config_dict.get(key)!r}"
                            for key in changed)
        raise errors.RunFolderError(
            f"RUN_DIR {run_dir} holds a run with a different config ({details}); resuming it "
            "would mix two experiments. Use the old values or a new RUN_DIR. Keys that may "
            "change on resume: " + ", ".join(sorted(RESUMABLE_CHANGES)))
    return True


def check_same_classes(run_dir: str, class_names: typing.Sequence[str]) -> None:
    """Refuse to resume a run whose data had other classes (a different label map)."""
    config_path = RunPaths.of(run_dir).config
    if not os.path.exists(config_path):
        return
    previous = read_json(config_path).get("class_names")
    if previous is not None and list(previous) != list(class_names):
        raise errors.RunFolderError(
            f"RUN_DIR {run_dir} was trained on classes {previous}, but the data now has "
            f"{list(class_names)}; the checkpoint's output layer would not match. Use the "
            "original data or a new RUN_DIR")


def check_writable(run_dir: str) -> None:
    """Create ``run_dir`` if needed and prove we can write in it; raise RunFolderError."""
    try:
        os.makedirs(run_dir, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as error:
        raise errors.RunFolderError(f"RUN_DIR {run_dir} is not writable: {error.strerror}; "
                                    "choose a folder you can write to") from None
