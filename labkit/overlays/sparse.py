"""Copy files without filling their holes, and write new files atomically.

Overlays and snapshots are mostly holes: a 10 GB overlay that holds 40 MB of changes must copy as 40 MB. The data
regions come from ``SEEK_DATA``/``SEEK_HOLE`` and move with ``os.copy_file_range`` (in-kernel, reflinks where the
filesystem can), falling back to read/write where the kernel refuses.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from labkit.errors import ConflictError, OverlayError

_CHUNK = 8 << 20


def data_extents(fd: int, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int]]:
    """Yield ``(offset, length)`` of the regions of ``fd`` between ``start`` and ``end`` that may hold data.

    A filesystem without SEEK_DATA support reports the whole range as data, which is slower but still correct.
    """
    size = os.fstat(fd).st_size if end is None else end
    pos = start
    while pos < size:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:  # only a hole from pos to the end of the file
                return
            if err.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield pos, size - pos
                return
            raise
        if data >= size:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), size)
        yield data, hole - data
        pos = hole


def copy_range(src_fd: int, dst_fd: int, src_offset: int, dst_offset: int, length: int) -> None:
    """Copy ``length`` bytes between two open files at the given offsets (bytes past the source's end read as zeros)."""
    while length > 0:
        step = min(length, _CHUNK)
        try:
            done = os.copy_file_range(src_fd, dst_fd, step, src_offset, dst_offset)
        except OSError as err:
            if err.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            done = _copy_by_hand(src_fd, dst_fd, src_offset, dst_offset, step)
        if done == 0:  # the source ended: the rest stays a hole of zeros in the destination
            return
        src_offset += done
        dst_offset += done
        length -= done


def _copy_by_hand(src_fd: int, dst_fd: int, src_offset: int, dst_offset: int, length: int) -> int:
    block = os.pread(src_fd, length, src_offset)
    view = memoryview(block)
    while view:
        written = os.pwrite(dst_fd, view, dst_offset)
        view = view[written:]
        dst_offset += written
    return len(block)


def copy_sparse_fd(src_fd: int, dst_fd: int, length: int | None = None) -> None:
    """Copy the data regions of ``src_fd`` into the empty ``dst_fd``, sized ``length`` (default: the source's size)."""
    size = os.fstat(src_fd).st_size if length is None else length
    for offset, count in data_extents(src_fd, 0, size):
        copy_range(src_fd, dst_fd, offset, offset, count)
    os.ftruncate(dst_fd, size)


@contextlib.contextmanager
def atomic_file(dest: Path, *, overwrite: bool, mode: int = 0o600) -> Iterator[int]:
    """Yield the fd of a temporary file beside ``dest`` that becomes ``dest`` only if the block finishes.

    On any error (a full disk included) the temporary file is removed and ``dest`` is untouched. Without ``overwrite``
    an existing ``dest`` is refused, also when it appears while the file is being written.
    """
    dest = Path(dest)
    if not overwrite and (dest.exists() or dest.is_symlink()):
        raise ConflictError(f"Refusing to overwrite '{dest}': it already exists.")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as err:
        raise OverlayError(f"Cannot create a file in '{dest.parent}': {err.strerror}.") from err
    tmp = Path(tmp_name)
    try:
        try:
            os.fchmod(fd, mode)
            yield fd
            os.fsync(fd)
        finally:
            os.close(fd)
        _publish(tmp, dest, overwrite)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_dir(dest.parent)


def _publish(tmp: Path, dest: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, dest)
        return
    try:
        os.link(tmp, dest)  # fails if dest exists, unlike rename
    except FileExistsError as err:
        raise ConflictError(f"Refusing to overwrite '{dest}': it already exists.") from err
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if dest.exists():
            raise ConflictError(f"Refusing to overwrite '{dest}': it already exists.") from err
        os.rename(tmp, dest)
        return
    tmp.unlink()


def _sync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sparse_copy(src: Path, dest: Path, *, overwrite: bool = False) -> None:
    """Copy ``src`` to ``dest`` keeping its holes, atomically; ``dest`` keeps ``src``'s permission bits."""
    try:
        src_fd = os.open(src, os.O_RDONLY)
    except FileNotFoundError as err:
        raise OverlayError(f"Cannot copy '{src}': it does not exist.") from err
    except OSError as err:
        raise OverlayError(f"Cannot read '{src}': {err.strerror}.") from err
    try:
        mode = os.fstat(src_fd).st_mode & 0o7777
        try:
            with atomic_file(dest, overwrite=overwrite, mode=mode) as dst_fd:
                copy_sparse_fd(src_fd, dst_fd)
        except OSError as err:
            raise OverlayError(f"Copying '{src}' to '{dest}' failed: {err.strerror}.") from err
    finally:
        os.close(src_fd)
