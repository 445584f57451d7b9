"""The Jinja sandbox templates render in, with limits on what one render may build and how long
it may run.

Jinja's own sandbox stops a template from reaching Python's internals but not from exhausting
the machine: `'a'*10**9`, `9**9**9`, `'a'|center(10**9)`, doubling a string with `~` in a loop,
or nested loops that print nothing. Here every operation that can build something large checks
the size of its result before doing the work (the `*`, `**`, `+` and `%` operators, `~`, the
padding, joining, replacing, formatting and batching filters and string methods, list
`extend`), intercepted operators are never folded at compile time (Jinja's own rule), and the
render's deadline is checked at every loop iteration and every call, so no loop or recursion
outlives it. The deadline counts the rendering thread's CPU time, not the clock's: a runaway
loop spends CPU, while a render that waits for a core (a prepare worker at idle priority beside
an engine using every core) is not at fault. What a single operation may still take is bounded
by the sizes it is allowed to start from; `prompts.isolate` adds a hard bound for user
templates.
"""

from __future__ import annotations

import re
import threading
import time
from string import Formatter

from jinja2 import nodes
from jinja2.defaults import DEFAULT_FILTERS
from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import generate_lorem_ipsum
from jinja2.visitor import NodeTransformer

from annotator.core.errors import PromptError

MAX_RENDER_S = 2.0
"""A prompt whose render takes more CPU seconds than this is refused (a runaway loop)."""
MAX_PROMPT_CHARS = 200_000
"""A rendered prompt longer than this is refused (no model reads that much)."""
MAX_VALUE_SIZE = 1_000_000
"""The most characters or items any one value a template builds may hold."""
MAX_INT_BITS = 10_000
"""The largest integer a template may compute (about 3,000 digits)."""

_deadline = threading.local()


class RenderTimeout(PromptError):
    """The render spent more than MAX_RENDER_S of CPU."""


def start_clock() -> None:
    # CPU time, not wall time: at idle priority beside a busy engine, a render that costs
    # 0.1 ms of CPU measured 1.4 s between its start and end (and past 2 s one time in 3,000)
    _deadline.at = time.thread_time() + MAX_RENDER_S


def stop_clock() -> None:
    _deadline.at = None


def check_clock() -> None:
    at = getattr(_deadline, "at", None)
    if at is not None and time.thread_time() > at:
        raise RenderTimeout(f"rendering took over {MAX_RENDER_S} s of CPU (a runaway loop?)")


def _refuse(what: str, size: int, limit: int = MAX_VALUE_SIZE) -> PromptError:
    return PromptError(f"{what} would build {size:,} characters or items, over the "
                       f"{limit:,} a template may build; refused")


def _check_size(what: str, size: int) -> None:
    if size > MAX_VALUE_SIZE:
        raise _refuse(what, size)


def _sized(x) -> int | None:
    return len(x) if isinstance(x, (str, bytes, list, tuple, range)) else None


def _check_int(what: str, bits: int) -> None:
    if bits > MAX_INT_BITS:
        raise PromptError(f"{what} would compute an integer of about {bits:,} bits, over the "
                          f"{MAX_INT_BITS:,} a template may compute; refused")


# printf-style conversions (`%` and the `format` filter): widths and precisions come from the
# format string, `*` takes them from the arguments, where they cannot be checked beforehand
_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_printf(fmt: str) -> None:
    for spec in _PRINTF_SPEC.finditer(fmt):
        for width in spec.groups():
            if width == "*":
                raise PromptError("a `*` width in a %-format is not allowed in templates; "
                                  "write the width out")
            if width:
                _check_size("a %-format width", int(width))


def _check_format(fmt: str) -> None:
    """str.format: widths in the specs, no widths taken from the arguments."""
    for _, _, spec, _ in Formatter().parse(fmt):
        if spec and "{" in spec:
            raise PromptError("a nested `{...}` width in str.format is not allowed in "
                              "templates; write the width out")
        for width in re.findall(r"\d+", spec or ""):
            _check_size("a str.format width", int(width))


def _mul(left, right):
    if isinstance(left, int) and isinstance(right, int):
        _check_int("`*`", left.bit_length() + right.bit_length())
    else:
        seq, times = (left, right) if isinstance(right, int) else (right, left)
        if isinstance(times, int) and _sized(seq) is not None:
            _check_size("`*`", _sized(seq) * max(times, 0))
    return left * right


def _pow(left, right):
    if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
        _check_int("`**`", right * left.bit_length())
    return left ** right


def _add(left, right):
    if _sized(left) is not None and _sized(right) is not None:
        _check_size("`+`", _sized(left) + _sized(right))
    return left + right


def _mod(left, right):
    if isinstance(left, str):
        _check_printf(left)
    return left % right


def concat(parts: list) -> str:
    """Jinja's `~`, with the size checked before joining."""
    parts = [str(p) for p in parts]
    _check_size("`~`", sum(map(len, parts)))
    return "".join(parts)


def budget_loop(iterable):
    """A `{% for %}` loop's iterable, checking the deadline at every iteration."""
    for item in iterable:
        check_clock()
        yield item


