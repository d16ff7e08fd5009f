"""Atomic file writes: write to a temp file in the same directory, fsync, rename over the target.

Nothing written by qcompile is left half-done: a crash leaves either the old file or the new one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(target: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call `write(f)` on a temp file beside `target`, fsync it, then `os.replace` it over `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # write() errors (a full disk) name no file
            raise OSError(e.errno, e.strerror or str(e), str(target)) from e
        raise
    return target


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(target, lambda f: f.write(data))


def atomic_write_text(target: str | os.PathLike, text: str) -> Path:
    return atomic_write(target, lambda f: f.write(text.encode()))


# -- whole directories ---------------------------------------------------------------------------

_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False where the system cannot."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def swap_in_dir(new: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Put the finished directory `new` at `target`, replacing what is there; remove the old copy.

    Uses an atomic exchange where the kernel and file system allow it (readers see the old or the new
    directory, never neither); elsewhere two renames, with the old one restored if the second fails.
    """
    import shutil

    new, target = Path(new), Path(target)
    if not os.path.lexists(target):
        os.replace(new, target)
        return target
    if _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # `new` now holds the old directory
        return target
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return target


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _remove_dead_writers(target: Path) -> None:
    """Remove `.NAME.new-PID-*` directories beside `target` whose writer process is gone (killed mid-write)."""
    import logging
    import shutil

    for p in target.parent.glob(f".{target.name}.new-*-*"):
        pid = p.name[len(f".{target.name}.new-"):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            logging.getLogger(__name__).warning("removing %s, left by a writer that was killed", p)
            shutil.rmtree(p, ignore_errors=True)


class staged_dir:
    """`with staged_dir(target) as tmp:` write into `tmp` (a fresh directory beside `target`); on success it
    replaces `target` in one swap, on any failure (Ctrl-C included) it is removed and `target` is untouched."""

    def __init__(self, target: str | os.PathLike):
        self.target = Path(target)
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_writers(self.target)
        self.tmp = Path(tempfile.mkdtemp(dir=self.target.parent, prefix=f".{self.target.name}.new-{os.getpid()}-"))
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(self.tmp, 0o777 & ~mask)  # mkdtemp makes 0700; the artifact gets the usual mode
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        import shutil

        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if isinstance(exc, OSError) and exc.filename is None:  # write() errors (a full disk) name no file
                raise OSError(exc.errno, exc.strerror or str(exc), str(self.target)) from exc
            return False
        try:
            swap_in_dir(self.tmp, self.target)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        return False


# -- where artifacts may be written ---------------------------------------------------------------

#: the file that marks a directory as an artifact of each kind (`check_out`)
MARKERS = {"run": "run.json", "subnet": "subnet.json", "lowered": "metadata.json", "demo": "summary.json",
           "bench": "bench.json"}


def check_out(path: str | os.PathLike, kind: str, option: str = "--out") -> Path:
    """Refuse to write a `kind` artifact over something else: `path` must not exist, be an empty
    directory, or already be a `kind` artifact (which is then replaced as a whole, atomically)."""
    from qcompile.errors import CheckpointError

    p = Path(path)
    if not os.path.lexists(p):
        return p
    marker = MARKERS[kind]
    if not p.is_dir():
        raise CheckpointError(f"{p}: exists and is a file, not a {kind} directory; refusing to replace it "
                              f"({option}: choose a new path or remove it first)")
    if (p / marker).is_file():
        return p
    try:
        names = sorted(x.name for x in p.iterdir())
    except OSError as e:
        raise CheckpointError(f"{p}: cannot list it ({e.strerror}) ({option}: choose another path)") from e
    if not names:
        return p
    raise CheckpointError(f"{p}: exists and is not a {kind} directory (no {marker}; holds {names[:3]}); refusing "
                          f"to replace it ({option}: choose a new path or remove it first)")

