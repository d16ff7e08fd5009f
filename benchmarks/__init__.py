"""pytest-benchmark suites and the side-by-side report (docs/benchmarks.md); not installed with qcompile."""
