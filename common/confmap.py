"""Values from the environment and from files, in the OpenTelemetry Collector's confmap syntax.

Anywhere in a config string: ``${env:NAME}``, ``${env:NAME:-default}`` (the default when NAME is
unset or empty), ``${file:/path}`` (the file's contents, one trailing newline stripped), ``${NAME}``
(the Collector's default provider, env) and ``$$`` for a literal ``$``. The data is expanded before
it is decoded, so ``tailsampler validate`` sees exactly what ``serve`` will run.

A value that came from the environment or a file is usually a secret (a Redis password, an API
key, a bearer token): ``Expansion.redact`` puts the reference back in place of the value in a
problem's message, so a config error never prints it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit, urlunsplit

from .errors import Problem

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True, slots=True)
class _Substitution:
    path: str
    value: str
    reference: str  # the ``${...}`` text the value came from


@dataclass
class Expansion:
    """What expanding a config found: the problems (unset variables, unreadable files) and the
    values put in, so that they can be kept out of every message."""

    problems: list[Problem] = field(default_factory=list)
    _substitutions: list[_Substitution] = field(default_factory=list)

    @property
    def failed_paths(self) -> set[str]:
        """Key paths whose value could not be expanded (their decoding problems are only echoes)."""
        return {problem.path for problem in self.problems}

    def redact(self, problem: Problem) -> Problem:
        """``problem`` with every expanded value at, above or below its key path replaced by the
        reference it came from."""
        message = problem.message
        related = [s for s in self._substitutions if _related(s.path, problem.path)]
        for sub in sorted(related, key=lambda s: len(s.value), reverse=True):
            message = message.replace(sub.value, sub.reference)
            escaped = repr(sub.value)[1:-1]
            if escaped != sub.value:
                message = message.replace(escaped, sub.reference)
        return problem if message == problem.message else Problem(problem.path, message)


def _related(a: str, b: str) -> bool:
    """One key path is the other or lies inside it (a struct's check reports at the struct)."""
    if a in ("", "(top level)") or b in ("", "(top level)"):
        return True
    short, long = sorted((a, b), key=len)
    return long == short or long.startswith(short + ".") or long.startswith(short + "[")


def expand(data: Any, environ: Mapping[str, str] | None = None, path: str = "") -> tuple[Any, Expansion]:
    """``data`` with every string expanded, and what the expansion found. A reference that cannot
    be resolved is left as written and reported at its key path."""
    expansion = Expansion()
    env = os.environ if environ is None else environ
    return _walk(data, path, env, expansion), expansion


def _walk(data: Any, path: str, env: Mapping[str, str], expansion: Expansion) -> Any:
    if isinstance(data, str):
        return _expand_string(data, path, env, expansion)
    if isinstance(data, dict):
        return {key: _walk(value, f"{path}.{key}" if path else str(key), env, expansion) for key, value in data.items()}
    if isinstance(data, list):
        return [_walk(item, f"{path}[{index}]", env, expansion) for index, item in enumerate(data)]
    return data


def _expand_string(text: str, path: str, env: Mapping[str, str], expansion: Expansion) -> str:
    if "$" not in text:
        return text
    out: list[str] = []
    at = 0
    failed = False
    while True:
        dollar = text.find("$", at)
        if dollar < 0 or dollar == len(text) - 1:
            out.append(text[at:])
            break
        out.append(text[at:dollar])
        following = text[dollar + 1]
        if following == "$":
            out.append("$")
            at = dollar + 2
            continue
        if following != "{":
            out.append("$")
            at = dollar + 1
            continue
        end = text.find("}", dollar + 2)
        if end < 0:
            expansion.problems.append(Problem(path, f"unterminated reference {text[dollar:]!r}: expected a closing '}}'"))
            return text
        reference = text[dollar : end + 1]
        value, problem = _resolve(text[dollar + 2 : end], env)
        if problem:
            expansion.problems.append(Problem(path, f"{reference}: {problem}"))
            failed = True
            out.append(reference)
        else:
            if value:
                expansion._substitutions.append(_Substitution(path, value, reference))
            out.append(value)
        at = end + 1
    return text if failed else "".join(out)


def _resolve(inner: str, env: Mapping[str, str]) -> tuple[str, str]:
    """The value of one reference's inside (``env:NAME:-default``, ``file:/path``, ``NAME``), or
    a problem saying why there is none."""
    scheme, colon, rest = inner.partition(":")
    if not colon:
        scheme, rest = "env", inner
    if scheme == "env":
        name, has_default, default = rest.partition(":-")
        if not _NAME.match(name):
            return "", f"{name!r} is not an environment variable name"
        value = env.get(name)
        if value or (value is not None and not has_default):
            return value, ""
        if has_default:
            return default, ""  # unset or empty, as in a shell
        return "", f"environment variable {name} is not set (give a default: ${{env:{name}:-value}})"
    if scheme == "file":
        if not rest:
            return "", "expected a file path after 'file:'"
        try:
            content = Path(rest).read_text()
        except OSError as exc:
            return "", f"cannot read {rest}: {exc.strerror}"
        except UnicodeDecodeError:
            return "", f"{rest} is not UTF-8 text"
        return content.removesuffix("\n").removesuffix("\r"), ""
    return "", f"unsupported provider {scheme!r}: use env or file"


def redact_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***`` (for messages and logs)."""
    try:
        parts = urlsplit(url)
        if not parts.password:
            return url
        host = parts.netloc.rpartition("@")[2]
    except ValueError:
        return url
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
