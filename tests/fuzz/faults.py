"""Faults beyond bad input: full disks, kill -9 mid-write, concurrent writers, Ctrl-C in the demo."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.fuzz.harness import Case, Ending, copy_artifact, run_cli, temp_leftovers, tree_hash

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", TVM_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# -- disk full -------------------------------------------------------------------------------------

def fill(directory: Path, leave: int) -> None:
    """Fill the file system of `directory` until about `leave` bytes are free."""
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    if free > leave:
        with open(directory / "filler", "wb") as f:
            try:
                f.write(b"\0" * (free - leave))
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise


def disk_full_cases(g, mnt: Path, lowered: Path | None = None) -> list[Case]:
    cases = []
    sub = mnt / "sub"

    def calibrate_in_place() -> Ending:
        # the subnet (about 0.7 MB) fits, a second copy to swap in does not
        return run_cli(["calibrate", str(sub), "--calib-batches", "1"], expect_ok=False)

    copy_artifact(g.subnet, sub)
    cases.append(Case("calibrate in place on a full disk", calibrate_in_place, [sub], [mnt]))

    def full(argv: list[str], leave: int):
        def go() -> Ending:
            fill(mnt, leave)
            try:
                end = run_cli(argv, expect_ok=False)
                if end.ok and str(mnt) not in end.stderr.strip().splitlines()[-1]:
                    return Ending(False, "the disk-full error line does not name the path", end.stderr)
                return end
            finally:
                (mnt / "filler").unlink(missing_ok=True)
        return go

    for leave in (0, 16_000, 200_000):
        cases.append(Case(f"export-onnx onto a full disk ({leave} B free)",
                          full(["export-onnx", str(g.subnet), "--out", str(mnt / "m.onnx")], leave),
                          [sub, g.root], [mnt]))
        cases.append(Case(f"extract onto a full disk ({leave} B free)",
                          full(["extract", str(g.run), "--smallest", "--bits", "4", "--out", str(mnt / "sub2")], leave),
                          [sub, g.root], [mnt]))

    def config_save_full() -> Ending:
        import qcompile as qc

        fill(mnt, 0)
        cfg = qc.SubnetConfig.from_json(g.config_json.read_text())
        try:
            cfg.save(mnt / "cfg.json")
        except OSError as e:
            ok = e.errno == errno.ENOSPC
            return Ending(ok, f"OSError errno {e.errno}")
        finally:
            (mnt / "filler").unlink(missing_ok=True)
        return Ending(False, "save on a full disk returned")
    cases.append(Case("SubnetConfig.save on a full disk", config_save_full, [sub], [mnt]))

    if lowered is not None:
        def lowered_export_full() -> Ending:
            import qcompile as qc

            low = qc.load(lowered)
            try:
                low.export(mnt / "low")
            except OSError as e:
                return Ending(e.errno == errno.ENOSPC, f"OSError errno {e.errno}")
            except Exception as e:  # noqa: BLE001
                from qcompile.errors import QcompileError

                return Ending(isinstance(e, QcompileError), f"{type(e).__name__}: {e}")
            return Ending(False, "export onto a full disk returned")
        cases.append(Case("Lowered.export onto a full disk", lowered_export_full, [sub, lowered], [mnt]))
    return cases


# -- kill -9 mid-write -----------------------------------------------------------------------------

KILL_WRITER = textwrap.dedent("""
    import sys, time
    from qcompile.artifacts import load_subnet, save_subnet
    src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    space, sub, doc = load_subnet(src)
    print("ready", flush=True)
    for _ in range(n):
        save_subnet(sub, dst, space=space, quantize_options=doc.get("quantize"), calibrated=True,
                    source=doc.get("source"))
    print("done", flush=True)
