"""Errors that are the user's to fix, as opposed to bugs.

Every mistake a user can make (a config key, a data file, a run folder, a hostfile, a
checkpoint, a recipe name, a launch setting, a run that cannot go on) raises a subclass
of :class:`UserError` whose message names the thing at fault and what would be valid.
Entry points catch ``UserError`` only: they print its one-line message and exit with
:data:`USER_ERROR_EXIT_CODE`. Anything else (a TensorFlow or toolkit bug) is left to
propagate, so it prints its traceback and exits 1.
"""

import sys

USER_ERROR_EXIT_CODE = 2
# A worker's exit codes for the guards that end a run on purpose (toolkit/worker/guards),
# which the launcher turns into a diagnosis.
LIFELINE_EXIT_CODE = 75  # the launcher is gone
STALL_EXIT_CODE = 76  # no batch finished for stall_shutdown_seconds


class UserError(Exception):
    """Something the user gave or did is wrong; the message says what to change."""


class ConfigError(UserError):
    """A config key or value is not valid."""


class DataError(UserError):
    """The user's data cannot be used as given."""


class RunFolderError(UserError):
    """The run folder cannot be used for this run."""


class HostfileError(UserError):
    """A hostfile line is not valid."""


class CheckpointError(UserError):
    """A checkpoint could not be written or read; the message names it."""


class UnknownRecipeError(UserError):
    """No recipe is registered under the name given."""


class LaunchError(UserError):
    """A launch setting (NP, timeouts, elastic or ssh settings) is not valid."""


class RemoteError(UserError):
    """A host cannot be used; the message names it."""


class TrainingError(UserError):
    """A run cannot continue; the message says why and what to do."""


class NonFiniteError(TrainingError):
    """Training produced NaN or Inf; the message names the step."""


def report(error, prefix="error"):
    """Print a user error as one line on stderr; return the exit code for it."""
    print(f"{prefix}: {error}", file=sys.stderr, flush=True)
    return USER_ERROR_EXIT_CODE
