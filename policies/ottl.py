"""The OTTL condition subset that tail-sampling users write, parsed once into closures.

Contexts: ``span`` and ``spanevent``. Paths: ``name``, ``kind``, ``status.code``,
``status.message``, ``attributes["k"]`` (further ``["k"]``/``[0]`` index into maps and lists),
``resource.attributes["k"]``, ``instrumentation_scope.name`` / ``.version``,
``start_time_unix_nano``, ``end_time_unix_nano``, ``trace_state``; in ``spanevent``: ``name``,
``attributes[...]``, ``time_unix_nano`` and every span path under ``span.``. Literals: strings,
ints, floats, ``true``/``false``, ``nil``, ``SPAN_KIND_*`` / ``STATUS_CODE_*`` enums. Operators:
``== != < <= > >=``, ``and``, ``or``, ``not``, parentheses; function ``IsMatch(target, "regex")``.

Comparisons follow OTTL: values of different kinds are never equal (``!=`` is true) and never
ordered (``<`` and friends are false); ints and floats compare as numbers; a missing attribute is
``nil``. ``IsMatch`` reads strings, numbers and booleans as text, is false on ``nil``, and fails
on maps, lists and bytes (which ``error_mode`` then handles).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from .trace import SpanRef, attribute

ENUMS = {
    "SPAN_KIND_UNSPECIFIED": 0,
    "SPAN_KIND_INTERNAL": 1,
    "SPAN_KIND_SERVER": 2,
    "SPAN_KIND_CLIENT": 3,
    "SPAN_KIND_PRODUCER": 4,
    "SPAN_KIND_CONSUMER": 5,
    "STATUS_CODE_UNSET": 0,
    "STATUS_CODE_OK": 1,
    "STATUS_CODE_ERROR": 2,
}


class OttlSyntaxError(ValueError):
    def __init__(self, column: int, problem: str) -> None:
        super().__init__(f"column {column}: {problem}")
        self.column = column
        self.problem = problem


class OttlEvalError(Exception):
    """A condition that cannot be evaluated on this span (``error_mode`` decides what follows)."""


@dataclass(frozen=True, slots=True)
class Target:
    """What a condition is evaluated against: a span, and for ``spanevent`` one of its events."""

    ref: SpanRef
    event: Span.Event | None = None


Getter = Callable[[Target], Any]
Condition = Callable[[Target], bool]

_TOKEN = re.compile(
    r"""(?P<ws>\s+)
      | (?P<string>"(?:[^"\\]|\\.)*")
      | (?P<number>-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)
      | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<op>==|!=|<=|>=|<|>)
      | (?P<punct>[()\[\],.])""",
    re.VERBOSE,
)
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r"}


@dataclass(slots=True)
class Token:
    kind: str
    text: str
    column: int


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            if text[pos] == '"':
                raise OttlSyntaxError(pos + 1, "unterminated string")
            raise OttlSyntaxError(pos + 1, f"unexpected character {text[pos]!r}")
        kind = match.lastgroup or ""
        if kind != "ws":
            tokens.append(Token(kind, match.group(), pos + 1))
        pos = match.end()
    tokens.append(Token("end", "", len(text) + 1))
    return tokens


def _unquote(token: Token) -> str:
    body = token.text[1:-1]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), body)


# --- values read from the span ------------------------------------------------------------

def _span_field(path: str) -> Callable[[SpanRef], Any] | None:
    return {
        "name": lambda r: r.span.name,
        "kind": lambda r: r.span.kind,
        "status.code": lambda r: r.span.status.code,
        "status.message": lambda r: r.span.status.message,
        "start_time_unix_nano": lambda r: r.span.start_time_unix_nano,
        "end_time_unix_nano": lambda r: r.span.end_time_unix_nano,
        "trace_state": lambda r: r.span.trace_state,
        "instrumentation_scope.name": lambda r: r.scope.name,
        "instrumentation_scope.version": lambda r: r.scope.version,
    }.get(path)


def _attributes_of(path: str, context: str) -> Callable[[Target], Any] | None:
    owners: dict[str, Callable[[Target], Any]] = {
        "resource.attributes": lambda t: t.ref.resource.attributes,
        "instrumentation_scope.attributes": lambda t: t.ref.scope.attributes,
    }
    if context == "span":
        owners["attributes"] = lambda t: t.ref.span.attributes
    else:
        owners["attributes"] = lambda t: t.event.attributes  # type: ignore[union-attr]
        owners["span.attributes"] = lambda t: t.ref.span.attributes
    return owners.get(path)


def _field_getter(path: str, context: str) -> Getter | None:
    if context == "spanevent":
        if path == "name":
            return lambda t: t.event.name  # type: ignore[union-attr]
        if path == "time_unix_nano":
            return lambda t: t.event.time_unix_nano  # type: ignore[union-attr]
        if path.startswith("span."):
            path = path[len("span."):]
        elif path in ("kind", "status.code", "start_time_unix_nano", "end_time_unix_nano"):
            return None
    field = _span_field(path)
    return (lambda t: field(t.ref)) if field else None


def _index(value: Any, key: Any) -> Any:
    if isinstance(value, dict) and isinstance(key, str):
        return value.get(key)
    if isinstance(value, list) and isinstance(key, int) and 0 <= key < len(value):
        return value[key]
    return None


# --- comparisons ----------------------------------------------------------------------------

def _kind(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


_ORDER = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def compare(op: str, left: Any, right: Any) -> bool:
    same = _kind(left) == _kind(right)
    if op == "==":
        return same and left == right
    if op == "!=":
        return not (same and left == right)
    if not same or _kind(left) not in ("number", "str", "bytes"):
        return False
    return _ORDER[op](left, right)


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise OttlEvalError(f"IsMatch needs a string-like target, got {_kind(value)}")


# --- parser -----------------------------------------------------------------------------------

class _Parser:
    def __init__(self, text: str, context: str) -> None:
        self.tokens = tokenize(text)
        self.pos = 0
        self.context = context

    @property
    def tok(self) -> Token:
        return self.tokens[self.pos]

    def take(self) -> Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def expect(self, text: str) -> Token:
        if self.tok.text != text or self.tok.kind == "string":
            raise self.error(f"expected {text!r}")
        return self.take()

    def error(self, problem: str, token: Token | None = None) -> OttlSyntaxError:
        token = token or self.tok
        found = "end of condition" if token.kind == "end" else repr(token.text)
        return OttlSyntaxError(token.column, f"{problem}, found {found}")

    def keyword(self, word: str) -> bool:
        return self.tok.kind == "ident" and self.tok.text == word

    def parse(self) -> Condition:
        condition = self.boolean(self.or_expr())
        if self.tok.kind != "end":
            raise self.error("expected 'and', 'or' or the end of the condition")
        return condition

    def boolean(self, node: tuple[str, Any, Token]) -> Condition:
        kind, fn, token = node
        if kind == "bool":
            return fn
        if kind == "const":
            if isinstance(fn, bool):
                return lambda t, v=fn: v
            raise OttlSyntaxError(token.column, f"{token.text!r} is not a boolean condition; compare it with ==, != , <, <=, > or >=")
        getter = fn
        return lambda t: getter(t) is True

    def or_expr(self) -> tuple[str, Any, Token]:
        first = self.tok
        node = self.and_expr()
        if not self.keyword("or"):
            return node
        parts = [self.boolean(node)]
        while self.keyword("or"):
            self.take()
            parts.append(self.boolean(self.and_expr()))
        return "bool", (lambda t: any(p(t) for p in parts)), first

    def and_expr(self) -> tuple[str, Any, Token]:
        first = self.tok
        node = self.not_expr()
        if not self.keyword("and"):
            return node
        parts = [self.boolean(node)]
        while self.keyword("and"):
            self.take()
            parts.append(self.boolean(self.not_expr()))
        return "bool", (lambda t: all(p(t) for p in parts)), first

    def not_expr(self) -> tuple[str, Any, Token]:
        if self.keyword("not"):
            first = self.take()
            inner = self.boolean(self.not_expr())
            return "bool", (lambda t: not inner(t)), first
        return self.comparison()

    def comparison(self) -> tuple[str, Any, Token]:
        first = self.tok
        left = self.value()
        if self.tok.kind != "op":
            return left
        op = self.take().text
        right = self.value()
        if left[0] == "bool" or right[0] == "bool":
            raise OttlSyntaxError(first.column, "a boolean expression cannot be compared; use parentheses around comparisons")
        lget, rget = self.getter(left), self.getter(right)
        return "bool", (lambda t: compare(op, lget(t), rget(t))), first

    @staticmethod
    def getter(node: tuple[str, Any, Token]) -> Getter:
        kind, fn, _ = node
        if kind == "const":
            return lambda t, v=fn: v
        return fn

    def value(self) -> tuple[str, Any, Token]:
        token = self.tok
        if token.kind == "string":
            self.take()
            return "const", _unquote(token), token
        if token.kind == "number":
            self.take()
            text = token.text
            return "const", (float(text) if any(c in text for c in ".eE") else int(text)), token
        if token.text == "(" and token.kind == "punct":
            self.take()
            node = self.or_expr()
            self.expect(")")
            return node
        if token.kind != "ident":
            raise self.error("expected a value, a path or a function call")
        if token.text in ("true", "false"):
            self.take()
            return "const", token.text == "true", token
        if token.text == "nil":
            self.take()
            return "const", None, token
        if token.text in ENUMS:
            self.take()
            return "const", ENUMS[token.text], token
        if self.tokens[self.pos + 1].text == "(" and self.tokens[self.pos + 1].kind == "punct":
            return self.call()
        if token.text.isupper():
            raise self.error("unknown enum")
        return self.path()

    def call(self) -> tuple[str, Any, Token]:
        name = self.take()
        self.expect("(")
        if name.text != "IsMatch":
            raise OttlSyntaxError(name.column, f"unknown function {name.text!r}; supported: IsMatch")
        target = self.getter(self.value())
        self.expect(",")
        pattern_token = self.tok
        if pattern_token.kind != "string":
            raise self.error("IsMatch needs a string literal pattern")
        self.take()
        try:
            pattern = re.compile(_unquote(pattern_token))
        except re.error as exc:
            raise OttlSyntaxError(pattern_token.column, f"invalid regular expression: {exc}") from None
        self.expect(")")

        def is_match(t: Target) -> bool:
            text = _as_text(target(t))
            return text is not None and pattern.search(text) is not None

        return "bool", is_match, name

    def path(self) -> tuple[str, Any, Token]:
        first = self.tok
        parts = [self.take().text]
        while self.tok.text == "." and self.tok.kind == "punct":
            self.take()
            if self.tok.kind != "ident":
                raise self.error("expected a path segment after '.'")
            parts.append(self.take().text)
        dotted = ".".join(parts)
        keys: list[Any] = []
        while self.tok.text == "[" and self.tok.kind == "punct":
            self.take()
            key = self.tok
            if key.kind == "string":
                keys.append(_unquote(key))
            elif key.kind == "number" and key.text.lstrip("-").isdigit():
                keys.append(int(key.text))
            else:
                raise self.error("expected a string key or an integer index")
            self.take()
            self.expect("]")
        if keys:
            owner = _attributes_of(dotted, self.context)
            if owner is None:
                raise OttlSyntaxError(first.column, f"{dotted!r} cannot be indexed in the {self.context} context")
            head, rest = keys[0], keys[1:]
            if not isinstance(head, str):
                raise OttlSyntaxError(first.column, "attributes are indexed by a string key")

            def get_attribute(t: Target) -> Any:
                value = attribute(owner(t), head)
                for key in rest:
                    value = _index(value, key)
                return value

            return "value", get_attribute, first
        getter = _field_getter(dotted, self.context)
        if getter is None:
            raise OttlSyntaxError(first.column, f"unknown path {dotted!r} in the {self.context} context")
        return "value", getter, first


def parse_condition(text: str, context: str) -> Condition:
    """Parse one OTTL condition for ``context`` (``span`` or ``spanevent``); raises ``OttlSyntaxError``."""
    return _Parser(text, context).parse()