""")


def kill_mid_write(g, work: Path, delays: list[float]) -> list[Case]:
    """A process rewriting a subnet directory in a loop is killed with SIGKILL after each delay; the
    directory must then load and be byte-identical to the good one (the old or a complete new copy)."""
    from qcompile.artifacts import load_subnet, save_subnet

    cases = []
    for i, delay in enumerate(delays):
        def go(i=i, delay=delay) -> Ending:
            dst = copy_artifact(g.subnet, work / f"kill{i}")
            want = tree_hash(dst)
            p = subprocess.Popen([sys.executable, "-c", KILL_WRITER, str(g.subnet), str(dst), "500"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
            try:
                line = p.stdout.readline()
                if line.strip() != "ready":
                    return Ending(False, f"writer did not start: {line!r} {p.stderr.read()[-500:]}")
                time.sleep(delay)
                p.send_signal(signal.SIGKILL)
            finally:
                p.wait(timeout=60)
            if p.returncode != -signal.SIGKILL:
                return Ending(False, f"writer ended with {p.returncode} before the kill")
            try:
                load_subnet(dst)
            except Exception as e:  # noqa: BLE001
                return Ending(False, f"after kill -9 the subnet no longer loads: {e}")
            if tree_hash(dst) != want:
                return Ending(False, "after kill -9 the subnet differs from the good one")
            # the next write removes what the killed writer left beside it
            space, sub, doc = load_subnet(dst)
            save_subnet(sub, dst, space=space, quantize_options=doc.get("quantize"), calibrated=True,
                        source=doc.get("source"))
            left = temp_leftovers(work)
            if left:
                return Ending(False, f"temp dirs of the killed writer survive the next write: {left}")
            return Ending(True, f"killed after {delay:.2f} s; intact")
        cases.append(Case(f"kill -9 after {delay:.2f}s of rewriting a subnet", go))
    return cases


# -- concurrent tuning database --------------------------------------------------------------------

TUNING_WRITER = textwrap.dedent("""
    import os, sys
    import tvm
    from qcompile.backends.tvm.tuning import TuningDB
    root, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    db = TuningDB(tvm.target.Target("llvm"), root=root)
    print("ready", flush=True)
    sys.stdin.readline()  # start together
    for i in range(n):
        db.put({"op": "synthetic", "proc": tag, "i": i}, {"to": i}, 100.0 + i)
        db.put({"op": "shared"}, {"to": int(tag)}, 10.0 + int(tag))
