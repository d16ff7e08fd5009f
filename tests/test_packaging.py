"""The wheel carries every file the package reads at run time, not only its Python modules."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
#: package folder -> its import name (setup.py's NESTED, plus qcompile itself)
FOLDERS = {"qcompile": "qcompile", "backends": "qcompile.backends", "passes": "qcompile.passes",
           "search": "qcompile.search"}


def _package_data() -> dict[str, list[str]]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return cfg["tool"]["setuptools"]["package-data"]


def _covered(pkg: str, rel: str, data: dict[str, list[str]]) -> bool:
    """Whether `rel` (a path inside package `pkg`'s folder) matches a package-data glob of `pkg` or a parent."""
    parts = pkg.split(".")
    for n in range(len(parts), 0, -1):
        owner = ".".join(parts[:n])
        sub = "/".join(parts[n:] + [rel]) if n < len(parts) else rel
        if any(fnmatch.fnmatch(sub, g) for g in data.get(owner, [])):
            return True
    return False


def test_every_non_python_source_file_is_package_data():
    data = _package_data()
    missing = []
    for folder, pkg in FOLDERS.items():
        for f in (ROOT / folder).rglob("*"):
            if not f.is_file() or f.suffix in (".py", ".pyc") or "__pycache__" in f.parts:
                continue
            rel = f.relative_to(ROOT / folder)
            # the deepest Python package holding the file owns it
            owner_parts = list(rel.parts[:-1])
            while owner_parts and not (ROOT / folder / Path(*owner_parts) / "__init__.py").exists():
                owner_parts.pop()
            owner = ".".join([pkg, *owner_parts])
            inner = "/".join(rel.parts[len(owner_parts):])
            if not _covered(owner, inner, data):
                missing.append(str(f.relative_to(ROOT)))
    assert missing == [], f"not in [tool.setuptools.package-data] of pyproject.toml: {missing}"


def test_the_runner_sources_are_covered():
    # the check above must not pass by finding nothing: the aarch64 runner sources exist and are matched
    data = _package_data()
    assert (ROOT / "backends/tvm/runner/runner.cc").exists()
    assert _covered("qcompile.backends.tvm", "runner/runner.cc", data)
    assert _covered("qcompile.backends.tvm", "runner/rpc_server.cc", data)
    assert not _covered("qcompile.backends.tvm", "runner/other.h", data)
