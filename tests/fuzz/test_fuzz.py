"""The full fuzz suite (CI's slow part): every subcommand and API entry point, corrupt and truncated
artifacts, `--out` collisions, full disks, kill -9 mid-write, concurrent tuning. Fails on any bad
ending: a traceback, a non-qcompile exception, a signal, an exit status other than 0/2, several error
lines, a changed good artifact (hash-checked) or a temp file left behind.

Run: OMP_NUM_THREADS=1 TVM_NUM_THREADS=1 .venv/bin/python -m pytest -q -p no:xdist -m slow tests/fuzz
(the counts are printed in the terminal summary). Unreadable-file faults are not generated: the suite
runs as root, where chmod does not make a file unreadable; directories, symlink loops, /dev/null and
truncations stand in for them.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.fuzz import cases as C
from tests.fuzz import faults as F
from tests.fuzz.harness import run_cases

# one xdist worker builds the golden artifacts (and the one real lowering) once, and runs them all
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("fuzz")]


def _assert_clean(family, cs):
    tried, bad = run_cases(family, cs)
    assert tried > 0
    assert not bad, f"{len(bad)} bad endings of {tried}:\n" + "\n".join(bad[:20])


@pytest.fixture(scope="module")
def qnet(golden):
    from qcompile.artifacts import load_run

    return load_run(golden.run)[1]


@pytest.fixture(scope="module")
def sub(golden):
    from qcompile.artifacts import load_subnet

    return load_subnet(golden.subnet)[1]


def test_cli_arguments(golden, tmp_path):
    _assert_clean("cli arguments", C.cli_argument_cases(golden, tmp_path))


def test_corrupt_artifacts(golden, golden_lowered, tmp_path):
    _assert_clean("corrupt artifacts", C.corrupt_artifact_cases(golden, tmp_path, lowered=golden_lowered))


def test_out_collisions(golden, tmp_path):
    _assert_clean("--out collisions", C.out_collision_cases(golden, tmp_path))


def test_api_configs(golden):
    _assert_clean("api SubnetConfig", C.config_cases(golden))


def test_api_extract(golden, qnet):
    _assert_clean("api extract", C.extract_cases(golden, qnet))


def test_api_calibrate(sub):
    _assert_clean("api calibrate", C.calibrate_cases(sub))


def test_api_targets(sub):
    _assert_clean("api lower targets", C.target_cases(sub))


def test_api_lowered_inputs(golden_lowered):
    import qcompile as qc

    _assert_clean("api Lowered(x)", C.lowered_input_cases(qc.load(golden_lowered)))


def test_disk_full(golden, golden_lowered, small_tmpfs):
    _assert_clean("disk full", F.disk_full_cases(golden, small_tmpfs, lowered=golden_lowered))


def test_kill9_mid_write(golden, tmp_path):
    _assert_clean("kill -9", F.kill_mid_write(golden, tmp_path, [0.05, 0.4, 1.1]))


def test_concurrent_tuning_4_processes(tmp_path):
    from tests.fuzz.harness import Case

    _assert_clean("concurrent tuning", [Case("4 writers x 14", lambda: F.concurrent_tuning(tmp_path, 4, 14))])


def test_truncated_library_does_not_crash_run(golden_lowered, tmp_path):
    """A truncated lib.so (a SIGBUS unless checked before dlopen) in a real process: `qcompile run` ends in
    one line."""
    from tests.fuzz.harness import copy_artifact

    d = copy_artifact(golden_lowered, tmp_path / "low")
    data = (d / "lib.so").read_bytes()
    (d / "lib.so").write_bytes(data[: len(data) // 2])
    r = subprocess.run([sys.executable, "-m", "qcompile.cli", "run", str(d), "--limit", "1"],
                       capture_output=True, text=True, env=F._env(), timeout=300)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert r.stderr.strip().splitlines()[-1].startswith("qcompile run: error: ") and "Traceback" not in r.stderr
    assert "lib.so" in r.stderr.splitlines()[-1]


def test_permission_faults(golden, tmp_path):
    _assert_clean("permission faults", F.permission_cases(golden, tmp_path))


def test_read_only_file_system(golden, small_tmpfs):
    cs = F.read_only_fs_cases(golden, small_tmpfs)
    if not cs:
        pytest.skip("cannot remount the tmpfs read-only here")
    _assert_clean("read-only fs", cs)


def test_api_spaces():
    _assert_clean("api spaces", C.space_cases())
