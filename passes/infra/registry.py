"""The pass registry and the pipeline string: `"fold-bn,fold-batchquant-bias,to-integer{check_overflow=true}"`."""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import fx

from qcompile.errors import ConfigError
from qcompile.passes.infra.pass_base import Pass, PassResult

_REGISTRY: dict[str, type[Pass]] = {}
_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


def kebab(name: str) -> str:
    return re.sub(r"[_\s]+", "-", re.sub(r"(?<=[a-z0-9])([A-Z])", r"-\1", name)).strip("-").lower()


def register(obj: type[Pass] | Callable | None = None, *, name: str | None = None):
    """Register a pass class (frozen dataclass with `name` and `run`) or a plain function `f(gm) -> gm | PassResult`.

    Usable as `@register`, `@register(name="my-pass")`, or `register(fn)`. Returns the pass class.
    """

    def do(o):
        if inspect.isclass(o) and issubclass(o, Pass):
            cls = o
            if name is not None:
                cls.name = name
            if not dataclasses.is_dataclass(cls):
                raise ConfigError("pass", cls.__name__, "a @dataclass(frozen=True) subclass of Pass")
        elif callable(o):
            cls = _wrap_function(o, name or kebab(o.__name__))
        else:
            raise ConfigError("pass", o, "a Pass subclass or a function gm -> gm")
        if not _NAME_RE.match(cls.name):
            raise ConfigError("pass name", cls.name, "kebab-case, e.g. 'fold-bn'")
        _REGISTRY[cls.name] = cls
        return cls

    return do if obj is None else do(obj)


def _wrap_function(fn: Callable, pass_name: str) -> type[Pass]:
    params = [p for p in inspect.signature(fn).parameters.values()][1:]
    field_specs = []
    for p in params:
        default = None if p.default is inspect.Parameter.empty else p.default
        field_specs.append((p.name, Any, dataclasses.field(default=default)))

    def run(self, gm: fx.GraphModule) -> PassResult:
        before = gm.code
        out = fn(gm, **{p.name: getattr(self, p.name) for p in params})
        if isinstance(out, PassResult):
            return out
        out = gm if out is None else out
        return PassResult(out, out is not gm or out.code != before)

    cls = dataclasses.make_dataclass(
        "".join(w.capitalize() for w in pass_name.split("-")) + "Pass",
        field_specs,
        bases=(Pass,),
        frozen=True,
        namespace={"run": run, "name": pass_name, "__doc__": fn.__doc__},
    )
    return dataclass(frozen=True)(cls) if not dataclasses.is_dataclass(cls) else cls


def registered() -> dict[str, type[Pass]]:
    """Name -> pass class of every registered pass."""
    _ensure_builtin_passes()
    return dict(_REGISTRY)


def get_pass(name: str, **options: Any) -> Pass:
    _ensure_builtin_passes()
    if name not in _REGISTRY:
        raise ConfigError("pass", name, sorted(_REGISTRY))
    cls = _REGISTRY[name]
    known = {f.name: f for f in dataclasses.fields(cls)}
    for k in options:
        if k not in known:
            raise ConfigError(f"{name}.{k}", options[k], sorted(known) or "no options")
    return cls(**options)


def _parse_value(s: str) -> Any:
    s = s.strip()
    low = s.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(s)
        except ValueError:
            pass
    return s


def parse_pipeline(text: str) -> list[Pass]:
    """Parse `"a,b{k=v,k2=v2},c"` into pass instances."""
    passes: list[Pass] = []
    i, n = 0, len(text)
    while i < n:
        j = i
        while j < n and text[j] not in ",{":
            j += 1
        name = text[i:j].strip()
        opts: dict[str, Any] = {}
        if j < n and text[j] == "{":
            k = text.find("}", j)
            if k < 0:
                raise ConfigError("pipeline", text, "balanced braces: name{opt=value,...}")
            for item in filter(None, (x.strip() for x in text[j + 1 : k].split(","))):
                if "=" not in item:
                    raise ConfigError(f"pipeline option of {name}", item, "opt=value")
                key, val = item.split("=", 1)
                opts[key.strip()] = _parse_value(val)
            j = k + 1
        if name:
            passes.append(get_pass(name, **opts))
        while j < n and text[j] in ", ":
            j += 1
        i = j
    return passes


def pipeline_string(passes: list[Pass]) -> str:
    return ",".join(p.spec() for p in passes)


_BUILTINS_LOADED = False


def _ensure_builtin_passes() -> None:
    """Import the pass modules shipped with qcompile so their @register runs."""
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    import importlib
    import pkgutil

    import qcompile.passes as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name != "infra" and not info.name.startswith("_"):
            importlib.import_module(f"qcompile.passes.{info.name}")
