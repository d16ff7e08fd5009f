"""One error path for every `qcompile` subcommand.

`run_command(command, fn, args, debug)` calls a subcommand and turns every failure the user can cause
into one line on stderr, `qcompile CMD: error: <path or field>: <what> (<remedy>)`, and exit status 2:
qcompile errors, every `OSError` (missing, unreadable, unwritable paths, full disks, non-images),
decode errors (JSON, UTF-8, safetensors) and validation errors (`ValueError`). Anything else is a bug
in qcompile: it still ends in one line, but with exit status 70 (EX_SOFTWARE) and the advice to rerun
with `--debug`, which re-raises so the traceback is shown. Ctrl-C exits 130.

Subcommands registered by other modules get this for free: `cli.main` wraps the dispatch, and the
parser class (`OneLineParser`) also reports argparse's own errors in one line.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger("qcompile")

EXIT_USER = 2
EXIT_BUG = 70
EXIT_INTERRUPTED = 130

_ERRNO_REMEDY = {
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a parent of the path is a file, not a directory",
    errno.EISDIR: "name a file, not a directory",
    errno.EEXIST: "choose another path or remove it first",
    errno.ENOTEMPTY: "choose another path or empty it first",
    errno.EACCES: "check the permissions of the path and its directories",
    errno.EPERM: "check the permissions of the path and its directories",
    errno.EROFS: "the file system is read-only; write somewhere else",
    errno.ENOSPC: "free disk space or write somewhere else",
    errno.EDQUOT: "disk quota exceeded; free space or write somewhere else",
    errno.EIO: "input/output error; check the disk",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.ELOOP: "too many symbolic links in the path",
    errno.EMFILE: "too many open files; raise `ulimit -n`",
}


def _first_line(text: str) -> str:
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return ""


def describe(exc: BaseException) -> tuple[str, int]:
    """(one line without the `qcompile CMD: error:` prefix, exit status) for an exception."""
    from qcompile.errors import QcompileError

    if isinstance(exc, QcompileError):
        return _first_line(str(exc)) or type(exc).__name__, EXIT_USER
    if isinstance(exc, OSError):
        path = exc.filename if exc.filename is not None else None
        if exc.filename2 is not None:
            path = f"{exc.filename} -> {exc.filename2}"
        what = exc.strerror or _first_line(str(exc)) or type(exc).__name__
        remedy = _ERRNO_REMEDY.get(exc.errno or -1, "")
        if type(exc).__name__ == "UnidentifiedImageError":
            what, remedy = _first_line(str(exc)), "pass PNG/JPEG image files"
        head = f"{path}: {what}" if path else what
        return (f"{head} ({remedy})" if remedy else head), EXIT_USER
    if isinstance(exc, json.JSONDecodeError):
        return (f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno} "
                "(fix or regenerate the file)"), EXIT_USER
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text ({exc.reason} at byte {exc.start}) (pass a text file)", EXIT_USER
    if type(exc).__name__ == "DecompressionBombError":
        return f"{_first_line(str(exc))} (pass a smaller image)", EXIT_USER
    if isinstance(exc, ValueError):
        return _first_line(str(exc)) or type(exc).__name__, EXIT_USER
    return (f"internal error: {type(exc).__name__}: {_first_line(str(exc))} "
            "(this is a bug in qcompile: rerun with --debug for the traceback and report it)"), EXIT_BUG


def run_command(command: str, fn: Callable[[Any], Any], args: Any, debug: bool = False) -> int:
    """Run one subcommand; every failure becomes one line on stderr (a traceback only with `debug`)."""
    try:
        return int(fn(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write(f"qcompile {command}: interrupted\n")
        return EXIT_INTERRUPTED
    except SystemExit as e:  # a command that calls parser.error() or sys.exit() itself
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_USER)
    except Exception as e:  # noqa: BLE001 - the one place every failure is reported
        if debug:
            raise
        line, code = describe(e)
        log.debug("qcompile %s failed", command, exc_info=True)
        sys.stderr.write(f"qcompile {command}: error: {line}\n")
        return code


class OneLineParser(argparse.ArgumentParser):
    """argparse reporting usage errors in one line: `qcompile CMD: error: ... (see qcompile CMD --help)`."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USER, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def pop_debug(argv: list[str]) -> tuple[list[str], bool]:
    """Remove `--debug` wherever it appears (before or after the subcommand)."""
    rest = [a for a in argv if a != "--debug"]
    return rest, len(rest) != len(argv)
