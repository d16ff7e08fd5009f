"""Case generators of the fuzz suite: CLI arguments, corrupt artifacts, `--out` collisions, API inputs.

Each generator takes the golden artifacts and a scratch directory and yields `Case`s. Generators are
deterministic (fixed seeds), so a failing case can be rerun by name.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.fuzz.harness import Case, copy_artifact, run_api, run_cli

# -------------------------------------------------------------------------------------------------
# file corruptions


def _truncate(n_of: Callable[[int], int]) -> Callable[[Path], None]:
    def f(p: Path) -> None:
        data = p.read_bytes()
        p.write_bytes(data[: max(0, n_of(len(data)))])
    return f


def _replace(data: bytes) -> Callable[[Path], None]:
    return lambda p: p.write_bytes(data)


def _flip_middle(p: Path) -> None:
    b = bytearray(p.read_bytes())
    if b:
        b[len(b) // 2] ^= 0xFF
    p.write_bytes(bytes(b))


def _to_dir(p: Path) -> None:
    p.unlink()
    p.mkdir()
    (p / "x").write_text("x")


def _remove(p: Path) -> None:
    p.unlink()


def _symlink_loop(p: Path) -> None:
    p.unlink()
    os.symlink(p.name, p)


def _dev_null(p: Path) -> None:
    p.unlink()
    os.symlink("/dev/null", p)


FILE_FAULTS: dict[str, Callable[[Path], None]] = {
    "empty": _truncate(lambda n: 0),
    "one-byte": _truncate(lambda n: 1),
    "half": _truncate(lambda n: n // 2),
    "minus-one": _truncate(lambda n: n - 1),
    "garbage": _replace(bytes(random.Random(0).randrange(256) for _ in range(200))),
    "zeros": _replace(b"\0" * 4096),
    "flipped": _flip_middle,
    "directory": _to_dir,
    "missing": _remove,
    "symlink-loop": _symlink_loop,
    "dev-null": _dev_null,
}

JSON_VALUES = [None, -1, 1e308, "x", [], True, {"a": {"b": None}}]


def json_mutations(doc: dict) -> Iterator[tuple[str, object]]:
    """(name, mutated document) for a JSON artifact: keys deleted, values of every type, whole-doc swaps."""
    for key in doc:
        d = dict(doc)
        del d[key]
        yield f"del-{key}", d
        for v in JSON_VALUES:
            d = dict(doc)
            d[key] = v
            yield f"{key}={json.dumps(v)[:12]}", d
    for whole in ([], "text", 3, None):
        yield f"doc={json.dumps(whole)}", whole
    yield "format=99", dict(doc, format=99)
    yield "format=0", dict(doc, format=0)
    if isinstance(doc.get("space"), dict):
        yield "space.name=bogus", dict(doc, space=dict(doc["space"], name="bogus"))
        yield "space.args=bad", dict(doc, space=dict(doc["space"], args={"width_mult": -1}))
        yield "space.args=unknown", dict(doc, space=dict(doc["space"], args={"nope": 1}))
        yield "space.args=other-width", dict(doc, space=dict(doc["space"], args=dict(doc["space"].get("args", {}),
                                                                                         width_mult=0.5)))
        yield "space=spaceevo", dict(doc, space={"name": "spaceevo", "args": {}})
    if isinstance(doc.get("target"), dict):
        yield "target.arch=riscv", dict(doc, target=dict(doc["target"], arch="riscv64"))
        yield "target.arch=aarch64", dict(doc, target=dict(doc["target"], arch="aarch64"))
    if isinstance(doc.get("library"), dict):
        yield "library.size+1", dict(doc, library=dict(doc["library"], size=doc["library"]["size"] + 1))
        yield "library.sha=0", dict(doc, library=dict(doc["library"], sha256="0" * 64))
        yield "legacy(no library, no format)", {k: v for k, v in doc.items() if k not in ("library", "format")}


def _json_writer(doc: object) -> Callable[[Path], None]:
    return lambda p: p.write_text(json.dumps(doc))


# -------------------------------------------------------------------------------------------------
# CLI: arguments of every subcommand


def subcommands() -> dict[str, object]:
    """name -> subparser, discovered from the parser (subcommands other modules add are fuzzed too)."""
    import argparse

    from qcompile.cli import build_parser

    p = build_parser()
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    return {}


BAD_VALUES = {
    "space": [["--width-mult", v] for v in ("0", "-1", "nan", "inf", "abc", "")]
    + [["--num-classes", v] for v in ("0", "-3", "x")]
    + [["--resolutions", v] for v in ("a", "0", "-32", "7,x")] + [["--space", "bogus"]],
    "train": [["--epochs", v] for v in ("1,1", "a", "-1,0,0", "1,1,1,1")]
    + [["--batch-size", "0"], ["--threads", "0"], ["--data", "imagenet"], ["--data", "folder:/no/such/dir"],
       ["--width-mult", "nan"], ["--resume"]],
    "extract": [["--bits", "9"], ["--bits", "x"], ["--calib-batches", "0"], ["--config", "/no/such.json"]],
    "calibrate": [["--calib-batches", "0"], ["--data", "bogus"]],
    "lower": [["--target", t] for t in ("x68", "", "{bad", "[]", '{"kind": "cuda"}',
                                        '{"kind": "llvm", "mtriple": "riscv64-linux-gnu"}', '{"kind": "nope"}')]
    + [["--trials", "0"], ["--trials", "x"], ["--pipeline", "no-such-pass"], ["--pipeline", "fold-bn{x=1}"],
       ["--pass-module", "/no/such/module.py"]],
    "tune": [["--target", "x68"], ["--target", '{"kind": "llvm", "mtriple": "riscv64"}'], ["--trials", "-1"]],
    "bench": [["--target", "x68"], ["--target", "arm_cpu"], ["--repeat", "0"], ["--threads", "0"]],
    "export-onnx": [["--format", "qdx"], ["--pipeline", "no-such-pass"]],
    "run": [["--limit", "0"], ["--limit", "x"]],
    "demo": [["--seed", "x"]],
}


def cli_argument_cases(g, scratch: Path) -> Iterator[Case]:
    needs = {  # a valid positional/required set for each known command, so only the fuzzed value is wrong
        "space": [],
        "train": ["--out", str(scratch / "t-out")],
        "extract": [str(g.run), "--out", str(scratch / "x-out")],
        "calibrate": [str(g.subnet), "--out", str(scratch / "c-out")],
        "lower": [str(g.subnet), "--out", str(scratch / "l-out")],
        "tune": [str(g.subnet)],
        "bench": [str(g.subnet), "--out", str(scratch / "b-out")],
        "export-onnx": [str(g.subnet), "--out", str(scratch / "m.onnx")],
        "run": [str(g.fake_lowered)],
        "demo": ["--out", str(scratch / "d-out")],
    }
    guard = [g.root]
    for name, sub in subcommands().items():
        yield Case(f"{name} --help", lambda n=name: run_cli([n, "--help"], expect_ok=True), guard)
        yield Case(f"{name} --no-such-flag", lambda n=name: run_cli([n, "--no-such-flag"], expect_ok=False), guard)
        required = [a for a in sub._actions if a.required or (not a.option_strings and a.nargs is None)]
        if required:
            yield Case(f"{name} (nothing)", lambda n=name: run_cli([n], expect_ok=False), guard)
        for bad in BAD_VALUES.get(name, []):
            argv = [name, *needs.get(name, []), *bad]
            yield Case(" ".join(argv), lambda a=argv: run_cli(a, expect_ok=False), guard)
        # every positional argument given a path that is not there / a file of garbage / an empty directory
        positional = [a for a in sub._actions if not a.option_strings and a.nargs in (None, 1)]
        if positional and name in needs:
            rest = needs[name][1:]
            junk = scratch / "junk.bin"
            junk.write_bytes(b"\x00\xffjunk")
            empty = scratch / "empty-dir"
            empty.mkdir(exist_ok=True)
            for label, path in (("missing", "/no/such/path"), ("junk file", str(junk)), ("empty dir", str(empty)),
                                ("through a file", str(junk / "x")), ("dev-null", "/dev/null")):
                argv = [name, path, *rest]
                yield Case(f"{name} <{label}>", lambda a=argv: run_cli(a, expect_ok=False), guard)
    yield Case("<unknown command>", lambda: run_cli(["frobnicate"], expect_ok=False), guard)
    yield Case("<no command>", lambda: run_cli([], expect_ok=False), guard)


# -------------------------------------------------------------------------------------------------
# CLI: corrupt artifacts


def _corrupt_copy(src: Path, dst: Path, rel: str, fault: Callable[[Path], None]) -> Path:
    copy_artifact(src, dst)
    fault(dst / rel)
    return dst


def corrupt_artifact_cases(g, scratch: Path, lowered: Path | None = None, quick: bool = False) -> Iterator[Case]:
    """Each file of each artifact, each fault, fed to the commands that read it."""
    n = 0

    def fresh() -> Path:
        nonlocal n
        n += 1
        return scratch / f"c{n}"

    def case(name, src, rel, fault, argv_of, guard_extra=()):
        def go():
            return run_cli(argv_of(_corrupt_copy(src, fresh(), rel, fault)))
        return Case(name, go, [g.root, *guard_extra])

    json_docs = {
        "run": (g.run, "run.json",
                lambda d: ["extract", str(d), "--smallest", "--out", str(d.parent / (d.name + "-x"))]),
        # calibrate (load, one batch, save) rather than lower: a mutation that still loads must not cost a TVM build
        "subnet": (g.subnet, "subnet.json", lambda d: ["calibrate", str(d), "--calib-batches", "1", "--out",
                                                       str(d.parent / (d.name + "-c"))]),
    }
    low = lowered or g.fake_lowered
    if low.exists():
        json_docs["lowered"] = (low, "metadata.json", lambda d: ["run", str(d), "--limit", "1"])
    for kind, (src, rel, argv_of) in json_docs.items():
        for fname, fault in FILE_FAULTS.items():
            yield case(f"{kind}/{rel} {fname}", src, rel, fault, argv_of)
        doc = json.loads((src / rel).read_text())
        muts = list(json_mutations(doc))
        if quick:
            muts = muts[::7]
        for mname, mdoc in muts:
            yield case(f"{kind}/{rel} {mname}", src, rel, _json_writer(mdoc), argv_of)
    # binary payloads
    payloads = [
        ("subnet", g.subnet, "state.safetensors", json_docs["subnet"][2]),
        ("run", g.run, "checkpoints/latest", json_docs["run"][2]),
    ]
    ck = sorted((g.run / "checkpoints").glob("ckpt-*"))[0].relative_to(g.run)
    payloads += [("run", g.run, str(ck / "tensors.safetensors"), json_docs["run"][2]),
                 ("run", g.run, str(ck / "meta.json"), json_docs["run"][2])]
    if low.exists():
        payloads.append(("lowered", low, "lib.so", json_docs["lowered"][2]))
    for kind, src, rel, argv_of in payloads:
        for fname, fault in FILE_FAULTS.items():
            if quick and fname not in ("half", "garbage", "directory", "flipped"):
                continue
            yield case(f"{kind}/{rel} {fname}", src, rel, fault, argv_of)
    if low.exists():
        def machine(p: Path) -> None:  # an aarch64 library where x86_64 was recorded
            b = bytearray(p.read_bytes())
            b[18:20] = struct.pack("<H", 183)
            p.write_bytes(bytes(b))
        yield case("lowered/lib.so machine=aarch64", low, "lib.so", machine, json_docs["lowered"][2])
        for cut in (64, 4096, 100_000):
            yield case(f"lowered/lib.so truncated at {cut} (legacy metadata)", low, "lib.so",
                       _legacy_then(_truncate(lambda n, c=cut: min(c, n - 1))), json_docs["lowered"][2])
    # subnet config files given to --config
    cfg_doc = json.loads(g.config_json.read_text())
    cfg_variants = [("nan depths", json.dumps(cfg_doc).replace('"depths": [', '"depths": [NaN, ')),
                    ("inf depths", json.dumps(dict(cfg_doc, depths=[1e309] * len(cfg_doc["depths"])))),
                    ("binary", "\udcff"), ("other space", None),
                    ("resolution 7", json.dumps(dict(cfg_doc, resolution=7))),
                    ("policy short", json.dumps(dict(cfg_doc, policy=cfg_doc["policy"][:-3]))),
                    ("policy strings", json.dumps(dict(cfg_doc, policy="44"))), ("deep", "[" * 100000)]
    for cname, text in cfg_variants:
        def go(cname=cname, text=text):
            import qcompile as qc

            p = fresh()
            p.mkdir()
            f = p / "cfg.json"
            if cname == "binary":
                f.write_bytes(b"\xff\xfe\x00garbage")
            elif cname == "other space":
                f.write_text(qc.spaces.spaceevo().sample(seed=0, bits=(4,)).to_json())
            else:
                f.write_text(text)
            return run_cli(["extract", str(g.run), "--config", str(f), "--out", str(p / "out")], expect_ok=False)
        yield Case(f"extract --config <{cname}>", go, [g.root])
    # images given to `run`
    for iname, writer in _image_faults().items():
        def go(writer=writer):
            p = fresh()
            p.mkdir()
            f = p / "img.png"
            writer(f, g.png)
            return run_cli(["run", str(low), str(f)], expect_ok=False)
        yield Case(f"run <image {iname}>", go, [g.root])


def _legacy_then(fault: Callable[[Path], None]) -> Callable[[Path], None]:
    def f(p: Path) -> None:
        meta = p.parent / "metadata.json"
        doc = json.loads(meta.read_text())
        doc.pop("library", None)
        doc.pop("format", None)
        meta.write_text(json.dumps(doc))
        fault(p)
    return f


def _png_bomb(f: Path, good: Path) -> None:
    data = bytearray(good.read_bytes())
    # IHDR chunk: 8-byte signature, 4 length, 4 type, then width, height; CRC over type + data
    struct.pack_into(">II", data, 16, 200_000, 200_000)
    crc = zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF
    struct.pack_into(">I", data, 29, crc)
    f.write_bytes(bytes(data))


def _image_faults() -> dict[str, Callable[[Path, Path], None]]:
    return {
        "text": lambda f, g: f.write_text("not an image"),
        "empty": lambda f, g: f.write_bytes(b""),
        "truncated": lambda f, g: f.write_bytes(g.read_bytes()[: len(g.read_bytes()) // 2]),
        "header only": lambda f, g: f.write_bytes(g.read_bytes()[:40]),
        "directory": lambda f, g: f.mkdir(),
        "decompression bomb": _png_bomb,
        "missing": lambda f, g: None,
    }


# -------------------------------------------------------------------------------------------------
# CLI: --out collisions (nothing destroyed to make room)


def out_collision_cases(g, scratch: Path, lowered: Path | None = None) -> Iterator[Case]:
    user = scratch / "user-dir"
    user.mkdir(exist_ok=True)
    (user / "thesis.tex").write_text("precious")
    ufile = scratch / "user-file.txt"
    ufile.write_text("precious")
    sub_copy = copy_artifact(g.subnet, scratch / "sub-copy")
    run_copy = copy_artifact(g.run, scratch / "run-copy")
    victims = {"user dir": user, "user file": ufile, "subnet": sub_copy, "run": run_copy}
    cmds = {
        "lower": lambda out: ["lower", str(g.subnet), "--out", str(out)],
        "tune": lambda out: ["tune", str(g.subnet), "--out", str(out), "--target", "x68"],
        "extract": lambda out: ["extract", str(g.run), "--smallest", "--out", str(out)],
        "calibrate": lambda out: ["calibrate", str(g.subnet), "--out", str(out)],
        "export-onnx": lambda out: ["export-onnx", str(g.subnet), "--out", str(out)],
        "demo": lambda out: ["demo", "--quick", "--out", str(out)],
        "bench": lambda out: ["bench", str(g.subnet), "--out", str(out)],
        "train": lambda out: ["train", "--epochs", "0,0,0", "--out", str(out)],
    }
    same_kind = {"extract": "subnet", "calibrate": "subnet", "train": "run"}
    for cname, argv_of in cmds.items():
        for vname, victim in victims.items():
            if same_kind.get(cname) == vname:
                continue  # replacing an artifact of the same kind is allowed (tested elsewhere)
            if cname == "train" and vname == "run":
                continue
            argv = argv_of(victim)
            yield Case(f"{cname} --out <{vname}>", lambda a=argv: run_cli(a, expect_ok=False),
                       [g.root, victim], [scratch])
    # the input itself as --out
    yield Case("lower SUB --out SUB", lambda: run_cli(["lower", str(sub_copy), "--out", str(sub_copy)],
                                                      expect_ok=False), [sub_copy], [scratch])
    yield Case("extract RUN --out RUN", lambda: run_cli(["extract", str(run_copy), "--smallest", "--out",
                                                         str(run_copy)], expect_ok=False), [run_copy], [scratch])
    yield Case("export-onnx --out SUB/subnet.json", lambda: run_cli(
        ["export-onnx", str(sub_copy), "--out", str(sub_copy / "subnet.json")], expect_ok=False), [sub_copy], [scratch])
    yield Case("export-onnx --out <dir>", lambda: run_cli(
        ["export-onnx", str(g.subnet), "--out", str(user)], expect_ok=False), [user, g.root], [scratch, user])
    # train --resume with another space / width must refuse before writing anything
    for argv in (["--space", "mobilenet_v2"], ["--width-mult", "0.5"], ["--resolutions", "24"]):
        yield Case(f"train --resume {' '.join(argv)}", lambda a=argv: run_cli(
            ["train", "--resume", "--out", str(run_copy), "--epochs", "0,0,0", *a], expect_ok=False),
            [run_copy], [scratch])


# -------------------------------------------------------------------------------------------------
# API entry points


def config_cases(g) -> Iterator[Case]:
    import qcompile as qc

    good = json.loads(g.config_json.read_text())
    texts: list[tuple[str, object]] = []
    for key in good:
        for v in [float("nan"), float("inf"), -float("inf"), -1, 0, 10**30, 2.5, "x", None, [], {}, [[]], True,
                  [float("nan")], ["a"], [None], [[1]], [1e309]]:
            texts.append((f"{key}={v!r}"[:40], json.dumps(dict(good, **{key: v}))))
        d = dict(good)
        del d[key]
        texts.append((f"del {key}", json.dumps(d)))
    text = json.dumps(good)
    rng = random.Random(0)
    for i in range(40):
        cut = rng.randrange(len(text))
        texts.append((f"truncated@{cut}", text[:cut]))
        b = bytearray(text.encode())
        b[rng.randrange(len(b))] = rng.randrange(256)
        texts.append((f"byte#{i}", bytes(b)))
    texts += [("binary", b"\xff\xfe\x00"), ("deep", "[" * 50000), ("not str", 12), ("None", None),
              ("extra key", json.dumps(dict(good, bogus=1))),
              ("policy pairs of 3", json.dumps(dict(good, policy=[[4, 4, 4]])))]
    space = qc.spaces.mobilenet_v3(num_classes=10, width_mult=0.25, resolutions=(32,))
    for name, t in texts:
        def go(t=t):
            cfg = qc.SubnetConfig.from_json(t)
            space.validate(cfg)
        yield Case(f"SubnetConfig.from_json <{name}>", lambda go=go: run_api(go))


def extract_cases(g, qnet) -> Iterator[Case]:
    import qcompile as qc

    cfg = qc.SubnetConfig.from_json(g.config_json.read_text())
    others = [qc.spaces.spaceevo().sample(seed=0, bits=(4,)), qc.spaces.mobilenet_v2().sample(seed=0, bits=(4,)),
              qc.spaces.mobilenet_v3().sample(seed=0, bits=(4,))]
    bad = [("dict", cfg.to_dict()), ("None", None), ("json text", cfg.to_json()), ("int", 3)]
    bad += [(f"other space #{i}", c) for i, c in enumerate(others)]
    from dataclasses import replace

    for r in (7, 0, 33, 224):
        try:
            bad.append((f"resolution {r}", replace(cfg, resolution=r)))
        except Exception as e:  # noqa: BLE001 - building the config itself may refuse (resolution 0)
            yield Case(f"SubnetConfig(resolution={r})", lambda e=e: run_api(lambda: (_ for _ in ()).throw(e)))
    bad.append(("depths too long", replace(cfg, depths=(*cfg.depths, 2))))
    bad.append(("policy too long", replace(cfg, policy=qc.QuantPolicy((*cfg.policy.bits, (4, 4))))))
    bad.append(("policy bits 5", replace(cfg, policy=qc.QuantPolicy(tuple((5, 5) for _ in cfg.policy.bits)))))
    bad.append(("kernel 4", replace(cfg, kernels=tuple(4 for _ in cfg.kernels))))
    for name, c in bad:
        yield Case(f"extract <{name}>", lambda c=c: run_api(lambda: qc.extract(qnet, c), expect_ok=False))
    yield Case("extract <graph None>", lambda: run_api(lambda: qc.extract(None, cfg), expect_ok=False))
    yield Case("extract <good>", lambda: run_api(lambda: qc.extract(qnet, cfg), expect_ok=True))


def calibrate_cases(sub) -> Iterator[Case]:
    import torch

    import qcompile as qc

    def state_hash() -> str:
        import hashlib

        h = hashlib.sha256()
        for k, v in sub.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    x = torch.rand(2, 3, 32, 32)

    def raising():
        yield x
        raise OSError(5, "Input/output error", "batch-file")

    def interrupted():
        yield x
        raise KeyboardInterrupt

    bad = {
        "[]": [], "None": None, "[None]": [None], "wrong size": [torch.rand(2, 3, 16, 16)],
        "int64": [torch.ones(2, 3, 32, 32, dtype=torch.int64)], "uint8": [torch.ones(2, 3, 32, 32, dtype=torch.uint8)],
        "NaN": [torch.full((2, 3, 32, 32), float("nan"))], "inf": [x.clone().fill_(float("inf"))],
        "3-D": [torch.rand(3, 32, 32)], "5-D": [torch.rand(1, 2, 3, 32, 32)], "1 channel": [torch.rand(2, 1, 32, 32)],
        "string": "images", "tensor": x, "good then bad": [x, torch.rand(2, 3, 8, 8)], "empty batch": [x[:0]],
        "generator raising OSError": raising(), "KeyboardInterrupt": interrupted(), "labels only": [(None, None)],
        "dict": [{"x": x}],
    }
    for name, batches in bad.items():
        def go(b=batches):
            before = state_hash()
            try:
                qc.calibrate(sub, b)
            except (KeyboardInterrupt, OSError) as e:  # the caller's own exception passes through...
                if state_hash() != before:
                    raise AssertionError("state changed by a failing calibrate") from e
                return
            except Exception:
                if state_hash() != before:
                    raise AssertionError("state changed by a failing calibrate") from None
                raise
        yield Case(f"calibrate <{name}>", lambda go=go: run_api(go, expect_ok=None))
    yield Case("calibrate <max_batches=0>", lambda: run_api(lambda: qc.calibrate(sub, [x], max_batches=0),
                                                              expect_ok=False))


def target_cases(sub) -> Iterator[Case]:
    import qcompile as qc

    targets = ["x68", "", None, 3, [], "llvm", "cuda", {"kind": "llvm", "mtriple": "riscv64-unknown-linux-gnu"},
               {"kind": "cuda"}, {"kind": "nope"}, {"mtriple": "x86_64"}, {"kind": "llvm", "mtriple": "mips-linux"},
               {"kind": "llvm", "mtriple": 5}]
    for t in targets:
        yield Case(f"lower target={t!r}", lambda t=t: run_api(lambda: qc.lower(sub, target=t), expect_ok=False))
    yield Case("lower trials=0", lambda: run_api(lambda: qc.lower(sub, trials=0), expect_ok=False))


def lowered_input_cases(low) -> Iterator[Case]:
    import numpy as np

    shape = low.input_shape
    good = np.random.default_rng(0).random(shape, dtype=np.float32)
    nan = good.copy()
    nan.flat[3] = np.nan
    inf = good.copy()
    inf.flat[0] = np.inf
    bad = {"NaN": nan, "inf": inf, "-inf": -inf, "float64 NaN": nan.astype(np.float64), "wrong shape": good[:, :1],
           "None": None, "string": "x", "list of str": [["a"]], "object": np.array([object()]),
           "complex": good.astype(np.complex64), "ragged": [[1, 2], [3]], "dict": {"x": good}, "empty": np.zeros(0)}
    for name, x in bad.items():
        yield Case(f"Lowered(x) <{name}>", lambda x=x: run_api(lambda: low(x), expect_ok=False))


def rng_name(prefix: str, i: int) -> str:
    return f"{prefix}{i:03d}"


def scratch_dir(base: Path, name: str) -> Path:
    d = base / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def space_cases() -> Iterator[Case]:
    import qcompile as qc

    bad = [{"width_mult": v} for v in (float("nan"), float("inf"), 0, -1, "x", None)]
    bad += [{"resolutions": v} for v in ((), (0,), ("a",), (7,), None, 32)]
    bad += [{"num_classes": v} for v in (0, -1, 2.5, "10", None)]
    for name in ("mobilenet_v3", "mobilenet_v2", "spaceevo"):
        for kw in bad:
            yield Case(f"spaces.{name}({kw})", lambda n=name, kw=kw: run_api(lambda: qc.spaces.get_space(n, **kw),
                                                                               expect_ok=False))
    yield Case("get_space('bogus')", lambda: run_api(lambda: qc.spaces.get_space("bogus"), expect_ok=False))
