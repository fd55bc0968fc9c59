"""Build of the optional C wire core, ``tailsampler.collector._wire``.

Everything else about the package is in pyproject.toml. As aiohttp, yarl and multidict do, the
extension is optional: ``TAILSAMPLER_NO_EXTENSIONS=1`` skips it (and, at run time, forces the
pure-Python core), and a machine that cannot compile it (no compiler, no Python headers, a
big-endian CPU, another Python than CPython) gets a loud warning and the pure-Python core, which
the package always installs.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NO_EXTENSIONS = os.environ.get("TAILSAMPLER_NO_EXTENSIONS", "") not in ("", "0")
CAN_BUILD = sys.implementation.name == "cpython" and sys.byteorder == "little"
WARNING = (
    "WARNING: the C wire core (tailsampler.collector._wire) could not be compiled: {reason}. "
    "tailsampler installs and runs on its pure-Python core, at several times the CPU per span; "
    "install gcc and the Python headers and reinstall to get the C core."
)

EXTENSIONS = [
    Extension(
        "tailsampler.collector._wire",
        ["collector/_wire.c"],
        extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
    )
]


class OptionalBuildExt(build_ext):
    """Build the extension if this machine can; otherwise say so loudly and go on without it."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # a missing compiler surfaces as one of several distutils errors
            self._warn(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._warn(exc)

    def _warn(self, exc: Exception) -> None:
        line = WARNING.format(reason=str(exc).strip() or type(exc).__name__)
        banner = "*" * 79
        print(f"\n{banner}\n{line}\n{banner}\n", file=sys.stderr, flush=True)


if NO_EXTENSIONS or not CAN_BUILD:
    print("tailsampler: building without the C wire core (pure-Python core)", file=sys.stderr)
    setup()
else:
    setup(ext_modules=EXTENSIONS, cmdclass={"build_ext": OptionalBuildExt})
