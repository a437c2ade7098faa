"""Versions of the libraries a run depends on, recorded in config.json.

Read from package metadata, so nothing heavy (transformers) is imported to learn it.
"""

import importlib.metadata
import platform

PACKAGES = ("tensorflow", "tf-keras", "tensorboard", "horovod", "transformers")


def collect():
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found
