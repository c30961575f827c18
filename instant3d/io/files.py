"""Writing files so that a failure never leaves a half-written one: write beside the target, then rename."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a temporary path in the target's folder; on success it replaces ``path``, on failure it is removed.

    The temporary file keeps ``path``'s suffix (encoders pick the format from it) and ends up with the
    ordinary permissions of a new file (mkstemp would leave it private).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix or path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        _fsync(Path(tmp))
        os.replace(tmp, path)
        _fsync(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync(path: Path) -> None:
    """Flush a file (or a folder's entries) to disk, so a power cut after the rename cannot leave it empty."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ordinary_permissions(folder: Path) -> None:
    """mkdtemp (and some writers) leave things private; give them the permissions of anything newly made."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def atomic_folder(target):
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` (an existing one is moved
    aside first and deleted only afterwards), on failure it is removed and ``target`` is untouched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        _ordinary_permissions(tmp)
        for path in [*tmp.rglob("*"), tmp]:
            _fsync(path)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_temporaries(folder, name: str = "") -> list[Path]:
    """Delete what an interrupted ``atomic_folder`` left in ``folder`` (``.NAME.*.tmp`` folders, ``.NAME.old-PID``
    folders whose process is gone), for targets named ``name`` (any, if empty). Called when a run starts, so no
    leftovers pile up."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for path in folder.glob(f".{name}*" if name else ".*"):
        stale = path.is_dir() and path.name.endswith(".tmp")
        if ".old-" in path.name:
            pid = path.name.rsplit(".old-", 1)[1]
            stale = pid.isdigit() and not Path(f"/proc/{pid}").exists()
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
