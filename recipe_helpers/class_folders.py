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
"""

import dataclasses
import os
import typing

from toolkit import errors


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


@dataclasses.dataclass(frozen=True)
class LabelledFile:
    path: str  # the file to read: the original, or the converted copy check() returned
    relative: str  # "<class name>/<file name>", as list files name it
    label: int  # index into Listing.class_names


@dataclasses.dataclass
class Listing:
    files: typing.List[LabelledFile]
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
         ignore: typing.Collection[str] = ()) -> Listing:
    """List and check the labelled files of ``directory`` (see the module docstring).

    ``classes`` restricts the scan to those class folders (all must exist); by default
    every subfolder is a class.
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
    files, problems = [], []
    for label, name in enumerate(found):
        folder = os.path.join(directory, name)
        entries = sorted(entry for entry in os.listdir(folder)
                         if entry.lower().endswith(kind.extensions))
        if not entries:
            raise errors.DataError(
                f"{kind.class_word} folder {folder} has no {kind.items}; every "
                f"{kind.class_word} needs at least one file ending in "
                f"{', '.join(kind.extensions)}")
        usable = 0
        for entry in entries:
            path = os.path.join(folder, entry)
            try:
                readable_path = check(path)
            except UnusableFile as why:
                problems.append(f"{path} {why}")
                continue
            files.append(LabelledFile(readable_path, f"{name}/{entry}", label))
            usable += 1
        if not usable:
            raise errors.DataError(f"{kind.class_word} folder {folder} has no usable "
                                   f"{kind.items}: " + "; ".join(problems[-3:]))
    if problems and bad_files == "error":
        raise errors.DataError(
            f"{len(problems)} unusable {kind.items} in {directory} (--{kind.policy_key}=skip "
            "leaves them out): " + "; ".join(problems[:5]))
    return Listing(files=files, class_names=found, problems=problems)
