"""The pass registry and the pipeline string.

Grammar (xDSL's `ModulePass` pipeline syntax, plus commas between options for compatibility):

    pipeline := pass ("," pass)*
    pass     := name ("{" option ((" " | ",") option)* "}")?
    option   := field "=" value
    value    := scalar ("," scalar)*          (a tuple field takes several scalars)

e.g. `"fold-bn,fold-batchquant-bias,lower-to-integer{strict=true},accumulator-range{bound=weights}"` or
`"insert-quantizers{weight_bits=2,3,4 act_bits=2,3,4,8 per_channel=true}"`. A comma inside braces
followed by `field=` starts the next option; any other comma separates the scalars of a tuple value.

The pass class is the one definition of its options: each value is parsed by the type annotation of
its dataclass field (`bool`: true/false; `int`; `float`; `str`; `tuple[int, ...]` etc.; `X | None`:
`none` or an `X`). An unknown pass, an unknown option or a value of the wrong type raises
`ConfigError` naming the pass, the option, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import fx

from qcompile.errors import ConfigError
from qcompile.passes.infra.pass_base import Pass, PassResult

_REGISTRY: dict[str, type[Pass]] = {}
_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
#: a separator between two options: whitespace or a comma, followed by `field=`
_OPTION_START = re.compile(r"(?:^|[\s,]+)([A-Za-z_][A-Za-z0-9_]*)\s*=")


def kebab(name: str) -> str:
    return re.sub(r"[_\s]+", "-", re.sub(r"(?<=[a-z0-9])([A-Z])", r"-\1", name)).strip("-").lower()


def register(obj: type[Pass] | Callable | None = None, *, name: str | None = None):
    """Register a pass class (frozen dataclass with `name` and `run`) or a plain function `f(gm) -> gm | PassResult`.

    Usable as `@register`, `@register(name="my-pass")`, or `register(fn)`. Returns the pass class.
    A name already registered for another class raises `ConfigError`; registering the same class
    again (or a class of the same module and qualified name, i.e. a re-imported module) replaces it.
    """

    def do(o):
        if inspect.isclass(o) and issubclass(o, Pass):
            cls = o
            if name is not None:
                cls.name = name
            if not dataclasses.is_dataclass(cls):
                raise ConfigError("pass", cls.__name__, "a @dataclass(frozen=True) subclass of Pass")
        elif callable(o):
            cls = wrap_function(o, name or kebab(o.__name__))
        else:
            raise ConfigError("pass", o, "a Pass subclass or a function gm -> gm")
        if not _NAME_RE.match(cls.name):
            raise ConfigError("pass name", cls.name, "kebab-case, e.g. 'fold-bn'")
        old = _REGISTRY.get(cls.name)
        if old is not None and _origin(old) != _origin(cls):
            raise ConfigError(
                "pass name", cls.name, "a name not yet registered",
                f"already registered by {old.__module__}.{old.__qualname__}",
            )
        _REGISTRY[cls.name] = cls
        return cls

    return do if obj is None else do(obj)


def _origin(cls: type) -> tuple[str, str]:
    fn = getattr(cls, "_wrapped_function", None)
    o = fn if fn is not None else cls
    return o.__module__, o.__qualname__


def wrap_function(fn: Callable, pass_name: str | None = None) -> type[Pass]:
    """A pass class around `fn(gm, **options) -> gm | None | PassResult` (not registered).

    The keyword parameters of `fn` become the class's option fields; `modified` is whether the
    returned module differs from `gm` or its code changed.
    """
    pass_name = pass_name or kebab(fn.__name__)
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

    return dataclasses.make_dataclass(
        "".join(w.capitalize() for w in pass_name.split("-")) + "Pass",
        field_specs,
        bases=(Pass,),
        frozen=True,
        namespace={"run": run, "name": pass_name, "__doc__": fn.__doc__, "_wrapped_function": fn,
                   "__module__": fn.__module__},
    )


def registered() -> dict[str, type[Pass]]:
    """Name -> pass class of every registered pass."""
    _ensure_builtin_passes()
    return dict(_REGISTRY)


def get_pass(name: str, **options: Any) -> Pass:
    """An instance of the registered pass `name` with `options` (strings are parsed by field type)."""
    _ensure_builtin_passes()
    if name not in _REGISTRY:
        raise ConfigError("pass", name, sorted(_REGISTRY))
    cls = _REGISTRY[name]
    known = {f.name: f for f in dataclasses.fields(cls)}
    hints = _field_types(cls)
    parsed = {}
    for k, v in options.items():
        if k not in known:
            raise ConfigError(f"{name}.{k}", v, sorted(known) or "no options")
        parsed[k] = parse_option(name, k, v, hints.get(k, Any)) if isinstance(v, str) else v
    return cls(**parsed)


def _field_types(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve: fall back to untyped parsing
        return {}


def parse_option(pass_name: str, option: str, text: str, tp: Any) -> Any:
    """The value of `pass_name.option` from its pipeline text, parsed as type `tp`."""
    where = f"{pass_name}.{option}"
    s = text.strip()
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if s.lower() in ("none", "null") and len(rest) < len(args):
            return None
        if len(rest) == 1:
            return parse_option(pass_name, option, s, rest[0])
        tp, origin, args = Any, None, ()
    if origin is tuple:
        item = args[0] if args else Any
        parts = [p for p in (x.strip() for x in s.split(",")) if p]
        return tuple(parse_option(pass_name, option, p, item) for p in parts)
    if tp is bool:
        if s.lower() not in ("true", "false"):
            raise ConfigError(where, s, "true or false")
        return s.lower() == "true"
    if tp is int:
        try:
            return int(s)
        except ValueError:
            raise ConfigError(where, s, "an integer") from None
    if tp is float:
        try:
            return float(s)
        except ValueError:
            raise ConfigError(where, s, "a number") from None
    if tp is str:
        return s
    if origin is typing.Literal:
        if s not in [str(a) for a in args]:
            raise ConfigError(where, s, list(args))
        return next(a for a in args if str(a) == s)
    return _parse_untyped(s)


def _parse_untyped(s: str) -> Any:
    if "," in s:
        return tuple(_parse_untyped(p) for p in s.split(",") if p.strip())
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


def _split_options(name: str, body: str) -> dict[str, str]:
    starts = list(_OPTION_START.finditer(body))
    if body.strip() and (not starts or body[: starts[0].start()].strip(" ,")):
        raise ConfigError(f"pipeline option of {name}", body.strip(), "opt=value, e.g. name{opt=1 other=2,3}")
    opts: dict[str, str] = {}
    for m, nxt in zip(starts, starts[1:] + [None]):
        key = m.group(1)
        if key in opts:
            raise ConfigError(f"{name}.{key}", body.strip(), "each option once")
        opts[key] = body[m.end(): nxt.start() if nxt else len(body)].strip(" ,")
    return opts


def parse_pipeline(text: str) -> list[Pass]:
    """Parse `"a,b{k=v k2=1,2},c"` into pass instances (grammar in the module doc)."""
    passes: list[Pass] = []
    i, n = 0, len(text)
    while i < n:
        j = i
        while j < n and text[j] not in ",{}":
            j += 1
        if j < n and text[j] == "}":
            raise ConfigError("pipeline", text, "balanced braces: name{opt=value ...}")
        name = text[i:j].strip()
        opts: dict[str, str] = {}
        if j < n and text[j] == "{":
            k = text.find("}", j)
            if k < 0 or "{" in text[j + 1: k]:
                raise ConfigError("pipeline", text, "balanced braces: name{opt=value ...}")
            if not name:
                raise ConfigError("pipeline", text, "a pass name before each '{'")
            opts = _split_options(name, text[j + 1: k])
            j = k + 1
        if name:
            passes.append(get_pass(name, **opts))
        while j < n and text[j] in ", \t\n":
            j += 1
        i = j
    return passes


def pipeline_string(passes: list[Pass]) -> str:
    """The pipeline string of `passes`; `parse_pipeline` of it gives equal passes."""
    return ",".join(p.spec() for p in passes)


_BUILTINS_LOADED = False


def _ensure_builtin_passes() -> None:
    """Import the pass modules shipped with qcompile so their @register runs.

    The modules are found on disk next to `infra/` rather than through the `qcompile.passes` package
    object, so the registry does not import its own parent package.
    """
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    import importlib

    for f in sorted(Path(__file__).resolve().parents[1].glob("*.py")):
        if not f.stem.startswith("_"):
            importlib.import_module(f"qcompile.passes.{f.stem}")


def load_pass_module(spec: str) -> Any:
    """Import the module `spec` (a `.py` file path or a dotted module name) so that its `@register`
    passes can be named in pipeline strings; returns the module. The CLI's `--pass-module`."""
    import importlib
    import importlib.util
    import sys

    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise ConfigError("--pass-module", spec, "an existing .py file or an importable module name")
        name = f"qcompile_user_passes.{path.stem}"
        if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path.resolve()):
            return sys.modules[name]
        mod_spec = importlib.util.spec_from_file_location(name, path.resolve())
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module
        try:
            mod_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module
    try:
        return importlib.import_module(spec)
    except ImportError as e:
        raise ConfigError("--pass-module", spec, "an existing .py file or an importable module name",
                          str(e)) from e
