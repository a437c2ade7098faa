"""TensorFlow's start-up noise, and how it is kept out of the output by default.

Importing TensorFlow 2.21 writes C++ log lines to stderr before its logging is set up,
so ``TF_CPP_MIN_LOG_LEVEL`` cannot silence them: absl's "All log messages before
absl::InitializeLog() ..." banner and "Could not find cuda drivers" (twice per process).
On a machine without a GPU the first operation then logs ``failed call to cuInit`` as an
error, a false alarm. The launcher, horovodrun and every worker import TensorFlow, so a
new user's first screen would be a dozen such lines per process.

By default, then: ``TF_CPP_MIN_LOG_LEVEL`` is 2 (errors only; a value the user set
wins); the launcher and every worker import TensorFlow and make its first device query
inside :func:`hidden`, which captures the process's native stderr and writes back every
line that is not noise; and the launcher drops noise lines from what horovodrun forwards.
``VERBOSE=1`` (``--verbose``) turns all of this off and sets the level to 0.
"""

import contextlib
import os
import re
import sys
import tempfile

VERBOSE_VARIABLE = "TOOLKIT_VERBOSE"  # "1": the launcher asks its workers to show everything

# absl's log line prefix: severity letter, MMDD, time, thread id, file:line]. Info and
# warning lines are noise at our default level; errors are kept, except cuInit's.
_ABSL_LINE = re.compile(r"^[IW]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [\w./-]+:\d+\] ")
_NOISE_LINES = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called"),
    re.compile(r"^E\d{4} .*\] failed call to cuInit: "),
    re.compile(r"^To enable the following instructions: .* rebuild TensorFlow"),
)
# horovodrun prefixes each forwarded worker line with "[rank]<stdout|stderr>:".
_HOROVOD_PREFIX = re.compile(r"^\[\d+\]<std(?:out|err)>:")


def without_horovod_prefix(line: str) -> str:
    """A worker's line as it printed it, without horovodrun's "[rank]<stderr>:"."""
    return _HOROVOD_PREFIX.sub("", line, count=1)


def is_noise(line: str) -> bool:
    """True for a TensorFlow start-up log line (also as forwarded by horovodrun)."""
    text = without_horovod_prefix(line)
    return bool(_ABSL_LINE.match(text)) or any(pattern.match(text) for pattern in _NOISE_LINES)


def set_level(verbose: bool, environment=os.environ) -> None:
    """TensorFlow's C++ log level for this process (or an environment to pass on): 2
    (errors) by default, 0 (everything) when verbose; a value already set wins."""
    environment.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "2")


@contextlib.contextmanager
def hidden(verbose: bool):
    """Capture this process's native stderr (file descriptor 2) for the block, then write
    back every line that :func:`is_noise` does not drop. Python's own messages printed
    in the block (warnings, a traceback) come back too, in order, after the block."""
    if verbose:
        yield
        return
    sys.stderr.flush()
    original = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(original, 2)
            os.close(original)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace")
                    .splitlines(keepends=True) if not is_noise(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()
