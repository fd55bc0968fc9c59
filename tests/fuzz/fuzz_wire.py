"""A coverage-guided fuzzer for the wire cores, for runs longer than the test suite's (by hand):

    pip install atheris
    python -m tests.fuzz.fuzz_wire tests/fuzz/corpus -max_total_time=3600

Each input goes through both cores and the Python walk of the rules (``wire_check``), which must
agree exactly; a disagreement or a crash stops the run and leaves the input in ``crash-*``, to add
to ``tests/fuzz/corpus`` once fixed. Coverage comes from the Python walk, whose branches are those
of the C walk; to guide by the C code's own coverage too, build the extension with clang and
``CFLAGS=-fsanitize=fuzzer-no-link,address`` and preload libclang_rt's ASan runtime.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from tailsampler.collector import wire_check, wire_py
    from tests.wire_differential import assert_cores_agree


def one_input(data: bytes) -> None:
    assert_cores_agree(data)


def main() -> None:
    assert wire_check and wire_py  # instrumented above: the walk's and the pure core's branches guide the fuzzer
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
