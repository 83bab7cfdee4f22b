"""Durable, atomic file writes and plain JSON values: what every part of moejet writes files with.

Every file moejet writes goes through :func:`atomic_output`: the bytes go to a temporary name next to the target,
are fsynced, and the name is renamed over the target (then the directory is fsynced), so an interrupted run leaves
either the old file or the new one, never a truncated one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path``, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        fsync_path(tmp)  # the data is on disk before the name points at it (else a power cut leaves 0 bytes)
        os.replace(tmp, path)
        fsync_path(path.parent)  # ... and the rename itself is durable
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new temporary directory next to ``path`` (absent or empty) to fill; on success its files get the
    usual permissions (0666 / 0777 less the umask: ``mkdtemp`` makes a private 0700 folder) and it is renamed to
    ``path``, else it is deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        mask = _umask()
        for entry in (tmp, *tmp.rglob("*")):
            os.chmod(entry, (0o777 if entry.is_dir() else 0o666) & ~mask)
            if entry.is_file():
                fsync_path(entry)
        if path.exists():
            path.rmdir()  # empty (the caller checked): a non-empty one fails here, and nothing is replaced
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's (or a directory's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def plain_json(value: Any) -> Any:
    """``value`` with ranges, tuples and sets turned into lists and mapping keys into strings (recursively), as
    JSON and YAML write and read them back."""
    if isinstance(value, (range, tuple, set, list)):
        return [plain_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain_json(v) for k, v in value.items()}
    return value


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """``obj`` (made plain with :func:`plain_json`) as indented JSON, atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(plain_json(obj), indent=2) + "\n")
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return Path(path)
