"""Crash-safe writes: a file or folder appears complete or not at all (write elsewhere, fsync, rename)."""

from __future__ import annotations

import errno
import os
import shutil
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
    """Replace ``path`` with ``text``; readers see the old or the new content, never a partial one. A full
    disk is one line naming the file, and leaves the old content and no temporary file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if disk_full(e):
            raise disk_full_error(str(path), path.parent, len(text.encode())) from None
        raise
    fsync_dir(path.parent)


def _chain(e: BaseException | None, context: bool = True):
    """``e``, what raised it (``__cause__``; with ``context``, what it was handling too), and the per-rank failures
    torch.distributed.checkpoint's CheckpointException collects."""
    seen = set()
    stack = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        yield x
        stack += [x.__cause__, x.__context__] if context else [x.__cause__]
        failures = getattr(x, "failures", None)  # {rank: exception or (exception, traceback)}
        if isinstance(failures, dict):
            stack += [f[0] if isinstance(f, tuple) else f for f in failures.values()]


FULL_TEXTS = ("No space left on device", "Disk quota exceeded")
# torch.save's zip writer does not raise the OSError of a short write: it fails later, on its own bookkeeping
ZIP_WRITER_TEXTS = ("PytorchStreamWriter failed", "unexpected pos")


def disk_full(e: BaseException) -> bool:
    """Whether ``e`` (or what caused it, or a rank's or worker's error it reports) is a full disk or an exceeded
    quota."""
    return any((isinstance(x, OSError) and x.errno in (errno.ENOSPC, errno.EDQUOT))
               or any(text in str(x) for text in FULL_TEXTS) for x in _chain(e))


def write_error(e: BaseException, folder: str | os.PathLike) -> OSError | None:
    """The OSError behind a failed write into ``folder``, or None when ``e`` is not a write error.

    Read from ``e``, what raised it (``__cause__``, not an error merely handled before it) and DCP's per-rank
    failures: an OSError is returned as it is; a full disk said only in words becomes ENOSPC; torch.save's
    zip-writer failure (it loses the short write's errno) is read by writing 1 MiB into ``folder`` right away:
    that write's errno (ENOSPC, EDQUOT, ...), or EIO with the writer's text when it succeeds."""
    chain = list(_chain(e, context=False))
    for x in chain:
        if isinstance(x, OSError):
            return x
    for x in chain:
        if any(text in str(x) for text in FULL_TEXTS):
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    for x in chain:
        if any(text in str(x) for text in ZIP_WRITER_TEXTS):
            return _probe(folder) or OSError(errno.EIO, f"torch.save could not write: "
                                                        f"{str(x).strip().splitlines()[-1]}")
    return None


def _probe(folder: str | os.PathLike) -> OSError | None:
    """The OSError of writing (and syncing) 1 MiB into ``folder`` now, or None when that works."""
    path = Path(folder) / f".midtrain-space-probe-{os.getpid()}"
    try:
        with open(path, "wb") as f:
            f.write(b"\0" * 2**20)
            f.flush()
            os.fsync(f.fileno())
        return None
    except OSError as err:
        return err
    finally:
        try:
            path.unlink()
        except OSError:
            pass


def free_bytes(folder: str | os.PathLike) -> int:
    """Free bytes where ``folder`` is (or would be created)."""
    existing = Path(os.path.abspath(folder))
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        return shutil.disk_usage(existing).free
    except OSError:
        return 1 << 62


def disk_full_error(field: str, folder: str | os.PathLike, need: int | None = None) -> ConfigError:
    """The one line of every writer that ran out of space (checkpoints have their own, naming the last one)."""
    free = f"{free_bytes(folder) / 2**20:,.1f} MiB free there"
    needs = f"it needs ~{need / 2**20:,.1f} MiB, " if need else ""
    return ConfigError(field, f"disk full (or quota) in {folder} ({needs}{free}); nothing partial was left "
                       "behind: free space or choose another folder, and run again")


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
