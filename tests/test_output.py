"""What a user sees: the toolkit's own lines by default, everything with VERBOSE=1."""

import re
import subprocess

import pytest

from helpers import PROJECT_ROOT, TINY_IMAGE, environment

pytestmark = pytest.mark.multiprocess

# A C++ log line of TensorFlow (absl): severity, date, time, thread, file:line].
NATIVE_LOG_LINE = re.compile(
    r"^(\[\d+\]<std(out|err)>:)?[IWEF]\d{4} \d\d:\d\d:[\d.]+ +\d+ \S+:\d+\]")
NOISE = ("absl::InitializeLog", "cudart_stub", "cuInit", "cpu_feature_guard")


def make_train(run_dir, *variables, export=False):
    arguments = " ".join(TINY_IMAGE + ["--epochs=1", "--max_steps_per_epoch=3",
                                       f"--export={str(export).lower()}"])
    result = subprocess.run(["make", "--no-print-directory", "train", "RECIPE=image", "NP=2",
                             f"RUN_DIR={run_dir}", f"ARGS={arguments}", *variables],
                            cwd=PROJECT_ROOT, env=environment(), capture_output=True,
                            text=True, timeout=280)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return (result.stdout + result.stderr).splitlines()


@pytest.mark.timeout(600)
def test_default_output_is_the_toolkits_own_and_verbose_shows_everything(tmp_path):
    quiet = make_train(tmp_path / "quiet", export=True)
    assert any("[toolkit] done: validation" in line for line in quiet)
    # The export says when it starts and when it is done, with the time it took.
    exporting = [index for index, line in enumerate(quiet)
                 if line.endswith(f"[toolkit] exporting the model to {tmp_path}/quiet/export ...")]
    written = [index for index, line in enumerate(quiet) if re.search(
        rf"\[toolkit\] export {tmp_path}/quiet/export/1 written in \d+ s$", line)]
    assert len(exporting) == len(written) == 1 and exporting[0] < written[0], quiet
    noise = [line for line in quiet
             if NATIVE_LOG_LINE.match(line) or any(word in line for word in NOISE)]
    assert noise == [], noise

    verbose = make_train(tmp_path / "verbose", "VERBOSE=1")
    native = [line for line in verbose if NATIVE_LOG_LINE.match(line)]
    # The launcher's own process, horovodrun and both workers all import TensorFlow.
    assert len(native) >= 4, verbose
    assert any(line.startswith("[1]<stderr>:") for line in native), native
