"""The worked example of docs/writing_a_pass.md runs and its assertions hold."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "writing_a_pass.md"


def test_worked_example_runs():
    text = DOC.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "no python block in docs/writing_a_pass.md"
    mod = types.ModuleType("writing_a_pass_example")
    sys.modules[mod.__name__] = mod
    try:
        exec(compile(blocks[0], str(DOC), "exec", dont_inherit=True), mod.__dict__)
    finally:
        del sys.modules[mod.__name__]
    assert mod.macs > 0
