"""What the wire walk checks, written out as a walk in Python: the reference for the C walk's
rules and the source of both cores' error messages.

The walk follows an ``ExportTraceServiceRequest`` down the path to each span and no further:

- ``ExportTraceServiceRequest``: field 1 (``resource_spans``) is walked;
- ``ResourceSpans``: 2 (``scope_spans``) is walked; 1 (``resource``) and 3 (``schema_url``) are
  kept as they are, unread;
- ``ScopeSpans``: 2 (``spans``) is walked; 1 (``scope``) and 3 (``schema_url``) are kept unread;
- ``Span``: 15 (``status``) is walked; every other field is read or skipped by its wire type;
- ``Status``: every field is read or skipped by its wire type.

Everywhere on that path the framing must be well formed, as protobuf's own parser (upb) requires
it: varints of at most 10 bytes, tags of at most 5 bytes and 32 bits, no field number 0 outside a
group, wire types 0, 1, 2, 3 (a group), 5 only, an end-group tag only where it closes the group
of its field number, lengths within their message, and at most 100 levels of messages and groups
(upb's default recursion limit). A known field with another wire type than its own is skipped as
an unknown field of that wire type, as upb does. Inside a skipped group, field number 0 is
allowed, as upb allows it there. Nothing inside ``resource``, ``scope``, attributes, events, links
or any string is read: their UTF-8 and their own framing are the backend's to check.

This module is used when a parse refused a body, to say why; the pure core's parse and the C walk
accept exactly the bodies this walk accepts (the differential tests hold them to it).
"""

from __future__ import annotations

DEPTH_LIMIT = 100
MAX_BODY = 64 << 20  # the pure core's parses grow a body by up to 19 times; upb stops at 2 GiB
_MASK64 = (1 << 64) - 1
_MAX_TAG = (1 << 32) - 1

# field number -> the walker of its submessage, for length-delimited fields that are walked
_REQUEST, _RESOURCE_SPANS, _SCOPE_SPANS, _SPAN, _STATUS = range(5)
_WALKED = {
    _REQUEST: {1: _RESOURCE_SPANS},
    _RESOURCE_SPANS: {2: _SCOPE_SPANS},
    _SCOPE_SPANS: {2: _SPAN},
    _SPAN: {15: _STATUS},
    _STATUS: {},
}


class _Refused(Exception):
    pass


def first_error(body: bytes) -> str | None:
    """Why the wire walk refuses ``body``, or None when it accepts it."""
    if len(body) > MAX_BODY:
        return f"request body of {len(body)} bytes is over the {MAX_BODY >> 20} MiB the wire walk accepts"
    try:
        _Walk(body).message(_REQUEST, 0, len(body))
    except _Refused as refused:
        return str(refused)
    return None


class _Walk:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.depth = DEPTH_LIMIT

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        start, value, shift = pos, 0, 0
        for _ in range(10):
            if pos >= end:
                raise _Refused(f"truncated varint at byte {start}")
            byte = self.body[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value & _MASK64, pos
            shift += 7
        raise _Refused(f"varint longer than 10 bytes at byte {start}")

    def tag(self, pos: int, end: int) -> tuple[int, int]:
        tag, after = self.varint(pos, end)
        if after - pos > 5 or tag > _MAX_TAG:
            raise _Refused(f"invalid tag at byte {pos}")
        return tag, after

    def enter(self, at: int) -> None:
        self.depth -= 1
        if self.depth < 0:
            raise _Refused(f"nesting deeper than {DEPTH_LIMIT} levels at byte {at}")

    def message(self, kind: int, pos: int, end: int) -> None:
        walked = _WALKED[kind]
        while pos < end:
            at = pos
            tag, pos = self.tag(pos, end)
            number, wire = tag >> 3, tag & 7
            if wire == 4:
                raise _Refused(f"end-group tag without a group at byte {at}")
            if number == 0:
                raise _Refused(f"field number 0 at byte {at}")
            if wire == 2 and number in walked:
                length, pos = self.length(at, pos, end)
                self.enter(at)
                self.message(walked[number], pos, pos + length)
                self.depth += 1
                pos += length
            else:
                pos = self.skip(number, wire, at, pos, end)

    def length(self, at: int, pos: int, end: int) -> tuple[int, int]:
        length, pos = self.varint(pos, end)
        if length > end - pos:
            raise _Refused(f"length {length} at byte {at} runs past the end of its message")
        return length, pos

    def skip(self, number: int, wire: int, at: int, pos: int, end: int) -> int:
        """Past the value of a field read only for its framing; ``pos`` is where the value starts."""
        if wire == 0:
            return self.varint(pos, end)[1]
        if wire == 1 or wire == 5:
            size = 8 if wire == 1 else 4
            if end - pos < size:
                raise _Refused(f"truncated fixed{size * 8} at byte {at}")
            return pos + size
        if wire == 2:
            length, pos = self.length(at, pos, end)
            return pos + length
        if wire == 3:
            return self.group(number, at, pos, end)
        raise _Refused(f"invalid wire type {wire} at byte {at}")

    def group(self, number: int, at: int, pos: int, end: int) -> int:
        self.enter(at)
        while pos < end:
            inner = pos
            tag, pos = self.tag(pos, end)
            if tag & 7 == 4:
                if tag >> 3 != number:
                    raise _Refused(f"end-group tag at byte {inner} does not close the group at byte {at}")
                self.depth += 1
                return pos
            pos = self.skip(tag >> 3, tag & 7, inner, pos, end)
        raise _Refused(f"group at byte {at} is not closed")
