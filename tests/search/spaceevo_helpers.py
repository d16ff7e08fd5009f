"""A synthetic block-wise lookup table (no training): NSR falls with width, depth and expand, per-block offsets."""

from __future__ import annotations

import random

from qcompile.spaces.hyperspace import Hyperspace
from qcompile.spaces.spaceevo import VNNI_BLOCKS
from qcompile.train.blockwise import BKDSettings, LookupTable, table_key


def synthetic_table(hyper: Hyperspace, seed: int = 0, per_width: int = 3) -> LookupTable:
    rng = random.Random(seed)
    offset = {b: rng.uniform(0.0, 0.6) for b in hyper.blocks}
    entries = {}
    for s, st in enumerate(hyper.stages, start=1):
        entries[s] = {}
        for b in hyper.blocks:
            rows = []
            for w in st.widths:
                for _ in range(per_width):
                    d = rng.choice(st.depths)
                    ks = [rng.choice(hyper.kernels) for _ in range(d)]
                    es = [rng.choice(VNNI_BLOCKS[b][0]) for _ in range(d)]
                    frac = (w - st.widths[0] + 8) / (st.widths[-1] - st.widths[0] + 8)
                    nsr = 0.2 + offset[b] + 0.6 * (1 - frac) + 0.1 * (max(st.depths) - d) + rng.uniform(0, 0.1)
                    rows.append({"width": w, "depth": d, "kernels": ks, "expands": es, "nsr": nsr})
            entries[s][b] = rows
    return LookupTable(table_key(hyper, "synthetic", seed, BKDSettings()), entries, {"synthetic": True})
