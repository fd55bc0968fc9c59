"""Both wire cores and the Python walk of the rules, on one body: what each says of it."""

from __future__ import annotations

import pytest

from tailsampler.collector import wire_py
from tailsampler.collector.wire_check import first_error
from tailsampler.collector.wire_errors import WireError

try:
    from tailsampler.collector import _wire
except ImportError:  # the differential tests need both cores: a missing build is a failure
    _wire = None


def c_core() -> object:
    if _wire is None:
        pytest.fail("the C wire core is not built: `pip install -e .` with gcc and the Python headers builds it")
    return _wire


Outcome = tuple[object, ...]


def outcome(core: object, body: bytes) -> Outcome:
    try:
        fragments, accepted, refused, roots = core.split(body)  # type: ignore[attr-defined]
    except WireError as error:
        return ("refused", str(error))
    return ("split", [(trace_id, f.pieces, f.facts) for trace_id, f in fragments.items()], accepted, refused, roots)


def assert_cores_agree(body: bytes) -> Outcome:
    """The C and the pure core give equal fragments (byte for byte, piece by piece, in order),
    facts and counts, or refuse with the same message, which is the Python walk's."""
    pure = outcome(wire_py, body)
    assert outcome(c_core(), body) == pure
    error = first_error(body)
    assert pure == ("refused", error) if error is not None else pure[0] == "split"
    return pure