def _arg(args: tuple, kwargs: dict, index: int, name: str, default=None):
    return args[index] if len(args) > index else kwargs.get(name, default)


def _padded(name: str):
    def check(s, *args, **kwargs):
        width = _arg(args, kwargs, 0, "width", 80)
        if isinstance(width, int):
            _check_size(f"{name}({width})", width)
    return check


def _check_replace(s, *args, **kwargs):
    old, new = _arg(args, kwargs, 0, "old"), _arg(args, kwargs, 1, "new")
    if isinstance(s, str) and isinstance(old, str) and isinstance(new, str):
        hits = s.count(old) if old else len(s) + 1
        _check_size("replace", len(s) + hits * max(len(new) - len(old), 0))


def _check_join(sep, items):
    if isinstance(sep, str):
        _check_size("join", len(sep) * len(items) + sum(len(str(x)) for x in items))


def _check_indent(s, *args, **kwargs):
    width = _arg(args, kwargs, 0, "width", 4)
    width = len(width) if isinstance(width, str) else width
    if isinstance(s, str) and isinstance(width, int):
        _check_size("indent", len(s) + (s.count("\n") + 1) * width)


def _check_count(name: str, index: int, keyword: str):
    def check(value, *args, **kwargs):
        count = _arg(args, kwargs, index, keyword)
        if isinstance(count, int):
            _check_size(f"{name}({count})", count)
    return check


def _check_expandtabs(s, *args, **kwargs):
    tab = _arg(args, kwargs, 0, "tabsize", 8)
    if isinstance(tab, int):
        _check_size("expandtabs", len(s) + s.count("\t") * tab)


# the filters that can build far more than they are given, each with the check of its sizes
_FILTER_CHECKS = {
    "center": _padded("center"),
    "indent": _check_indent,
    "replace": _check_replace,
    "join": lambda value, d="", *a, **k: _check_join(d, value),
    "format": lambda value, *a, **k: _check_printf(str(value)),
    "batch": _check_count("batch", 0, "linecount"),
    "slice": _check_count("slice", 0, "slices"),
}
# the string and list methods that can, likewise (called on their object)
_METHOD_CHECKS = {
    "center": _padded("center"), "ljust": _padded("ljust"), "rjust": _padded("rjust"),
    "zfill": _padded("zfill"), "replace": _check_replace, "expandtabs": _check_expandtabs,
    "join": lambda sep, items, *a, **k: _check_join(sep, items),
}


def _listed(args: tuple, index: int) -> tuple:
    """args with args[index] made a list where it is a generator (`range(..)|map(..)`): its
    size must be known before the work, and it is at most as long as the loops that made it."""
    if len(args) > index and not isinstance(args[index], (str, bytes, list, tuple, range, dict)):
        try:
            return (*args[:index], list(args[index]), *args[index + 1:])
        except TypeError:  # not iterable: the filter says what is wrong with it
            pass
    return args


def _checked_filter(name: str, check):
    filter_ = DEFAULT_FILTERS[name]

    passes_context = hasattr(filter_, "jinja_pass_arg")  # then the value is the second argument

    def checked(*args, **kwargs):
        args = _listed(args, passes_context)
        check(*args[passes_context:], **kwargs)
        return filter_(*args, **kwargs)

    # keep Jinja's pass_context/pass_environment markers
    checked.__dict__.update(getattr(filter_, "__dict__", {}))
    return checked


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100):  # noqa: A002
    _check_size("lipsum", n * max * 12)  # words of at most about 12 characters
    return generate_lorem_ipsum(n, html, min, max)


class _Budgeted(NodeTransformer):
    """Every loop's iterable goes through `budget_loop`, every `~` through `concat`; both are
    looked up on the environment, so a template cannot shadow them."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Call(nodes.EnvironmentAttribute("budget_loop"), [node.iter], [],
                               None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return nodes.Call(nodes.EnvironmentAttribute("concat"),
                          [nodes.List(node.nodes, lineno=node.lineno)], [], None, None,
                          lineno=node.lineno)


class BudgetedEnvironment(SandboxedEnvironment):
    """Jinja's sandbox with the size and time limits above."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    budget_loop = staticmethod(budget_loop)
    concat = staticmethod(concat)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.binop_table.update({"*": _mul, "**": _pow, "+": _add, "%": _mod})
        self.globals["lipsum"] = _lipsum
        self.filters.update({name: _checked_filter(name, check)
                             for name, check in _FILTER_CHECKS.items()})

    def _parse(self, source, name, filename):  # the one place a template's tree is made
        return _Budgeted().visit(super()._parse(source, name, filename))

    def wrap_str_format(self, value):
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _check_format(value.__self__)
        return wrapped

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (Jinja's signature)
        check_clock()
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        if isinstance(owner, str) and name in _METHOD_CHECKS:
            args = _listed(args, 0) if name == "join" else args
            _METHOD_CHECKS[name](owner, *args, **kwargs)
        elif isinstance(owner, list) and name == "extend" and args and _sized(args[0]):
            _check_size("extend", len(owner) + len(args[0]))
        return super().call(__context, __obj, *args, **kwargs)
