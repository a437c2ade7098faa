"""One scanner for data sets laid out as one subfolder per class (images, speech clips).

    DIR/<class name>/<file>     e.g. flowers/rose/001.jpg, speech/yes/a1b2_nohash_0.wav

Class names are the subfolder names, sorted; hidden folders and those in ``ignore`` are
not classes. Every file with a listed extension is checked by the recipe's ``check``
function, which returns the path to read (the file itself, or a converted copy) or raises
:class:`UnusableFile` saying why. With ``bad_files="error"`` any unusable file stops the
scan with an error that names the first few and the config key that skips them; with
``"skip"`` they are left out and listed in :attr:`Listing.problems`. An empty class, a
class with no usable file, a missing folder and fewer than two classes are errors that
name the folder.

Given a ``cache_dir``, the scan's result is kept in a manifest (toolkit.manifests): the
next scan of the unchanged folder lists and checks nothing, it reads the manifest. Files
are checked by several threads at once, with progress lines on long scans.
"""

import collections
import concurrent.futures
import dataclasses
import os
import typing

import numpy as np

from toolkit import errors
from toolkit import manifests


class UnusableFile(Exception):
    """Raised by a file check: this file cannot be used; the message says why."""


@dataclasses.dataclass(frozen=True)
class FolderKind:
    """The words the scanner's messages use for one kind of data."""

    data: str  # "image": "image folder DIR does not exist"
    items: str  # "images": "class folder DIR/cat has no images"
    class_word: str  # "class" or "label"
    extensions: typing.Tuple[str, ...]  # lower case, with the dot
    policy_key: str  # the config key that chooses error or skip, e.g. "bad_images"


@dataclasses.dataclass
class Listing:
    """The usable files, as columns (an ImageNet-size folder has over a million)."""

    paths: typing.List[str]  # the files to read: originals, or converted copies check() returned
    relative: typing.List[str]  # "<class name>/<file name>", as list files name them
    labels: np.ndarray  # int32 indices into class_names
    class_names: typing.List[str]
    problems: typing.List[str]  # "<path> <why>" for every file left out

    def problems_note(self) -> str:
        """'' or '; skipped N unusable files, e.g. ...' for a data description."""
        if not self.problems:
            return ""
        return (f"; skipped {len(self.problems)} unusable files, e.g. "
                + "; ".join(self.problems[:3]))


def scan(directory: str, kind: FolderKind, check: typing.Callable[[str], str], *,
         bad_files: str = "error", classes: typing.Sequence[str] = (),
         ignore: typing.Collection[str] = (), cache_dir: str = "", check_name: str = "",
         rescan: bool = False) -> Listing:
    """List and check the labelled files of ``directory`` (see the module docstring).

    ``classes`` restricts the scan to those class folders (all must exist); by default
    every subfolder is a class. With a ``cache_dir`` the result is kept in a manifest
    (toolkit.manifests) and reused while the folder is unchanged; ``check_name`` names
    the check (and its options) so that another check scans again.
    """
    if not os.path.isdir(directory):
        raise errors.DataError(f"{kind.data} folder {directory} does not exist or is not a "
                               "folder")
    found = sorted(entry for entry in os.listdir(directory)
                   if os.path.isdir(os.path.join(directory, entry))
                   and not entry.startswith(".") and entry not in ignore)
    if classes:
        missing = [name for name in classes if name not in found]
        if missing:
            raise errors.DataError(f"no {kind.class_word} folder for {missing} in {directory}; "
                                   f"{kind.class_word} folders there: {found}")
        found = sorted(classes)
    if len(found) < 2:
        raise errors.DataError(
            f"{kind.data} folder {directory} needs at least two {kind.class_word} folders, "
            f"found {found}; expected {directory}/<{kind.class_word} name>/<file> with "
            f"files ending in {', '.join(kind.extensions)}")
    if cache_dir:
        content, _ = manifests.load_or_scan(
            cache_dir, f"{kind.data}-folder",
            {"directory": os.path.abspath(directory), "classes": found,
             "extensions": kind.extensions, "check": check_name},
            lambda: manifests.folder_times(directory, found),
            lambda: _scan_classes(directory, found, kind, check), rescan=rescan)
    else:
        content = _scan_classes(directory, found, kind, check)
    relative = content["relative"]
    prefix = os.path.join(directory, "")
    paths = [prefix + name for name in relative]
    for index, path in content["converted"].items():
        paths[int(index)] = path
    problems = content["problems"]
    if problems and bad_files == "error":
        raise errors.DataError(
            f"{len(problems)} unusable {kind.items} in {directory} (--{kind.policy_key}=skip "
            "leaves them out): " + "; ".join(problems[:5]))
    return Listing(paths=paths, relative=relative,
                   labels=np.array(content["labels"], np.int32), class_names=found,
                   problems=problems)


# Files checked at once: checks mostly wait for the file system (a network one, for big
# data sets), so threads overlap them.
CHECK_THREADS = 8


def _scan_classes(directory, class_names, kind, check):
    """Checks every file. Returns columns: {"relative": ["<class>/<file>"], "labels": [int],
    "converted": {index: path read instead of the file}, "problems": ["<path> <why>"]}."""
    entries = []
    for label, name in enumerate(class_names):
        folder = os.path.join(directory, name)
        names = sorted(entry for entry in os.listdir(folder)
                       if entry.lower().endswith(kind.extensions))
        if not names:
            raise errors.DataError(
                f"{kind.class_word} folder {folder} has no {kind.items}; every "
                f"{kind.class_word} needs at least one file ending in "
                f"{', '.join(kind.extensions)}")
        entries.extend((label, name, entry) for entry in names)

    def checked(entry):
        label, name, file_name = entry
        path = os.path.join(directory, name, file_name)
        try:
            return label, name, file_name, check(path), None
        except UnusableFile as why:
            return label, name, file_name, None, f"{path} {why}"

    relative, labels, converted, problems = [], [], {}, []
    usable = collections.Counter()
    progress = manifests.Progress(f"checking the {kind.items} of {directory}", len(entries))
    with concurrent.futures.ThreadPoolExecutor(CHECK_THREADS) as pool:
        for label, name, file_name, readable_path, problem in pool.map(checked, entries,
                                                                      chunksize=256):
            progress.advance()
            if problem:
                problems.append(problem)
            else:
                if readable_path != os.path.join(directory, name, file_name):
                    converted[len(relative)] = readable_path
                relative.append(f"{name}/{file_name}")
                labels.append(label)
                usable[label] += 1
    progress.finish()
    for label, name in enumerate(class_names):
        if not usable[label]:
            folder = os.path.join(directory, name)
            raise errors.DataError(f"{kind.class_word} folder {folder} has no usable "
                                   f"{kind.items}: " + "; ".join(
                                       [problem for problem in problems
                                        if problem.startswith(folder + os.sep)][:3]))
    return {"relative": relative, "labels": labels, "converted": converted,
            "problems": problems}
