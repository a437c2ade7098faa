"""The build: its scripts pass shellcheck, and make help documents every target."""

import glob
import os
import re
import subprocess

import pytest

from helpers import PROJECT_ROOT

pytestmark = pytest.mark.fast


def test_build_scripts_pass_shellcheck():
    scripts = sorted(glob.glob(os.path.join(PROJECT_ROOT, "build", "*.sh"))) + [
        os.path.join(PROJECT_ROOT, ".ci", "run")]
    assert len(scripts) >= 3
    result = subprocess.run(["shellcheck", *scripts], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_make_help_lists_every_target_with_its_description():
    with open(os.path.join(PROJECT_ROOT, "Makefile")) as stream:
        makefile = stream.read()
    phony = re.search(r"^\.PHONY: ((?:.*\\\n)*.*)$", makefile, re.MULTILINE).group(1)
    targets = phony.replace("\\\n", " ").split()
    listed = subprocess.run(["make", "--no-print-directory", "help"], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, check=True).stdout
    described = dict(re.findall(r"^  ([a-z-]+) +(\S.*)$", listed, re.MULTILINE))
    assert sorted(described) == sorted(targets)
    assert "VERBOSE" in listed and "RECIPE" in listed
