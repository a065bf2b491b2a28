"""Atomic file writes: the one way needle (and its tools) put a file on disk.

The data goes to a temporary file in the target's directory, is flushed and fsync'ed, and is
renamed over the target (``os.replace``) only when the ``with`` block finishes without an
exception. A crash, an interrupt or an exception inside the block leaves the target as it was
and no temporary file behind. A process killed outright (SIGKILL, power loss) cannot clean up:
its temporary file, named ``.<target>.<pid>.<random><suffix>``, is removed by the next write to
the same target once that process no longer exists.
"""
import contextlib
import os
import tempfile
from pathlib import Path


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's) or cannot tell: keep its file
    return True


def remove_stale_temporaries(path, suffix=".tmp"):
    """Delete the temporary files earlier writes of ``path`` left behind when their process
    died (their names carry the writer's pid). Returns the number of files removed."""
    path = Path(path)
    prefix = f".{path.name}."
    removed = 0
    try:
        names = os.listdir(path.parent)
    except OSError:
        return 0
    for name in names:
        if not (name.startswith(prefix) and name.endswith(suffix)):
            continue
        pid = name[len(prefix):-len(suffix) or None].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _process_alive(int(pid)):
            continue
        try:
            stale = path.parent / name
            if stale.is_file() and not stale.is_symlink():
                stale.unlink()
                removed += 1
        except OSError:
            pass  # another process cleaned it first, or no permission: harmless
    return removed


@contextlib.contextmanager
def atomic_write(path, mode="wb", suffix=".tmp"):
    """Context manager yielding a file object (``mode`` "wb" or "w") whose content replaces
    ``path`` atomically on success. The parent directory must exist."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    directory = path.parent.resolve()
    if not directory.is_dir():
        raise FileNotFoundError(f"directory {str(directory)!r} does not exist")
    remove_stale_temporaries(directory / path.name, suffix)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.{os.getpid()}.", suffix=suffix)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; use the usual file mode
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    try:  # make the rename itself durable (best effort: not every platform allows it)
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
