"""What a user hands the tool, checked before any work: list flags, output paths, input files.

Each refusal is a `BadInput` whose text is one line naming the flag and the value (exit 2 at the
command line). Paths are checked for what will be done with them (a directory written into, a
file written or read), never only for existence, so a sweep does not measure for an hour and
then fail to write its first record.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from meo_profile.core.errors import BadInput


# -------------------------------------------------------------------------------- lists
def split_list(text: str, flag: str) -> list[str]:
    """'1,2,4' -> ['1', '2', '4']; an empty list or an empty item ('1,,2', '1,2,') is refused
    rather than dropped: a stray comma usually means a value was lost while typing."""
    items = [item.strip() for item in text.split(",")]
    if not any(items):
        raise BadInput(f"{flag} {text!r}: empty list; give comma-separated values")
    if not all(items):
        raise BadInput(f"{flag} {text!r}: empty item in the list (a stray comma?)")
    return items


# -------------------------------------------------------------------------------- paths
def _named(path: str | Path | None, flag: str) -> Path:
    if path is None or str(path).strip() == "":
        raise BadInput(f"{flag} {str(path or '')!r}: empty path; give a file or directory name")
    return Path(path)


def _reason(e: OSError) -> str:
    return e.strerror or errno.errorcode.get(e.errno or 0, "") or e.__class__.__name__


def _existing_ancestor(path: Path, flag: str) -> Path:
    """The nearest part of `path` that exists; it must be a directory (a file in the middle of
    a path can never become one)."""
    for parent in [path, *path.absolute().parents]:
        if parent.exists():
            if not parent.is_dir():
                raise BadInput(f"{flag} {str(path)!r}: {str(parent)!r} is a file, not a directory")
            return parent
    raise BadInput(f"{flag} {str(path)!r}: no part of this path exists")  # pragma: no cover


def _can_create_in(directory: Path, path: Path, flag: str) -> None:
    """Prove that `directory` takes a new file by creating (and removing) one: permission bits
    say nothing for root, or on a read-only file system."""
    try:
        with tempfile.TemporaryFile(dir=directory, prefix=".meo-profile-probe-"):
            pass
    except OSError as e:
        raise BadInput(f"{flag} {str(path)!r}: cannot write in {str(directory)!r} "
                       f"({_reason(e)})") from None


def output_dir(path: str | Path | None, flag: str = "--out") -> Path:
    """A directory results will be written into: it exists as a directory, or can be created
    (its nearest existing parent is a writable directory). Nothing is created here."""
    path = _named(path, flag)
    if path.exists() and not path.is_dir():
        raise BadInput(f"{flag} {str(path)!r}: a file is there; give a directory")
    _can_create_in(_existing_ancestor(path, flag), path, flag)
    return path


def output_file(path: str | Path | None, flag: str = "--out", overwrite: bool = True) -> Path:
    """A file that will be written: not a directory, in an existing writable directory; an
    existing file is refused unless `overwrite` (then it must be writable itself)."""
    path = _named(path, flag)
    if path.is_dir():
        raise BadInput(f"{flag} {str(path)!r}: is a directory; give a file name")
    parent = path.absolute().parent
    if parent.exists() and not parent.is_dir():
        raise BadInput(f"{flag} {str(path)!r}: {str(path.parent)!r} is a file, not a directory")
    if not parent.is_dir():
        raise BadInput(f"{flag} {str(path)!r}: directory {str(path.parent)!r} does not exist")
    if path.exists():
        if not overwrite:
            raise BadInput(f"{flag} {str(path)!r}: exists; pass --force to overwrite it, "
                           "or choose another name")
        try:
            with open(path, "a"):  # append mode: proves writability, changes nothing
                pass
        except OSError as e:
            raise BadInput(f"{flag} {str(path)!r}: cannot write it ({_reason(e)})") from None
        return path
    _can_create_in(parent, path, flag)
    return path


def read_text(path: str | Path | None, flag: str) -> str:
    """A UTF-8 text file's contents; a missing, unreadable or non-UTF-8 file is refused."""
    path = _named(path, flag)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise BadInput(f"{flag} {str(path)!r}: cannot read it ({_reason(e)})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInput(f"{flag} {str(path)!r}: not UTF-8 text (byte 0x{data[e.start]:02x} at "
                       f"offset {e.start})") from None


def describe_os_error(e: OSError) -> str:
    """One line for an OS error met while running: what failed, on which path."""
    where = f" {os.fsdecode(e.filename)!r}" if e.filename is not None else ""
    return f"{_reason(e)}{where}"
