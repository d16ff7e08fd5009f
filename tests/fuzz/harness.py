"""Fuzz harness: run a CLI or API case and classify how it ended.

A good ending is, for the CLI: exit 0, or exit 2 with exactly one stderr line
`qcompile CMD: error: ...` and no traceback; for the API: a return value or a `QcompileError`.
Everything else is a bad ending: another exit status (70 = qcompile's "internal error"), a
traceback, an exception that is not a qcompile error, several lines, a changed good artifact.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qcompile.errors import QcompileError

#: tried / bad counts per family, printed at the end of the session (conftest's terminal summary)
TALLY: dict[str, list[int]] = {}


@dataclass
class Ending:
    ok: bool
    what: str
    stderr: str = ""


@dataclass
class Case:
    """One generated case: `run()` returns an Ending; `guard` paths must keep their hashes."""

    name: str
    run: Callable[[], Ending]
    guard: list[Path] = field(default_factory=list)
    leftovers_in: list[Path] = field(default_factory=list)  # directories that must hold no temp files after


def tree_hash(path: Path) -> str:
    """sha256 over every file (relative name + bytes) under `path` (or of the file itself)."""
    h = hashlib.sha256()
    path = Path(path)
    if not os.path.lexists(path):
        return "<absent>"
    if path.is_file():
        h.update(path.read_bytes())
        return h.hexdigest()
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file() and not p.is_symlink():
            h.update(p.read_bytes())
    return h.hexdigest()


def temp_leftovers(directory: Path) -> list[str]:
    """Names qcompile uses for work in progress (`.x.tmp`, `.x.new-*`, `.x.old-*`, `*.tmpNNN`)."""
    out = []
    for p in Path(directory).rglob("*"):
        n = p.name
        if n.endswith(".tmp") or ".new-" in n or ".old-" in n or ".tmp" in n and n.startswith("."):
            out.append(str(p))
    return out


def run_cli(argv: list[str], expect_ok: bool | None = None) -> Ending:
    """Run `qcompile argv` in this process; classify the ending."""
    from qcompile.cli import main

    err, out = io.StringIO(), io.StringIO()
    cmd = argv[0] if argv else ""
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(list(argv))
    except SystemExit as e:  # main must not exit on its own
        return Ending(False, f"SystemExit({e.code}) escaped main", err.getvalue())
    except BaseException as e:  # noqa: BLE001 - any escape is a bad ending
        return Ending(False, f"{type(e).__name__} escaped main: {e}", err.getvalue())
    text = err.getvalue()
    if "Traceback" in text:
        return Ending(False, "traceback on stderr", text)
    if code == 0:
        if expect_ok is False:
            return Ending(False, "exit 0 where an error was expected", text)
        return Ending(True, "exit 0", text)
    if code != 2:
        return Ending(False, f"exit {code}", text)
    if expect_ok is True:
        return Ending(False, "exit 2 where success was expected", text)
    errs = [ln for ln in text.splitlines() if ": error:" in ln]
    last = text.rstrip().splitlines()[-1] if text.strip() else ""
    if len(errs) != 1 or last != errs[0] or not last.startswith("qcompile"):
        return Ending(False, f"expected one error line, last on stderr, got {len(errs)}", text)
    if cmd and not last.startswith((f"qcompile {cmd}: error: ", "qcompile: error: ")):
        return Ending(False, "error line does not name the command", text)
    if len(last.split(": error: ", 1)[1]) < 8:
        return Ending(False, "error line says nothing", text)
    return Ending(True, "exit 2: " + last, text)


def run_api(fn: Callable[[], Any], expect_ok: bool | None = None) -> Ending:
    """Call an API entry point; good endings: a return value, or a QcompileError."""
    try:
        fn()
    except QcompileError as e:
        if expect_ok is True:
            return Ending(False, f"{type(e).__name__} where success was expected: {e}")
        return Ending(True, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    except BaseException as e:  # noqa: BLE001
        return Ending(False, f"{type(e).__name__} (not a qcompile error): {e}")
    if expect_ok is False:
        return Ending(False, "returned where an error was expected")
    return Ending(True, "returned")


def run_cases(family: str, cases: Iterable[Case]) -> tuple[int, list[str]]:
    """Run every case; returns (tried, bad endings as text). Guards are hashed before and after."""
    tried, bad = 0, []
    for case in cases:
        tried += 1
        before = {p: tree_hash(p) for p in case.guard}
        try:
            end = case.run()
        except BaseException as e:  # noqa: BLE001 - a case that blows up the harness is bad too
            end = Ending(False, f"harness: {type(e).__name__}: {e}")
        for p, h in before.items():
            if tree_hash(p) != h:
                end = Ending(False, f"good artifact {p} changed ({end.what})", end.stderr)
        for d in case.leftovers_in:
            left = temp_leftovers(d)
            if left:
                end = Ending(False, f"temp files left: {left[:3]} ({end.what})", end.stderr)
        if not end.ok:
            bad.append(f"{case.name}: {end.what}\n    {end.stderr.strip()[-600:]}")
    t = TALLY.setdefault(family, [0, 0])
    t[0] += tried
    t[1] += len(bad)
    return tried, bad


def copy_artifact(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst
