"""The launcher refuses bad input before anything starts; user errors and bugs differ."""

import os
import signal
import subprocess
import time

import pytest

from helpers import (HOROVODRUN, PROJECT_ROOT, PYTHON, TINY_IMAGE, WORKER, environment, launch,
                     read_json, run)
from recipes import image
from toolkit import errors
from toolkit import recipe as recipe_lib
from toolkit import run_folder
from toolkit.launcher import horovodrun
from toolkit.launcher import launch as launch_lib



@pytest.mark.fast
def test_dry_run_builds_the_horovodrun_command(tmp_path, capsys):
    assert launch_lib.main(["--recipe=image", "--np=2", f"--run_dir={tmp_path}/r",
                            "--dry_run", "--epochs=1"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines()
                if line.startswith("[launch]"))
    assert "horovodrun -np 2 --gloo" in line and " -H localhost:2 " in line
    assert f"-m {WORKER} recipe=image run_dir={tmp_path}/r epochs=1" in line


# A signal that arrives while the SIGTERM handler is inside Event.set finds its lock held
# by the handler it interrupted; `with event._cond` puts the main thread in that state.
# faulthandler ends a process that hangs there, with exit code 1.
NESTED_SIGNAL_SCRIPT = """
import faulthandler, os, signal, sys
faulthandler.dump_traceback_later(float(sys.argv[2]), exit=True)
from horovod.runner import gloo_run
from toolkit.launcher import horovodrun
register = {"horovod": gloo_run.register_shutdown_event,
            "toolkit": horovodrun.register_shutdown_event}[sys.argv[1]]
event = register()
with event._cond:
    signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
for _ in range(1000):
    os.kill(os.getpid(), signal.SIGTERM)
print("shutdown event set" if event.wait(10) else "shutdown event not set", flush=True)
"""


def nested_signal(which, watchdog_seconds):
    return subprocess.run([PYTHON, "-c", NESTED_SIGNAL_SCRIPT, which, str(watchdog_seconds)],
                          env=environment(), cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.fast
def test_a_signal_during_the_shutdown_handler_does_not_hang_horovodrun():
    """Horovod's own handler deadlocks on a signal that interrupts it (the reason for the
    repair); the toolkit's sets the shutdown event, and a storm of SIGTERMs after it is
    harmless."""
    horovod = nested_signal("horovod", 5)
    assert horovod.returncode != 0 and "shutdown event" not in horovod.stdout, (
        "Horovod's handler no longer deadlocks: toolkit/launcher/horovodrun.py's repair "
        f"may be dropped\n{horovod.stdout}{horovod.stderr[-2000:]}")
    toolkit = nested_signal("toolkit", 60)
    assert toolkit.returncode == 0, toolkit.stderr[-3000:]
    assert toolkit.stdout.strip() == "shutdown event set"


def test_horovodrun_stops_its_workers_after_a_storm_of_sigterms(tmp_path):
    """The launcher's horovodrun, given many SIGTERMs at once (a process-group kill plus
    the forwarded one is already two), ends its workers and exits."""
    marker = tmp_path / "worker-started"
    worker = (f"import pathlib, time; pathlib.Path({str(marker)!r}).write_text('up'); "
              "time.sleep(600)")
    process = subprocess.Popen(
        [*HOROVODRUN, "-np", "2", "--gloo", "-H", "localhost:2", PYTHON, "-c", worker],
        env=environment(), cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), "the workers did not start"
        for _ in range(300):
            try:
                os.kill(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                break
        process.wait(timeout=60)
        time.sleep(1)
        survivors = subprocess.run(["pgrep", "-f", str(marker)], capture_output=True,
                                   text=True).stdout.split()
        assert not survivors, f"workers still running: {survivors}"
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.fast
def test_horovodrun_asks_horovod_about_gloo_once_per_build(tmp_path, monkeypatch):
    """horovodrun's own check (TensorFlow imported in a child process, seconds) runs for
    the first launch only, and again when Horovod's library changes."""
    asked = []
    monkeypatch.setattr(horovodrun.horovod_util, "gloo_built",
                        lambda verbose=False: asked.append(verbose) or True)
    monkeypatch.setattr(horovodrun, "CACHE_FILE", str(tmp_path / "cache" / "gloo.json"))
    assert horovodrun.libraries(), "Horovod's TensorFlow library was not found"
    assert [horovodrun.gloo_built(), horovodrun.gloo_built()] == [True, True]
    assert len(asked) == 1
    library = tmp_path / "mpi_lib.so"
    library.write_bytes(b"built once")
    monkeypatch.setattr(horovodrun, "libraries", lambda: [[str(library),
                                                           library.stat().st_size]])
    horovodrun.gloo_built()
    library.write_bytes(b"built again")
    horovodrun.gloo_built()
    horovodrun.gloo_built()
    assert len(asked) == 3


@pytest.fixture
def expect_refusal(capsys):
    """Run the launcher (in this process) on ``arguments``; check it refused them with a
    user error naming every fragment, and started nothing."""
    def check(arguments, *fragments):
        code = launch_lib.main(arguments)
        captured = capsys.readouterr()
        assert code == errors.USER_ERROR_EXIT_CODE, captured.out + captured.err
        assert "Nothing was launched." in captured.err
        for fragment in fragments:
            assert fragment in captured.err, captured.err
        assert "horovodrun" not in captured.out
    return check


def test_a_refusal_from_the_command_line_is_one_line_and_exit_2(tmp_path):
    result = launch(["--recipe=image", f"--run_dir={tmp_path}/r", "--epoch=3"], timeout=120,
                    check=False)
    assert result.returncode == errors.USER_ERROR_EXIT_CODE
    assert result.stderr.splitlines()[0].startswith(
        "error: unknown config key 'epoch' for ImageConfig; did you mean 'epochs'?")
    assert result.stderr.splitlines()[1:] == ["Nothing was launched."]
    assert not os.path.exists(tmp_path / "r")


@pytest.mark.timeout(300)
def test_config_reruns_a_runs_experiment_with_overrides_winning(tmp_path):
    """CONFIG=<a run's config.json> starts a new run with that run's recipe and resolved
    config; --key=value given with it wins."""
    first = tmp_path / "first"
    launch(["--recipe=image", "--np=1", f"--run_dir={first}", "--epochs=1",
            "--max_steps_per_epoch=2", "--export=false", "--seed=7", *TINY_IMAGE])
    second = tmp_path / "second"
    launch(["--np=1", f"--config={first}/config.json", f"--run_dir={second}",
            "--max_steps_per_epoch=3"])
    before = read_json(first / "config.json")
    after = read_json(second / "config.json")
    assert after["recipe"] == "image"
    assert after["config"] == dict(before["config"], max_steps_per_epoch=3)
    assert read_json(second / "summary.json")["global_steps"] == 3


@pytest.mark.fast
def test_config_file_written_by_hand(tmp_path, capsys, expect_refusal):
    """YAML or JSON, keys at the top level: used as given; mistakes name the file (and the
    line, or the key)."""
    hand = tmp_path / "experiment.yaml"
    hand.write_text("recipe: image\nwidth: 8\naugment: false\nbase_learning_rate: 0.01\n")
    assert launch_lib.main([f"--config={hand}", "--np=1", f"--run_dir={tmp_path}/r",
                            "--dry_run", "--width=12"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines()
                if line.startswith("[launch]"))
    assert "recipe=image" in line and " width=12 " in line and " augment=false " in line
    hand.write_text("recipe: image\nwidht: 8\n")
    expect_refusal([f"--config={hand}"], f"config file {hand}", "'widht'",
                   "did you mean 'width'")
    hand.write_text("recipe: image\nwidth: [8\n")
    expect_refusal([f"--config={hand}"], f"config file {hand} line 3 is not valid YAML")
    as_json = tmp_path / "experiment.json"
    as_json.write_text('{"recipe": "image",\n "width": 8,,}')
    expect_refusal([f"--config={as_json}"], f"config file {as_json} line 2 is not valid JSON")
    as_json.write_text('{"recipe": "bert", "config": {}}')
    expect_refusal([f"--config={as_json}", "--recipe=image"],
                   f"RECIPE=image but the config file {as_json} is for recipe 'bert'")
    expect_refusal([f"--config={tmp_path}/missing.json"],
                   f"config file {tmp_path}/missing.json cannot be read")


@pytest.mark.fast
def test_unknown_recipe_lists_the_known_ones(tmp_path, expect_refusal):
    expect_refusal(["--recipe=imag", f"--run_dir={tmp_path}/r"],
                   "unknown recipe 'imag'", "known recipes: bert, image",
                   "did you mean 'image'")


@pytest.mark.fast
def test_unknown_config_key(tmp_path, expect_refusal):
    expect_refusal(["--recipe=image", f"--run_dir={tmp_path}/r", "--epoch=3"],
                   "did you mean 'epochs'")


@pytest.mark.fast
def test_bad_np_and_hostfile(tmp_path, expect_refusal):
    expect_refusal(["--recipe=image", "--np=zero"], "NP must be a whole number")
    hosts = tmp_path / "hosts"
    hosts.write_text("localhost slots=2\nlocalhost slots=1\n")
    expect_refusal(["--recipe=image", f"--hostfile={hosts}"], f"{hosts}:2:", "already listed")
    hosts.write_text("localhost slots=2\n")
    expect_refusal(["--recipe=image", f"--hostfile={hosts}", "--np=3"],
                   "NP=3 is more than the 2 slots")


@pytest.mark.fast
def test_run_dir_of_another_recipe_or_config_is_not_touched(tmp_path, expect_refusal):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "config.json").write_text('{"recipe": "speech", "config": {}}')
    expect_refusal(["--recipe=image", f"--run_dir={run_dir}"], "holds a run of recipe 'speech'")
    (run_dir / "config.json").write_text('{"recipe": "image", "config": {"width": 64}}')
    expect_refusal(["--recipe=image", f"--run_dir={run_dir}"],
                   f"width: 64 -> {image.ImageConfig().width}")
    assert os.listdir(run_dir) == ["config.json"]


@pytest.mark.fast
def test_read_only_run_dir(tmp_path, expect_refusal):
    parent = tmp_path / "readonly"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        if os.access(parent, os.W_OK):  # root ignores permissions; use a read-only mount
            target = "/proc/toolkit-run"
        else:
            target = str(parent / "r")
        expect_refusal(["--recipe=image", f"--run_dir={target}"], "is not writable")
    finally:
        parent.chmod(0o700)


@pytest.mark.fast
def test_resuming_with_other_classes_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"recipe": "bert", "class_names": ["a", "b"]}')
    run_folder.check_same_classes(str(tmp_path), ["a", "b"])
    with pytest.raises(errors.RunFolderError, match=r"trained on classes \['a', 'b'\]"):
        run_folder.check_same_classes(str(tmp_path), ["a", "c"])


@pytest.mark.fast
def test_bad_data_is_refused_before_launch(tmp_path, expect_refusal):
    expect_refusal(["--recipe=image", f"--data_dir={tmp_path}/missing"],
                   f"image folder {tmp_path}/missing does not exist")
    (tmp_path / "images" / "cat").mkdir(parents=True)
    (tmp_path / "images" / "dog").mkdir(parents=True)
    from PIL import Image

    Image.new("L", (8, 8)).save(tmp_path / "images" / "cat" / "a.png")
    expect_refusal(["--recipe=image", f"--data_dir={tmp_path}/images"],
                   f"class folder {tmp_path}/images/dog has no images")
    Image.new("L", (8, 8)).save(tmp_path / "images" / "dog" / "b.png")
    (tmp_path / "images" / "dog" / "broken.png").write_bytes(b"not a png at all")
    expect_refusal(["--recipe=image", f"--data_dir={tmp_path}/images"],
                   "1 unusable images in", "broken.png cannot be read as an image",
                   "--bad_images=skip")
    expect_refusal(["--recipe=bert", f"--train_file={tmp_path}/none.csv",
                    f"--validation_file={tmp_path}/none.csv"],
                   f"cannot read text data file {tmp_path}/none.csv")
    expect_refusal(["--recipe=speech", f"--data_dir={tmp_path}/no-audio"],
                   f"speech folder {tmp_path}/no-audio does not exist")


@pytest.mark.fast
def test_a_user_error_is_one_line_and_a_bug_keeps_its_traceback(monkeypatch, capsys):
    """Entry points catch only UserError: exit 2 with the message. Any other exception
    (here a ValueError, as TensorFlow raises for its own bugs) is not mistaken for the
    user's: it propagates with its traceback."""
    def refuse(name):
        raise errors.UnknownRecipeError(f"unknown recipe {name!r}")

    monkeypatch.setattr(recipe_lib, "get", refuse)
    assert launch_lib.main(["--recipe=x"]) == errors.USER_ERROR_EXIT_CODE
    assert "error: unknown recipe 'x'\nNothing was launched." in capsys.readouterr().err

    def crash(name):
        raise ValueError("Tensor shapes are incompatible (a bug, not the user's input)")

    monkeypatch.setattr(recipe_lib, "get", crash)
    with pytest.raises(ValueError, match="Tensor shapes are incompatible"):
        launch_lib.main(["--recipe=x"])


BUG_IN_WORKER = r"""
import sys
from toolkit import recipe
def crash(name):
    raise ValueError("Tensor shapes are incompatible (a bug, not the user's input)")
recipe.get = crash
from toolkit.worker import train
sys.exit(train.main(sys.argv[1:]))
"""


@pytest.mark.multiprocess
def test_a_bug_in_a_worker_exits_with_its_traceback_not_as_a_user_error(tmp_path):
    bug = run([PYTHON, "-c", BUG_IN_WORKER, "--recipe=image", f"--run_dir={tmp_path}/r"],
              timeout=120, check=False)
    assert bug.returncode == 1
    assert "Traceback" in bug.stderr and "ValueError: Tensor shapes are incompatible" in bug.stderr
    user = run([PYTHON, "-m", WORKER, "--recipe=image", f"--run_dir={tmp_path}/r", "--epochs=-1"],
               timeout=120, check=False)
    assert user.returncode == errors.USER_ERROR_EXIT_CODE
    assert "Traceback" not in user.stderr
    assert user.stderr.strip().splitlines()[-1] == (
        "[toolkit] error: config key 'epochs' has invalid value -1: it must be an integer >= 1,"
        " or 0 for the recipe's choice for the data")

