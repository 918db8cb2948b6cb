"""Atomic file and directory writes: write to a temporary sibling, then rename over the target.

A reader (or a resumed sweep) therefore sees either the old file or the complete new one,
never a half-written one, even if the process is killed mid-write. A write the file system
refuses (read-only, no permission, disk full) removes its temporaries and raises WriteError
(a StoreError) naming the target and the OS's reason; `check_writable` asks the same
question before any work is done.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from bnrank.errors import WriteError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _normal_mode(path: Path, directory: bool = False) -> None:
    """Give a temporary file (0600) or directory (0700) the mode a plain open/mkdir would."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def write_error(path: str | Path, err: OSError) -> WriteError:
    """WriteError "cannot write PATH: REASON" for an OSError met while writing `path`."""
    return WriteError(path, os.strerror(err.errno) if err.errno else str(err))


def check_writable(path: str | Path) -> None:
    """Raise WriteError unless `path` (a file or directory to be written) could be created: its
    nearest existing ancestor must be a directory this process may write into. Creates nothing."""
    parent = Path(path).absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise WriteError(path, f"{parent} is not a directory")
    code = refusal(parent)
    if code is not None:
        raise WriteError(path, os.strerror(code))


def refusal(directory: Path) -> int | None:
    """The errno a write into `directory` would fail with (EROFS, EACCES), None if allowed."""
    if os.access(directory, os.W_OK | os.X_OK):
        return None
    return errno.EROFS if os.statvfs(directory).f_flag & os.ST_RDONLY else errno.EACCES


def write_with(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` then atomically move tmp_path to `path`. An OSError on the way
    (from the file system or the writer) leaves nothing behind and raises WriteError."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        writer(Path(tmp))
        _normal_mode(Path(tmp))
        os.replace(tmp, path)
    except OSError as err:
        raise write_error(path, err) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_with(path, lambda p: p.write_text(text))


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, allow_nan=True) + "\n")


def write_parquet(path: str | Path, df: pd.DataFrame) -> Path:
    return write_with(path, lambda p: df.to_parquet(p, index=False))


@contextmanager
def staged_dir(target: str | Path, overwrite: bool = False, merge: bool = False):
    """Yield a temporary directory beside `target`; on success it replaces `target` atomically.

    An existing `target` raises FileExistsError, unless `overwrite` (the whole directory is
    replaced) or `merge` (each staged file is renamed into it, its other files are kept: all
    are written before the first rename). On error the staging directory is removed and
    `target` is left as it was; an OSError (in the body too) raises WriteError naming `target`.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        _normal_mode(stage, directory=True)
    except OSError as err:
        raise write_error(target, err) from None
    try:
        try:
            yield stage
        except OSError as err:
            raise write_error(target, err) from None
        except WriteError as err:  # a file of the stage: name the target, not the temporary
            raise WriteError(target, err.reason) from None
        if target.exists() and not (overwrite or merge):
            raise FileExistsError(target)
        try:
            _publish(stage, target, merge)
        except OSError as err:
            raise write_error(target, err) from None
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def _publish(stage: Path, target: Path, merge: bool) -> None:
    """Move the finished `stage` to `target` (see `staged_dir`)."""
    if not target.exists():
        os.replace(stage, target)
    elif merge:
        for entry in sorted(stage.iterdir()):
            os.replace(entry, target / entry.name)
    else:
        trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.replace(target, trash / "old")
        os.replace(stage, target)
        shutil.rmtree(trash, ignore_errors=True)
