"""Fixtures the tests share. Helper functions live in helpers.py (imported, never a test
module: no test module imports another)."""

import pytest


@pytest.fixture
def run_dir(tmp_path):
    return str(tmp_path / "run")
