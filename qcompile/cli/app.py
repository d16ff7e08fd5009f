"""The `qcompile` command: compile quantized-for-all subnets (train, search, lower, export, bench, run, demo).

Every command reads and writes the same on-disk artifacts (run directory, subnet directory, lowered
directory, see `qcompile.artifacts`). Bad input exits 2 with one line on stderr,
`qcompile CMD: error: <path or field>: <what> (<remedy>)`, never a traceback (unless `--debug`); see
`qcompile.cli.errors`, which wraps every subcommand. `--out` never replaces something that is not an
artifact of the same kind.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

from qcompile.cli.errors import OneLineParser, pop_debug, run_command
from qcompile.cli.spaces import make_space as _make_space

log = logging.getLogger("qcompile")

SPACE_NAMES = ("mobilenet_v3", "mobilenet_v2", "spaceevo")
KNOWN_TARGETS = ("x86", "arm_cpu")


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.replace(",", " ").split())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected integers like 2,3,4, got {text!r}") from e


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from e
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from e
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _batch(text: str) -> int | str:
    """`--batch`: "dynamic" (any batch size) or a positive number of images per call."""
    return "dynamic" if text == "dynamic" else _positive_int(text)


def _target(text: str):
    """`x86`, `arm_cpu`, or a TVM target as JSON (`{"kind": "llvm", "mtriple": ...}`), checked here
    (names as `qcompile.backends.tvm.targets.KNOWN_TARGETS`, not imported: that would load TVM to parse)."""
    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise argparse.ArgumentTypeError(f"target JSON does not parse ({e.msg} at column {e.colno})") from e
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError("target JSON must be an object")
        return value
    if text not in KNOWN_TARGETS:
        raise argparse.ArgumentTypeError(f"unknown target {text!r}; use one of {', '.join(KNOWN_TARGETS)} or "
                                         "TVM target JSON such as '{\"kind\": \"llvm\", \"mcpu\": \"skylake\"}'")
    return text


def _target_name(target) -> str:
    return target if isinstance(target, str) else json.dumps(target, sort_keys=True)


def _space_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", default="mobilenet_v3", choices=SPACE_NAMES, help="search space")
    p.add_argument("--num-classes", type=_positive_int, default=10)
    p.add_argument("--width-mult", type=_positive_float, default=None,
                   help="channel multiplier, > 0 (default per command)")
    p.add_argument("--resolutions", type=_ints, default=None, help="input sizes, e.g. 24,32")


# ------------------------------------------------------------------------------------------------
# commands
# ------------------------------------------------------------------------------------------------


def cmd_space(args) -> int:
    """Print a summary of a search space: size, largest/smallest MACs and parameters."""
    space = _make_space(args, default_res=None)
    print(space_summary(space))
    return 0


def space_summary(space) -> str:
    from qcompile.search.cost import count_macs, count_params
    from qcompile.search.encoding import encoding_size

    big, small = space.largest(), space.smallest()
    rows = [
        f"space {space!r}",
        f"  subnets (architectures x resolutions): {space.size():.3e}",
        f"  with per-layer bits {{2,3,4}}:            {space.size(bits=(2, 3, 4)):.3e}",
        f"  layer slots in a policy: {space.num_layer_slots}; encoding length {encoding_size(space)}",
        f"  {'':10} {'resolution':>10} {'MACs':>14} {'params':>12}",
    ]
    for name, cfg in (("largest", big), ("smallest", small)):
        rows.append(
            f"  {name:10} {cfg.resolution:>10} {count_macs(space, cfg):>14,} {count_params(space, cfg):>12,}"
        )
    return "\n".join(rows)


def cmd_train(args) -> int:
    from qcompile.cli.train_run import QUANTIZE_DEFAULTS, train_run

    if getattr(args, "space_json", None):
        import qcompile as qc

        space = qc.spaces.from_json(Path(args.space_json).read_text())
    else:
        space = _make_space(args, default_width=0.35, default_res=(24, 32))
    train_run(
        space=space,
        data=args.data,
        out=Path(args.out),
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        resume=args.resume,
        data_root=args.data_root,
        threads=args.threads,
        train_config={"checkpoint_every": args.checkpoint_every} if args.checkpoint_every else None,
        quantize_options=None if args.flavour == "fixed-point" else {**QUANTIZE_DEFAULTS, "flavour": args.flavour},
    )
    return 0


def _subnet_config(args, space):
    from qcompile.config import SubnetConfig

    if args.config:
        return space.validate(SubnetConfig.load(args.config))
    if args.largest:
        return space.largest(bits=args.bits[0] if args.bits else None)
    if args.smallest:
        return space.smallest(bits=args.bits[0] if args.bits else None)
    return space.sample(seed=args.seed, bits=args.bits)


def cmd_extract(args) -> int:
    import qcompile as qc
    from qcompile.artifacts import check_out, load_run, save_subnet

    check_out(args.out, "subnet")
    space, qnet, doc = load_run(args.run)
    cfg = _subnet_config(args, space)
    sub = qc.extract(qnet, cfg)
    calibrated = False
    if args.calibrate:
        _calibrate(sub, args.run_data or "digits", cfg.resolution, space.in_channels, args.calib_batches)
        calibrated = True
    save_subnet(sub, args.out, space=space, quantize_options=doc.get("quantize"), calibrated=calibrated,
                source=str(args.run))
    print(f"subnet written to {args.out} ({'calibrated' if calibrated else 'not calibrated'})")
    return 0


def _calibrate(sub, data: str, resolution: int, in_channels: int, batches: int) -> None:
    import qcompile as qc
    from qcompile.data import load_dataset

    ds = load_dataset(data, resolution=resolution, in_channels=in_channels)
    qc.calibrate(sub, ds.train.loader(64, shuffle=True, seed=1, resolution=resolution), max_batches=batches)


def cmd_calibrate(args) -> int:
    from qcompile.artifacts import check_out, load_subnet, save_subnet

    if args.out:
        check_out(args.out, "subnet")
    space, sub, doc = load_subnet(args.subnet)
    if space is None:  # a `quantize-model` directory: keep the trained BN statistics
        from qcompile.model_artifacts import cmd_recalibrate_model

        return cmd_recalibrate_model(args, sub, doc)
    _calibrate(sub, args.data, sub.subnet_config.resolution, space.in_channels, args.calib_batches)
    out = args.out or args.subnet
    save_subnet(sub, out, space=space, quantize_options=doc.get("quantize"), calibrated=True, source=doc.get("source"))
    print(f"calibrated subnet written to {out}")
    return 0


def _load_calibrated(path):
    from qcompile.artifacts import load_subnet
    from qcompile.errors import LoweringError

    space, sub, doc = load_subnet(path)
    if not doc.get("calibrated"):
        raise LoweringError(str(path), "subnet is not calibrated", f"run `qcompile calibrate {path}` first")
    return space, sub, doc


def _pipeline(args) -> str | None:
    """`--pipeline`, checked before any work, after importing each `--pass-module` (registers its passes)."""
    from qcompile.passes import load_pass_module, parse_pipeline

    for spec in getattr(args, "pass_module", None) or ():
        load_pass_module(spec)
    pipeline = getattr(args, "pipeline", None)
    if pipeline is not None:
        parse_pipeline(pipeline)  # an unknown pass, option or value fails here, naming it
    return pipeline


def cmd_lower(args) -> int:
    import qcompile as qc
    from qcompile.artifacts import check_out
    from qcompile.backends.tvm.targets import resolve_target

    check_out(args.out, "lowered")  # before any work: never replace a subnet or a user directory
    resolve_target(args.target)
    pipeline = _pipeline(args)
    _, sub, _ = _load_calibrated(args.subnet)
    low = qc.lower(sub, target=args.target, tune=args.tune, trials=args.trials, pipeline=pipeline, batch=args.batch,
                   remote=args.remote)
    low.export(args.out)
    print(f"lowered for {_target_name(args.target)} into {args.out}")
    return 0


def cmd_tune(args) -> int:
    import qcompile as qc
    from qcompile.artifacts import check_out
    from qcompile.backends.tvm.targets import resolve_target

    if args.out:
        check_out(args.out, "lowered")
    resolve_target(args.target)
    _, sub, _ = _load_calibrated(args.subnet)
    low = qc.lower(sub, target=args.target, tune=True, trials=args.trials, remote=args.remote)
    if args.out:
        low.export(args.out)
    print(f"tuned {args.subnet} for {_target_name(args.target)}; "
          "tuning database updated (reused by every later lowering)")
    return 0


def cmd_bench(args) -> int:
    from qcompile.cli.bench_run import bench_subnet
    from qcompile.errors import ConfigError
    from qcompile.utils.io import check_out

    check_out(args.out, "bench")
    if args.target == "arm_cpu":
        raise ConfigError("--target", args.target, "x86 or TVM target JSON of this host",
                          "bench times on this machine; use `qcompile lower --target arm_cpu` and a board")
    _, sub, _ = _load_calibrated(args.subnet)
    report = bench_subnet(sub, target=args.target, out=Path(args.out), repeat=args.repeat, threads=args.threads,
                          eval_data=None if args.data == "none" else args.data)
    print(report)
    return 0


def cmd_export_onnx(args) -> int:
    import qcompile as qc
    from qcompile.errors import CheckpointError

    out = Path(args.out)
    if out.is_dir():  # checked before any work or write
        raise CheckpointError(f"{out}: is a directory (name the .onnx file to write, e.g. {out / 'model.onnx'})")
    pipeline = _pipeline(args)
    _, sub, _ = _load_calibrated(args.subnet)
    qc.export_onnx(sub, args.out, format=args.format, pipeline=pipeline, weights=args.weights)
    print(f"ONNX ({args.format}) written to {args.out}")
    return 0


#: images per call of `qcompile run` on a dynamic-batch library
_RUN_CHUNK = 64


def cmd_run(args) -> int:
    import numpy as np

    import qcompile as qc
    from qcompile.errors import ConfigError

    low = qc.load(args.lowered)
    shape = tuple(low.input_shape)
    if len(shape) != 4 or shape[2] != shape[3]:
        raise ConfigError(f"{args.lowered} input shape", shape, "an image library, (N, C, R, R)")
    batch, channels, res = shape[0], shape[1], shape[2]  # the library's own resolution (static shape)
    dynamic = bool(getattr(low, "dynamic_batch", False))  # any batch size: up to _RUN_CHUNK images per call
    if args.images:
        x = _read_images(args.images, channels, res, args.data)
        names = list(args.images)
    else:
        from qcompile.data import load_dataset

        ds = load_dataset(args.data, resolution=res, in_channels=channels).test
        x = ds.images[: args.limit].numpy()
        names = [f"{args.data}/test[{i}] (label {int(ds.labels[i])})" for i in range(len(x))]
    x = np.ascontiguousarray(x, dtype=low.input_dtype)
    if dynamic:
        batch = max(1, min(len(x), _RUN_CHUNK))
    for start in range(0, len(x), batch):  # a static-batch library: run it chunk by chunk, last one padded
        chunk = x[start : start + batch]
        padded = chunk if dynamic else np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]),
                                                                        chunk.dtype)])
        logits = np.asarray(low(padded))[: len(chunk)]
        for name, row in zip(names[start : start + batch], logits):
            print(f"{name}: class {int(np.argmax(row))}")
    return 0


def _read_image(path: str, Image, mode: str = "RGB"):
    """An image in [0, 1] as HW (mode "L") or HWC float32; ConfigError naming the file for anything that is not
    one (not an image, truncated, a decompression bomb)."""
    import numpy as np

    from qcompile.errors import ConfigError

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(2, "No such file", str(p))
    try:
        with Image.open(p) as im:
            im.load()
            arr = np.asarray(im.convert(mode), dtype=np.float32) / 255.0
    except OSError as e:  # UnidentifiedImageError, "image file is truncated", read errors
        raise ConfigError(str(p), f"not a readable image ({str(e).splitlines()[0] if str(e) else type(e).__name__})",
                          "PNG, JPEG or another format Pillow reads") from e
    except (Image.DecompressionBombError, ValueError, SyntaxError) as e:
        raise ConfigError(str(p), f"not a usable image ({str(e).splitlines()[0] if str(e) else type(e).__name__})",
                          "a normal-sized PNG or JPEG") from e
    if arr.ndim not in (2, 3) or min(arr.shape[:2]) < 1:
        raise ConfigError(str(p), f"image of shape {arr.shape}", "a non-empty image")
    return arr


def _read_images(paths: list[str], channels: int, res: int, data: str):
    """Image files as the model's training data were prepared: pixels in [0, 1], grey or RGB as the library
    takes, resized to `res`, standardised with the training split's statistics (digits)."""
    import torch
    from PIL import Image

    from qcompile.data.base import resize
    from qcompile.data.digits import normalisation
    from qcompile.errors import ConfigError

    if data != "digits":
        raise ConfigError("--data", data, "digits (image files are standardised with the digits statistics)")
    xs = []
    for p in paths:
        arr = _read_image(p, Image, "L" if channels == 1 else "RGB")
        t = torch.from_numpy(arr)[None] if arr.ndim == 2 else torch.from_numpy(arr).permute(2, 0, 1)
        xs.append(t.expand(channels, -1, -1) if t.shape[0] != channels else t)
    x = resize(torch.stack(xs), res).clamp(0.0, 1.0)
    mean, std = normalisation(res, channels)
    return ((x - mean) / std).numpy()


