"""Package layout: `passes/`, `backends/`, `search/` sit at the top of the repo and install inside
the `qcompile` namespace (ARCHITECTURE.md, "Repository layout"). Metadata lives in pyproject.toml."""

from setuptools import find_packages, setup

NESTED = {"qcompile.passes": "passes", "qcompile.backends": "backends", "qcompile.search": "search"}

packages = find_packages(include=["qcompile", "qcompile.*"])
for ns, folder in NESTED.items():
    packages += [ns] + [f"{ns}.{p}" for p in find_packages(folder)]

setup(packages=packages, package_dir={"qcompile": "qcompile", **NESTED})
