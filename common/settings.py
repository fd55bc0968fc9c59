"""Decoding config data into msgspec structs, with every problem in it collected.

msgspec stops at the first thing that does not fit. A config is more useful checked whole, so
when a conversion fails the data is walked against the type, field by field and item by item,
and each part that does not fit is reported at its own key path: an unknown key, a missing
required one, a value of the wrong type, a value outside a fixed set (with the values that are
allowed). What the walk cannot narrow down further (a struct's own ``__post_init__`` check) is
reported in msgspec's words at the path msgspec gives.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Any, Literal, TypeVar, Union

import msgspec

from .durations import Duration
from .endpoints import Endpoint
from .errors import ConfigError, Problem
from .percent import Percent
from .sizes import ByteSize

T = TypeVar("T")

_PARSERS = {Duration: Duration.parse, Endpoint: Endpoint.parse, Percent: Percent.parse, ByteSize: ByteSize.parse}
_AT = re.compile(r" - at `\$(.*)`$")


def dec_hook(type_: type, obj: Any) -> Any:
    """How the config's own value types are read from YAML scalars."""
    parse = _PARSERS.get(type_)
    if parse is None:
        raise NotImplementedError(f"cannot decode {type_!r}")
    return parse(obj)


def enc_hook(obj: Any) -> Any:
    """How the config's own value types are written back (for hashing and comparing configs)."""
    if isinstance(obj, Endpoint):
        return str(obj)
    if isinstance(obj, float):  # Duration, Percent
        return float(obj)
    if isinstance(obj, int):  # ByteSize
        return int(obj)
    raise NotImplementedError(f"cannot encode {type(obj)!r}")


def decode(data: Any, type_: type[T], path: str = "") -> T:
    """``data`` as ``type_``, or ConfigError listing every problem, each at its key path below
    ``path``."""
    problems: list[Problem] = []
    value = collect(data, type_, path, problems)
    if problems:
        raise ConfigError(*problems)
    return value


class _Invalid:
    """What ``collect`` returns for data that does not fit (its problems are recorded)."""


INVALID: Any = _Invalid()


def collect(data: Any, type_: Any, path: str, problems: list[Problem]) -> Any:
    """``data`` as ``type_``; when it does not fit, its problems are added to ``problems`` and
    ``INVALID`` is returned."""
    try:
        return msgspec.convert(data, type_, dec_hook=dec_hook, strict=False)
    except msgspec.ValidationError as exc:
        error = exc
    found = len(problems)
    _explain(data, type_, path, problems)
    if len(problems) == found:
        problems.append(_located(error, path))
    return INVALID


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _located(error: msgspec.ValidationError, path: str) -> Problem:
    text = str(error)
    match = _AT.search(text)
    if match:
        text = text[: match.start()]
        path = (path + match.group(1)).lstrip(".")
    return Problem(path or "(top level)", text)


def _explain(data: Any, type_: Any, path: str, problems: list[Problem]) -> None:
    """Add the problems of each part of ``data`` that does not fit ``type_``."""
    origin, args = typing.get_origin(type_), typing.get_args(type_)
    if isinstance(type_, type) and issubclass(type_, msgspec.Struct):
        if isinstance(data, dict):
            _explain_struct(data, type_, path, problems)
    elif origin in (Union, types.UnionType):
        _explain_union(data, [a for a in args if a is not type(None)], path, problems)
    elif origin is Literal:
        if data not in args:
            allowed = ", ".join(str(a) for a in args)
            problems.append(Problem(path or "(top level)", f"Invalid enum value {data!r}; expected one of {allowed}"))
    elif origin is list and isinstance(data, list):
        for index, item in enumerate(data):
            collect(item, args[0], f"{path}[{index}]", problems)
    elif origin is dict and isinstance(data, dict):
        for key, item in data.items():
            collect(item, args[1], _join(path, str(key)), problems)


def _explain_struct(data: dict[Any, Any], type_: type[msgspec.Struct], path: str, problems: list[Problem]) -> None:
    config = type_.__struct_config__
    fields = msgspec.structs.fields(type_)
    names = {field.encode_name for field in fields}
    if config.forbid_unknown_fields:
        for key in data:
            if key not in names and key != config.tag_field:
                problems.append(Problem(path or "(top level)", f"Object contains unknown field `{key}`"))
    for field in fields:
        if field.encode_name in data:
            collect(data[field.encode_name], field.type, _join(path, field.encode_name), problems)
        elif field.required:
            problems.append(Problem(path or "(top level)", f"Object missing required field `{field.encode_name}`"))


def _explain_union(data: Any, members: list[Any], path: str, problems: list[Problem]) -> None:
    structs = [m for m in members if isinstance(m, type) and issubclass(m, msgspec.Struct)]
    tag_field = structs[0].__struct_config__.tag_field if structs else None
    if tag_field and len(structs) == len(members) and isinstance(data, dict):
        by_tag = {s.__struct_config__.tag: s for s in structs}
        tag = data.get(tag_field)
        if tag not in by_tag:
            allowed = ", ".join(str(t) for t in by_tag)
            where = _join(path, tag_field)
            if tag is None:
                problems.append(Problem(path or "(top level)", f"Object missing required field `{tag_field}`; expected one of {allowed}"))
            else:
                problems.append(Problem(where, f"Invalid value {tag!r}; expected one of {allowed}"))
            return
        collect(data, by_tag[tag], path, problems)
    elif len(members) == 1:
        _explain(data, members[0], path, problems)
