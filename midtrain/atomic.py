"""Crash-safe writes: a file or folder appears complete or not at all (write elsewhere, fsync, rename)."""

from __future__ import annotations

import os
from pathlib import Path

from midtrain.errors import ConfigError


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str | os.PathLike) -> None:
    for root, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fsync_dir(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` with ``text``; readers see the old or the new content, never a partial one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def check_writable_dir(path: Path, field: str) -> None:
    """Prove that folder ``path`` can be created and written, creating nothing; else one-line ConfigError."""
    import tempfile

    path = Path(os.path.abspath(path))
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(field, f"{path} cannot be created: {existing} is a file")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".midtrain-write-test-"):
            pass
    except OSError as e:
        raise ConfigError(field, f"{path} is not writable ({existing}: {e.strerror or e})") from None
