"""Writing a file or a folder whole, and reading a JSON object back: the bottom floor.

Every file vitkit writes (checkpoints, run records, caches, reports, figures) goes through here,
so a crash at any moment leaves either the old complete file or the new complete one, never half
of either:

- :func:`atomic_write`: a temporary file in the same folder, flushed to disk, renamed into place;
- :func:`write_folder`: a folder built in a temporary sibling and swapped in whole. An existing
  folder of that name is moved aside first and removed only once the new one is in place, so a
  kill at any moment leaves one complete folder (:func:`find_complete` finds it).

This module imports nothing of vitkit but its errors, so that the data layer, preprocessing and
features can write files without importing the model or the checkpoint code.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from .errors import CheckpointError


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename inside it) to disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not supported on this platform
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@functools.cache
def _default_mode() -> int:
    """0666 less the umask, read once (reading it means setting it, which is not thread-safe)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Write a file through ``write(fileobj)`` to a temporary name, fsync, then rename into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _default_mode())  # mkstemp makes 0600 files; give the usual 0644 (per umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def _aside(final: Path) -> Path:
    """Where :func:`write_folder` keeps the previous ``final`` while the new one moves in."""
    return final.with_name(f".{final.name}.old")


@contextlib.contextmanager
def write_folder(final: str | os.PathLike, on_oserror: Callable[[OSError], Exception] | None = None) -> Iterator[Path]:
    """A folder written whole or not at all: the block fills a temporary sibling of ``final``
    (``final.tmp-PID``), which replaces ``final`` when the block ends well and is removed when it
    does not.

    A ``final`` that exists is renamed to ``.final.old`` just before the new one takes its place
    and removed afterwards; :func:`find_complete` returns that previous folder when a kill came
    between the two renames. ``on_oserror(error)`` turns an OSError (a full disk, above all) into
    a one-line error that names the place and what to do."""
    final = Path(final)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # left by an earlier process of the same pid
    tmp.mkdir(parents=True)
    try:
        yield tmp
        _swap_in(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise (on_oserror(e) if on_oserror is not None else e) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(tmp: Path, final: Path) -> None:
    old = _aside(final)
    if final.exists():
        if old.exists():  # a kill left both: keep whichever is complete as the one aside
            shutil.rmtree(final if not _complete(final) else old)
        if final.exists():
            os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old)


def _complete(folder: Path, marker: str = "config.json") -> bool:
    return (folder / marker).is_file()


def find_complete(final: str | os.PathLike, marker: str, also: str | None = None) -> Path | None:
    """The complete folder ``final``, or the previous one that a kill during
    :func:`write_folder`'s swap left aside. Complete means holding the file ``marker`` (written
    last) and the file ``also``."""
    final = Path(final)
    for candidate in (final, _aside(final)):
        if _complete(candidate, marker) and (also is None or (candidate / also).is_file()):
            return candidate
    return None


def read_json_object(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """A JSON file that must hold an object (of ``what``), or a one-line error naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the file is corrupt, write it again") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} should hold a JSON object of {what}, found {type(data).__name__}")
    return data
