"""The one error both wire cores raise for a body that is not an export request they accept.

A subclass of protobuf's ``DecodeError``, so a receiver that answers an undecodable body with
``INVALID_ARGUMENT`` / HTTP 400 keeps doing so whichever core runs, and its message says what
was wrong and where (``truncated varint at byte 17``), the same from either core.
"""

from google.protobuf.message import DecodeError


class WireError(DecodeError):
    """An export request body the wire walk refuses."""
