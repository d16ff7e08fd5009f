"""The search space a command's `--space/--num-classes/--width-mult/--resolutions` options name."""

from __future__ import annotations

from qcompile.spaces import get_space


def make_space(args, default_width: float = 1.0, default_res: tuple[int, ...] | None = None):
    kw = {"num_classes": args.num_classes, "width_mult": default_width if args.width_mult is None else args.width_mult}
    res = args.resolutions or default_res
    if res:
        kw["resolutions"] = res
    return get_space(args.space, **kw)