""")


def concurrent_tuning(root: Path, procs: int, per_proc: int) -> Ending:
    """`procs` processes put `per_proc` records each (plus one shared workload) into one database at once."""
    import tvm

    from qcompile.backends.tvm.tuning import TuningDB

    ps = [subprocess.Popen([sys.executable, "-c", TUNING_WRITER, str(root), str(k), str(per_proc)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=_env()) for k in range(procs)]
    try:
        for p in ps:
            if p.stdout.readline().strip() != "ready":
                return Ending(False, f"writer did not start: {p.stderr.read()[-500:]}")
        for p in ps:
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in ps:
            p.wait(timeout=300)
    finally:
        for p in ps:
            if p.poll() is None:
                p.kill()
                p.wait()
    errs = [p.stderr.read()[-400:] for p in ps if p.returncode != 0]
    if errs:
        return Ending(False, f"writer failed: {errs[0]}")
    db = TuningDB(tvm.target.Target("llvm"), root=root)
    mine = [k for k in db.records if "synthetic" in k]
    want = procs * per_proc
    shared = db.get({"op": "shared"})
    if len(mine) != want:
        return Ending(False, f"{len(mine)} of {want} records kept")
    if shared is None or shared["latency_us"] != 10.0:
        return Ending(False, f"shared workload kept {shared}, not the fastest (10.0)")
    left = [p.name for p in root.iterdir() if p.suffix not in (".json", ".lock")]
    if left:
        return Ending(False, f"temp files left: {left}")
    return Ending(True, f"{len(mine)} of {want} records kept")


# -- Ctrl-C in the demo -----------------------------------------------------------------------------

def demo_interrupt(tmp: Path, monkeypatch) -> Ending:
    """A previous demo directory survives a demo interrupted (Ctrl-C) half-way, and no temp dir is left."""
    import qcompile.cli.demo as demo

    old = tmp / "demo"
    old.mkdir()
    (old / "summary.json").write_text(json.dumps({"best": "x"}))
    (old / "report.md").write_text("# old report\n")
    want = tree_hash(old)

    def half_way(out, quick, seed, settings):
        (out / "report.md").write_text("# half\n")
        (out / "run").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "_run_demo", half_way)
    end = run_cli(["demo", "--quick", "--out", str(old)])
    if tree_hash(old) != want:
        return Ending(False, "the old demo directory changed")
    left = temp_leftovers(tmp)
    if left:
        return Ending(False, f"temp dirs left: {left}")
    if "interrupted" not in end.stderr:
        return Ending(False, f"no 'interrupted' line: {end.stderr!r}")
    return Ending(True, "old demo intact")


# -- permission faults ------------------------------------------------------------------------------
# The suite runs as root, where chmod does not make a file unreadable or a directory unwritable. Two
# stand-ins: opening chosen paths raises PermissionError (in-process, through `io.open`/`builtins.open`/
# `os.open`), and a read-only tmpfs gives real EROFS on every write.

class deny_open:
    """Within the block, opening any path under one of `prefixes` fails with EACCES (reads or writes)."""

    def __init__(self, *prefixes: Path, write_only: bool = False):
        self.prefixes = tuple(str(p) for p in prefixes)
        self.write_only = write_only

    def _denied(self, file, mode_or_flags) -> bool:
        if not isinstance(file, (str, bytes, os.PathLike)):
            return False
        path = os.fsdecode(os.fspath(file))
        path = os.path.abspath(path)
        if not path.startswith(self.prefixes):
            return False
        if not self.write_only:
            return True
        if isinstance(mode_or_flags, int):
            return bool(mode_or_flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        return any(c in str(mode_or_flags) for c in "wax+")

    def __enter__(self):
        import builtins
        import io

        self._saved = (builtins.open, io.open, os.open)
        real_open, _, real_os_open = self._saved

        def fake_open(file, mode="r", *a, **k):
            if self._denied(file, mode):
                raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(os.fspath(file)))
            return real_open(file, mode, *a, **k)

        def fake_os_open(path, flags, *a, **k):
            if self._denied(path, flags):
                raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(os.fspath(path)))
            return real_os_open(path, flags, *a, **k)

        builtins.open = io.open = fake_open
        os.open = fake_os_open
        return self

    def __exit__(self, *exc):
        import builtins
        import io

        builtins.open, io.open, os.open = self._saved
        return False


def permission_cases(g, scratch: Path) -> list[Case]:
    cases = []
    reads = [
        ("run.json", g.run, "run.json", lambda d: ["extract", str(d), "--smallest", "--out", str(scratch / "px")]),
        ("checkpoints/latest", g.run, "checkpoints/latest",
         lambda d: ["extract", str(d), "--smallest", "--out", str(scratch / "px")]),
        ("subnet.json", g.subnet, "subnet.json", lambda d: ["lower", str(d), "--out", str(scratch / "pl")]),
        ("state.safetensors", g.subnet, "state.safetensors",
         lambda d: ["export-onnx", str(d), "--out", str(scratch / "p.onnx")]),
        ("config", g.config_json.parent, "config.json",
         lambda d: ["extract", str(g.run), "--config", str(d / "config.json"), "--out", str(scratch / "px")]),
    ]
    if g.fake_lowered.exists():
        reads += [("metadata.json", g.fake_lowered, "metadata.json", lambda d: ["run", str(d), "--limit", "1"]),
                  ("lib.so", g.fake_lowered, "lib.so", lambda d: ["run", str(d), "--limit", "1"])]
    for name, src, rel, argv_of in reads:
        def go(src=src, rel=rel, argv_of=argv_of) -> Ending:
            with deny_open(src / rel):
                end = run_cli(argv_of(src), expect_ok=False)
            if end.ok and rel.split("/")[-1] not in end.stderr.strip().splitlines()[-1]:
                return Ending(False, "the error line does not name the unreadable file", end.stderr)
            return end
        cases.append(Case(f"unreadable {name}", go, [g.root], [scratch]))
    writes = [
        ("extract --out", ["extract", str(g.run), "--smallest", "--out", str(scratch / "wx")]),
        ("calibrate --out", ["calibrate", str(g.subnet), "--calib-batches", "1", "--out", str(scratch / "wc")]),
        ("export-onnx --out", ["export-onnx", str(g.subnet), "--out", str(scratch / "w.onnx")]),
    ]
    for name, argv in writes:
        def go(argv=argv) -> Ending:
            with deny_open(scratch, write_only=True):
                return run_cli(argv, expect_ok=False)
        cases.append(Case(f"unwritable {name}", go, [g.root], [scratch]))
    return cases


def read_only_fs_cases(g, mnt: Path) -> list[Case]:
    """Writes into a read-only file system (real EROFS): one line, nothing left, the old artifact intact."""
    import subprocess

    copy_artifact(g.subnet, mnt / "sub")
    r = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        return []
    argvs = {
        "calibrate in place": ["calibrate", str(mnt / "sub"), "--calib-batches", "1"],
        "extract": ["extract", str(g.run), "--smallest", "--out", str(mnt / "x")],
        "export-onnx": ["export-onnx", str(g.subnet), "--out", str(mnt / "m.onnx")],
        "lower --out under it": ["lower", str(g.subnet), "--out", str(mnt / "sub" / "low"), "--target", "x68"],
        "train": ["train", "--epochs", "0,0,0", "--out", str(mnt / "run")],
    }
    return [Case(f"read-only fs: {k}", lambda a=a: run_cli(a, expect_ok=False), [mnt / "sub", g.root], [mnt])
            for k, a in argvs.items()]