def cmd_demo(args) -> int:
    from qcompile.cli.demo import run_demo

    report = run_demo(Path(args.out), quick=args.quick, seed=args.seed)
    print(f"report: {report}")
    return 0


# ------------------------------------------------------------------------------------------------


def _pipeline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pipeline", default=None, metavar="PASSES",
                   help="passes from subnet to integer program (default "
                        "'fold-bn,fold-batchquant-bias,lower-to-integer,accumulator-range'); docs/writing_a_pass.md")
    p.add_argument("--pass-module", action="append", default=[], metavar="FILE_OR_MODULE",
                   help="import this .py file or module first so its registered passes can be named (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="qcompile", description=__doc__.split("\n")[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of a failure (accepted anywhere on the command line)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("space", help="summarise a search space")
    _space_args(s)
    s.set_defaults(fn=cmd_space)

    s = sub.add_parser("train", help="train a quantized supernet (checkpoints in OUT/checkpoints)")
    _space_args(s)
    s.add_argument("--data", default="digits", help="digits | folder:PATH | cifar10:PATH | cifar100:PATH")
    s.add_argument("--data-root", default=None, help="dataset directory for folder/cifar")
    s.add_argument("--out", required=True, help="run directory")
    s.add_argument("--epochs", type=_ints, default=None, help="epochs per phase: float,mixed,low-bit")
    s.add_argument("--batch-size", type=_positive_int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints")
    s.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's); 1 is fastest on a loaded machine")
    s.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS",
                   help="also checkpoint every STEPS optimiser steps (default: at epoch ends only)")
    s.add_argument("--space-json", default=None, metavar="FILE",
                   help="train the space saved in FILE (space.to_json(), e.g. from evolve-space); overrides --space")
    s.add_argument("--flavour", choices=("fixed-point", "qdq"), default="fixed-point",
                   help="quantization arithmetic (qcompile.quant.flavour): 'qdq' trains what a standard ONNX QDQ "
                        "graph computes, so the QDQ export is the evaluated model")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("extract", help="slice a subnet out of a trained run")
    s.add_argument("run", help="run directory from `qcompile train`")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--config", help="subnet JSON (SubnetConfig)")
    g.add_argument("--largest", action="store_true")
    g.add_argument("--smallest", action="store_true")
    s.add_argument("--seed", type=int, default=0, help="random subnet seed (default choice)")
    s.add_argument("--bits", type=_ints, default=(4,), help="bit choices of the policy, e.g. 2,3,4")
    s.add_argument("--calibrate", action="store_true", help="also calibrate (BN + BatchQuant)")
    s.add_argument("--run-data", default=None, help="calibration data (default digits)")
    s.add_argument("--calib-batches", type=_positive_int, default=8)
    s.add_argument("--out", required=True, help="subnet directory")
    s.set_defaults(fn=cmd_extract)

    s = sub.add_parser("calibrate", help="recalibrate BN and BatchQuant statistics of a subnet")
    s.add_argument("subnet", help="subnet directory")
    s.add_argument("--data", default="digits")
    s.add_argument("--calib-batches", type=_positive_int, default=8)
    s.add_argument("--out", default=None, help="output directory (default: in place)")
    s.set_defaults(fn=cmd_calibrate)

    for name, fn, helptext in (("lower", cmd_lower, "compile a calibrated subnet with TVM"),
                               ("tune", cmd_tune, "tune a subnet's kernels into the tuning database")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("subnet", help="calibrated subnet directory")
        s.add_argument("--target", default="x86", type=_target,
                       help='x86 | arm_cpu | TVM target JSON, e.g. \'{"kind": "llvm", "mcpu": "skylake"}\'')
        s.add_argument("--trials", type=_positive_int, default=None,
                       help="schedules timed per kernel when tuning (default: all candidates)")
        s.add_argument("--remote", default=None, metavar="HOST:PORT",
                       help="TVM RPC server on the device that times the kernels when tuning for a target this "
                            "host cannot run (arm_cpu); qemu timings are emulation, not latency")
        if name == "lower":
            _pipeline_args(s)
            s.add_argument("--tune", action="store_true")
            s.add_argument("--batch", type=_batch, default=None,
                           help="images per call: a number, or 'dynamic' for one library that takes any batch size "
                                "(default: the calibrated subnet's input shape)")
            s.add_argument("--out", required=True, help="lowered directory")
        else:
            s.add_argument("--out", default=None, help="also export the tuned lowering here")
        s.set_defaults(fn=fn)

    s = sub.add_parser("bench", help="benchmark a subnet against peers (torch, onnxruntime, TVM)")
    s.add_argument("subnet", help="calibrated subnet directory")
    s.add_argument("--target", default="x86", type=_target,
                   help='x86 (this host) | TVM target JSON of this host, e.g. \'{"kind": "llvm", "mcpu": "skylake"}\'')
    s.add_argument("--repeat", type=_positive_int, default=20)
    s.add_argument("--threads", type=_positive_int, default=2)
    s.add_argument("--out", default="runs/bench")
    s.add_argument("--data", default="digits", help="test split for the top-1 columns ('none': no accuracy)")
    s.set_defaults(fn=cmd_bench)

    s = sub.add_parser("export-onnx", help="export a calibrated subnet to ONNX")
    s.add_argument("subnet", help="calibrated subnet directory")
    s.add_argument("--format", default="qdq", choices=("qdq", "qoperator"))
    s.add_argument("--weights", default="auto", choices=("auto", "int8", "uint8"),
                   help="weight storage: auto (uint8 where int8 could saturate onnxruntime on x86 without VNNI; "
                        "exact on every host), int8 (VNNI/ARM hosts only), uint8 (docs/qdq.md)")
    _pipeline_args(s)
    s.add_argument("--out", required=True, help="model.onnx path")
    s.set_defaults(fn=cmd_export_onnx)

    s = sub.add_parser("run", help="classify images with a lowered model")
    s.add_argument("lowered", help="lowered directory")
    s.add_argument("images", nargs="*", help="image files (default: digits test images)")
    s.add_argument("--data", default="digits")
    s.add_argument("--limit", type=_positive_int, default=8)
    s.set_defaults(fn=cmd_run)

    from qcompile.cli.search_run import add_parser as add_search_parser  # `qcompile search`

    add_search_parser(sub)

    from qcompile.cli.evolve_space import add_parser as _add_evolve_space

    _add_evolve_space(sub)

    from qcompile.model_artifacts import add_parser as _add_quantize_model

    _add_quantize_model(sub)

    s = sub.add_parser("demo", help="the whole pipeline on the embedded digits data; writes OUT/report.md")
    s.add_argument("--out", default="runs/demo")
    s.add_argument("--quick", action="store_true", help="tiny settings (seconds; for tests)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_demo)

    from qcompile.cli.predictor import add_parser as add_predictor_parser

    add_predictor_parser(sub)

    from qcompile.search.latency.cli import add_parser as add_latency_table

    add_latency_table(sub, _space_args)
    _describe(p)
    return p


def _describe(parser: argparse.ArgumentParser) -> None:
    """Give every subcommand's own `--help` its one-line summary from the command list as its description
    (where it has none), down to the actions of `predictor` and `latency-table`."""
    for action in parser._actions:  # noqa: SLF001 - argparse keeps subcommands only here
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            helps = {a.dest: a.help for a in action._choices_actions}  # noqa: SLF001
            for name, child in action.choices.items():
                if child.description is None and helps.get(name):
                    child.description = helps[name][0].upper() + helps[name][1:] + "."
                _describe(child)


def main(argv: list[str] | None = None) -> int:
    """Parse and run one subcommand. Every failure of every subcommand ends in one line on stderr and
    exit 2 (`qcompile.cli.errors`); `--debug` anywhere on the line shows the traceback instead."""
    argv, debug = pop_debug(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # usage errors (one line, exit 2) and --help (exit 0)
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    debug = debug or bool(getattr(args, "debug", False))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    return run_command(args.command, args.fn, args, debug=debug)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
