"""Drop TVM's "Scope Saving:" / "Scope Loaded:" warnings, and only those, from the process's stderr.

TVM's relax VM writes one `LOG(WARNING) << "Scope Saving:" << scope` per entry of an executable's
`memory_scopes` when it serializes the executable (`VMExecutable::SaveMemoryScopeSection`, executable.cc),
and one "Scope Loaded:" per entry when it reads one back (`LoadMemoryScopeSection`): debug output left in
the runtime. The entries themselves come from the VM, not from our schedules: `VirtualMachineImpl::Init`
looks up every tensor constant's scope with `exec_->memory_scopes[i]` (`std::unordered_map::operator[]`),
which inserts an empty scope for each. So exporting a lowering that has run once (`low(x)`, then
`low.export`, as the peer harness does with the demo's checked lowering) printed one line per constant,
235 on the demo subnet, and loading that library printed them again in every worker: about 470 lines of
`make demo`. The empty scope means what a missing one means (the VM passes it to `ConvertRegToDevice`
either way), so the library is unaffected; TVM's log level cannot be set from the environment
(`TVM_LOG_DEBUG` only enables VLOG), so the lines are filtered where they are written.

`quiet_scope_warnings()` wraps the TVM calls that serialize or deserialize an executable: fd 2 goes to a
temporary file for the duration, and afterwards everything written there is written to the real stderr
except lines of exactly that form; other output, TVM errors and compiler messages included, comes through
unchanged and in order (only delayed to the end of the call).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator

#: one TVM log line of the two messages, e.g. "[22:56:00] /project/src/runtime/vm/executable.cc:276: Warning:
#: Scope Saving:" (the scope, empty here, follows the colon)
SCOPE_WARNING = re.compile(rb"^\[[^\]\n]*\] [^\n]*vm/executable\.cc:\d+: Warning: Scope (?:Saving|Loaded):[^\n]*\n?",
                           re.MULTILINE)

_lock = threading.RLock()
_depth = 0


def drop_scope_warnings(data: bytes) -> bytes:
    """`data` without the lines of `SCOPE_WARNING`."""
    return SCOPE_WARNING.sub(b"", data)


@contextlib.contextmanager
def quiet_scope_warnings() -> Iterator[None]:
    """Run the body with fd 2 captured; write back what it wrote there, less TVM's scope warnings (module
    docstring). Nested uses capture once; where fd 2 cannot be duplicated the body runs unfiltered."""
    global _depth
    with _lock:
        if _depth:
            _depth += 1
            try:
                yield
            finally:
                _depth -= 1
            return
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:  # no stderr to filter
            yield
            return
        _depth = 1
        try:
            with tempfile.TemporaryFile() as tmp:
                os.dup2(tmp.fileno(), 2)
                try:
                    yield
                finally:
                    with contextlib.suppress(Exception):
                        sys.stderr.flush()  # Python's own writes to fd 2 in the window, kept in order
                    os.dup2(saved, 2)
                    tmp.seek(0)
                    rest = memoryview(drop_scope_warnings(tmp.read()))
                    while rest:
                        rest = rest[os.write(2, rest):]
        finally:
            os.close(saved)
            _depth = 0
